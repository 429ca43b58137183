"""Evaluating volumes: per volume, class and scale, the metrics of `msunet.evaluation.evaluate` with
distances in millimetres (the ground truth's voxel spacing), and a report whose cases show the three
orthogonal middle slices of each volume with the ground truth and the prediction at every scale.

`evaluate_volume_folders(pred_dir, gt_dir, out_dir, num_classes)` scores `NAME.nii.gz` (and
`NAME_s2.nii.gz`, ...: the heads `msunet predict` writes for volumes) against the ground truth
`NAME.*` (NIfTI, TIFF stack, .npy); `evaluate_run` calls it for a volume run.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from msunet.atomic import write_text_atomic
from msunet.config import DataConfig
from msunet.data.pairs import IGNORE, decode_mask
from msunet.data.targets import downsample_target, one_hot_target
from msunet.data.volumes import VOLUME_SUFFIXES, read_volume, volume_stem, volume_suffix
from msunet.evaluation.report import build_report
from msunet.evaluation.scores import (
    CONVENTIONS,
    EvaluationResult,
    class_metrics,
    finite,
    soft_dice,
    summarize,
    write_metrics_csv,
)
from msunet.heads import head_from_suffix


def find_volume(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    """`folder/stem` with a volume suffix (.nii.gz, .nii, .npy, .tif, .tiff), if one exists."""
    for suffix in VOLUME_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def evaluate_volume_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, out_dir: str | os.PathLike,
                            num_classes: int = 1, data_cfg: DataConfig | None = None,
                            names: Sequence[str] | None = None, images_dir: str | os.PathLike | None = None,
                            run_dir: str | os.PathLike | None = None, distances: bool = True,
                            include_background: bool = False):
    """Scores predicted volumes against the ground truth; writes metrics.csv, summary.json, report.html.

    Distances (HD95, mean surface distance) are in mm, from the ground truth's spacing (its header, else
    `data.spacing`, else 1 mm). Coarse heads are scored against the ground truth downsampled by the
    training rule, on each head's own grid (its factor per axis read from the two shapes).
    """
    pred_dir, gt_dir, out = pathlib.Path(pred_dir), pathlib.Path(gt_dir), pathlib.Path(out_dir)
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such {what} folder.")
    data_cfg = data_cfg or DataConfig()
    out.mkdir(parents=True, exist_ok=True)
    stems = list(names) if names is not None else sorted(volume_stem(p) for p in gt_dir.iterdir() if volume_suffix(p))
    classes = [1] if num_classes == 1 else list(range(0 if include_background else 1, num_classes))
    rows, problems, pictures = [], [], {}
    for stem in stems:
        gt_path, pred_path = find_volume(gt_dir, stem), find_volume(pred_dir, stem)
        if gt_path is None or pred_path is None:
            problems.append((stem, "no prediction" if pred_path is None else "no ground truth"))
            continue
        try:
            labels = read_volume(gt_path, mask=True)
            truth = decode_mask(labels.array, data_cfg, num_classes, gt_path, volume=True)
            pred = _classes(read_volume(pred_path, mask=True).array, num_classes)
            if pred.shape != truth.shape:
                raise ValueError(f"prediction {pred.shape} vs ground truth {truth.shape} (z, y, x): sizes differ")
        except (ValueError, OSError) as err:
            problems.append((stem, str(err)))
            continue
        spacing = labels.spacing or tuple(data_cfg.spacing or (1.0, 1.0, 1.0))
        valid = truth != IGNORE
        for cls in classes:
            row = {"image": stem, "class": cls, "scale": 1}
            row.update(class_metrics(pred == cls, truth == cls, valid, distances, spacing=spacing))
            rows.append(row)
        full = one_hot_target(np.where(valid, truth, IGNORE).astype(np.int16), num_classes)
        coarse_masks = {}
        for coarse in sorted(pred_dir.glob(f"{stem}_s*")):
            head = head_from_suffix(volume_stem(coarse)[len(stem):])
            if head is None or head.kind != "scale" or head.scale == 1 or volume_suffix(coarse) in ("", ".tif"):
                continue
            cpred = _classes(read_volume(coarse, mask=True).array, num_classes)
            factor = tuple(max(1, round(n / c)) for n, c in zip(truth.shape, cpred.shape))
            target = downsample_target(full, factor, data_cfg.target_downsampling)
            if cpred.shape != target.shape[:3]:
                problems.append((coarse.name, f"size {cpred.shape} is not the ground truth's at scale {factor}"))
                continue
            coarse_masks[head.scale] = (cpred, factor)
            onehot = (cpred == 1)[..., None] if num_classes == 1 else (cpred[..., None] == np.arange(num_classes))
            for cls in classes:
                channel = 0 if num_classes == 1 else cls
                sd = soft_dice(onehot[..., channel : channel + 1].astype(np.float32), target[..., [channel, -1]])
                rows.append({"image": stem, "class": cls, "scale": head.scale, **sd})
        image_path = find_volume(pathlib.Path(images_dir), stem) if images_dir else None
        pictures[stem] = _case_renderer(image_path, truth, pred, coarse_masks, num_classes)
    if not rows:
        raise ValueError(f"No volume could be scored: {len(problems)} problem(s), e.g. {problems[:3]}.")
    summary = summarize(rows, classes, num_classes)
    summary.update(conventions=CONVENTIONS, problems=[{"image": s, "reason": r} for s, r in problems],
                   predictions=str(pred_dir), ground_truth=str(gt_dir), roi=None, distance_unit="mm")
    write_metrics_csv(out / "metrics.csv", rows)
    write_text_atomic(out / "summary.json", json.dumps(finite(summary), indent=2) + "\n")
    report = build_report(summary, rows, pictures, num_classes, images_dir, pred_dir, run_dir, data_cfg)
    write_text_atomic(out / "report.html", report)
    return EvaluationResult(out, rows, summary, problems)


def _classes(raw: np.ndarray, num_classes: int) -> np.ndarray:
    """Predicted labels (0/255 binary or class ids) as class ids."""
    return (raw > 0).astype(np.int16) if num_classes == 1 else raw.astype(np.int16)


def _case_renderer(image_path, truth: np.ndarray, pred: np.ndarray, coarse: dict, num_classes: int):
    """For the report: the three orthogonal middle slices (axial, coronal, sagittal) of the volume with the
    ground truth, the prediction and each coarse prediction (shown on the full grid)."""

    def render():
        from msunet.runtime.writers import overlay

        base = read_volume(image_path).array if image_path else (truth > 0)[..., None].astype(np.float32)
        views = [("axial", 0), ("coronal", 1), ("sagittal", 2)]
        masks = [("ground truth", np.where(truth < 0, 0, truth)), ("prediction", pred)]
        for scale, (cpred, factor) in sorted(coarse.items()):
            up = cpred
            for axis, f in enumerate(factor):
                up = up.repeat(f, axis)
            masks.append((f"prediction 1/{scale}", up[: pred.shape[0], : pred.shape[1], : pred.shape[2]]))
        tiles, captions = [], []
        for name, axis in views:
            middle = base.shape[axis] // 2
            picture = np.take(base, middle, axis=axis)
            for label, mask in masks:
                tiles.append(overlay(picture, np.take(mask, middle, axis=axis), num_classes))
                captions.append(f"{name}: {label}")
        return tiles, captions

    return render
