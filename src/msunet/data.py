"""Datasets: pair discovery, splits, mask decoding, normalisation, patches, augmentation, targets.

NumPy only (no keras: `msunet.plan` and `msunet check` use it); `msunet.feeding` wraps the
patches in `keras.utils.PyDataset`s for `fit`. Mask values are decoded to class ids with `IGNORE = -1` for pixels that count in no loss or
metric (the ignore label, padding, and pixels rotated in from outside the image).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from msunet.config import DataConfig, ModelConfig
from msunet.heads import head_scale
from msunet.runtime.preprocessing import (  # noqa: F401 - the training side of one implementation
    DataError, Normalization, channel_moments, compute_normalization, downscale_image, resize_probabilities,
    to_unit_float,
)
from msunet.imageio import IMAGE_SUFFIXES, ImageReadError, is_image_file, read_image, read_mask

log = logging.getLogger(__name__)

IGNORE = -1


# --------------------------------------------------------------------------------------------------
# Pairs and splits
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Pair:
    name: str
    image: pathlib.Path
    mask: pathlib.Path | None


@dataclasses.dataclass
class PairIndex:
    """The pairs found in a dataset folder and what was wrong with the rest."""

    root: pathlib.Path
    pairs: list[Pair]
    problems: list[tuple[str, str]]  # (path, message)


def _files_by_stem(folder: pathlib.Path) -> tuple[dict[str, pathlib.Path], list[tuple[str, str]]]:
    found: dict[str, pathlib.Path] = {}
    problems = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if not is_image_file(path):
            problems.append((str(path), f"not an image file (suffix {path.suffix or 'none'!r}); ignored"))
            continue
        if path.stem in found:
            problems.append((str(path), f"same name as {found[path.stem].name}; keep one file per name"))
            continue
        found[path.stem] = path
    return found, problems


def find_pairs(data_dir: str | os.PathLike, cfg: DataConfig | None = None, require_masks: bool = True) -> PairIndex:
    """Finds image/mask pairs in `data_dir`.

    Layout: `images/` and `masks/` paired by file stem (`a.tif` with `a.png`), or the CSV named by
    `cfg.pairs_csv` with columns `image,mask` (paths relative to `data_dir`).

    Raises:
        DataError: the folder does not exist, has no `images/`, or (with masks required) no `masks/`.
    """
    cfg = cfg or DataConfig()
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder. Pass a dataset folder holding images/ and masks/.")
    if cfg.pairs_csv:
        return _pairs_from_csv(root, root / cfg.pairs_csv)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise DataError(
            f"{root}: no images/ folder. Put images in {images_dir} and masks with the same file names in "
            f"{masks_dir} (or list pairs in a CSV and set data.pairs_csv)."
        )
    images, problems = _files_by_stem(images_dir)
    if not images:
        raise DataError(f"{images_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}). Add images to train on.")
    if not masks_dir.is_dir():
        if require_masks:
            raise DataError(
                f"{root}: no masks/ folder. Add {masks_dir} with one mask per image, named like the image "
                f"(e.g. {next(iter(images.values())).stem}.png)."
            )
        return PairIndex(root, [Pair(n, p, None) for n, p in images.items()], problems)
    masks, mask_problems = _files_by_stem(masks_dir)
    problems += mask_problems
    pairs = []
    for name, image in images.items():
        if name in masks:
            pairs.append(Pair(name, image, masks[name]))
        else:
            problems.append((str(image), f"no mask: expected {masks_dir}/{name}.png (or .tif); image skipped"))
    for name, mask in masks.items():
        if name not in images:
            problems.append((str(mask), f"no image with this name in {images_dir}; mask skipped"))
    return PairIndex(root, pairs, problems)


def _pairs_from_csv(root: pathlib.Path, csv_path: pathlib.Path) -> PairIndex:
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: pairs CSV not found (data.pairs_csv). Create it with columns image,mask.")
    pairs, problems = [], []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"image", "mask"} <= set(reader.fieldnames):
            raise DataError(f"{csv_path}: needs a header with columns image,mask; found {reader.fieldnames}.")
        for line, row in enumerate(reader, start=2):
            image, mask = root / row["image"], root / row["mask"]
            missing = [str(p) for p in (image, mask) if not p.is_file()]
            if missing:
                problems.append((str(csv_path), f"line {line}: {', '.join(missing)} not found; pair skipped"))
                continue
            pairs.append(Pair(image.stem, image, mask))
    return PairIndex(root, pairs, problems)


def read_split(root: pathlib.Path) -> dict[str, str]:
    """Reads `split.csv` (`name,split`) if present: name -> "train" / "val" / "test"."""
    path = root / "split.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"name", "split"} <= set(reader.fieldnames):
            raise DataError(f"{path}: needs a header with columns name,split; found {reader.fieldnames}.")
        return {pathlib.Path(row["name"]).stem: row["split"].strip().lower() for row in reader}


def split_pairs(index: PairIndex, cfg: DataConfig) -> dict[str, list[Pair]]:
    """Splits pairs into train / val / test.

    With `split.csv`, its train/val/test labels are used; when it has no val rows, a seeded
    `val_fraction` of the train rows becomes validation. Without it, a seeded `val_fraction` of
    all pairs is validation. Test pairs never enter training.
    """
    labels = read_split(index.root)
    splits: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
    for pair in index.pairs:
        label = labels.get(pair.name, "train")
        splits[label if label in splits else "train"].append(pair)
    if not splits["val"] and cfg.val_fraction > 0 and len(splits["train"]) > 1:
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(splits["train"]))
        count = min(len(order) - 1, max(1, round(cfg.val_fraction * len(order))))
        chosen = set(order[:count].tolist())
        splits["val"] = [p for i, p in enumerate(splits["train"]) if i in chosen]
        splits["train"] = [p for i, p in enumerate(splits["train"]) if i not in chosen]
    return splits


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------
def decode_mask(raw: np.ndarray, cfg: DataConfig, num_classes: int, path: str | os.PathLike = "mask") -> np.ndarray:
    """Decodes a mask file's array into class ids (int16), with `IGNORE` (-1) for ignored pixels.

    Raises:
        DataError: values outside the declared classes, or colours not in the palette.
    """
    raw = np.asarray(raw)
    encoding = cfg.mask_encoding
    if raw.ndim == 3:
        if encoding != "palette":
            raise DataError(
                f"{path}: a colour mask, but data.mask_encoding={encoding!r}. Save masks as single-channel class ids, "
                "or set data.mask_encoding=palette and data.palette=[[r,g,b], ...]."
            )
        return _decode_palette(raw, cfg, path)
    ignore = np.zeros(raw.shape, bool) if cfg.ignore_label is None else raw == cfg.ignore_label
    values = np.unique(raw[~ignore]) if ignore.any() else np.unique(raw)
    if encoding == "auto":
        encoding = "binary" if num_classes == 1 else "index"
    if encoding == "binary":
        if num_classes != 1:
            raise DataError(f"{path}: data.mask_encoding='binary' needs model.num_classes=1, got {num_classes}.")
        if len(values) > 2 and not set(values.tolist()) <= {0, 1, 255}:
            raise DataError(
                f"{path}: a binary mask should hold two values (0 and 255, or 0 and 1); found {len(values)} values "
                f"({_preview(values)}). For class-index masks set model.num_classes and data.mask_encoding=index."
            )
        out = (raw != 0).astype(np.int16)
    elif encoding == "index":
        classes = max(num_classes, 2)
        bad = values[(values < 0) | (values >= classes)]
        if bad.size:
            hint = " Set data.ignore_label to skip a void value." if cfg.ignore_label is None else ""
            raise DataError(
                f"{path}: mask values {_preview(bad)} are outside the {classes} classes 0..{classes - 1} "
                f"(model.num_classes={num_classes}).{hint}"
            )
        out = raw.astype(np.int16)
    else:
        raise DataError(f"{path}: data.mask_encoding='palette' needs colour (RGB) masks; this one is single-channel.")
    out[ignore] = IGNORE
    return out


def _decode_palette(raw: np.ndarray, cfg: DataConfig, path) -> np.ndarray:
    rgb = raw[..., :3].astype(np.int32)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.full(code.shape, -2, np.int16)
    for cls, (r, g, b) in enumerate(cfg.palette or ()):
        out[code == ((r << 16) | (g << 8) | b)] = cls
    if cfg.ignore_label is not None:
        out[out == cfg.ignore_label] = IGNORE
    unknown = out == -2
    if unknown.any():
        colours = np.unique(code[unknown])[:5]
        text = ", ".join(f"[{c >> 16}, {(c >> 8) & 255}, {c & 255}]" for c in colours)
        raise DataError(f"{path}: colours {text} are not in data.palette; add them or fix the mask.")
    return out


def _preview(values: np.ndarray, limit: int = 8) -> str:
    items = [str(v) for v in np.asarray(values).ravel()[:limit].tolist()]
    return ", ".join(items) + (", ..." if np.asarray(values).size > limit else "")


# --------------------------------------------------------------------------------------------------
# Loading a split into memory
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Sample:
    name: str
    image: np.ndarray  # (H, W, C) raw dtype
    mask: np.ndarray  # (H, W) int16 class ids, IGNORE for ignored
    foreground: np.ndarray  # (N, 2) coordinates of non-background pixels (subsampled)


def load_samples(
    pairs: Sequence[Pair], data_cfg: DataConfig, model_cfg: ModelConfig, problems: list | None = None
) -> list[Sample]:
    """Reads and decodes pairs; a pair that cannot be used is reported in `problems` and skipped."""
    samples = []
    rng = np.random.default_rng(data_cfg.seed)
    for pair in pairs:
        try:
            image = read_image(pair.image, data_cfg.max_pixels)
            if image.shape[-1] != model_cfg.in_channels:
                raise DataError(
                    f"{pair.image}: {image.shape[-1]} channel(s), but model.in_channels={model_cfg.in_channels}. "
                    f"Set model.in_channels={image.shape[-1]} or convert the image."
                )
            mask = decode_mask(read_mask(pair.mask, data_cfg.max_pixels), data_cfg, model_cfg.num_classes, pair.mask)
            if mask.shape != image.shape[:2]:
                raise DataError(
                    f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but the image {pair.image.name} is "
                    f"{image.shape[1]}x{image.shape[0]}; masks must match their image's size."
                )
        except (ImageReadError, DataError) as err:
            if problems is None:
                raise
            problems.append((str(pair.mask if "mask" in str(err).split(":")[0] else pair.image), str(err)))
            continue  # the caller reports `problems` (once each)
        if data_cfg.resample_step > 1:
            image = downscale_image(image, data_cfg.resample_step)
            mask = downscale_labels(mask, data_cfg.resample_step, model_cfg.num_classes)
        fg = np.argwhere(mask > 0)
        if len(fg) > 20000:
            fg = fg[rng.choice(len(fg), 20000, replace=False)]
        samples.append(Sample(pair.name, image, mask, fg.astype(np.int32)))
    return samples


# --------------------------------------------------------------------------------------------------
# Patch sampling and augmentation
# --------------------------------------------------------------------------------------------------
def sample_patch(
    sample: Sample, size: int, cfg: DataConfig, rng: np.random.Generator, augment: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size) patch of unit-scaled image and class ids, jointly augmented.

    Geometry (zoom, rotation, flips, 90-degree turns) is one mapping from patch to image
    coordinates: the image is interpolated linearly, the mask by nearest neighbour (no value that
    is not a class), and pixels from outside the image are zero in the image and IGNORE in the mask,
    which also pads images smaller than a patch.
    """
    height, width = sample.mask.shape
    if cfg.foreground_oversample > 0 and len(sample.foreground) and rng.random() < cfg.foreground_oversample:
        cy, cx = sample.foreground[rng.integers(len(sample.foreground))] + rng.uniform(-size / 4, size / 4, 2)
    else:
        cy = rng.uniform(min(size / 2, height / 2), max(height - size / 2, height / 2))
        cx = rng.uniform(min(size / 2, width / 2), max(width - size / 2, width / 2))
    angle = math.radians(rng.uniform(-cfg.rotate, cfg.rotate)) if augment and cfg.rotate > 0 else 0.0
    zoom = float(np.exp(rng.uniform(math.log(1 - cfg.scale), math.log(1 + cfg.scale)))) if augment and cfg.scale > 0 else 1.0
    # Crop (or warp) in the image's own dtype, then scale the patch: converting the whole image per
    # patch cost ~100 MB of float work per HRF patch.
    if angle == 0.0 and zoom == 1.0:
        image, mask = _crop(sample.image, sample.mask, int(round(cy - size / 2)), int(round(cx - size / 2)), size)
    else:
        image, mask = _warp(sample.image, sample.mask, cy, cx, size, angle, zoom)
    image *= _unit_scale(sample.image.dtype)
    if augment:
        if cfg.flip:
            up_down, left_right = rng.random() < 0.5, rng.random() < 0.5  # both drawn: same stream for any mode
            if up_down and cfg.flip in (True, "vertical"):
                image, mask = image[::-1], mask[::-1]
            if left_right and cfg.flip in (True, "horizontal"):
                image, mask = image[:, ::-1], mask[:, ::-1]
        if cfg.rot90:
            k = int(rng.integers(4))
            image, mask = np.rot90(image, k), np.rot90(mask, k)
        image = _intensity(image, cfg, rng)
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(mask)


def _unit_scale(dtype) -> float:
    """The factor `to_unit_float` applies: 1 / dtype max for integers, 1 for floats."""
    return 1.0 / float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def _crop(image: np.ndarray, mask: np.ndarray, top: int, left: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size) float32 window (values in the image's own scale) and its mask, padded outside."""
    out_image = np.zeros((size, size, image.shape[-1]), np.float32)
    out_mask = np.full((size, size), IGNORE, np.int16)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size, mask.shape[0]), min(left + size, mask.shape[1])
    if y1 > y0 and x1 > x0:
        out_image[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
        out_mask[y0 - top : y1 - top, x0 - left : x1 - left] = mask[y0:y1, x0:x1]
    return out_image, out_mask


def _warp(image, mask, cy, cx, size, angle, zoom):
    # Only the neighbourhood that the rotated, zoomed patch can reach is interpolated.
    reach = int(math.ceil(size * zoom * 0.75)) + 2
    top, left = int(cy) - reach, int(cx) - reach
    sub_image, sub_mask = _crop(image, mask, top, left, 2 * reach)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    cos, sin = math.cos(angle) * zoom, math.sin(angle) * zoom
    src_y = cos * yy - sin * xx + (cy - top)
    src_x = sin * yy + cos * xx + (cx - left)
    coords = np.stack([src_y, src_x])
    out_mask = ndimage.map_coordinates(sub_mask, coords, order=0, mode="constant", cval=IGNORE).astype(np.int16)
    out_image = np.stack(
        [ndimage.map_coordinates(sub_image[..., c], coords, order=1, mode="constant", cval=0.0) for c in range(image.shape[-1])],
        axis=-1,
    )
    return out_image, out_mask


def _intensity(image: np.ndarray, cfg: DataConfig, rng: np.random.Generator) -> np.ndarray:
    image = np.asarray(image, np.float32)
    if cfg.gamma > 0:
        gamma = float(np.exp(rng.uniform(math.log(1 - cfg.gamma * 0.9), math.log(1 + cfg.gamma))))
        image = np.power(np.clip(image, 0.0, None), gamma)
    if cfg.contrast > 0:
        factor = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        mean = image.mean(axis=(0, 1), keepdims=True)
        image = (image - mean) * factor + mean
    if cfg.brightness > 0:
        image = image + rng.uniform(-cfg.brightness, cfg.brightness)
    return image


# --------------------------------------------------------------------------------------------------
# Multi-scale targets
# --------------------------------------------------------------------------------------------------
def one_hot_target(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W, K + 1): class probabilities (K = 1 foreground channel for binary) and a validity channel."""
    valid = mask != IGNORE
    if num_classes == 1:
        probs = (mask == 1)[..., None]
    else:
        probs = mask[..., None] == np.arange(num_classes, dtype=mask.dtype)
    return np.concatenate([probs & valid[..., None], valid[..., None]], axis=-1).astype(np.float32)


def downsample_target(target: np.ndarray, scale: int, rule: str = "average") -> np.ndarray:
    """Target of the head at `scale`: ceil(H/s) x ceil(W/s), aligned with the model's heads.

    Coarse pixel (i, j) covers fine pixels [s*i, s*i+s) x [s*j, s*j+s) (the model's ceil-rounded
    downsampling); blocks at the border are averaged over the pixels that exist.

    Rules:
        "average": class fractions over the valid pixels of the block (soft targets); a thin
            vessel keeps its mass at every scale. The validity channel is the valid fraction.
        "nearest": the block's top-left pixel.
        "max": a class is present if any valid pixel of the block has it (renormalised to sum 1).
    """
    if scale == 1:
        return target
    height, width, channels = target.shape
    out_h, out_w = -(-height // scale), -(-width // scale)
    if rule == "nearest":
        return np.ascontiguousarray(target[::scale, ::scale])
    padded = np.zeros((out_h * scale, out_w * scale, channels), np.float32)
    padded[:height, :width] = target
    blocks = padded.reshape(out_h, scale, out_w, scale, channels)
    valid = blocks[..., -1]
    probs = blocks[..., :-1]
    valid_count = valid.sum(axis=(1, 3))
    if rule == "average":
        sums = probs.sum(axis=(1, 3))
        out = sums / np.maximum(valid_count, 1.0)[..., None]
    elif rule == "max":
        out = probs.max(axis=(1, 3))
        if channels - 1 > 1:
            out = out / np.maximum(out.sum(-1, keepdims=True), 1.0)
    else:
        raise ValueError(f"downsample_target: unknown rule {rule!r}; valid: 'average', 'nearest', 'max'.")
    # Validity: the fraction of the block's real (inside-image) pixels that are not ignored.
    inside = np.zeros((out_h * scale, out_w * scale), np.float32)
    inside[:height, :width] = 1.0
    inside_count = inside.reshape(out_h, scale, out_w, scale).sum(axis=(1, 3))
    valid_frac = valid_count / np.maximum(inside_count, 1.0)
    return np.concatenate([out, valid_frac[..., None]], axis=-1).astype(np.float32)


def multiscale_targets(
    mask: np.ndarray, model_cfg: ModelConfig, rule: str = "average"
) -> dict[str, np.ndarray]:
    """Targets for every head of `model_cfg`, each of its own size: name -> (h, w, K + 1)."""
    full = one_hot_target(mask, model_cfg.num_classes)
    targets = {}
    for name in model_cfg.head_names:
        targets[name] = downsample_target(full, head_scale(name), rule)
    return targets


def foreground_survival(mask: np.ndarray, scale: int, rule: str) -> dict[str, float]:
    """How a binary mask's foreground fares at `scale` under `rule` (for choosing the rule).

    Returns:
        survival: share of foreground pixels whose coarse cell still carries foreground (> 0);
        mass_ratio: foreground mass at the coarse scale (soft values spread over their blocks) / fine count.
    """
    target = one_hot_target((mask > 0).astype(np.int16), 1)
    coarse = downsample_target(target, scale, rule)[..., 0]
    fine_fg = mask > 0
    if not fine_fg.any():
        return {"survival": 1.0, "mass_ratio": 1.0}
    cell = coarse.repeat(scale, 0).repeat(scale, 1)[: mask.shape[0], : mask.shape[1]]
    survival = float((cell[fine_fg] > 0).mean())
    mass = float(cell.sum()) / float(fine_fg.sum())  # each coarse value spread over its block's real pixels
    return {"survival": survival, "mass_ratio": mass}


def batch_targets(masks: Sequence[np.ndarray], model_cfg: ModelConfig, rule: str) -> dict[str, np.ndarray]:
    per_head: dict[str, list[np.ndarray]] = {name: [] for name in model_cfg.head_names}
    for mask in masks:
        for name, target in multiscale_targets(mask, model_cfg, rule).items():
            per_head[name].append(target)
    return {name: np.stack(values) for name, values in per_head.items()}


def fixed_patches(
    samples: Sequence[Sample], size: int, limit: int = 512, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Non-overlapping tiles covering each image (padded at the border), at most `limit` in all."""
    images, masks = [], []
    for sample in samples:
        unit = to_unit_float(sample.image)
        height, width = sample.mask.shape
        for top in range(0, height, size):
            for left in range(0, width, size):
                image, mask = _crop(unit, sample.mask, top, left, size)
                images.append(image)
                masks.append(mask)
    if len(images) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(images), limit, replace=False))
        images = [images[i] for i in keep]
        masks = [masks[i] for i in keep]
    return images, masks


CALIBRATION_FILE = "calibration.npz"  # in a run folder: training patches for int8 export calibration


def calibration_patches(samples: Sequence[Sample], size: int, count: int = 32, seed: int = 0) -> np.ndarray:
    """Up to `count` training patches (one random window from each of up to `count` random images),
    on the [0, 1] scale before normalisation, as float16 (N, size, size, C): what `msunet export
    --int8` calibrates activation ranges on, kept in the run so that export needs no data folder."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(samples))[:count]
    patches = []
    for i in np.sort(chosen):
        sample = samples[int(i)]
        height, width = sample.mask.shape
        top = int(rng.integers(0, max(height - size, 0) + 1))
        left = int(rng.integers(0, max(width - size, 0) + 1))
        image, _ = _crop(sample.image, sample.mask, top, left, size)
        patches.append(image * _unit_scale(sample.image.dtype))
    return np.stack(patches).astype(np.float16)


# --------------------------------------------------------------------------------------------------
# Reduced resolution (data.resample): labels down for training (images: msunet.runtime.preprocessing)
# --------------------------------------------------------------------------------------------------
def downscale_labels(mask: np.ndarray, step: int, num_classes: int) -> np.ndarray:
    """Class ids at ceil(H/step) x ceil(W/step): each block's majority class among its valid
    pixels; IGNORE where most of the block is ignored."""
    if step == 1:
        return mask
    soft = downsample_target(one_hot_target(mask, num_classes), step, "average")
    probs, valid = soft[..., :-1], soft[..., -1]
    labels = (probs[..., 0] >= 0.5).astype(np.int16) if num_classes == 1 else probs.argmax(-1).astype(np.int16)
    return np.where(valid >= 0.5, labels, IGNORE).astype(np.int16)
