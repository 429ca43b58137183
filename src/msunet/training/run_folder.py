"""The run folder that `train` writes and `--resume` continues, and its files, each written atomically.

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
    state/               resume state: trainer + optimizer weights of the last completed epoch"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import pathlib
from typing import Any

import keras
import numpy as np

from msunet.atomic import LOCK_FILE, FolderLock, atomic_path, remove, write_text_atomic
from msunet.config import ModelConfig, RunConfig
from msunet.data.preprocessing import Normalization
from msunet.heads import deep_supervision_weights, head_name, parse_head
from msunet.models import load_model, output_names

log = logging.getLogger(__name__)


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


def read_state(run_dir: pathlib.Path) -> dict | None:
    path = run_dir / "state" / "state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise RunError(f"{path}: unreadable resume state ({err}); start again with --overwrite.") from err


def _run_info(out: pathlib.Path) -> dict | None:
    """run.json's content, or None where it is missing or unreadable."""
    try:
        info = json.loads((pathlib.Path(out) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def failed_before_training(out: pathlib.Path) -> str | None:
    """The error of a run that failed before completing an epoch (nothing to lose), else None."""
    info = _run_info(out) or {}
    if info.get("status") == "failed" and read_state(out) is None:
        return str(info.get("error", "unknown error"))
    return None


def run_completed(run_dir: str | os.PathLike) -> bool:
    """The run in `run_dir` finished its training (run.json says "completed")."""
    return (_run_info(run_dir) or {}).get("status") == "completed"


def _transient(error: str) -> bool:
    """An error that says nothing about the run (a full disk, an interruption): resuming may succeed."""
    return any(word in error for word in ("No space left", "Disk quota", "cannot write there", "KeyboardInterrupt",
                                          "Stopped"))


def unfinished_before_training(out: pathlib.Path) -> str | None:
    """How a run folder ended that holds no finished epoch (failed, or killed while planning or in its
    first epoch), else None: such a folder has nothing to lose and a new `msunet train` replaces it."""
    if (not ((out / "run.json").is_file() or (out / "config.json").is_file()) or read_state(out) is not None
            or any((out / name).exists() for name in ("last.keras", "best.keras"))):
        return None
    failed = failed_before_training(out)
    if failed is not None:
        return f"failed before its first epoch ({failed})"
    if not (out / "run.json").is_file():
        return "stopped while planning"  # config.json is written first, run.json next
    status = (_run_info(out) or {}).get("status")
    return "stopped before its first epoch" if status in ("running", "interrupted") else None


def prepare_run_dir(out: pathlib.Path, resume: bool, overwrite: bool) -> None:
    marker = out / "run.json"
    if resume:
        if not marker.is_file():
            raise RunError(f"{out}: not a msunet run folder (no run.json); nothing to resume. Start a run with --out.")
        failed = failed_before_training(out)
        if failed is not None and not _transient(failed):
            raise RunError(f"{out} failed before its first epoch ({failed}); there is nothing to resume. Fix the "
                           f"cause and run `msunet train --data DATA --out {out} ...` again: it replaces this run.")
        return  # a run stopped (or out of disk space) before its first epoch starts again from its config
    unfinished = unfinished_before_training(out) if out.exists() else None
    if unfinished is not None:  # nothing to lose, and nobody runs it (this process holds its lock)
        log.info("%s: replacing a run that %s", out, unfinished)
        _clear(out)
    if out.exists() and _contents(out):
        if not overwrite:
            what = "an existing run" if marker.is_file() else "a folder that is not empty"
            raise RunError(
                f"{out} is {what}; refusing to overwrite it. Use --resume to continue it, --overwrite to replace it, "
                "or choose another --out."
            )
        if marker.is_file():
            _clear(out)
        else:
            raise RunError(f"{out} is not empty and not a msunet run; --overwrite only replaces run folders.")
    out.mkdir(parents=True, exist_ok=True)


def lock_run_dir(out: pathlib.Path, resume: bool) -> FolderLock:
    """The run folder's lock (`msunet.atomic.FolderLock`), held while this process trains into it: a second
    `msunet train` into the same folder is refused (`FolderBusy`), never interleaved. A folder that is not
    a run and not empty is refused first, without a lock file left in it."""
    if (not resume and out.exists() and not (out / "run.json").is_file() and not (out / "config.json").is_file()
            and _contents(out)):
        prepare_run_dir(out, resume, False)  # raises: not empty and not a run
    return FolderLock(out, "train").acquire()


def _contents(out: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in out.iterdir() if p.name != LOCK_FILE]


def _clear(out: pathlib.Path) -> None:
    """Empties a run folder being replaced, keeping the lock this process holds on it."""
    for entry in _contents(out):
        remove(entry)


def trim_history(path: pathlib.Path, epochs_done: int) -> None:
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


# --------------------------------------------------------------------------------------------------
# Reading a run back
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoadedRun:
    model: keras.Model
    config: RunConfig
    normalization: Normalization
    run_dir: pathlib.Path | None


def model_config_from(model: keras.Model) -> ModelConfig:
    """What a bare .keras file tells of its config: channels, classes and heads (read off the graph)."""
    heads = [parse_head(name) for name in output_names(model)]
    scales = [h.scale for h in heads if h.kind == "scale"]
    mask = model.get_layer(head_name(1)).output
    return ModelConfig(in_channels=int(model.inputs[0].shape[-1]), num_classes=int(mask.shape[-1]),
                       depth=max(2, max(scales).bit_length()), deep_supervision=len(scales) > 1,
                       ds_heads=len(scales) - 1, fused_head=any(h.kind == "fused" for h in heads))


def load_run(path: str | os.PathLike, which: str = "best") -> LoadedRun:
    """Loads a run folder (its best/last model, config.json, normalization.json) or a .keras file.

    A bare .keras file is used with the config and normalisation beside it when present, else with
    a config derived from the model and per-image normalisation.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        model_path = path / f"{which}.keras"
        if not model_path.is_file():
            raise FileNotFoundError(f"{path}: no {which}.keras in this folder; pass a run folder written by msunet train.")
        run_dir = path
    else:
        model_path, run_dir = path, path.parent
    model = load_model(model_path)
    config_path, norm_path = run_dir / "config.json", run_dir / "normalization.json"
    if config_path.is_file():
        config = RunConfig.from_json(config_path)
    else:
        config = RunConfig(model=model_config_from(model))
    normalization = Normalization.from_json(norm_path) if norm_path.is_file() else Normalization("image")
    return LoadedRun(model, config, normalization, run_dir if config_path.is_file() else None)


def trained_heads(run: LoadedRun) -> list[str]:
    """The model's outputs that training gave a loss weight: a deliberately untrained head (weight 0,
    e.g. the coarsest under `train.ds_weights=nnunet`) is not written unless asked for by name."""
    names = output_names(run.model)
    try:
        weights = deep_supervision_weights(names, run.config.train.ds_weights)
    except ValueError:  # weights that do not fit this model (a hand-made config): every head
        return names
    return [name for name in names if weights.get(name, 1.0) > 0]
