"""Accuracy benchmark: check, train (CPU time budget), evaluate on a real dataset's test protocol.

`python benchmarks/accuracy/run.py DATASET [--budget MIN] [--variant NAME --set KEY=VALUE ...]`
(or `make bench-accuracy DATASET=drive`; DATASET=all runs them in turn). DATASET is one of
drive, hrf, isbi2012-membrane, dsb2018-nuclei, camvid, busi-subset; the data come from ../shared/data.

Each dataset's protocol (as the papers use it) is a split written into a *view* folder of links
under benchmarks/accuracy/work/ (nothing is copied):
- drive: the official 20 train / 20 test; F1 (Dice), accuracy and AUC inside the field of view,
  pooled over the test set;
- hrf: the 15 images here: 12 to train (2 of them validate), 3 held out (05 of each category),
  F1/accuracy/AUC inside the FOV at full resolution (tiled prediction);
- isbi2012-membrane: 5-fold cross-validation over the 30 slices (6 held out per fold), the budget
  split over the folds; pixel error and the Dice of both classes;
- dsb2018-nuclei: a seeded 80/20 split stratified by image size; Dice, IoU and object F1 at IoU 0.5
  (connected components against the instance masks);
- camvid: the 101 `train` images (SegNet val sequence) to train, the 62 `test` images to test;
  mean IoU over the 11 classes with void ignored, and per-class IoU;
- busi-subset: the dataset's split.csv (192 train / 48 test ultrasound images, one large lesion
  each); Dice and IoU of the lesion, pooled and per image.

The config is benchmarks/accuracy/configs/DATASET.json; `--set` overrides it (a variant, e.g.
`--variant nods --set model.deep_supervision=false`). `--newcomer` trains what a new user gets:
no config, only the budget (and any `--set`), everything else planned from the data and the
device (`msunet.plan.planner`, `msunet.training.probe`); results DATASET-newcomer.json, scored by the same protocol.
Evaluation runs with and without flip TTA.
Writes benchmarks/results/accuracy/DATASET[-VARIANT].json and keeps the run folder and the HTML
report under benchmarks/accuracy/work/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shutil
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SHARED = ROOT.parent / "shared" / "data"
WORK = HERE / "work"
RESULTS = ROOT / "benchmarks" / "results" / "accuracy"
DATASETS = ("drive", "hrf", "isbi2012-membrane", "dsb2018-nuclei", "camvid", "busi-subset")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".gif")


# --------------------------------------------------------------------------------------------------
# Protocols: a view folder (links) with split.csv
# --------------------------------------------------------------------------------------------------
def _stems(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def make_view(dataset: str, labels: dict[str, str], name: str) -> pathlib.Path:
    """Links images/, masks/ (and fov/) of the shared dataset into WORK/name/data with a split.csv."""
    src = SHARED / dataset
    view = WORK / name / "data"
    if view.exists():
        shutil.rmtree(view)
    for sub in ("images", "masks", "fov", "masks_instance"):
        if not (src / sub).is_dir():
            continue
        (view / sub).mkdir(parents=True)
        for stem, path in _stems(src / sub).items():
            if stem in labels:
                (view / sub / path.name).symlink_to(path)
    lines = ["name,split"] + [f"{stem},{split}" for stem, split in sorted(labels.items())]
    (view / "split.csv").write_text("\n".join(lines) + "\n")
    return view


def protocol(dataset: str) -> list[tuple[str, dict[str, str]]]:
    """[(fold name, {stem: split})] for the dataset's test protocol."""
    src = SHARED / dataset
    stems = sorted(_stems(src / "images"))
    if dataset in ("drive", "camvid", "busi-subset"):
        rows = [line.split(",") for line in (src / "split.csv").read_text().split()[1:]]
        return [("", {stem: split for stem, split in rows})]
    if dataset == "hrf":  # image 05 of each category (healthy, glaucoma, diabetic retinopathy) held out
        return [("", {s: "test" if s.startswith("05_") else "train" for s in stems})]
    if dataset == "isbi2012-membrane":
        return [(f"fold{k}", {s: "test" if i // 6 == k else "train" for i, s in enumerate(stems)}) for k in range(5)]
    if dataset == "dsb2018-nuclei":
        from PIL import Image

        by_size: dict[tuple, list[str]] = {}
        for s in stems:
            with Image.open(_stems(src / "images")[s]) as im:
                by_size.setdefault(im.size, []).append(s)
        rng = np.random.default_rng(0)
        labels = {}
        for size in sorted(by_size):
            group = sorted(by_size[size])
            test = set(rng.permutation(len(group))[: round(0.2 * len(group))].tolist())
            labels.update({s: "test" if i in test else "train" for i, s in enumerate(group)})
        return [("", labels)]
    raise SystemExit(f"unknown dataset {dataset!r}; one of {', '.join(DATASETS)}")


# --------------------------------------------------------------------------------------------------
# Extra metrics: pooled AUC inside the ROI, object F1, counts of both classes
# --------------------------------------------------------------------------------------------------
def pooled_auc(prob_paths, truth_paths, roi_paths=None, bins: int = 10_000) -> float:
    """ROC AUC over all pixels of all images (inside the ROI), from 10,000-bin score histograms."""
    from msunet.data.imageio import read_image, read_mask

    pos = np.zeros(bins, np.int64)
    neg = np.zeros(bins, np.int64)
    for i, (pp, tp) in enumerate(zip(prob_paths, truth_paths)):
        prob = read_image(pp)[..., 0].astype(np.float64)
        truth = read_mask(tp) > 0
        valid = np.ones(truth.shape, bool) if roi_paths is None else read_mask(roi_paths[i]) > 0
        idx = np.clip((prob[valid] * bins).astype(np.int64), 0, bins - 1)
        pos += np.bincount(idx[truth[valid]], minlength=bins)
        neg += np.bincount(idx[~truth[valid]], minlength=bins)
    # P(score_pos > score_neg) + 0.5 P(equal bin)
    neg_below = np.cumsum(neg) - neg
    return float((pos * neg_below).sum() + 0.5 * (pos * neg).sum()) / float(pos.sum() * neg.sum())


def object_f1(pred_paths, instance_paths, iou: float = 0.5) -> dict:
    """Object-level precision/recall/F1: predicted connected components matched to true instances at IoU > iou."""
    from scipy import ndimage

    from msunet.data.imageio import read_mask

    tp = fp = fn = 0
    for pp, ip in zip(pred_paths, instance_paths):
        pred, _ = ndimage.label(read_mask(pp) > 0)
        truth = read_mask(ip).astype(np.int64)
        n_pred, n_true = int(pred.max()), int(truth.max())
        pair = np.bincount(pred.ravel() * (n_true + 1) + truth.ravel(), minlength=(n_pred + 1) * (n_true + 1))
        inter = pair.reshape(n_pred + 1, n_true + 1)[1:, 1:]
        area_p = np.bincount(pred.ravel(), minlength=n_pred + 1)[1:]
        area_t = np.bincount(truth.ravel(), minlength=n_true + 1)[1:]
        union = area_p[:, None] + area_t[None, :] - inter
        matched = (inter / np.maximum(union, 1)) > iou  # IoU > 0.5 matches are unique
        hits = int(matched.any(axis=1).sum())
        tp, fp, fn = tp + hits, fp + n_pred - hits, fn + n_true - int(matched.any(axis=0).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"object_f1": f1, "object_precision": precision, "object_recall": recall, "objects_true": tp + fn,
            "objects_predicted": tp + fp}


def score(dataset: str, view: pathlib.Path, pred_dir: pathlib.Path, eval_dir: pathlib.Path, names: list[str],
          num_classes: int, data_cfg, include_background: bool = False) -> dict:
    """The dataset's reported metrics for the masks in pred_dir (NAME.png, NAME_prob.tif if present)."""
    from msunet.evaluation.evaluate import evaluate_folders

    roi = view / "fov" if (view / "fov").is_dir() else None
    result = evaluate_folders(pred_dir, view / "masks", eval_dir, num_classes, data_cfg, roi, names=names,
                              images_dir=view / "images", distances=dataset != "camvid",
                              include_background=include_background)
    per = result.summary["per_class_and_scale"]
    out: dict = {"images": len(names), "report": str(eval_dir / "report.html")}
    if num_classes == 1:
        full = per["scale1/class1"]
        out.update(f1_pooled=full["dice_pooled"], accuracy_pooled=full["accuracy_pooled"],
                   iou_pooled=full["iou_pooled"], dice_mean=full["dice_mean"], iou_mean=full["iou_mean"],
                   hd95_mean=full["hd95_mean"])
        out["scales_dice_pooled"] = {k.split("/")[0]: v["dice_pooled"] for k, v in per.items()}
        rows = [r for r in result.rows if r["scale"] == 1]
        tp, fp, fn, tn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn", "tn"))
        out["background_dice_pooled"] = 2 * tn / (2 * tn + fp + fn)
        out["pixel_error"] = (fp + fn) / (tp + fp + fn + tn)
        probs = [pred_dir / f"{n}_prob.tif" for n in names]
        if all(p.is_file() for p in probs):
            truths = [next((view / "masks").glob(f"{n}.*")) for n in names]
            rois = [next((view / "fov").glob(f"{n}.*")) for n in names] if roi else None
            out["auc_pooled"] = pooled_auc(probs, truths, rois)
        if (view / "masks_instance").is_dir():
            out.update(object_f1([pred_dir / f"{n}.png" for n in names],
                                 [next((view / "masks_instance").glob(f"{n}.*")) for n in names]))
    else:
        classes = result.summary["classes"]
        out["iou_per_class_pooled"] = {c: per[f"scale1/class{c}"]["iou_pooled"] for c in classes}
        out["miou_pooled"] = float(np.mean(list(out["iou_per_class_pooled"].values())))
        out["dice_mean_over_classes"] = result.summary["overall"]["dice_pooled"]
        rows = [r for r in result.rows if r["scale"] == 1]
        correct = sum(r["tp"] for r in rows)
        total = sum(r["tp"] + r["fn"] for r in rows)
        out["global_accuracy"] = correct / total if total else float("nan")
    return out


# --------------------------------------------------------------------------------------------------
def link_inputs(view: pathlib.Path, stems: list[str], inputs: pathlib.Path) -> pathlib.Path:
    """A fresh folder of links to the view's images of `stems` (what prediction reads)."""
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir(parents=True)
    for stem in stems:
        src = next((view / "images").glob(f"{stem}.*"))
        (inputs / src.name).symlink_to(src.resolve())
    return inputs


def run_fold(dataset: str, name: str, labels: dict[str, str], config, budget_min: float, quiet: bool,
             newcomer: list[str] | None = None, test_images: int | None = None) -> dict:
    import msunet
    from msunet.training.check import check_dataset
    from msunet.training.run_folder import load_run
    from msunet.inference.engines import predict

    view = make_view(dataset, labels, name)
    run_dir = WORK / name / "run"
    start = time.perf_counter()
    if newcomer is not None:
        # What a new user gets: no config, only the budget (and --set); the planner fills the rest.
        overrides = [f"train.time_budget_min={budget_min}", *newcomer]
        report = check_dataset(view, None, overrides=overrides)
        result = msunet.train(None, view, run_dir, overrides=overrides, overwrite=True, verbose=0 if quiet else 2)
    else:
        report = check_dataset(view, config)
        config = config.override([f"train.time_budget_min={budget_min}"])
        # plan=False: the committed configs are the tuned ones, trained exactly as written (the planner
        # would fill what they leave out; that is the newcomer measurement, not this table).
        result = msunet.train(config, view, run_dir, overwrite=True, verbose=0 if quiet else 2, plan=False)
    train_s = time.perf_counter() - start
    info = json.loads((run_dir / "run.json").read_text())
    test = sorted(s for s, split in labels.items() if split == "test")[:test_images]  # None: all
    inputs = link_inputs(view, test, WORK / name / "inputs")
    loaded = load_run(run_dir)
    # Scored by the dataset's protocol (its classes, void label and background rule, from
    # configs/DATASET.json), whatever the run planned: a newcomer's CamVid run that learnt void as a
    # 12th class is scored on the 11 classes, its void predictions counted as errors.
    protocol_cfg = config
    config = loaded.config  # the newcomer's is the planned one
    binary = config.model.num_classes == 1
    scores = {}
    for tta in (False, True):
        tag = "tta" if tta else "plain"
        pred_dir = WORK / name / f"pred-{tag}"
        t0 = time.perf_counter()
        predict(loaded, inputs, pred_dir, tta=tta, scales=None, probabilities=binary, overlay_images=False,
                overwrite=True)
        predict_s = time.perf_counter() - t0
        scores[tag] = score(dataset, view, pred_dir, WORK / name / f"eval-{tag}", test,
                            protocol_cfg.model.num_classes, protocol_cfg.data, protocol_cfg.train.include_background)
        scores[tag]["predict_s_per_image"] = predict_s / len(test)
    check = {"pairs": report.pairs_found, "usable": report.usable, "splits": report.splits,
             "suggestion": report.suggestion, "notes": report.notes,
             "plan": report.plan.to_json_dict() if newcomer is not None and report.plan else None}
    return {"fold": name, "check": check,
            "train_s": train_s, "epochs_done": result.epochs_done, "time_spent_s": info.get("time_spent_s"),
            "stopped_by_time_budget": info.get("stopped_by_time_budget"),
            "steps_done": (json.loads((run_dir / "state" / "state.json").read_text()) or {}).get("steps_done"),
            "best_val_dice": result.best_dice, "train_images": sum(v == "train" for v in labels.values()),
            "test_images": len(test), "scores": scores, "run_dir": str(run_dir)}


def aggregate(folds: list[dict]) -> dict:
    """Mean and std over folds of every numeric score."""
    out = {}
    for tag in folds[0]["scores"]:
        keys = [k for k, v in folds[0]["scores"][tag].items() if isinstance(v, (int, float))]
        out[tag] = {k: {"mean": float(np.mean([f["scores"][tag][k] for f in folds])),
                        "std": float(np.std([f["scores"][tag][k] for f in folds]))} for k in keys}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=(*DATASETS, "all"))
    parser.add_argument("--budget", type=float, help="training minutes (default: the config's train.time_budget_min;"
                        " split over the folds for isbi2012-membrane)")
    parser.add_argument("--variant", default="", help="name of this variant (results DATASET-VARIANT.json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--folds", type=int, help="run only the first N folds (isbi2012-membrane)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--test-images", type=int, help="score only the first N test images (a quick look; the "
                        "published protocol scores them all)")
    parser.add_argument("--newcomer", action="store_true",
                        help="no config: only the budget and --set, the rest planned from the data (results "
                             "DATASET-newcomer.json)")
    parser.add_argument("--work", help="folder for views, runs and reports (default benchmarks/accuracy/work)")
    parser.add_argument("--results", help="folder for the results JSON (default benchmarks/results/accuracy)")
    args = parser.parse_args(argv)
    global WORK, RESULTS
    WORK = pathlib.Path(args.work) if args.work else WORK
    RESULTS = pathlib.Path(args.results) if args.results else RESULTS
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: the accuracy benchmark needs the shared datasets beside the project.")
    datasets = DATASETS if args.dataset == "all" else (args.dataset,)
    from msunet import machine
    from msunet.config import RunConfig

    for dataset in datasets:
        config = RunConfig.from_json(HERE / "configs" / f"{dataset}.json").override(args.set)
        folds = protocol(dataset)[: args.folds] if args.folds else protocol(dataset)
        budget = args.budget if args.budget is not None else config.train.time_budget_min * len(folds)
        variant = args.variant or ("newcomer" if args.newcomer else "")
        tag = dataset + (f"-{variant}" if variant else "")
        results = []
        for fold, labels in folds:
            name = tag + (f"-{fold}" if fold else "")
            print(f"[{datetime.datetime.now():%H:%M:%S}] {name}: training {budget / len(folds):.1f} min", flush=True)
            results.append(run_fold(dataset, name, labels, config, budget / len(folds), args.quiet,
                                    newcomer=args.set if args.newcomer else None, test_images=args.test_images))
            print(json.dumps(results[-1]["scores"], indent=1), flush=True)
        record = {
            "dataset": dataset, "variant": variant or "default", "date": datetime.date.today().isoformat(),
            "machine": machine.describe(), "budget_min_total": budget,
            "overrides": args.set, "test_images_limit": args.test_images,
            "config": (json.loads((pathlib.Path(results[0]["run_dir"]) / "config.json").read_text()) if args.newcomer
                       else config.override([f"train.time_budget_min={budget / len(folds)}"]).to_dict()),
            "folds": results, "summary": aggregate(results) if len(results) > 1 else results[0]["scores"],
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{tag}.json"
        out.write_text(json.dumps(record, indent=2, default=float) + "\n")
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
