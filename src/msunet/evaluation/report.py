"""The evaluation report: one self-contained HTML page (tables, per-class bars, training curves, the
worst and best images as overlays at every scale)."""

from __future__ import annotations

import base64
import html
import io
import math
import pathlib

import numpy as np

from msunet.config import DataConfig
from msunet.data.imageio import read_image, read_mask
from msunet.data.pairs import IGNORE, decode_mask
from msunet.evaluation.scores import CONVENTIONS, METRICS, coarse_masks, find_by_stem, mask_to_classes


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
    from msunet.runtime.writers import overlay

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
        f"<b>{fmt(summary['overall']['dice_pooled'])}</b>, HD95 (mean) {fmt(summary['overall']['hd95_mean'])} "
        f"{summary.get('distance_unit', 'px')}.</p>",
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
        if callable(pictures[stem]):  # volumes: the case draws its own slices (msunet.evaluation.volumes)
            tiles, captions = pictures[stem]()
            tiles = [_thumbnail(t) for t in tiles]
            parts.append(_case_html(kind, stem, float(np.mean(dice_of[stem])), tiles, captions))
            continue
        pred_path, gt_path = pictures[stem]
        truth = decode_mask(read_mask(gt_path), data_cfg or DataConfig(), num_classes, gt_path)
        truth = np.where(truth == IGNORE, 0, truth)
        pred = mask_to_classes(read_mask(pred_path), num_classes)
        image_path = find_by_stem(pathlib.Path(images_dir), stem) if images_dir else None
        base = read_image(image_path) if image_path else np.repeat((truth > 0)[..., None].astype(np.uint8) * 60, 3, -1)
        tiles = [overlay(_thumbnail(base), _thumbnail(truth), num_classes), overlay(_thumbnail(base), _thumbnail(pred), num_classes)]
        captions = ["ground truth", "prediction"]
        for scale, _, read in sorted(coarse_masks(pathlib.Path(pred_dir), stem, pred_path), key=lambda c: c[0]):
            cmask = mask_to_classes(read(), num_classes)
            up = cmask.repeat(scale, 0).repeat(scale, 1)[: pred.shape[0], : pred.shape[1]]  # shown at full size
            tiles.append(overlay(_thumbnail(base), _thumbnail(up), num_classes))
            captions.append(f"prediction 1/{scale}")
        parts.append(_case_html(kind, stem, float(np.mean(dice_of[stem])), tiles, captions))
    parts.append("</div></body></html>")
    return "\n".join(parts)


def _case_html(kind: str, stem: str, dice: float, tiles, captions) -> str:
    imgs = "".join(f"<figure><img src='{_png_data_uri(t)}' alt='{html.escape(stem)} {c}'><figcaption>{c}</figcaption>"
                   "</figure>" for t, c in zip(tiles, captions))
    return f"<div class='case {kind}'><b>{kind}</b>: {html.escape(stem)} (Dice {dice:.4f})<div class='row'>{imgs}</div></div>"
