"""Training: `train(config, data_dir, out_dir)` writes a run folder; `--resume` continues it.

RUN/ holds:
    config.json          the resolved RunConfig (predict reads it back)
    run.json             data folder, msunet version, the state of the run
    normalization.json   per-channel statistics (or per-image mode), reused by predict
    calibration.npz      32 training patches ([0, 1] scale, float16): `msunet export --int8` calibrates on them
    best.keras, last.keras   the probability model (best validation Dice, last epoch)
    history.csv          one row per epoch: losses and Dice/IoU of every head
    metrics.json         best and final validation scores, per head and per class
    curves.png           loss and Dice per scale over epochs
    problems.txt         files that were skipped, with the reason
    state/               resume state: trainer + optimizer weights of the last completed epoch
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np

from msunet import __version__
from msunet.atomic import atomic_path, write_text_atomic
from msunet.config import RunConfig, resolve_run_config
from msunet.distributed import training as distributed
from msunet.data import (
    CALIBRATION_FILE,
    DataError,
    Normalization,
    calibration_patches,
    compute_normalization,
    find_pairs,
    fixed_patches,
    load_samples,
    split_pairs,
)
from msunet.feeding import FixedPatchDataset, PatchDataset
from msunet.models import build_model
from msunet.trainer import MultiScaleTrainer, ScaledSchedule, make_optimizer, schedule_factor

log = logging.getLogger(__name__)
FINE_TUNE_LR_FACTOR = 0.1  # the learning rate once a frozen backbone starts to train


class RunError(ValueError):
    """The run folder cannot be used as asked (exists, incomplete, ...); the message says what to do."""


# --------------------------------------------------------------------------------------------------
# Checkpoints and resume state
# --------------------------------------------------------------------------------------------------
def save_keras_atomic(model: keras.Model, path: pathlib.Path) -> None:
    with atomic_path(path) as tmp:
        model.save(tmp)


def save_npz_atomic(path: pathlib.Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def write_json_atomic(path: pathlib.Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


class TimeBudget(keras.callbacks.Callback):
    """Stops training when `budget_s` of wall time is spent and drives the learning rate on time.

    Progress is the larger of the time share and the step share, so the schedule anneals whether
    the budget or `epochs` ends the run. `spent_before` is the time of earlier sessions of a resumed run.
    """

    def __init__(self, budget_s: float, spent_before: float, base_lr: float, schedule: str, total_steps: int,
                 steps_before: int, sync=None):
        super().__init__()
        self.sync = sync  # multi-process: process 0's clock on every process (same learning rate, same stop)
        self.budget_s, self.spent_before = budget_s, spent_before
        self.base_lr, self.schedule = base_lr, schedule
        self.total_steps, self.step = max(total_steps, 1), steps_before
        self.exhausted = False
        self._start = None

    @property
    def spent(self) -> float:
        value = self.spent_before + (time.monotonic() - self._start if self._start is not None else 0.0)
        return self.sync(value) if self.sync else value

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()

    def on_train_batch_begin(self, batch, logs=None):
        progress = max(self.spent / self.budget_s, self.step / self.total_steps)
        self.model.optimizer.learning_rate = self.base_lr * schedule_factor(self.schedule, progress)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.spent >= self.budget_s:
            self.exhausted = True
            self.model.stop_training = True


class BackboneFreeze(keras.callbacks.Callback):
    """A pretrained backbone frozen (weights and batch-norm statistics) for the first `epochs`,
    then trained with the rest of the model at `factor` times the learning rate.

    The optimizer holds slots for every variable from the start, so the resume state has one
    layout in both phases; changing `trainable` retraces the train step at the epoch boundary.
    """

    def __init__(self, backbone: keras.layers.Layer, epochs: int, factor: float, clock: TimeBudget | None):
        super().__init__()
        self.backbone, self.epochs, self.factor, self.clock = backbone, epochs, factor, clock
        self.scaled = False

    def on_epoch_begin(self, epoch, logs=None):
        frozen = epoch < self.epochs
        changed = self.backbone.trainable == frozen
        self.backbone.trainable = not frozen
        if not frozen and not self.scaled:
            self.scaled = True
            optimizer = self.model.optimizer
            if self.clock is not None:
                self.clock.base_lr *= self.factor
            elif isinstance(optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
                optimizer.learning_rate = ScaledSchedule(optimizer._learning_rate, self.factor)
            else:
                optimizer.learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate)) * self.factor
            log.info("epoch %d: the backbone trains from now on, at %.3g x the learning rate", epoch + 1, self.factor)
        if changed:
            self.model.make_train_function(force=True)


class RunCheckpoint(keras.callbacks.Callback):
    """At each epoch end: last.keras, best.keras (on validation Dice) and the resume state.

    The resume state is `state/epoch-N.weights.h5` (trainer and optimizer variables) written
    first, then `state/state.json` replaced atomically to point at it, so a kill at any moment
    leaves a consistent pair: the previous one or the new one.
    """

    def __init__(self, run_dir: pathlib.Path, model: keras.Model, monitor: str, best: float | None, wait: int,
                 patience: int, clock: TimeBudget | None = None):
        super().__init__()
        self.run_dir, self.net, self.monitor, self.clock = run_dir, model, monitor, clock
        self.best, self.wait, self.patience = best, wait, patience
        self.state_dir = run_dir / "state"
        self.state_dir.mkdir(exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        improved = value is not None and not np.isnan(value) and (self.best is None or value > self.best)
        save_keras_atomic(self.net, self.run_dir / "last.keras")
        if improved:
            self.best, self.wait = float(value), 0
            save_keras_atomic(self.net, self.run_dir / "best.keras")
        else:
            self.wait += 1
        weights = self.state_dir / f"epoch-{epoch + 1}.weights.h5"
        self.model.save_weights(weights)
        write_json_atomic(
            self.state_dir / "state.json",
            {"epochs_done": epoch + 1, "weights": weights.name, "best": self.best, "wait": self.wait,
             "steps_done": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
             "time_spent_s": round(self.clock.spent, 3) if self.clock else None},
        )
        for old in self.state_dir.glob("epoch-*.weights.h5"):
            if old != weights:
                old.unlink(missing_ok=True)
        if self.patience and self.wait >= self.patience:
            log.info("early stopping: no better %s for %d epochs", self.monitor, self.wait)
            self.model.stop_training = True


def read_state(run_dir: pathlib.Path) -> dict | None:
    path = run_dir / "state" / "state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise RunError(f"{path}: unreadable resume state ({err}); start again with --overwrite.") from err


# --------------------------------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
    run_dir: pathlib.Path
    epochs_done: int
    best_dice: float | None
    metrics: dict


def _failed_before_training(out: pathlib.Path) -> str | None:
    """The error of a run that failed before completing an epoch (nothing to lose), else None."""
    try:
        info = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("status") == "failed" and read_state(out) is None:
        return str(info.get("error", "unknown error"))
    return None


def _prepare_run_dir(out: pathlib.Path, resume: bool, overwrite: bool) -> None:
    marker = out / "run.json"
    if resume:
        if not marker.is_file():
            raise RunError(f"{out}: not a msunet run folder (no run.json); nothing to resume. Start a run with --out.")
        failed = _failed_before_training(out)
        if failed is not None:
            raise RunError(f"{out} failed before its first epoch ({failed}); there is nothing to resume. Fix the "
                           f"cause and run `msunet train --data DATA --out {out} ...` again: it replaces this run.")
        return
    if out.exists() and _failed_before_training(out) is not None:
        log.info("%s: replacing a run that failed before its first epoch", out)
        shutil.rmtree(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            what = "an existing run" if marker.is_file() else "a folder that is not empty"
            raise RunError(
                f"{out} is {what}; refusing to overwrite it. Use --resume to continue it, --overwrite to replace it, "
                "or choose another --out."
            )
        if marker.is_file():
            shutil.rmtree(out)
        else:
            raise RunError(f"{out} is not empty and not a msunet run; --overwrite only replaces run folders.")
    out.mkdir(parents=True, exist_ok=True)


def _trim_history(path: pathlib.Path, epochs_done: int) -> None:
    # Rows written after the last saved state (a kill between the two) would be repeated on resume.
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < epochs_done]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)


def train(
    config: RunConfig | Mapping | str | os.PathLike | None,
    data_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    overrides: Iterable[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    verbose: str | int = "auto",
    callbacks: list | None = None,
    user_keys: Iterable[str] | None = None,
    plan: bool = True,
) -> TrainResult:
    """Trains a multi-scale U-Net on a folder of images and masks and writes a run folder.

    Example:
    ```python
    from msunet.config import RunConfig
    result = msunet.train(RunConfig().override(["epochs=5"]), "data/", "runs/first")
    result.best_dice
    ```

    Args:
        config: the run's configuration: a `RunConfig`, a dict, a JSON file or None (ignored with
            `resume`: the run's own is used). Values it leaves unset are planned from the data.
        overrides: `key=value` strings, as the CLI's `--set` (`["train.epochs=5"]`).
        data_dir: dataset folder with images/ and masks/ (ignored with `resume`).
        out_dir: the run folder to create (or to continue with `resume`).
        resume: continue an interrupted run from its last completed epoch, optimizer state included.
        overwrite: replace an existing run folder.
        verbose: Keras `fit` verbosity ("auto" shows a progress bar per epoch).
        callbacks: extra Keras callbacks.
        user_keys: the "section.field" keys the user set; the others are planned from the data
            (`msunet.plan`). None: those written in `config` and `overrides` (for a `RunConfig`, the
            ones whose value differs from the default).
        plan: False trains with `config` exactly as given.

    Returns:
        A `TrainResult` with the run folder, epochs done, best validation Dice and metrics.

    Raises:
        RunError, DataError, ConfigError: with the path and the fix in the message.
    """
    called = time.monotonic()  # train.time_budget_min counts from here: planning, probe, loading and build included
    run_dir = pathlib.Path(out_dir)
    topology = None
    if resume:
        if not (run_dir / "config.json").is_file():
            _prepare_run_dir(run_dir, resume, overwrite)  # the error that says what a run folder is
        config = RunConfig.from_json(run_dir / "config.json")
    else:
        config, written = resolve_run_config(config, overrides)
        user_keys = written if user_keys is None else user_keys
    if config.train.distribution != "none" or distributed.multi_process_environment() > 1:
        # before any computation and before the run folder: a request that cannot run fails here
        if config.train.distribution == "none":
            raise distributed.DistributionError(
                "the KERAS_DISTRIBUTION_* variables start a multi-process run: set train.distribution=data_parallel "
                "(msunet train --distributed) on every process, or unset them.")
        topology = distributed.start(config.train.batch_size)
    writes = run_dir  # process 0 writes the run folder; other processes a private copy
    if topology is not None and not topology.writer:
        writes = pathlib.Path(tempfile.mkdtemp(prefix=f"msunet-process{topology.process_id}-"))
        if resume:
            shutil.copytree(run_dir, writes, dirs_exist_ok=True)
    try:
        return _start(config, data_dir, writes, resume, overwrite, state_from=run_dir, user_keys=user_keys,
                      plan=plan, verbose=verbose, callbacks=callbacks, called=called, topology=topology)
    finally:
        if topology is not None:
            distributed.stop()
            if writes != run_dir:
                shutil.rmtree(writes, ignore_errors=True)


def _start(config: RunConfig, data_dir, run_dir: pathlib.Path, resume: bool, overwrite: bool, state_from, user_keys,
           plan: bool, verbose, callbacks, called: float, topology) -> TrainResult:
    _prepare_run_dir(run_dir, resume, overwrite)
    state = None
    if resume:
        info = json.loads((run_dir / "run.json").read_text())
        data_dir = info["data_dir"]
        state = read_state(run_dir)
        if info.get("status") == "completed":
            raise RunError(f"{state_from}: this run already completed {state['epochs_done'] if state else '?'} "
                           "epochs; raise train.epochs in a new run to train longer.")
    else:
        if data_dir is None:
            raise DataError("No dataset folder given (--data DIR).")
        sources = None
        if plan:
            from msunet.checking import plan_dataset

            planned = plan_dataset(data_dir, config, user_keys)
            config, sources = planned.config, planned.to_json_dict()
            if topology is not None and topology.processes > 1:  # one plan: the probe's timings differ per process
                config = RunConfig.from_dict(distributed.broadcast_json(config.to_dict(), topology))
            for line in planned.format().splitlines():
                log.info("%s", line)
        write_json_atomic(run_dir / "config.json", {**config.to_dict(), **({"sources": sources} if sources else {})})
        write_json_atomic(run_dir / "run.json", {
            "data_dir": str(pathlib.Path(data_dir).resolve()), "msunet_version": __version__,
            "backend": keras.backend.backend(), "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "status": "running",
            **({"devices": len(topology.devices), "processes": topology.processes} if topology else {}),
        })
    try:
        return _train(config, data_dir, run_dir, resume, state, verbose, callbacks, called, topology)
    except BaseException as err:
        if read_state(run_dir) is None and (run_dir / "run.json").is_file():
            # Nothing trained yet: say so in the run, so a corrected re-run may replace it.
            info = json.loads((run_dir / "run.json").read_text())
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            info.update(status=status, error=f"{type(err).__name__}: {err}"[:2000])
            write_json_atomic(run_dir / "run.json", info)
        raise


def _train(run: RunConfig, data_dir, run_dir: pathlib.Path, resume: bool, state: dict | None, verbose,
           callbacks, called: float, topology: distributed.Topology | None = None) -> TrainResult:
    keras.utils.set_random_seed(run.train.seed)

    # Data: a corrupt or unpaired file is reported and skipped, not fatal.
    index = find_pairs(data_dir, run.data)
    problems = list(index.problems)
    splits = split_pairs(index, run.data)
    train_samples = load_samples(splits["train"], run.data, run.model, problems)
    val_samples = load_samples(splits["val"], run.data, run.model, problems)
    if problems:
        (run_dir / "problems.txt").write_text("".join(f"{path}\t{msg}\n" for path, msg in problems))
        for path, msg in problems:  # messages usually start with the path already
            log.warning("skipped %s", msg if msg.startswith(path) else f"{path}: {msg}")
    if not train_samples:
        raise DataError(f"{data_dir}: no usable training pairs ({len(problems)} problems, see {run_dir / 'problems.txt'}).")
    norm_path = run_dir / "normalization.json"
    if resume and norm_path.is_file():
        normalization = Normalization.from_json(norm_path)
    else:
        normalization = compute_normalization([s.image for s in train_samples], run.data.normalization)
        normalization.to_json(norm_path)
    if not (run_dir / CALIBRATION_FILE).is_file():
        save_npz_atomic(run_dir / CALIBRATION_FILE,
                        patches=calibration_patches(train_samples, run.data.patch_size, seed=run.train.seed))
    cfg = run.train
    # Data parallel: this process feeds batch_size x its devices, its own patches (seed + process id).
    batch = topology.process_batch(cfg.batch_size) if topology else cfg.batch_size
    train_data = PatchDataset(train_samples, run.model, run.data, normalization, batch, cfg.steps_per_epoch,
                              seed=cfg.seed + 7919 * (topology.process_id if topology else 0), workers=cfg.workers)
    val_data = None
    if val_samples:
        limit = cfg.val_batches * batch if cfg.val_batches else max(512, batch)
        images, masks = fixed_patches(val_samples, run.data.patch_size, limit=limit, seed=cfg.seed)
        val_data = FixedPatchDataset(images, masks, run.model, run.data, normalization, batch)
    monitor = "val_dice" if val_data is not None else "dice"

    # Model, optimizer, resume state.
    model = build_model(run.model)
    trainer = MultiScaleTrainer(model, run)
    trainer.compile(optimizer=make_optimizer(run, cfg.epochs * cfg.steps_per_epoch), jit_compile=False)
    x0, y0 = train_data[0]
    trainer(x0[:1], training=False)
    trainer.optimizer.build(trainer.trainable_variables)
    epochs_done, best, wait = 0, None, 0
    if state is not None:
        trainer.load_weights(run_dir / "state" / state["weights"])
        epochs_done, best, wait = state["epochs_done"], state["best"], state["wait"]
        train_data.epoch = epochs_done
        _trim_history(run_dir / "history.csv", epochs_done)
        log.info("resuming %s at epoch %d of %d", run_dir, epochs_done + 1, cfg.epochs)
    clock = None
    if cfg.time_budget_min > 0:
        # A CamVid newcomer's 15 minutes ran 17: the device probe, reading 163 images and tracing came first.
        setup_s = time.monotonic() - called
        clock = TimeBudget(cfg.time_budget_min * 60.0, ((state or {}).get("time_spent_s") or 0.0) + setup_s,
                           cfg.learning_rate,
                           cfg.schedule, cfg.epochs * cfg.steps_per_epoch, (state or {}).get("steps_done") or 0,
                           sync=(lambda v: float(distributed.broadcast(np.float64(v), topology)))
                           if topology is not None and topology.processes > 1 else None)
    checkpoint = RunCheckpoint(run_dir, model, monitor, best, wait, cfg.early_stopping, clock)
    history_cb = keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True)
    freeze = []
    if run.model.encoder_freeze_epochs:
        freeze = [BackboneFreeze(model.get_layer(f"{run.model.encoder}_backbone"), run.model.encoder_freeze_epochs,
                                 FINE_TUNE_LR_FACTOR, clock)]
    fit_callbacks = [keras.callbacks.TerminateOnNaN(), *freeze, *([clock] if clock else []), history_cb, checkpoint,
                     *(callbacks or [])]
    if clock is not None and clock.spent_before >= clock.budget_s:
        log.info("%s: the time budget of %.1f min is already spent", run_dir, cfg.time_budget_min)
        clock.exhausted = True
    elif epochs_done < cfg.epochs:
        trainer.fit(train_data, validation_data=val_data, epochs=cfg.epochs, initial_epoch=epochs_done,
                    callbacks=fit_callbacks, verbose=verbose)
    epochs_done = (read_state(run_dir) or {}).get("epochs_done", epochs_done)
    if not (run_dir / "best.keras").is_file() and (run_dir / "last.keras").is_file():
        shutil.copyfile(run_dir / "last.keras", run_dir / "best.keras")

    # Final report: scores of the best model per head and class on the validation tiles.
    metrics = _final_metrics(run, run_dir, val_data or train_data, checkpoint.best, epochs_done, monitor)
    write_json_atomic(run_dir / "metrics.json", metrics)
    try:
        plot_curves(run_dir / "history.csv", run_dir / "curves.png")
    except Exception as err:  # noqa: BLE001 - a plot must never lose a finished run
        log.warning("could not draw curves.png: %s", err)
    info = json.loads((run_dir / "run.json").read_text())
    info.update(status="completed", finished=datetime.datetime.now().isoformat(timespec="seconds"),
                epochs_done=epochs_done)
    if clock is not None:
        info.update(time_spent_s=round(clock.spent, 1), stopped_by_time_budget=clock.exhausted)
    write_json_atomic(run_dir / "run.json", info)
    return TrainResult(run_dir, epochs_done, checkpoint.best, metrics)


def _final_metrics(run: RunConfig, run_dir: pathlib.Path, data, best, epochs_done: int, monitor: str) -> dict:
    model = keras.saving.load_model(run_dir / "best.keras")
    trainer = MultiScaleTrainer(model, run)
    heads = {}
    for i in range(len(data)):
        x, y = data[i]
        logits = trainer(x, training=False)
        for head, score in zip(trainer._score_heads, trainer.scores):
            score.update_state(y[head], logits[head])
    for head, score in zip(trainer._score_heads, trainer.scores):
        entry = heads.setdefault(head, {})
        per_class = score.per_class()
        entry[score.kind] = float(keras.ops.convert_to_numpy(score.result()))
        entry[f"{score.kind}_per_class"] = [None if np.isnan(v) else float(v) for v in per_class]
    return {
        "monitor": monitor,
        "best": best,
        "epochs_done": epochs_done,
        "evaluated_on": "validation tiles" if monitor == "val_dice" else "training patches (no validation split)",
        "heads": heads,
    }


def plot_curves(history_csv: pathlib.Path, out_png: pathlib.Path) -> None:
    """Loss and Dice per scale over epochs, from history.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "val_loss"):
        if key in rows[0]:
            ax_loss.plot(epochs, [float(r[key]) for r in rows], label=key)
    dice_keys = [k for k in rows[0] if k.replace("val_", "").startswith("dice")]
    for key in sorted(dice_keys):
        ax_dice.plot(epochs, [float(r[key]) for r in rows], label=key, linestyle="-" if key.startswith("val_") else ":")
    ax_loss.set(title="loss", xlabel="epoch")
    ax_dice.set(title="Dice per scale", xlabel="epoch", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
