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
self-contained file: images embedded)."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from msunet.atomic import write_text_atomic
from msunet.config import DataConfig
from msunet.data.imageio import image_stem, is_image_file, read_mask
from msunet.data.pairs import IGNORE, decode_mask, find_pairs, split_pairs
from msunet.data.targets import downsample_target, one_hot_target
from msunet.evaluation.report import build_report
from msunet.evaluation.scores import (
    CONVENTIONS,
    EvaluationResult,
    class_metrics,
    coarse_masks,
    find_by_stem,
    finite,
    log,
    mask_to_classes,
    soft_dice,
    summarize,
    write_metrics_csv,
)
from msunet.data.volumes import is_volume_only
from msunet.evaluation.volumes import evaluate_volume_folders, find_volume

# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------

def _predictions_without_truth(pred_dir: pathlib.Path, truth_stems: set[str]) -> list[str]:
    """Stems of predicted masks that neither are a ground-truth stem nor extend one (`NAME_s2`, ...)."""
    lonely = []
    for path in sorted(pred_dir.iterdir()):
        if not is_image_file(path) or image_stem(path) in truth_stems:
            continue
        stem = image_stem(path)
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
    stems = list(names) if names is not None else sorted(image_stem(p) for p in gt_dir.iterdir() if is_image_file(p))
    classes = [1] if num_classes == 1 else list(range(0 if include_background else 1, num_classes))
    rows, problems, pictures = [], [], {}
    for stem in stems:
        gt_path, pred_path = find_by_stem(gt_dir, stem), find_by_stem(pred_dir, stem)
        if gt_path is None or pred_path is None:
            problems.append((stem, "no prediction" if pred_path is None else "no ground truth"))
            continue
        try:
            truth = decode_mask(read_mask(gt_path, data_cfg.max_pixels), data_cfg, num_classes, gt_path)
            pred = mask_to_classes(read_mask(pred_path, data_cfg.max_pixels), num_classes)
            if pred.shape != truth.shape:
                raise ValueError(f"prediction {pred.shape[1]}x{pred.shape[0]} vs ground truth "
                                 f"{truth.shape[1]}x{truth.shape[0]}: sizes differ")
            valid = truth != IGNORE
            if roi_dir is not None:
                roi_path = find_by_stem(pathlib.Path(roi_dir), stem)
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
        try:
            coarse_found = coarse_masks(pred_dir, stem, pred_path)
        except ValueError as err:
            problems.append((stem, f"coarse predictions: {err}"))
            coarse_found = []
        for scale, name, read in coarse_found:
            target = downsample_target(full, scale, data_cfg.target_downsampling)
            cpred = mask_to_classes(read(), num_classes)
            if cpred.shape != target.shape[:2]:
                problems.append((name, f"size {cpred.shape} does not match ceil(H/{scale}) x ceil(W/{scale})"))
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
    write_metrics_csv(out / "metrics.csv", rows)
    write_text_atomic(out / "summary.json", json.dumps(finite(summary), indent=2) + "\n")
    report = build_report(summary, rows, pictures, num_classes, images_dir, pred_dir, run_dir, data_cfg)
    write_text_atomic(out / "report.html", report)
    return EvaluationResult(out, rows, summary, problems)



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

    - `evaluate(model, data_dir, out_dir, split=None, tta=None, ...)`: predicts the dataset's test
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
        if any(is_volume_only(p) for p in pathlib.Path(gt_dir).iterdir()):  # NIfTI / .npy: volumes
            return evaluate_volume_folders(pred_dir, gt_dir, out_dir, **options)
        return evaluate_folders(pred_dir, gt_dir, out_dir, **options)
    if model is None or data_dir is None:
        raise ValueError("evaluate takes model and data_dir, or pred_dir and gt_dir.")
    return evaluate_run(model, data_dir, out_dir, **options)


def evaluate_run(run, data_dir: str | os.PathLike, out_dir: str | os.PathLike, split: str | None = None,
                 tta: bool | str | None = None, tile_size: int | None = None, roi_dir: str | os.PathLike | None = None,
                 distances: bool = True, progress=None, engine: str = "keras") -> EvaluationResult:
    """Predicts a dataset's test split (else val, else all) with a run, then scores it.

    A `fov/` folder beside `images/` is used as the region of interest unless `roi_dir` is given.
    `engine`: "keras" (the model as trained), or any engine `msunet.inference.engines.open_engine`
    takes: "auto" scores what `msunet predict --model RUN` writes, "int8" the run's int8 bundle as
    exported (made once, `msunet.exporting.run_bundle`).
    """
    from msunet.inference.engines import choose_engine, predict
    from msunet.training.run_folder import LoadedRun, load_run

    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    if engine == "keras":  # the model already loaded: no second load
        predictor, summary_engine = loaded, "Keras"
    elif isinstance(run, LoadedRun):
        raise ValueError(f"a run loaded in memory is evaluated with Keras; engine {engine!r} needs its folder.")
    else:
        predictor = choose_engine(run, engine, log=log.info).open()
        summary_engine = predictor.description
    data = pathlib.Path(data_dir)
    chosen, split, split_note = choose_split(data, loaded.config.data, split)
    if split_note:
        log.warning("%s", split_note)
    out = pathlib.Path(out_dir)
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    volumes = loaded.config.model.dims == 3 or loaded.config.data.slices
    for stem in chosen:
        src = find_volume(data / "images", stem) if volumes else find_by_stem(data / "images", stem)
        link = inputs / src.name
        if not link.exists():
            link.symlink_to(src.resolve())
    summary = predict(predictor, inputs, out / "predictions", tile_size=tile_size, tta=tta, overwrite=True,
                      progress=progress)
    if roi_dir is None and (data / "fov").is_dir():
        roi_dir = data / "fov"
    if volumes:
        result = evaluate_volume_folders(out / "predictions", data / "masks", out, loaded.config.model.num_classes,
                                         loaded.config.data, names=chosen, images_dir=data / "images",
                                         run_dir=loaded.run_dir, distances=distances,
                                         include_background=loaded.config.train.include_background)
    else:
        result = evaluate_folders(out / "predictions", data / "masks", out, loaded.config.model.num_classes,
                                  loaded.config.data, roi_dir, names=chosen, images_dir=data / "images",
                                  run_dir=loaded.run_dir, distances=distances,
                                  include_background=loaded.config.train.include_background)
    result.summary["split"] = split
    result.summary["engine"] = summary_engine
    result.summary["split_note"] = split_note
    result.summary["prediction_failures"] = [{"image": p, "reason": r} for p, r in summary.failed]
    write_text_atomic(out / "summary.json", json.dumps(finite(result.summary), indent=2) + "\n")
    return result
