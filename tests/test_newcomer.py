"""What a new user trips over (issue: `msunet train --data DATA` just works), one test per defect."""

import json
import logging

import numpy as np
import pytest

from msunet.cli import main
from msunet.config import RunConfig
from msunet.imageio import write_png, write_tiff
from msunet.synthetic import make_dataset
from msunet.plan import user_keys_of
from msunet.train import RunError, train

TINY = ["model.depth=2", "model.filters=4", "data.patch_size=32", "train.batch_size=2", "train.steps_per_epoch=2",
        "train.workers=1", "train.epochs=1"]


def test_set_takes_several_assignments_at_once(capsys):
    assert main(["summary", "--set", "depth=2", "filters=4", "--set", "model.decoder=unetpp", "--size", "9x7"]) == 0
    out = capsys.readouterr().out
    assert "conv_unetpp_d2" in out and "mask_s2      (1, 5, 4, 1)" in out


def test_a_run_that_failed_before_training_is_replaced_by_the_corrected_run(tmp_path):
    data = make_dataset(tmp_path / "data", count=4, size=(40, 36), seed=1)
    for image in (data / "images").iterdir():  # grayscale images: in_channels=3 cannot use them
        write_png(image, np.full((40, 36), 128, np.uint8))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="no usable training pairs"):  # a wrong setting the planner must not undo
        wrong = TINY + ["model.in_channels=3"]
        train(RunConfig().override(wrong), data, out, verbose=0, user_keys=user_keys_of(None, wrong))
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "no usable training pairs" in info["error"]
    with pytest.raises(RunError, match="failed before its first epoch.*run `msunet train --data DATA --out"):
        train(None, None, out, resume=True, verbose=0)
    result = train(RunConfig().override(TINY), data, out, verbose=0)  # the planner reads 1 channel
    assert result.epochs_done == 1
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    with pytest.raises(RunError, match="existing run"):  # a run that trained is never replaced silently
        train(RunConfig().override(TINY + ["model.in_channels=1"]), data, out, verbose=0)


def test_each_skipped_file_is_reported_once_with_its_path_once(tmp_path, caplog):
    data = make_dataset(tmp_path / "data", count=4, size=(40, 36), seed=1)
    (data / "masks" / "synth_000.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING):
        train(RunConfig().override(TINY), data, tmp_path / "run", verbose=0)
    lines = [r.getMessage() for r in caplog.records if "synth_000" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].count(str(data / "masks" / "synth_000.png")) == 1, lines[0]


@pytest.fixture(scope="module")
def loaded_run():
    from msunet.data import Normalization
    from msunet.models import build_model
    from msunet.predict import LoadedRun

    cfg = RunConfig().override(["model.depth=2", "model.filters=4", "data.patch_size=32"])
    return LoadedRun(build_model(cfg.model), cfg, Normalization("image"), None)


def test_predict_rewrites_only_missing_outputs_and_adds_probabilities_on_a_rerun(loaded_run, tmp_path):
    from msunet.predict import predict

    inputs = tmp_path / "in"
    write_png(inputs / "a.png", np.random.default_rng(0).integers(0, 255, (20, 18, 3), dtype=np.uint8))
    out = tmp_path / "out"
    first = predict(loaded_run, inputs, out)
    assert {p.name for p in first.written} == {"a.png", "a_s2.png", "a_overlay.png"}
    (out / "a_s2.png").unlink()
    before = (out / "a.png").stat().st_mtime_ns
    again = predict(loaded_run, inputs, out)
    assert [p.name for p in again.written] == ["a_s2.png"] and not again.existing
    assert (out / "a.png").stat().st_mtime_ns == before  # an existing output is not rewritten
    probs = predict(loaded_run, inputs, out, probabilities=True)
    assert {p.name for p in probs.written} == {"a_prob.tif", "a_s2_prob.tif"}
    assert predict(loaded_run, inputs, out, probabilities=True).existing == [inputs / "a.png"]


def test_inputs_sharing_a_stem_do_not_overwrite_each_other(loaded_run, tmp_path):
    from msunet.predict import predict

    inputs = tmp_path / "in"
    write_png(inputs / "a.png", np.zeros((20, 18, 3), np.uint8))
    write_tiff(inputs / "a.tif", np.full((20, 18, 3), 255, np.uint8))
    summary = predict(loaded_run, inputs, tmp_path / "out", overlay_images=False)
    assert {p.name for p in summary.written} == {"a_png.png", "a_png_s2.png", "a_tif.png", "a_tif_s2.png"}


def test_a_bare_keras_file_gives_its_own_channels_classes_and_heads(tmp_path):
    from msunet.config import ModelConfig
    from msunet.models import build_model
    from msunet.predict import load_run

    cfg = ModelConfig(depth=3, filters=4, in_channels=1, num_classes=3, ds_heads=1, fused_head=True)
    build_model(cfg).save(tmp_path / "model.keras")  # no config.json beside it
    run = load_run(tmp_path / "model.keras")
    assert (run.config.model.in_channels, run.config.model.num_classes) == (1, 3)
    assert run.config.model.head_names == ("mask", "mask_s2", "mask_fused")


def test_progress_redirected_to_a_file_has_no_carriage_returns(monkeypatch, capsys):
    from msunet import cli

    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: False, raising=False)
    progress = cli._Progress(0)  # evaluate does not know the count: no "[1/0]"
    for done in range(4):
        progress("a.png", done, 3)
    err = capsys.readouterr().err
    assert err == "[1] a.png: 3 tiles\n"
    monkeypatch.setattr(cli.sys.stdout, "isatty", lambda: False, raising=False)
    assert cli._fit_verbosity("auto") == 2 and cli._fit_verbosity(1) == 1
