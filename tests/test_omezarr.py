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


def _ome_zarr_image(path, image):
    """An OME-Zarr store as ome-zarr-py writes one (NGFF 0.5, t c z y x, a pyramid of its own)."""
    import zarr
    from ome_zarr.writer import write_image

    write_image(np.moveaxis(image, -1, 0)[None, :, None], zarr.open_group(str(path), mode="w"), axes="tczyx")


def test_zarr_and_ome_zarr_images_are_predicted_window_by_window(loaded_run, tmp_path, monkeypatch):
    import zarr

    from msunet.data import zarrio
    from msunet.data.imageio import image_stem, open_image_lazy

    image = (np.random.default_rng(4).random((300, 260, 3)) * 255).astype(np.uint8)
    write_png(tmp_path / "png" / "scene.png", image)
    predict(loaded_run, tmp_path / "png", tmp_path / "out-png", probabilities=True)
    (tmp_path / "in").mkdir()
    _ome_zarr_image(tmp_path / "in" / "scene.ome.zarr", image)
    plain = zarr.create_array(str(tmp_path / "in" / "plain.zarr"), shape=(3, 300, 260), dtype=np.uint8, chunks=(3, 64, 64))
    plain[:] = np.moveaxis(image, -1, 0)  # (c, y, x) without NGFF metadata
    assert image_stem(tmp_path / "in" / "scene.ome.zarr") == "scene"
    assert isinstance(open_image_lazy(tmp_path / "in" / "plain.zarr"), zarrio.ZarrImage)

    rows_read = []
    read_rows = zarrio.ZarrImage._read_rows
    monkeypatch.setattr(zarrio.ZarrImage, "_read_rows", lambda self, a, b: rows_read.append(b - a) or read_rows(self, a, b))
    monkeypatch.setattr(zarrio.ZarrImage, "__array__", lambda *a, **k: pytest.fail("a Zarr input was read whole"))
    monkeypatch.setattr(files, "STREAM_PIXELS", 10_000)  # results in memory maps, as for a huge slide
    monkeypatch.setattr(zarrio, "BAND_ROWS", 64)
    summary = predict(loaded_run, tmp_path / "in", tmp_path / "out", probabilities=True, overlay_images=False)
    assert not summary.failed and len(summary.written) == 2 * 2 * 3  # masks and probabilities at 3 scales
    # read in bands of rows, each row a few times (the normalisation pass, the tiles), never whole
    assert max(rows_read) < 300 and sum(rows_read) <= 2 * 4 * 300, (max(rows_read), sum(rows_read), len(rows_read))
    expected = tifffile_read(tmp_path / "out-png" / "scene_prob.tif")
    for stem in ("scene", "plain"):  # the same pixels, the same tiles: equal within float32 accumulation (1e-5)
        np.testing.assert_allclose(tifffile_read(tmp_path / "out" / f"{stem}_prob.tif").reshape(expected.shape),
                                   expected, atol=1e-5)


def tifffile_read(path):
    import tifffile

    return tifffile.imread(path)


def test_a_bad_zarr_store_is_a_failed_file_with_the_reason(loaded_run, tmp_path):
    import zarr

    (tmp_path / "in" / "empty.zarr").mkdir(parents=True)  # no metadata
    stack = (np.random.default_rng(5).random((2, 40, 50, 3)) * 255).astype(np.uint8)  # two time points
    import ome_zarr.writer

    ome_zarr.writer.write_image(np.moveaxis(stack, -1, 1)[:, :, None], zarr.open_group(str(tmp_path / "in" / "movie.ome.zarr"),
                                                                                       mode="w"), axes="tczyx")
    huge = zarr.create_array(str(tmp_path / "in" / "huge.zarr"), shape=(3, 300_000, 300_000), dtype=np.uint8,
                             chunks=(3, 1024, 1024))  # declared, never written: 9e10 pixels
    summary = predict(loaded_run, tmp_path / "in", tmp_path / "out")
    reasons = dict(summary.failed)
    assert set(reasons) == {str(tmp_path / "in" / name) for name in ("empty.zarr", "movie.ome.zarr", "huge.zarr")}
    assert "exceeds the limit" in reasons[str(tmp_path / "in" / "huge.zarr")]
    assert "zarr.json or .zgroup" in reasons[str(tmp_path / "in" / "empty.zarr")]
    assert "'t' axis holds 2 planes" in reasons[str(tmp_path / "in" / "movie.ome.zarr")]


def test_evaluate_scores_ome_zarr_predictions_and_ground_truth_as_it_scores_pngs(loaded_run, tmp_path):
    import zarr

    from msunet.evaluation.evaluate import evaluate_folders

    rng = np.random.default_rng(6)
    for name in ("a", "b"):
        write_png(tmp_path / "in" / f"{name}.png", (rng.random((70, 90, 3)) * 255).astype(np.uint8))
        truth = np.zeros((70, 90), np.uint8)
        truth[10:50, 20:70] = 1
        truth[30:60, 5:40] = 2
        write_png(tmp_path / "gt" / f"{name}.png", truth)
        gt_store = zarr.create_array(str(tmp_path / "gt-zarr" / f"{name}.zarr"), shape=truth.shape, dtype=np.uint8,
                                     chunks=(32, 32))
        gt_store[:] = truth
    predict(loaded_run, tmp_path / "in", tmp_path / "png")
    predict(loaded_run, tmp_path / "in", tmp_path / "zarr", output_format="ome-zarr")
    reference = evaluate_folders(tmp_path / "png", tmp_path / "gt", tmp_path / "eval-png", num_classes=3)
    assert {r["scale"] for r in reference.rows} == {1, 2, 4}
    for pred, gt in (("zarr", "gt"), ("zarr", "gt-zarr"), ("png", "gt-zarr")):
        result = evaluate_folders(tmp_path / pred, tmp_path / gt, tmp_path / f"eval-{pred}-{gt}", num_classes=3,
                                  images_dir=tmp_path / "in")
        assert not result.problems, result.problems
        assert result.rows == reference.rows  # the same masks, read from the other format: the same scores
        assert "prediction 1/4" in (tmp_path / f"eval-{pred}-{gt}" / "report.html").read_text()


def test_napari_reads_every_scale_as_one_multiscale_labels_layer(loaded_run, tmp_path):
    """napari's own OME-Zarr reader plugin, headless (no viewer): the image layer and one labels layer whose
    levels are the masks at every scale."""
    reader_module = pytest.importorskip("napari_ome_zarr._reader", reason="napari's reader plugin is not in `make test` "
                                        "(napari pulls ~60 packages); `make test-napari` installs it and runs this")
    write_png(tmp_path / "in" / "cells.png", (np.random.default_rng(7).random((70, 90, 3)) * 255).astype(np.uint8))
    predict(loaded_run, tmp_path / "in", tmp_path / "png")
    predict(loaded_run, tmp_path / "in", tmp_path / "zarr", output_format="ome-zarr")
    store = str(tmp_path / "zarr" / "cells.ome.zarr")
    layers = reader_module.napari_get_reader(store)(store)
    kinds = [kind for _, _, kind in layers]
    assert kinds.count("image") == 1 and kinds.count("labels") == 1
    levels = next(data for data, _, kind in layers if kind == "labels")
    assert [tuple(level.shape) for level in levels] == [(70, 90), (35, 45), (18, 23)]
    for level, name in zip(levels, ("cells.png", "cells_s2.png", "cells_s4.png")):
        np.testing.assert_array_equal(np.asarray(level), read_mask(tmp_path / "png" / name))
