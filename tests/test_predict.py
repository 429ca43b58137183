import pathlib

import numpy as np

from helpers import tiny_config
from msunet.data.preprocessing import Normalization
from msunet.models import build_model
from msunet.runtime.writers import overlay, probabilities_to_mask
from msunet.inference.keras_engine import predict_probabilities, write_prediction


def test_probabilities_masks_and_files(tmp_path):
    model = build_model(tiny_config(depth=2, num_classes=3))
    image = (np.random.default_rng(0).random((21, 17, 3)) * 255).astype(np.uint8)
    probs = predict_probabilities(model, image, Normalization("image"))
    assert probs["mask"].shape == (21, 17, 3) and probs["mask_s2"].shape == (11, 9, 3)
    mask = probabilities_to_mask(probs["mask"])
    assert mask.dtype == np.uint8 and mask.max() <= 2
    assert probabilities_to_mask(np.array([[[0.2], [0.7]]], np.float32)).tolist() == [[0, 255]]
    picture = overlay(image, mask, 3)
    assert picture.shape == (21, 17, 3) and picture.dtype == np.uint8
    written = write_prediction(tmp_path, "img", image, probs, 3)
    assert {p.name for p in written} == {"img.png", "img_overlay.png", "img_s2.png"}


import pytest  # noqa: E402

from msunet.cli import main  # noqa: E402
from msunet.data.imageio import write_png  # noqa: E402
from msunet.config import RunConfig  # noqa: E402
from msunet.training.run_folder import LoadedRun
from msunet.inference.keras_engine import make_predict_fn
from msunet.inference.engines import predict


@pytest.fixture(scope="module")
def loaded_run():
    cfg = RunConfig().override(["model.depth=2", "model.filters=4", "data.patch_size=32"])
    return LoadedRun(build_model(cfg.model), cfg, Normalization("image"), None)


def test_tta_is_the_average_of_the_four_unflipped_predictions(loaded_run):
    batch = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
    plain = make_predict_fn(loaded_run.model, ["mask", "mask_s2"], batch_size=4)
    tta = make_predict_fn(loaded_run.model, ["mask", "mask_s2"], batch_size=4, tta=True)(batch)
    assert tta["mask"].shape == (3, 32, 32, 1) and tta["mask_s2"].shape == (3, 16, 16, 1)
    for head in ("mask", "mask_s2"):
        expected = plain(batch)[head].copy()
        for axes in ((1,), (2,), (1, 2)):
            expected += np.flip(plain(np.ascontiguousarray(np.flip(batch, axis=axes)))[head], axis=axes)
        np.testing.assert_allclose(tta[head], expected / 4, atol=1e-5)  # coarse heads flip onto the same cells


def test_predict_folder_with_a_corrupt_file_and_overwrite(loaded_run, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a", (40, 50)), ("b", (33, 17))):
        write_png(src / f"{name}.png", (rng.random((*size, 3)) * 255).astype(np.uint8))
    (src / "c.png").write_bytes(b"\x89PNG broken")
    (src / "readme.txt").write_text("not an image")
    summary = predict(loaded_run, src, tmp_path / "out", tile_size=32, overlap=0.5, probabilities=True)
    assert [p for p, _ in summary.failed] == [str(src / "c.png")] and not summary.ok
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"a.png", "a_s2.png", "a_overlay.png", "a_prob.tif", "a_s2_prob.tif", "b.png", "b_s2.png"} <= names
    assert not any(n.startswith(".") for n in names)  # no temporary files left behind
    from msunet.data.imageio import read_mask

    assert read_mask(tmp_path / "out" / "b.png").shape == (33, 17) and read_mask(tmp_path / "out" / "b_s2.png").shape == (17, 9)
    before = (tmp_path / "out" / "a.png").stat().st_mtime_ns
    again = predict(loaded_run, src, tmp_path / "out", tile_size=32)
    assert len(again.existing) == 2 and (tmp_path / "out" / "a.png").stat().st_mtime_ns == before
    assert len(predict(loaded_run, src, tmp_path / "out", tile_size=32, overwrite=True).existing) == 0


def test_inputs_may_be_a_glob_pattern(loaded_run, tmp_path):
    from msunet.runtime.files import list_inputs

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png", "c.tif"):
        write_png(src / name, np.zeros((8, 8, 3), np.uint8)) if name.endswith(".png") else (src / name).write_bytes(b"x")
    assert [p.name for p in list_inputs(src / "*.png")] == ["a.png", "b.png"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        list_inputs(src / "*.jpg")
    summary = predict(loaded_run, str(src / "*.png"), tmp_path / "out", tile_size=32)
    assert {p.name for p in summary.written} >= {"a.png", "b.png"} and not summary.failed


def test_predict_cli_exit_codes(tmp_path, capsys):
    from msunet.data.synthetic import make_dataset
    from msunet.training.run import train

    data = make_dataset(tmp_path / "d", count=5, size=(40, 40))
    train(RunConfig().override(["model.depth=2", "model.filters=2", "data.patch_size=32", "epochs=1",
                                "steps_per_epoch=1", "batch_size=2"]), data, tmp_path / "run", verbose=0)
    args = ["predict", "--model", str(tmp_path / "run"), "--input", str(data / "images"), "--out", str(tmp_path / "o"),
            "--quiet", "--tta"]
    assert main(args) == 0
    assert "written: 5 image(s)" in capsys.readouterr().out
    assert main(args) == 0 and "kept: 5" in capsys.readouterr().out
    (data / "images" / "zz.png").write_bytes(b"nope")
    assert main(args + ["--overwrite"]) == 1
    out = capsys.readouterr().out
    assert "failed: 1" in out and "zz.png" in out and "written: 5 image(s)" in out
    assert main(["predict", "--model", str(tmp_path / "nothing"), "--input", str(data), "--out", str(tmp_path / "o")]) == 2


def test_streamed_output_for_huge_images(loaded_run, tmp_path, monkeypatch):
    import tifffile

    import importlib


    files_module = importlib.import_module("msunet.runtime.files")
    monkeypatch.setattr(files_module, "STREAM_PIXELS", 1000)  # pretend 64x80 is huge
    image = (np.random.default_rng(2).random((64, 80, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image)
    streamed = predict(loaded_run, tmp_path / "big.tif", tmp_path / "s", tile_size=32, probabilities=True)
    monkeypatch.setattr(files_module, "STREAM_PIXELS", 10**9)
    normal = predict(loaded_run, tmp_path / "big.tif", tmp_path / "n", tile_size=32, probabilities=True)
    assert streamed.ok and normal.ok
    from msunet.data.imageio import read_mask

    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s" / "big.tif"), read_mask(tmp_path / "n" / "big.png"))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s" / "big_s2.tif"), read_mask(tmp_path / "n" / "big_s2.png"))
    np.testing.assert_allclose(tifffile.imread(tmp_path / "s" / "big_prob.tif"), tifffile.imread(tmp_path / "n" / "big_prob.tif"), atol=1e-6)


def test_an_image_smaller_than_the_tile_is_predicted_as_training_saw_it(tmp_path):
    """A 32 px image under a 64 px tile: predicted in a tile of its own size (no border the model never
    met in training), padding with what training pads (a black pixel, normalised)."""
    import tifffile

    cfg = RunConfig().override(["model.depth=2", "model.filters=4", "data.patch_size=32"])  # default tile: 64
    run = LoadedRun(build_model(cfg.model), cfg, Normalization("dataset", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), None)
    image = (np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8)
    write_png(tmp_path / "in" / "a.png", image)
    assert predict(run, tmp_path / "in", tmp_path / "out", probabilities=True).ok
    whole = run.model.predict_on_batch(run.normalization.apply(image[None] / 255.0).astype(np.float32))
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out" / "a_prob.tif")[..., 0], whole["mask"][0, ..., 0], atol=1e-5)
    # 40x24 in a 64 tile: cut to 48x32 (16 px steps), padded with normalised black (-2.5, -1.6, -1)
    from msunet.runtime.files import fitted_tile

    assert fitted_tile((40, 24), 64, 2) == (48, 32) and fitted_tile((100, 24), 64, 32) == (64, 32)
    image = (np.random.default_rng(4).random((40, 24, 3)) * 255).astype(np.uint8)
    write_png(tmp_path / "in2" / "b.png", image)
    assert predict(run, tmp_path / "in2", tmp_path / "out2", probabilities=True).ok
    padded = np.zeros((1, 48, 32, 3), np.float32)
    padded[0, :40, :24] = image / 255.0
    whole = run.model.predict_on_batch(run.normalization.apply(padded).astype(np.float32))
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out2" / "b_prob.tif")[..., 0], whole["mask"][0, :40, :24, 0], atol=1e-5)


def test_tta_uses_only_the_flips_the_model_was_trained_with(loaded_run):
    """A model trained with data.flip="horizontal" never saw an upside-down image: TTA averages two."""
    batch = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)
    plain = make_predict_fn(loaded_run.model, ["mask"], batch_size=2)
    tta = make_predict_fn(loaded_run.model, ["mask"], batch_size=2, tta="horizontal")(batch)
    expected = (plain(batch)["mask"] + np.flip(plain(np.ascontiguousarray(batch[:, :, ::-1]))["mask"], axis=2)) / 2
    np.testing.assert_allclose(tta["mask"], expected, atol=1e-5)
    from msunet.runtime.options import tta_mode

    assert tta_mode(True, "horizontal") == "horizontal" and tta_mode(True, True) is True
    assert tta_mode(True, False) is True and tta_mode(False, "horizontal") is False
    # the default (None): the mirrorings for volumes, as nnU-Net predicts; none for images; asked for, as asked
    assert tta_mode(None, True) is False and tta_mode(None, True, volumes=True) is True
    assert tta_mode(False, True, volumes=True) is False


def test_every_input_of_a_folder_with_rot_is_accounted_for(loaded_run, tmp_path):
    """The new user's folder of 7 (issue 29): 2 good images, a grayscale and a 16-bit image for an RGB
    model, a truncated JPEG, a zero-byte PNG and a dangling link: 2 written, 5 failed with reasons."""
    folder = tmp_path / "in"
    rng = np.random.default_rng(0)
    write_png(folder / "a.png", (rng.random((40, 50, 3)) * 255).astype(np.uint8))
    write_png(folder / "b.png", (rng.random((30, 40, 3)) * 255).astype(np.uint8))
    write_png(folder / "gray.png", (rng.random((30, 40)) * 255).astype(np.uint8))
    write_png(folder / "deep.png", (rng.random((30, 40)) * 65535).astype(np.uint16))
    from PIL import Image
    Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "full.jpg")
    (folder / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    (folder / "empty.png").write_bytes(b"")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    summary = predict(loaded_run, folder, tmp_path / "out")
    written = {p.name.split(".")[0].split("_")[0] for p in summary.written}
    failed = {pathlib.Path(p).name: reason for p, reason in summary.failed}
    assert written == {"a", "b"} and set(failed) == {"gray.png", "deep.png", "cut.jpg", "empty.png", "gone.png"}
    assert "broken link" in failed["gone.png"] and "nowhere.png" in failed["gone.png"]
    assert len(written) + len(failed) + len(summary.existing) + len(summary.ignored) == 7
