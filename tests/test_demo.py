import json

from msunet.demo import run_demo


def test_demo_pipeline_end_to_end_on_a_tiny_budget(tmp_path):
    # The real demo (make demo) trains for ~2 minutes; here the same pipeline runs in seconds.
    result = run_demo(tmp_path / "demo", images=8, size=48, verbose=0, overrides=[
        "model.depth=2", "model.filters=4", "data.patch_size=32", "train.epochs=1", "train.steps_per_epoch=2",
        "train.batch_size=4", "train.workers=1"])
    assert set(result.dice) == {"mask", "mask_s2"}
    names = {p.name for p in result.predictions_dir.iterdir()}
    assert {"synth_000.png", "synth_000_s2.png", "synth_000_overlay.png"} <= names
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["test_images"] == 4
    # A second demo replaces the first; a foreign folder is refused.
    run_demo(tmp_path / "demo", images=8, size=48, verbose=0, overrides=[
        "model.depth=1", "model.filters=2", "data.patch_size=32", "train.epochs=1", "train.steps_per_epoch=1"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x").write_text("keep")
    import pytest

    with pytest.raises(ValueError, match="not written by msunet demo"):
        run_demo(tmp_path / "mine")
