"""Prints the accuracy table of benchmarks/ACCURACY.md from benchmarks/results/accuracy/*.json.

`python benchmarks/accuracy/table.py` (markdown on stdout). One row per dataset and metric:
msunet without and with flip TTA, its variants (e.g. deep supervision off), the PyTorch peer, and
the published number from the dataset's SOURCE.md.
"""

from __future__ import annotations

import json
import pathlib

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results" / "accuracy"

# (dataset, metric key, label, published)
ROWS = [
    ("drive", "f1_pooled", "F1 (Dice) in FOV, pooled", "U-Net 0.816-0.825; 2nd observer 0.788"),
    ("drive", "accuracy_pooled", "accuracy in FOV", "0.9560 (retina-unet)"),
    ("drive", "auc_pooled", "ROC AUC in FOV", "0.9790 (retina-unet)"),
    ("hrf", "f1_pooled", "F1 in FOV, full resolution, 3 held-out", "U-Net 0.811 at half res., 0.756 at full"),
    ("hrf", "auc_pooled", "ROC AUC in FOV", "-"),
    ("isbi2012-membrane", "pixel_error", "pixel error, 5-fold CV", "0.0611 (hidden test set)"),
    ("isbi2012-membrane", "f1_pooled", "Dice, cell interior (white)", "-"),
    ("isbi2012-membrane", "background_dice_pooled", "Dice, membrane (black)", "-"),
    ("dsb2018-nuclei", "dice_mean", "Dice (mean over images)", "0.84-0.92 (IoU/Dice, other splits)"),
    ("dsb2018-nuclei", "iou_mean", "IoU (mean over images)", "-"),
    ("dsb2018-nuclei", "object_f1", "object F1 at IoU 0.5", "0.712 (avg F1, stage-2, 32-model ensemble)"),
    ("camvid", "miou_pooled", "mean IoU, 11 classes", "0.669 (FC-DenseNet103, 367+101 train images)"),
    ("camvid", "global_accuracy", "global pixel accuracy", "0.915 (FC-DenseNet103)"),
]


def _value(record: dict | None, tag: str, key: str) -> str:
    if record is None:
        return "-"
    summary = record["summary"].get(tag)
    if summary is None or key not in summary:
        return "-"
    value = summary[key]
    if isinstance(value, dict):  # folds: mean and std
        return f"{value['mean']:.4f} ± {value['std']:.4f}"
    return f"{value:.4f}"


def main() -> None:
    records = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    variants = sorted({r["variant"] for r in records.values()} - {"default"})
    variants = [v for v in variants if not v.startswith(("peer", "parts-"))]
    labels = {"nods": "msunet, no deep supervision", "imgnorm": "msunet, per-image normalisation",
              "heads-halving": "msunet, every head trained (ds_weights=halving)",
              "newcomer": "msunet, no settings (planned), 15 min"}
    header = ["dataset", "metric", "msunet", "msunet + TTA", *[labels.get(v, f"msunet {v}") for v in variants],
              "PyTorch peer",
              "published"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for dataset, key, label, published in ROWS:
        base = records.get(dataset)
        peer = records.get(f"{dataset}-peer-torch_unet")
        cells = [dataset, label, _value(base, "plain", key), _value(base, "tta", key),
                 *[_value(records.get(f"{dataset}-{v}"), "plain", key) for v in variants],
                 _value(peer, "plain", key), published]
        print("| " + " | ".join(cells) + " |")
    parts_table(records)
    print()
    print("| run | budget (min) | steps | epochs | best val Dice | train s |")
    print("|---|---|---|---|---|---|")
    for name, record in records.items():
        for fold in record["folds"]:
            print(f"| {fold['fold']} | {record['budget_min_total'] / len(record['folds']):.1f} | "
                  f"{fold.get('steps_done')} | {fold.get('epochs_done')} | {fold.get('best_val_dice', 0):.4f} | "
                  f"{fold.get('train_s', 0):.0f} |")


PART_METRICS = {  # dataset -> (key, label) columns of the model-parts table
    "drive": [("auc_pooled", "AUC"), ("f1_pooled", "F1 in FOV")],
    "dsb2018-nuclei": [("dice_mean", "Dice"), ("iou_mean", "IoU"), ("object_f1", "object F1")],
    "camvid": [("miou_pooled", "mIoU"), ("global_accuracy", "global acc.")],
}


def parts_table(records: dict) -> None:
    """The model-parts comparison (variants "parts-ENCODER-DECODER[-att]", benchmarks/accuracy/parts.sh):
    scores without TTA, and the training throughput within the same budget (patches/s)."""
    for dataset, metrics in PART_METRICS.items():
        runs = {k: r for k, r in records.items() if k.startswith(f"{dataset}-parts-")}
        runs = dict(sorted(runs.items(), key=lambda item: (not item[0].endswith("-parts-conv-unet"), item[0])))
        if not runs:
            continue
        print()
        print(f"Model parts on {dataset} (scores without TTA unless marked):")
        print()
        header = ["encoder + decoder", *[label for _, label in metrics], f"{metrics[-1][1]} + TTA", "steps in budget",
                  "train patches/s"]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for key, record in runs.items():
            fold = record["folds"][0]
            batch = record["config"]["train"]["batch_size"]
            rate = fold["steps_done"] * batch / fold["time_spent_s"] if fold.get("time_spent_s") else 0.0
            name = key.removeprefix(f"{dataset}-parts-").replace("-att", " + attention").replace("-", " + ", 1)
            print("| " + " | ".join([name, *[_value(record, "plain", k) for k, _ in metrics],
                                      _value(record, "tta", metrics[-1][0]), str(fold["steps_done"]),
                                      f"{rate:.1f}"]) + " |")


if __name__ == "__main__":
    main()
