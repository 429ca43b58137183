"""Image/mask pairs of a dataset folder: discovery (by stem or pairs.csv), splits (split.csv or
seeded), mask decoding to class ids. `IGNORE = -1` marks pixels that count in no loss or metric (the
ignore label, padding, pixels rotated in from outside the image)."""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib

import numpy as np

from msunet.config import DataConfig
from msunet.data.imageio import IMAGE_SUFFIXES, is_image_file
from msunet.data.volumes import VOLUME_SUFFIXES, is_volume_only, volume_stem
from msunet.data.preprocessing import (
    DataError,
)

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
        if not (is_image_file(path) or is_volume_only(path)):
            problems.append((str(path), f"not an image file (suffix {path.suffix or 'none'!r}; nor a volume); ignored"))
            continue
        stem = volume_stem(path)  # "case.nii.gz" -> "case"; "a.png" -> "a"
        if stem in found:
            problems.append((str(path), f"same name as {found[stem].name}; keep one file per name"))
            continue
        found[stem] = path
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
        raise DataError(f"{images_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}) or volumes "
                        f"({', '.join(VOLUME_SUFFIXES)}). Add images to train on.")
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
            pairs.append(Pair(volume_stem(image), image, mask))
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
        return {volume_stem(row["name"]): row["split"].strip().lower() for row in reader}


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
def decode_mask(raw: np.ndarray, cfg: DataConfig, num_classes: int, path: str | os.PathLike = "mask",
                volume: bool = False) -> np.ndarray:
    """Decodes a mask file's array into class ids (int16), with `IGNORE` (-1) for ignored pixels.

    `volume`: `raw` is a (D, H, W) label volume (three axes, no colour channel).

    Raises:
        DataError: values outside the declared classes, or colours not in the palette.
    """
    raw = np.asarray(raw)
    encoding = cfg.mask_encoding
    if raw.ndim == 3 and not volume:
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
