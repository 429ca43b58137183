"""Training: `train(config, data_dir, out_dir)` writes a run folder (`msunet.training.run_folder`);
`--resume` continues it."""

from __future__ import annotations

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

import keras
import numpy as np

from msunet import __version__
from msunet.atomic import sweep_leftovers, write_text_atomic
from msunet.config import RunConfig, resolve_run_config
from msunet.data.feeding import FixedPatchDataset, PatchDataset
from msunet.data.pairs import find_pairs, split_pairs
from msunet.data.preprocessing import DataError, Normalization, compute_normalization
from msunet.data.samples import CALIBRATION_FILE, calibration_patches, fixed_patches, load_samples
from msunet.distributed import training as distributed
from msunet.models import build_model
from msunet.training.callbacks import (
    FINE_TUNE_LR_FACTOR,
    AveragedWeights,
    BackboneFreeze,
    HistoryLog,
    RunCheckpoint,
    TimeBudget,
)
from msunet.training.run_folder import (
    RunError,
    lock_run_dir,
    plot_curves,
    prepare_run_dir,
    read_state,
    save_npz_atomic,
    trim_history,
    write_json_atomic,
)
from msunet.training.trainer import MultiScaleTrainer, jit_compile, make_optimizer

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
    run_dir: pathlib.Path
    epochs_done: int
    best_dice: float | None
    metrics: dict


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
            (`msunet.plan.planner`). None: those written in `config` and `overrides` (for a `RunConfig`, the
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
            prepare_run_dir(run_dir, resume, overwrite)  # the error that says what a run folder is
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
    with lock_run_dir(run_dir, resume):  # one process per run folder; released however this process ends
        prepare_run_dir(run_dir, resume, overwrite)
        for folder in (run_dir, run_dir / "state"):  # what a killed writer left: never read as a checkpoint
            for leftover in sweep_leftovers(folder):
                log.info("removed %s, left by an interrupted write", leftover)
        return _start_locked(config, data_dir, run_dir, resume, state_from, user_keys, plan, verbose, callbacks,
                             called, topology)


def _start_locked(config: RunConfig, data_dir, run_dir: pathlib.Path, resume: bool, state_from, user_keys,
                  plan: bool, verbose, callbacks, called: float, topology) -> TrainResult:
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
            from msunet.training.check import plan_dataset

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
            try:
                write_json_atomic(run_dir / "run.json", info)
            except OSError:  # a full disk: the error being raised says more than this one
                pass
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
        write_text_atomic(run_dir / "problems.txt", "".join(f"{path}\t{msg}\n" for path, msg in problems))
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
    trainer.compile(optimizer=make_optimizer(run, cfg.epochs * cfg.steps_per_epoch), jit_compile=jit_compile(run))
    x0, _ = train_data.batch(0, 0)  # not counted: epoch 0's batch 0 is still to come
    trainer(x0[:1], training=False)
    trainer.optimizer.build(trainer.trainable_variables)
    epochs_done, best, wait = 0, None, 0
    if state is not None:
        trainer.load_weights(run_dir / "state" / state["weights"])
        epochs_done, best, wait = state["epochs_done"], state["best"], state["wait"]
        train_data.epoch = epochs_done
        log.info("resuming %s at epoch %d of %d", run_dir, epochs_done + 1, cfg.epochs)
    if resume:  # rows written after the last saved state (a kill between the two) would be repeated
        trim_history(run_dir / "history.csv", epochs_done)
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
    history_cb = HistoryLog(run_dir / "history.csv")
    freeze = []
    if run.model.encoder_freeze_epochs:
        freeze = [BackboneFreeze(model.get_layer(f"{run.model.encoder}_backbone"), run.model.encoder_freeze_epochs,
                                 FINE_TUNE_LR_FACTOR, clock)]
    average = [AveragedWeights(resumed=state is not None)] if cfg.ema > 0 else []  # before what saves the weights
    fit_callbacks = [keras.callbacks.TerminateOnNaN(), *freeze, *([clock] if clock else []), *average, history_cb,
                     checkpoint, *(callbacks or [])]
    if clock is not None and clock.spent_before >= clock.budget_s:
        log.info("%s: the time budget of %.1f min is already spent", run_dir, cfg.time_budget_min)
        clock.exhausted = True
    elif epochs_done < cfg.epochs:
        # shuffle=False: every batch is already random (PatchDataset); Keras' shuffling of their order drew on
        # Python's `random`, whose state a resumed run cannot restore, so it trained on another order.
        trainer.fit(train_data, validation_data=val_data, epochs=cfg.epochs, initial_epoch=epochs_done,
                    callbacks=fit_callbacks, verbose=verbose, shuffle=False)
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
