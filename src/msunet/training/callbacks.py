"""Callbacks of a training run: the time budget, the backbone freeze, the epoch checkpoint (best, last
and resume state)."""

from __future__ import annotations

import csv
import logging
import os
import pathlib
import time

import keras
import numpy as np

from msunet.atomic import atomic_path, not_writable
from msunet.stopping import disk_errno
from msunet.training.run_folder import save_keras_atomic, write_json_atomic
from msunet.training.trainer import ScaledSchedule, schedule_factor

log = logging.getLogger(__name__)


FINE_TUNE_LR_FACTOR = 0.1  # the learning rate once a frozen backbone starts to train
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
        try:
            self._save(epoch, logs or {})
        except (OSError, RuntimeError) as err:  # h5py says "disk full" with a RuntimeError
            if disk_errno(err) is None:
                raise
            raise not_writable(self.run_dir, OSError(disk_errno(err), os.strerror(disk_errno(err)))) from err

    def _save(self, epoch, logs):
        value = logs.get(self.monitor)
        improved = value is not None and not np.isnan(value) and (self.best is None or value > self.best)
        save_keras_atomic(self.net, self.run_dir / "last.keras")
        if improved:
            self.best, self.wait = float(value), 0
            save_keras_atomic(self.net, self.run_dir / "best.keras")
        else:
            self.wait += 1
        weights = self.state_dir / f"epoch-{epoch + 1}.weights.h5"
        with atomic_path(weights) as partial:  # a kill leaves a hidden temporary (swept), never a partial epoch-N
            self.model.save_weights(partial)
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


class HistoryLog(keras.callbacks.Callback):
    """history.csv: a row per epoch ("epoch" and the logs' keys, sorted, as Keras' CSVLogger writes them),
    the whole file replaced atomically at each epoch end, so that a kill or a full disk never leaves a
    half-written row (CSVLogger appends in place). Rows already there (a resumed run, trimmed to its
    state) are kept."""

    def __init__(self, path: pathlib.Path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        rows, header = [], ["epoch", *sorted(logs)]
        if self.path.is_file():
            with open(self.path, newline="") as fh:
                reader = csv.DictReader(fh)
                rows = [r for r in reader if r.get("epoch") not in (None, "")]
                header = reader.fieldnames or header
        rows.append({"epoch": epoch, **{k: v for k, v in logs.items() if k in header}})
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Keras' `SwapEMAWeights` with `swap_on_epoch`: the averaged weights (`train.ema`) are in the model
    for validation and at every epoch end, so the checkpoint that follows it saves them, and the raw
    ones are swapped back when the next epoch begins. A resumed run starts from such a checkpoint
    (averaged weights in the model, raw ones in the optimizer's average slots): `resumed` says so,
    and the first epoch swaps them back as it would have without the interruption."""

    def __init__(self, resumed: bool):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed  # Keras' own flag of which weights the model holds

    def on_train_begin(self, logs=None):
        # At its end `fit` overwrites the model with the optimizer's average slots. Keras prepares for that only
        # when the planned last epoch ends the run; after an earlier stop (the time budget, early stopping)
        # the slots hold the raw weights and the model would end with them. The averages are in the model
        # at every epoch end here, so that overwrite is skipped whenever they are.
        optimizer = self.model.optimizer
        finalize = optimizer.finalize_variable_values

        def keep_averages(var_list):
            if not self._ema_weights_in_model:
                finalize(var_list)
        optimizer.finalize_variable_values = keep_averages
        self._restore = lambda: optimizer.__dict__.pop("finalize_variable_values", None)

    def on_train_end(self, logs=None):
        self._restore()
