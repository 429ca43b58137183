"""`--format ome-zarr`: one OME-NGFF store per image, every scale a level of one label pyramid, read back
with ome-zarr-py's reader; the same masks as the PNGs; written in bands and atomically."""

import numpy as np
import pytest

pytest.importorskip("zarr", reason="OME-Zarr output needs zarr (pip install 'msunet[omezarr]'; `make venv` has it)")
ome_zarr = pytest.importorskip("ome_zarr", reason="reading the stores back needs ome-zarr (`make venv` has it)")

from msunet.config import RunConfig  # noqa: E402
from msunet.data.imageio import read_image, read_mask, write_png  # noqa: E402
from msunet.data.preprocessing import Normalization  # noqa: E402
from msunet.inference.engines import predict  # noqa: E402
from msunet.models import build_model  # noqa: E402
from msunet.runtime import files  # noqa: E402
from msunet.training.run_folder import LoadedRun  # noqa: E402


@pytest.fixture(scope="module")
def loaded_run():
    cfg = RunConfig().override(["model.depth=3", "model.filters=4", "data.patch_size=32", "model.num_classes=3"])
    model = build_model(cfg.model)
    rng = np.random.default_rng(0)  # away from the initial weights, so the masks hold several classes
    model.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()])
    return LoadedRun(model, cfg, Normalization("image"), None)


def _read(store):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(str(store)))())
    image = nodes[0]
    labels = [n for n in nodes if n.load(Label)]
    return image, labels


@pytest.mark.parametrize("streamed", [False, True])
def test_every_scale_is_a_level_of_one_label_pyramid_with_the_png_masks(loaded_run, tmp_path, monkeypatch, streamed):
    rng = np.random.default_rng(1)
    write_png(tmp_path / "in" / "cells.png", (rng.random((70, 90, 3)) * 255).astype(np.uint8))
    predict(loaded_run, tmp_path / "in", tmp_path / "png")
    if streamed:  # results in memory maps, written band by band
        monkeypatch.setattr(files, "STREAM_PIXELS", 1000)
        monkeypatch.setattr("msunet.runtime.omezarr.BAND", 16)
    summary = predict(loaded_run, tmp_path / "in", tmp_path / "zarr", output_format="ome-zarr", probabilities=True)
    store = tmp_path / "zarr" / "cells.ome.zarr"
    assert store in summary.written and not list((tmp_path / "zarr").glob(".*"))  # no temporary store left
    assert not (tmp_path / "zarr" / "cells.png").exists()
    image, labels = _read(store)
    np.testing.assert_array_equal(np.asarray(image.data[0]), np.moveaxis(read_image(tmp_path / "in" / "cells.png"), -1, 0))
    assert len(labels) == 1
    levels = [np.asarray(level) for level in labels[0].data]
    assert [lv.shape for lv in levels] == [(70, 90), (35, 45), (18, 23)]
    for level, name in zip(levels, ("cells.png", "cells_s2.png", "cells_s4.png")):
        np.testing.assert_array_equal(level, read_mask(tmp_path / "png" / name))  # the masks the PNGs hold
    assert len(np.unique(levels[0])) > 1
    attrs = labels[0].zarr.root_attrs
    scales = [d["coordinateTransformations"][0]["scale"] for d in attrs["multiscales"][0]["datasets"]]
    shifts = [d["coordinateTransformations"][1]["translation"] for d in attrs["multiscales"][0]["datasets"]]
    assert scales == [[1, 1], [2, 2], [4, 4]] and shifts == [[0, 0], [0.5, 0.5], [1.5, 1.5]]
    assert attrs["image-label"]["source"]["image"] == "../../"
    assert {c["label-value"] for c in attrs["image-label"]["colors"]} == {1, 2}
    import zarr

    probs = zarr.open_group(str(store), mode="r")["probabilities"]
    assert probs["2"].shape == (3, 18, 23) and probs["0"].dtype == np.uint8

    again = predict(loaded_run, tmp_path / "in", tmp_path / "zarr", output_format="ome-zarr")
    assert not again.written and again.existing  # kept without overwrite


def test_the_format_is_checked_before_any_image(loaded_run, tmp_path):
    with pytest.raises(ValueError, match="output format .* auto, ome-zarr"):
        predict(loaded_run, tmp_path, tmp_path / "out", output_format="zarr")
