"""What a new user trips over (issue: `msunet train --data DATA` just works), one test per defect."""

import json
import logging

import numpy as np
import pytest

from msunet.cli import main
from msunet.config import RunConfig
from msunet.data.imageio import write_png, write_tiff
from msunet.data.synthetic import make_dataset
from msunet.config import user_keys_of
from msunet.training.run_folder import RunError
from msunet.training.run import train

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
    from msunet.data.preprocessing import Normalization
    from msunet.models import build_model
    from msunet.training.run_folder import LoadedRun

    cfg = RunConfig().override(["model.depth=2", "model.filters=4", "data.patch_size=32", "train.ds_weights=halving"])
    return LoadedRun(build_model(cfg.model), cfg, Normalization("image"), None)


def test_a_deliberately_untrained_head_is_not_written(loaded_run, tmp_path):
    """Under nnU-Net's weights the coarsest head has weight 0: its mask (Dice ~0.02) was written anyway."""
    import dataclasses

    from msunet.inference.engines import predict

    untrained = dataclasses.replace(loaded_run, config=loaded_run.config.override(["train.ds_weights=nnunet"]))
    write_png(tmp_path / "in" / "a.png", np.zeros((20, 18, 3), np.uint8))
    summary = predict(untrained, tmp_path / "in", tmp_path / "out", overlay_images=False)
    assert [p.name for p in summary.written] == ["a.png"]
    asked = predict(untrained, tmp_path / "in", tmp_path / "asked", overlay_images=False, scales=["mask_s2"])
    assert [p.name for p in asked.written] == ["a_s2.png"]  # asked for by name: written


def test_predict_rewrites_only_missing_outputs_and_adds_probabilities_on_a_rerun(loaded_run, tmp_path):
    from msunet.inference.engines import predict

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
    from msunet.inference.engines import predict

    inputs = tmp_path / "in"
    write_png(inputs / "a.png", np.zeros((20, 18, 3), np.uint8))
    write_tiff(inputs / "a.tif", np.full((20, 18, 3), 255, np.uint8))
    summary = predict(loaded_run, inputs, tmp_path / "out", overlay_images=False)
    assert {p.name for p in summary.written} == {"a_png.png", "a_png_s2.png", "a_tif.png", "a_tif_s2.png"}


def test_a_bare_keras_file_gives_its_own_channels_classes_and_heads(tmp_path):
    from msunet.config import ModelConfig
    from msunet.models import build_model
    from msunet.training.run_folder import load_run

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


def test_evaluate_without_split_csv_scores_the_held_out_images_and_says_so(tmp_path, caplog):
    """It used to score every image, training images included, and say so only in summary.json."""
    from msunet.data.pairs import find_pairs, split_pairs
    from msunet.evaluation.evaluate import choose_split

    data = make_dataset(tmp_path / "data", count=10, size=(24, 24), seed=2)
    cfg = RunConfig().data
    stems, split, note = choose_split(data, cfg, None)
    index_val = sorted(p.name for p in split_pairs(find_pairs(data, cfg), cfg)["val"])
    assert split == "val" and stems == index_val and 0 < len(stems) < 10  # the run's own held-out draw
    assert "no split.csv" in note and "optimistic" in note
    stems, split, note = choose_split(data, cfg, "all")
    assert len(stems) == 10 and "trained on" in note
    (data / "split.csv").write_text("name,split\nsynth_000,test\n")
    assert choose_split(data, cfg, None) == (["synth_000"], "test", "")
    with pytest.raises(ValueError, match="split must be one of"):
        choose_split(data, cfg, "tset")


def test_evaluate_folders_lists_predictions_without_ground_truth(tmp_path):
    from msunet.evaluation.evaluate import evaluate_folders

    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    for name in ("a", "b"):
        write_png(tmp_path / "gt" / f"{name}.png", mask)
    for name in ("a", "a_s2", "b", "b_overlay", "stray", "stray_s2"):
        write_png(tmp_path / "pred" / f"{name}.png", mask if "_" not in name else mask[::2, ::2])
    result = evaluate_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")
    assert result.problems == [("stray", "a prediction with no ground truth (not scored)"),
                               ("stray_s2", "a prediction with no ground truth (not scored)")]
    assert result.summary["images"] == 2


@pytest.mark.parametrize("option, value, message", [
    ("--tile", "0", "tile size"), ("--overlap", "1.5", "overlap"), ("--batch", "0", "batch size"),
    ("--threshold", "2", "threshold"),
])
def test_invalid_tiling_options_are_one_usage_error(tmp_path, capsys, option, value, message):
    inputs = tmp_path / "in"
    for i in range(3):
        write_png(inputs / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    argv = ["predict", "--model", str(tmp_path / "no-run"), "--input", str(inputs), "--out", str(tmp_path / "o"),
            option, value]
    assert main(argv) == 2  # before the model is even loaded: once, not once per image
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("include_background", [False, True])
def test_training_dice_counts_the_background_as_evaluate_does(include_background):
    """Training-time Dice ignored train.include_background while evaluate honoured it."""
    from msunet.models import build_model
    from msunet.training.trainer import MultiScaleTrainer

    run = RunConfig().override(["model.depth=1", "model.filters=2", "model.num_classes=3",
                                f"train.include_background={str(include_background).lower()}"])
    trainer = MultiScaleTrainer(build_model(run.model), run)
    assert {s.include_background for s in trainer.scores} == {include_background}
    score = trainer.scores[0]
    score.tp.assign([10.0, 0.0, 5.0])  # class 0 perfect, class 1 all wrong, class 2 perfect
    score.fp.assign([0.0, 5.0, 0.0])
    score.fn.assign([0.0, 5.0, 0.0])
    assert float(score.result()) == pytest.approx(2 / 3 if include_background else 0.5)
