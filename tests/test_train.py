import csv
import json
import signal
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from msunet.config import RunConfig
from msunet.data.targets import multiscale_targets
from msunet.training.losses import segmentation_loss
from msunet.models import build_model
from msunet.data.synthetic import make_dataset
from msunet.training.run_folder import RunError
from msunet.training.run import train
from msunet.training.trainer import MultiScaleTrainer

TINY = ["model.depth=2", "model.filters=4", "data.patch_size=32", "train.batch_size=4", "train.steps_per_epoch=4",
        "train.workers=1"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synth"), count=10, size=(48, 40), seed=3)


def test_each_head_gets_its_own_target_and_weight():
    run = RunConfig().override(["model.depth=3", "model.filters=4", "train.ds_weights=[0.5,0.3,0.2]", "train.loss=dice_ce"])
    trainer = MultiScaleTrainer(build_model(run.model), run)
    rng = np.random.default_rng(0)
    x = rng.random((2, 37, 21, 3), dtype=np.float32)
    masks = [(rng.random((37, 21)) > 0.5).astype(np.int16) for _ in range(2)]
    per_mask = [multiscale_targets(m, run.model) for m in masks]
    y = {name: np.stack([t[name] for t in per_mask]) for name in run.model.head_names}
    logits = trainer(x)
    for name in run.model.head_names:  # own-size targets
        assert y[name].shape[1:3] == tuple(logits[name].shape[1:3]), name
    total = float(trainer.compute_loss(x, y, logits))
    parts = {name: float(segmentation_loss(y[name], logits[name], run.train)) for name in y}
    assert total == pytest.approx(0.5 * parts["mask"] + 0.3 * parts["mask_s2"] + 0.2 * parts["mask_s4"], rel=1e-5)
    # Changing only the coarsest target changes the loss by exactly its weighted term.
    y2 = dict(y, mask_s4=np.concatenate([1 - y["mask_s4"][..., :1], y["mask_s4"][..., 1:]], -1))
    new_part = float(segmentation_loss(y2["mask_s4"], logits["mask_s4"], run.train))
    assert float(trainer.compute_loss(x, y2, logits)) - total == pytest.approx(0.2 * (new_part - parts["mask_s4"]), rel=1e-4)


def test_zero_weight_heads_are_frozen():
    run = RunConfig().override(["model.depth=3", "model.filters=4", "train.ds_weights=nnunet"])  # coarsest at 0
    trainer = MultiScaleTrainer(build_model(run.model), run)
    assert not trainer.net.get_layer("mask_s4_logits").trainable
    assert trainer.net.get_layer("mask_s2_logits").trainable


def test_two_epochs_lower_the_loss_and_write_the_run(synth, tmp_path):
    run = RunConfig().override(TINY + ["train.epochs=2", "train.learning_rate=0.01", "train.ds_weights=halving"])
    result = train(run, synth, tmp_path / "run", verbose=0)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "run.json", "normalization.json", "best.keras", "last.keras", "history.csv",
            "metrics.json", "curves.png"} <= files
    with open(tmp_path / "run" / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])
    assert {"dice", "dice_s2", "iou", "val_dice", "val_dice_s2"} <= set(rows[0])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["heads"]) == {"mask", "mask_s2"} and "dice_per_class" in metrics["heads"]["mask"]
    saved = RunConfig.from_json(tmp_path / "run" / "config.json")  # what was set, plus what the planner filled
    assert saved.model.replace(precision="auto") == run.model
    assert saved.model.precision == "float32"  # "auto" is resolved and recorded (tests: MSUNET_PRECISION=float32)
    assert saved.train.replace(val_batches=0) == run.train and saved.data.replace(mask_encoding="auto") == run.data
    assert (saved.data.mask_encoding, saved.train.val_batches) == ("binary", 1)
    assert result.epochs_done == 2
    loaded = keras.saving.load_model(tmp_path / "run" / "best.keras")
    out = loaded(np.zeros((1, 33, 35, 3), np.float32))
    assert out["mask"].shape == (1, 33, 35, 1) and float(keras.ops.max(out["mask"])) <= 1.0


def test_existing_run_is_never_clobbered(synth, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    with pytest.raises(RunError, match="existing run; refusing to overwrite.*--resume.*--overwrite"):
        train(RunConfig().override(TINY), synth, out, verbose=0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("precious")
    with pytest.raises(RunError, match="not empty"):
        train(RunConfig().override(TINY), synth, tmp_path / "other", overwrite=True, verbose=0)
    assert (tmp_path / "other" / "thesis.tex").read_text() == "precious"
    with pytest.raises(RunError, match="nothing to resume"):
        train(None, None, tmp_path / "missing", resume=True)


KILLER = r"""
import os, signal, sys, keras
from msunet.config import RunConfig
from msunet.training.run import train

class Kill(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        # Mid-epoch 3 (two epochs completed): the process dies as with kill -9.
        if self.model.optimizer.iterations.numpy() == 2 * 4 + 2:
            os.kill(os.getpid(), signal.SIGKILL)

run = RunConfig().override(sys.argv[3:])
train(run, sys.argv[1], sys.argv[2], verbose=0, callbacks=[Kill()])
"""


def test_resume_after_sigkill_continues_at_the_right_epoch_with_optimizer_state(synth, tmp_path):
    out = tmp_path / "run"
    args = TINY + ["train.epochs=4", "train.ds_weights=halving"]
    proc = subprocess.run([sys.executable, "-c", KILLER, str(synth), str(out), *args], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = json.loads((out / "state" / "state.json").read_text())
    assert state["epochs_done"] == 2
    result = train(None, None, out, resume=True, verbose=0)
    assert result.epochs_done == 4
    with open(out / "history.csv") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert epochs == [0, 1, 2, 3]  # each epoch once: resumed at the third
    state = json.loads((out / "state" / "state.json").read_text())
    with h5py.File(out / "state" / state["weights"]) as f:
        iterations = int(np.asarray(f["optimizer"]["vars"]["0"]))
    assert iterations == 4 * 4  # optimizer state carried over: 16 steps in all, not 8
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    with pytest.raises(RunError, match="already completed"):
        train(None, None, out, resume=True)


def test_time_budget_stops_training_and_anneals_on_time(synth, tmp_path):
    # A budget far below one epoch: the first epoch is cut short, validated, saved and the run completes.
    # 9 s: tracing the first step takes up to ~3 s on a loaded 2-core machine; 5000 steps take far longer.
    run = RunConfig().override(TINY + ["train.epochs=50", "train.steps_per_epoch=5000", "train.time_budget_min=0.15"])
    lrs = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            lrs.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    result = train(run, synth, tmp_path / "run", verbose=0, callbacks=[Spy()])
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert result.epochs_done == 1 and info["stopped_by_time_budget"] is True
    assert 9.0 <= info["time_spent_s"] < 60
    assert 1 < len(lrs) < 5000  # cut mid-epoch
    # The budget counts from the call (planning, loading, building): the first step already sees a share of it
    # spent, so its rate is below the base rate (it was the base rate exactly when the clock started at fit).
    assert 0.2e-3 < lrs[0] < 0.999e-3 and lrs[-1] < 0.5 * lrs[0]  # cosine on the share of time
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:]))
    state = json.loads((tmp_path / "run" / "state" / "state.json").read_text())
    assert state["steps_done"] == len(lrs) and state["time_spent_s"] >= 9.0
    assert (tmp_path / "run" / "best.keras").is_file()


def test_schedule_factor_matches_keras_cosine_decay():
    from msunet.training.trainer import schedule_factor

    decay = keras.optimizers.schedules.CosineDecay(1.0, decay_steps=100, alpha=0.01)
    for step in (0, 10, 50, 99, 100):
        assert schedule_factor("cosine", step / 100) == pytest.approx(float(decay(step)), abs=1e-6)
    assert schedule_factor("poly", 1.0) == 0.0 and schedule_factor("constant", 0.7) == 1.0


def _ema_model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.5), "mse")
    return model


def test_averaged_weights_are_saved_and_a_resume_continues_as_if_never_stopped():
    """train.ema: the averaged weights are in the model at each epoch end (what the checkpoint saves), the
    raw ones in the optimizer; a run resumed from that checkpoint (model weights + optimizer variables,
    as run.py's state) ends where the uninterrupted run ends, and a run stopped early (time budget) ends
    with the averages in the model. Tolerance 1e-6: the same float32 ops in the same order in one
    process; a wrong swap differs by whole steps (checked: the resume without the flag)."""
    from msunet.training.callbacks import AveragedWeights

    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True) ** 2
    fit = dict(batch_size=8, shuffle=False, verbose=0)
    saved = {}  # what RunCheckpoint writes after epoch 1: the model's weights and the optimizer's variables

    def save(epoch, logs):
        if epoch == 0:
            saved.update(model=whole.get_weights(), optimizer=[v.numpy() for v in whole.optimizer.variables],
                         raw=[v.numpy() for v in whole.optimizer._model_variables_moving_average])
    whole = _ema_model()
    whole.fit(x, y, epochs=3, callbacks=[AveragedWeights(resumed=False), keras.callbacks.LambdaCallback(
        on_epoch_end=save)], **fit)
    # After epoch 1 the model held the averages and the optimizer the raw weights: they differ.
    assert any(not np.allclose(r, w) for r, w in zip(saved["raw"], saved["model"], strict=True))

    def resume(resumed: bool):
        model = _ema_model(seed=1)  # other initial weights: all of them must come from the saved state
        model.optimizer.build(model.trainable_variables)
        model.set_weights(saved["model"])
        for target, value in zip(model.optimizer.variables, saved["optimizer"], strict=True):
            target.assign(value)
        model.fit(x, y, initial_epoch=1, epochs=3, callbacks=[AveragedWeights(resumed=resumed)], **fit)
        return model.get_weights()

    for a, b in zip(whole.get_weights(), resume(True), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert any(not np.allclose(a, b, atol=1e-6) for a, b in zip(whole.get_weights(), resume(False), strict=True))

    stopped, at_end = _ema_model(), {}

    def stop(epoch, logs):
        at_end.update(weights=stopped.get_weights())
        stopped.stop_training = True
    stopped.fit(x, y, epochs=3, callbacks=[AveragedWeights(resumed=False), keras.callbacks.LambdaCallback(
        on_epoch_end=stop)], **fit)
    for a, b in zip(at_end["weights"], stopped.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the averages, not the raw weights
