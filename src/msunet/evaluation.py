"""Evaluation: the metrics papers report, per image, per class and per scale, and an HTML report.

Two modes:
- `evaluate_folders(pred_dir, gt_dir, out_dir, ...)` scores existing masks (`NAME.png` against the
  ground truth `NAME.*`; coarse `NAME_s2.png`, ... against the ground truth downsampled by the
  training rule);
- `evaluate_run(run, data_dir, out_dir, ...)` predicts the data's test split (or val, or all) with
  `msunet.predict` first, then scores it, and puts the run's training curves in the report.

Metrics per image and class: Dice (= F1), IoU, precision, recall, pixel accuracy, HD95 and mean
(symmetric) surface distance, in pixels, from `scipy.ndimage` Euclidean distance transforms.
Pixels with the ignore label or outside the region of interest (e.g. DRIVE's field of view) count
nowhere. Conventions for empty masks (stated in summary.json): prediction and truth both empty ->
Dice = IoU = precision = recall = 1 and distances 0; exactly one empty -> Dice = IoU = 0 and
distances NaN (left out of means, counted). Aggregates: mean and median over images, and the
pooled (dataset-level) scores from summed counts, which vessel papers report.

Outputs: metrics.csv (a row per image, class and scale), summary.json, report.html (one
self-contained file: images embedded).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import functools
import html
import io
import json
import logging
import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from msunet.atomic import write_text_atomic
from msunet.config import DataConfig
from msunet.data import IGNORE, decode_mask, downsample_target, find_pairs, one_hot_target, split_pairs
from msunet.heads import head_from_suffix
from msunet.imageio import is_image_file, read_image, read_mask

METRICS = ("dice", "iou", "precision", "recall", "accuracy", "hd95", "msd")
CONVENTIONS = {
    "both_empty": "Dice = IoU = precision = recall = 1, HD95 = MSD = 0",
    "one_empty": "Dice = IoU = 0; precision/recall 0 where defined; HD95 = MSD = NaN (left out of means, counted)",
    "distances": "pixels (isotropic spacing 1), symmetric: HD95 = max of the two directed 95th percentiles, "
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


def surface_distances(pred: np.ndarray, truth: np.ndarray, percentile: float = 95) -> tuple[float, float]:
    """(HD at `percentile`, MSD) between the boundaries of two non-empty binary masks, in pixels.

    The distances from each boundary pixel to the nearest pixel of the other boundary: by a k-d tree
    over the boundary pixels when they are few (large compact objects: milliseconds), else by
    Euclidean distance transforms over the bounding box of both boundaries (exact: every boundary
    pixel lies inside it), e.g. for vessel trees.
    """
    pred_b, truth_b = _boundary(pred), _boundary(truth)
    pred_pts, truth_pts = np.argwhere(pred_b), np.argwhere(truth_b)
    if max(len(pred_pts), len(truth_pts)) <= KDTREE_MAX_POINTS:
        from scipy.spatial import cKDTree

        to_truth = cKDTree(truth_pts).query(pred_pts)[0]
        to_pred = cKDTree(pred_pts).query(truth_pts)[0]
    else:
        both = np.concatenate([pred_pts, truth_pts])
        (top, left), (bottom, right) = both.min(axis=0), both.max(axis=0) + 1
        pred_b, truth_b = pred_b[top:bottom, left:right], truth_b[top:bottom, left:right]
        to_truth = ndimage.distance_transform_edt(~truth_b)[pred_b]
        to_pred = ndimage.distance_transform_edt(~pred_b)[truth_b]
    hd95 = max(float(np.percentile(to_truth, percentile)), float(np.percentile(to_pred, percentile)))
    msd = float(np.concatenate([to_truth, to_pred]).mean())
    return hd95, msd


def class_metrics(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray, distances: bool = True) -> dict[str, float]:
    """Metrics of one class: `pred`, `truth` boolean maps; `valid` marks the pixels that count."""
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
            out["hd95"], out["msd"] = surface_distances(p, t)
    return out


def scores(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    """Dice, IoU, precision, recall and accuracy from counts, with the stated empty-mask conventions."""
    if tp + fp + fn == 0:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "accuracy": 1.0 if tn else math.nan}
    return {
        "dice": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
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
    return {"tp": tp, "fp": fp, "fn": fn, "dice": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0}


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvaluationResult:
    out_dir: pathlib.Path
    rows: list[dict]
    summary: dict
    problems: list[tuple[str, str]]


def _find(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    for path in sorted(folder.glob(f"{stem}.*")):
        if is_image_file(path):
            return path
    return None


def _pred_to_classes(raw: np.ndarray, num_classes: int) -> np.ndarray:
    if raw.ndim == 3:
        raw = raw[..., 0]
    return (raw > 0).astype(np.int16) if num_classes == 1 else raw.astype(np.int16)


def _predictions_without_truth(pred_dir: pathlib.Path, truth_stems: set[str]) -> list[str]:
    """Stems of predicted masks that neither are a ground-truth stem nor extend one (`NAME_s2`, ...)."""
    lonely = []
    for path in sorted(pred_dir.iterdir()):
        if not is_image_file(path) or path.stem in truth_stems:
            continue
        stem = path.stem
        prefixes = (stem[:i] for i, char in enumerate(stem) if char == "_")
        if not any(prefix in truth_stems for prefix in prefixes):
            lonely.append(stem)
    return lonely


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_classes: int = 1,
    data_cfg: DataConfig | None = None,
    roi_dir: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    images_dir: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    distances: bool = True,
    include_background: bool = False,
) -> EvaluationResult:
    """Scores the masks in `pred_dir` against `gt_dir` and writes metrics.csv, summary.json, report.html.

    Args:
        pred_dir: predicted masks `NAME.png` (0/255 or class ids) and optionally `NAME_s2.png`, ...
        gt_dir: ground-truth masks `NAME.*`, decoded like training data (`data_cfg`).
        num_classes: 1 for binary masks, else the number of classes (0 = background).
        data_cfg: mask encoding, ignore label, target rule (default: `DataConfig()`).
        roi_dir: optional region-of-interest masks `NAME.*` (non-zero = counts), e.g. a field of view.
        names: only these stems (default: every ground-truth mask with a prediction).
        images_dir: the images, for the report's overlays (optional).
        run_dir: a training run, for the report's curves (optional).
        distances: compute HD95 and MSD (the slowest part on large images).
        include_background: multi-class only: also score class 0 (when it is a real class, as
            CamVid's sky, rather than background); the mean over classes then includes it.

    Returns:
        An `EvaluationResult` with the rows, the summary and the problems (files skipped).
    """
    pred_dir, gt_dir, out = pathlib.Path(pred_dir), pathlib.Path(gt_dir), pathlib.Path(out_dir)
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such {what} folder.")
    data_cfg = data_cfg or DataConfig()
    out.mkdir(parents=True, exist_ok=True)
    stems = list(names) if names is not None else sorted(p.stem for p in gt_dir.iterdir() if is_image_file(p))
    classes = [1] if num_classes == 1 else list(range(0 if include_background else 1, num_classes))
    rows, problems, pictures = [], [], {}
    for stem in stems:
        gt_path, pred_path = _find(gt_dir, stem), _find(pred_dir, stem)
        if gt_path is None or pred_path is None:
            problems.append((stem, "no prediction" if pred_path is None else "no ground truth"))
            continue
        try:
            truth = decode_mask(read_mask(gt_path, data_cfg.max_pixels), data_cfg, num_classes, gt_path)
            pred = _pred_to_classes(read_mask(pred_path, data_cfg.max_pixels), num_classes)
            if pred.shape != truth.shape:
                raise ValueError(f"prediction {pred.shape[1]}x{pred.shape[0]} vs ground truth "
                                 f"{truth.shape[1]}x{truth.shape[0]}: sizes differ")
            valid = truth != IGNORE
            if roi_dir is not None:
                roi_path = _find(pathlib.Path(roi_dir), stem)
                if roi_path is None:
                    raise ValueError(f"no region-of-interest mask in {roi_dir}")
                roi = read_mask(roi_path)
                valid &= (roi[..., 0] if roi.ndim == 3 else roi) > 0
        except (ValueError, OSError) as err:
            problems.append((stem, str(err)))
            continue
        for cls in classes:
            row = {"image": stem, "class": cls, "scale": 1}
            row.update(class_metrics(pred == cls, truth == cls, valid, distances))
            rows.append(row)
        # Coarse heads against the ground truth downsampled by the training rule.
        full = one_hot_target(np.where(valid, truth, IGNORE).astype(np.int16), num_classes)
        for coarse in sorted(pred_dir.glob(f"{stem}_s*.*")):
            head = head_from_suffix(coarse.stem[len(stem):])
            if head is None or head.kind != "scale" or head.scale == 1 or not is_image_file(coarse):
                continue
            scale = head.scale
            target = downsample_target(full, scale, data_cfg.target_downsampling)
            cpred = _pred_to_classes(read_mask(coarse), num_classes)
            if cpred.shape != target.shape[:2]:
                problems.append((coarse.name, f"size {cpred.shape} does not match ceil(H/{scale}) x ceil(W/{scale})"))
                continue
            onehot = (cpred == 1)[..., None] if num_classes == 1 else (cpred[..., None] == np.arange(num_classes))
            for cls in classes:
                channel = 0 if num_classes == 1 else cls
                sd = soft_dice(onehot[..., channel : channel + 1].astype(np.float32),
                               target[..., [channel, -1]])
                rows.append({"image": stem, "class": cls, "scale": scale, **sd})
        pictures[stem] = (pred_path, gt_path)
    if names is None:
        problems += [(stem, "a prediction with no ground truth (not scored)")
                     for stem in _predictions_without_truth(pred_dir, set(stems))]
    if not rows:
        raise ValueError(f"No image could be scored: {len(problems)} problem(s), e.g. {problems[:3]}.")
    summary = summarize(rows, classes, num_classes)
    summary.update(conventions=CONVENTIONS, problems=[{"image": s, "reason": r} for s, r in problems],
                   predictions=str(pred_dir), ground_truth=str(gt_dir), roi=str(roi_dir) if roi_dir else None)
    _write_csv(out / "metrics.csv", rows)
    write_text_atomic(out / "summary.json", json.dumps(_finite(summary), indent=2) + "\n")
    report = build_report(summary, rows, pictures, num_classes, images_dir, pred_dir, run_dir, data_cfg)
    write_text_atomic(out / "report.html", report)
    return EvaluationResult(out, rows, summary, problems)


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

    def mean_of_finite(values):  # NaN (no warning) when nothing is defined, e.g. distances switched off
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    overall = {f"{m}_mean": mean_of_finite([e[f"{m}_mean"] for e in full]) for m in METRICS}
    overall.update({f"{m}_pooled": float(np.mean([e[f"{m}_pooled"] for e in full]))
                    for m in ("dice", "iou", "precision", "recall", "accuracy")})
    return {"num_classes": num_classes, "classes": classes, "overall": overall, "per_class_and_scale": per,
            "images": len({r["image"] for r in rows})}


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    fields = ["image", "class", "scale", *METRICS, "tp", "fp", "fn", "tn"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    write_text_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def _png_data_uri(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _thumbnail(array: np.ndarray, side: int = 320) -> np.ndarray:
    step = max(1, -(-max(array.shape[:2]) // side))
    return np.ascontiguousarray(array[::step, ::step])


def _bars(summary: dict, classes: list[int]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"class {c}" for c in classes]
    dice = [summary["per_class_and_scale"].get(f"scale1/class{c}", {}).get("dice_mean", 0) for c in classes]
    iou = [summary["per_class_and_scale"].get(f"scale1/class{c}", {}).get("iou_mean", 0) for c in classes]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(classes) + 2), 3))
    x = np.arange(len(classes))
    ax.bar(x - 0.2, dice, 0.4, label="Dice (mean)")
    ax.bar(x + 0.2, iou, 0.4, label="IoU (mean)")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def build_report(summary, rows, pictures, num_classes, images_dir, pred_dir, run_dir, data_cfg=None) -> str:
    """A self-contained HTML page: summary table, curves, per-class bars, best and worst images."""
    from msunet.prediction import overlay

    classes = summary["classes"]
    fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"  # noqa: E731
    table = ["<table id='summary'><tr><th>scale</th><th>class</th><th>images</th>"
             + "".join(f"<th>{m} mean</th>" for m in METRICS) + "<th>Dice pooled</th></tr>"]
    for key, entry in summary["per_class_and_scale"].items():
        scale, cls = key.split("/")
        table.append(f"<tr><td>1/{scale.removeprefix('scale')}</td><td>{cls.removeprefix('class')}</td><td>{entry['images']}</td>"
                     + "".join(f"<td>{fmt(entry.get(f'{m}_mean'))}</td>" for m in METRICS)
                     + f"<td>{fmt(entry.get('dice_pooled'))}</td></tr>")
    table.append("</table>")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>msunet evaluation</title><style>",
        "body{font-family:sans-serif;margin:24px;max-width:1400px}table{border-collapse:collapse;font-size:13px}",
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f0f0}",
        ".cases{display:flex;flex-wrap:wrap;gap:18px}.case{border:1px solid #ddd;padding:8px}",
        ".row{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0}figure img{display:block;width:240px;height:auto}",
        "figcaption{font-size:12px;color:#444;text-align:center}small{color:#555}</style></head><body>",
        "<h1>msunet evaluation</h1>",
        f"<p id='overview'>{summary['images']} images, {len(classes)} scored class(es); predictions "
        f"<code>{html.escape(str(summary.get('predictions')))}</code>, ground truth "
        f"<code>{html.escape(str(summary.get('ground_truth')))}</code>"
        + (f", region of interest <code>{html.escape(str(summary['roi']))}</code>" if summary.get("roi") else "")
        + f". Overall: Dice (mean) <b>{fmt(summary['overall']['dice_mean'])}</b>, Dice (pooled) "
        f"<b>{fmt(summary['overall']['dice_pooled'])}</b>, HD95 (mean) {fmt(summary['overall']['hd95_mean'])} px.</p>",
        "<h2>Summary</h2>", "".join(table),
        f"<p><small>Conventions: {html.escape('; '.join(f'{k}: {v}' for k, v in CONVENTIONS.items()))}</small></p>",
        "<h2>Per class</h2>", f"<img id='bars' alt='per-class Dice and IoU' src='{_bars(summary, classes)}'>",
    ]
    curves = pathlib.Path(run_dir) / "curves.png" if run_dir else None
    if curves is not None and curves.is_file():
        uri = "data:image/png;base64," + base64.b64encode(curves.read_bytes()).decode()
        parts += ["<h2>Training curves</h2>", f"<img id='curves' alt='training curves' src='{uri}'>"]
    dice_of: dict[str, list[float]] = {}
    for r in rows:
        if r["scale"] != 1:
            continue
        dice_of.setdefault(r["image"], []).append(r["dice"])
    ranked = sorted(dice_of, key=lambda s: float(np.mean(dice_of[s])))
    chosen = [("worst", s) for s in ranked[:3]] + [("best", s) for s in ranked[::-1][:3] if s not in ranked[:3]]
    parts.append("<h2>Worst and best images</h2><p><small>by mean Dice over classes; coarse predictions are "
                 "shown at full size</small></p><div class='cases' id='cases'>")
    for kind, stem in chosen:
        pred_path, gt_path = pictures[stem]
        truth = decode_mask(read_mask(gt_path), data_cfg or DataConfig(), num_classes, gt_path)
        truth = np.where(truth == IGNORE, 0, truth)
        pred = _pred_to_classes(read_mask(pred_path), num_classes)
        image_path = _find(pathlib.Path(images_dir), stem) if images_dir else None
        base = read_image(image_path) if image_path else np.repeat((truth > 0)[..., None].astype(np.uint8) * 60, 3, -1)
        tiles = [overlay(_thumbnail(base), _thumbnail(truth), num_classes), overlay(_thumbnail(base), _thumbnail(pred), num_classes)]
        captions = ["ground truth", "prediction"]
        coarse_files = [(int(p.stem[len(stem) + 2 :]), p) for p in pathlib.Path(pred_dir).glob(f"{stem}_s*.png")
                        if p.stem[len(stem) + 2 :].isdigit()]
        for scale, coarse in sorted(coarse_files):
            cmask = _pred_to_classes(read_mask(coarse), num_classes)
            up = cmask.repeat(scale, 0).repeat(scale, 1)[: pred.shape[0], : pred.shape[1]]  # shown at full size
            tiles.append(overlay(_thumbnail(base), _thumbnail(up), num_classes))
            captions.append(f"prediction 1/{scale}")
        imgs = "".join(f"<figure><img src='{_png_data_uri(t)}' alt='{html.escape(stem)} {c}'><figcaption>{c}</figcaption>"
                       "</figure>" for t, c in zip(tiles, captions))
        parts.append(f"<div class='case {kind}'><b>{kind}</b>: {html.escape(stem)} (Dice {np.mean(dice_of[stem]):.4f})"
                     f"<div class='row'>{imgs}</div></div>")
    parts.append("</div></body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# Run + data
# --------------------------------------------------------------------------------------------------
SPLITS = ("test", "val", "train", "all")


def choose_split(data: pathlib.Path, data_cfg: DataConfig, split: str | None) -> tuple[list[str], str, str]:
    """The image stems to score: (stems, split, a note to show the user or "").

    The split is the one training used (`split.csv`, else the seeded `data.val_fraction` of the
    pairs, as `split_pairs` draws it). Default: test, else val (held out from training, though it
    chose the best epoch), else all, which includes the training images: the note says so.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, received {split!r}.")
    index = find_pairs(data, data_cfg)
    splits = {name: sorted(p.name for p in pairs) for name, pairs in split_pairs(index, data_cfg).items()}
    splits["all"] = sorted(p.name for p in index.pairs)
    has_csv = (data / "split.csv").is_file()
    note = ""
    if split is None:
        split = next((s for s in ("test", "val") if splits[s]), "all")
        if split == "val" and not has_csv:
            note = (f"{data}: no split.csv; scoring the {len(splits['val'])} validation images the run held out "
                    f"(seeded data.val_fraction={data_cfg.val_fraction}); they chose its best epoch, so scores lean "
                    "optimistic. Give held-out images the label test in split.csv for an unbiased score.")
    if split in ("all", "train"):
        note = (f"{data}: scoring split {split!r} ({len(splits[split])} images), which includes images the model "
                "was trained on: the scores are optimistic. Label held-out images test in split.csv "
                "(name,split) and evaluate those.")
    if not splits[split]:
        raise ValueError(f"{data}: no images in split {split!r}"
                         + (" (split.csv)." if has_csv else "; without split.csv only val and all exist."))
    return splits[split], split, note


def evaluate(model=None, data_dir=None, out_dir=None, *, pred_dir=None, gt_dir=None, **options) -> EvaluationResult:
    """`msunet.evaluate`: scores a run on a dataset, or a folder of predicted masks.

    - `evaluate(model, data_dir, out_dir, split=None, tta=False, ...)`: predicts the dataset's test
      split (else the held-out val, else all, with a warning) with the run, then scores it
      (`evaluate_run`; the CLI's `msunet evaluate --model RUN --data DIR --out OUT`).
    - `evaluate(pred_dir=..., gt_dir=..., out_dir=..., num_classes=1, ...)`: scores existing masks
      (`evaluate_folders`; `msunet evaluate --pred P --gt G --out OUT`).
    """
    if out_dir is None:
        raise ValueError("evaluate needs out_dir, the folder for metrics.csv, summary.json and report.html.")
    if pred_dir is not None or gt_dir is not None:
        if model is not None or data_dir is not None or pred_dir is None or gt_dir is None:
            raise ValueError("evaluate takes model and data_dir, or pred_dir and gt_dir (not a mix).")
        return evaluate_folders(pred_dir, gt_dir, out_dir, **options)
    if model is None or data_dir is None:
        raise ValueError("evaluate takes model and data_dir, or pred_dir and gt_dir.")
    return evaluate_run(model, data_dir, out_dir, **options)


def evaluate_run(run, data_dir: str | os.PathLike, out_dir: str | os.PathLike, split: str | None = None,
                 tta: bool = False, tile_size: int | None = None, roi_dir: str | os.PathLike | None = None,
                 distances: bool = True, progress=None, engine: str = "keras") -> EvaluationResult:
    """Predicts a dataset's test split (else val, else all) with a run, then scores it.

    A `fov/` folder beside `images/` is used as the region of interest unless `roi_dir` is given.
    `engine`: "keras" (the model as trained) or "int8" (the run's int8 bundle, what `msunet predict
    --model RUN` uses by default; made once, `msunet.run_bundle`).
    """
    from msunet.prediction import LoadedRun, load_run, predict

    if engine not in ("keras", "int8"):
        raise ValueError(f"unknown evaluation engine {engine!r}; valid: keras, int8.")
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    predict_with = functools.partial(predict, loaded)
    if engine == "int8":
        from msunet.run_bundle import run_bundle
        from msunet.runtime import predict as predict_bundle
        from msunet.runtime import read_bundle

        bundle, how = (run_bundle(loaded.run_dir, log=log.info) if loaded.run_dir
                       else (None, "not a run folder"))
        if bundle is None or read_bundle(bundle, verify=False).get("precision") != "int8":
            raise ValueError(f"--engine int8 scores the run's int8 bundle, which cannot be made: {how}.")
        # its int8 graph as exported, also where the self-check would run its float32 graph: that is when it matters
        predict_with = functools.partial(predict_bundle, bundle, check=False)
    data = pathlib.Path(data_dir)
    chosen, split, split_note = choose_split(data, loaded.config.data, split)
    if split_note:
        log.warning("%s", split_note)
    out = pathlib.Path(out_dir)
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for stem in chosen:
        src = _find(data / "images", stem)
        link = inputs / src.name
        if not link.exists():
            link.symlink_to(src.resolve())
    summary = predict_with(inputs, out / "predictions", tile_size=tile_size, tta=tta, overwrite=True,
                           progress=progress)
    if roi_dir is None and (data / "fov").is_dir():
        roi_dir = data / "fov"
    result = evaluate_folders(out / "predictions", data / "masks", out, loaded.config.model.num_classes,
                              loaded.config.data, roi_dir, names=chosen, images_dir=data / "images",
                              run_dir=loaded.run_dir, distances=distances,
                              include_background=loaded.config.train.include_background)
    result.summary["split"] = split
    result.summary["engine"] = "the run's int8 bundle (ONNX Runtime)" if engine == "int8" else "Keras"
    result.summary["split_note"] = split_note
    result.summary["prediction_failures"] = [{"image": p, "reason": r} for p, r in summary.failed]
    write_text_atomic(out / "summary.json", json.dumps(_finite(result.summary), indent=2) + "\n")
    return result
