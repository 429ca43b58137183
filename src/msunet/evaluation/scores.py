"""The scores papers report, from a predicted and a true mask: Dice (= F1), IoU, precision, recall,
pixel accuracy, HD95 and mean surface distance, per image and class; the conventions for empty
masks; aggregates over images (mean, median) and pooled from summed counts."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import pathlib

import numpy as np
from scipy import ndimage

from msunet.atomic import write_text_atomic
from msunet.counts import overlap_from_counts
from msunet.data.imageio import image_stem, is_image_file, read_mask
from msunet.data.zarrio import is_zarr_store, label_levels
from msunet.heads import head_from_suffix

METRICS = ("dice", "iou", "precision", "recall", "accuracy", "hd95", "msd")
CONVENTIONS = {
    "both_empty": "Dice = IoU = precision = recall = 1, HD95 = MSD = 0",
    "one_empty": "Dice = IoU = 0; precision/recall 0 where defined; HD95 = MSD = NaN (left out of means, counted)",
    "distances": "pixels (isotropic spacing 1); volumes: mm, from the ground truth's voxel spacing; symmetric: HD95 = max of the two directed 95th percentiles, "
                 "MSD = mean of all boundary-to-boundary distances in both directions",
    "pooled": "scores from counts summed over all images (dataset-level), as vessel papers report",
}
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Per-image metrics
# --------------------------------------------------------------------------------------------------
def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


KDTREE_MAX_POINTS = 20_000  # boundaries up to this many pixels: nearest neighbours, else distance transforms


def surface_distances(pred: np.ndarray, truth: np.ndarray, percentile: float = 95,
                      spacing: tuple[float, ...] | None = None) -> tuple[float, float]:
    """(HD at `percentile`, MSD) between the boundaries of two non-empty binary masks (images or
    volumes), in pixels, or in the units of `spacing` (the size of a pixel / voxel along each axis: mm).

    The distances from each boundary pixel to the nearest pixel of the other boundary: by a k-d tree
    over the boundary pixels when they are few (large compact objects: milliseconds), else by
    Euclidean distance transforms over the bounding box of both boundaries (exact: every boundary
    pixel lies inside it), e.g. for vessel trees.
    """
    pred_b, truth_b = _boundary(pred), _boundary(truth)
    pred_pts, truth_pts = np.argwhere(pred_b), np.argwhere(truth_b)
    scale = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, np.float64)
    if max(len(pred_pts), len(truth_pts)) <= KDTREE_MAX_POINTS:
        from scipy.spatial import cKDTree

        to_truth = cKDTree(truth_pts * scale).query(pred_pts * scale)[0]
        to_pred = cKDTree(pred_pts * scale).query(truth_pts * scale)[0]
    else:
        both = np.concatenate([pred_pts, truth_pts])
        box = tuple(slice(lo, hi) for lo, hi in zip(both.min(axis=0), both.max(axis=0) + 1))
        pred_b, truth_b = pred_b[box], truth_b[box]
        to_truth = ndimage.distance_transform_edt(~truth_b, sampling=scale)[pred_b]
        to_pred = ndimage.distance_transform_edt(~pred_b, sampling=scale)[truth_b]
    hd95 = max(float(np.percentile(to_truth, percentile)), float(np.percentile(to_pred, percentile)))
    msd = float(np.concatenate([to_truth, to_pred]).mean())
    return hd95, msd


def class_metrics(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray, distances: bool = True,
                  spacing: tuple[float, ...] | None = None) -> dict[str, float]:
    """Metrics of one class: `pred`, `truth` boolean maps; `valid` marks the pixels that count; distances
    in pixels, or in mm with the voxel `spacing`."""
    p, t = pred & valid, truth & valid
    tp = int((p & t).sum())
    fp = int((p & ~t).sum())
    fn = int((~p & t).sum())
    tn = int(valid.sum()) - tp - fp - fn
    out: dict[str, float] = {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    out.update(scores(tp, fp, fn, tn))
    if distances:
        if not p.any() and not t.any():
            out["hd95"] = out["msd"] = 0.0
        elif not p.any() or not t.any():
            out["hd95"] = out["msd"] = math.nan
        else:
            out["hd95"], out["msd"] = surface_distances(p, t, spacing=spacing)
    return out


def scores(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    """Dice, IoU, precision, recall and accuracy from counts, with the stated empty-mask conventions."""
    if tp + fp + fn == 0:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "accuracy": 1.0 if tn else math.nan}
    return {
        "dice": overlap_from_counts(tp, fp, fn, "dice"),
        "iou": overlap_from_counts(tp, fp, fn, "iou"),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "accuracy": (tp + tn) / (tp + fp + fn + tn),
    }


def soft_dice(pred: np.ndarray, soft_target: np.ndarray) -> dict[str, float]:
    """Counts and Dice of a hard prediction against a soft (coarse) target with a weight channel."""
    t, w = soft_target[..., :-1], soft_target[..., -1:]
    tp = float((pred * t * w).sum())
    fp = float((pred * (1 - t) * w).sum())
    fn = float(((1 - pred) * t * w).sum())
    return {"tp": tp, "fp": fp, "fn": fn, "dice": overlap_from_counts(tp, fp, fn, "dice", empty=1.0)}


def find_by_stem(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    for path in sorted(folder.glob(f"{stem}.*")):
        if is_image_file(path):
            return path
    return None


def coarse_masks(pred_dir: pathlib.Path, stem: str, pred_path: pathlib.Path) -> list[tuple[int, str, object]]:
    """An image's coarse predictions as (scale, name, read() -> mask): the `NAME_s2.*`, `NAME_s4.*`, ... files
    beside `pred_path`, or, for an OME-Zarr prediction, the coarser levels of its label image."""
    if is_zarr_store(pred_path):
        return [(scale, f"{pred_path.name} (1/{scale})", lambda level=level: np.asarray(level[:, :])[..., 0])
                for scale, level in label_levels(pred_path) if scale > 1]
    found = []
    for coarse in sorted(pathlib.Path(pred_dir).glob(f"{stem}_s*")):
        head = head_from_suffix(image_stem(coarse)[len(stem):])
        if head is not None and head.kind == "scale" and head.scale > 1 and is_image_file(coarse):
            found.append((head.scale, coarse.name, lambda coarse=coarse: read_mask(coarse)))
    return found


def mask_to_classes(raw: np.ndarray, num_classes: int) -> np.ndarray:
    if raw.ndim == 3:
        raw = raw[..., 0]
    return (raw > 0).astype(np.int16) if num_classes == 1 else raw.astype(np.int16)

def summarize(rows: list[dict], classes: list[int], num_classes: int) -> dict:
    """Mean, median and pooled scores per class and scale, and the mean over classes."""
    per = {}
    for scale in sorted({r["scale"] for r in rows}):
        for cls in classes:
            sel = [r for r in rows if r["scale"] == scale and r["class"] == cls]
            if not sel:
                continue
            entry = {"images": len(sel)}
            for metric in METRICS if scale == 1 else ("dice",):
                values = np.array([r[metric] for r in sel if metric in r], np.float64)
                finite = values[np.isfinite(values)]
                entry[f"{metric}_mean"] = float(finite.mean()) if finite.size else math.nan
                entry[f"{metric}_median"] = float(np.median(finite)) if finite.size else math.nan
                if finite.size < values.size:
                    entry[f"{metric}_undefined"] = int(values.size - finite.size)
            tp, fp, fn = (sum(r[k] for r in sel) for k in ("tp", "fp", "fn"))
            tn = sum(r.get("tn", 0) for r in sel)
            pooled = scores(tp, fp, fn, tn)
            entry.update({f"{k}_pooled": v for k, v in pooled.items() if scale == 1 or k == "dice"})
            per[f"scale{scale}/class{cls}"] = entry
    full = [per[f"scale1/class{c}"] for c in classes if f"scale1/class{c}" in per]

    def mean_offinite(values):  # NaN (no warning) when nothing is defined, e.g. distances switched off
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    overall = {f"{m}_mean": mean_offinite([e[f"{m}_mean"] for e in full]) for m in METRICS}
    overall.update({f"{m}_pooled": float(np.mean([e[f"{m}_pooled"] for e in full]))
                    for m in ("dice", "iou", "precision", "recall", "accuracy")})
    return {"num_classes": num_classes, "classes": classes, "overall": overall, "per_class_and_scale": per,
            "images": len({r["image"] for r in rows})}


def finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


@dataclasses.dataclass
class EvaluationResult:
    out_dir: pathlib.Path
    rows: list[dict]
    summary: dict
    problems: list[tuple[str, str]]


def write_metrics_csv(path: pathlib.Path, rows: list[dict]) -> None:
    """metrics.csv: a row per image (volume), class and scale; NaN distances as empty cells."""
    fields = ["image", "class", "scale", *METRICS, "tp", "fp", "fn", "tn"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    write_text_atomic(path, buffer.getvalue())
