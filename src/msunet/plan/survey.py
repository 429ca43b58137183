"""The survey: what a dataset folder's files say, read once (channels, sizes, every mask's kind and
values or colours, object thickness, where labels sit in the image), for the planner
(`msunet.plan.planner`). Never imports keras."""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import pathlib

import numpy as np
from scipy import ndimage

from msunet.config import DataConfig
from msunet.data.imageio import ImageReadError, read_image, read_mask
from msunet.data.pairs import find_pairs, split_pairs
from msunet.data.volumes import VolumeReadError, is_volume_only, read_volume, volume_suffix

BINARY_SETS = ({0, 255}, {0, 1})

@dataclasses.dataclass
class MaskInfo:
    """What one mask file holds: its kind ("binary", "index", "palette") and values or colours."""

    path: str
    kind: str
    values: tuple[int, ...]  # class ids (binary/index) or colour codes (palette), sorted

    def describe(self) -> str:
        if self.kind == "palette":
            return f"colour (RGB) mask with {len(self.values)} colours"
        return f"{self.kind} mask, values {preview(self.values)}"


@dataclasses.dataclass
class Survey:
    """What a dataset folder's files say, read once, before any config is applied."""

    data_dir: pathlib.Path
    pairs: int
    channels: collections.Counter
    sizes: list[tuple[int, int]]
    masks: list[MaskInfo]
    colour_pixels: collections.Counter  # colour code -> pixels (palette masks)
    problems: list[tuple[str, str]]
    train_pixels: int = 0  # pixels of the images training will sample from (split.csv / val_fraction)
    object_depths: list[float] = dataclasses.field(default_factory=list)  # per sampled mask: `object_depth`
    layout: dict[int, list[float]] = dataclasses.field(default_factory=dict)  # label -> [pixels, sum row, sum col]
    dims: int = 2  # 3: a folder of volumes (sizes are (depth, height, width), train_pixels counts voxels)
    spacings: list[tuple[float, float, float]] = dataclasses.field(default_factory=list)  # (z, y, x) mm, volumes

    def skew(self) -> tuple[float, float]:
        """How far the labels sit from the image's middle, rows and columns: the pixel-weighted mean over
        labels of |mean position - 0.5| (positions as fractions of the height / width). Microscopy gives
        ~0 for both; street scenes (sky at the top, road at the bottom) give a large row skew."""
        total = sum(v[0] for v in self.layout.values())
        if not total:
            return 0.0, 0.0
        rows = sum(v[0] * abs(v[1] / v[0] - 0.5) for v in self.layout.values() if v[0]) / total
        cols = sum(v[0] * abs(v[2] / v[0] - 0.5) for v in self.layout.values() if v[0]) / total
        return float(rows), float(cols)


def preview(values, limit: int = 8) -> str:
    values = list(values)
    return ", ".join(map(str, values[:limit])) + (", ..." if len(values) > limit else "")


def _mask_info(path: str, raw: np.ndarray, ignore_label: int | None,
               volume: bool = False) -> tuple[MaskInfo, collections.Counter]:
    colours: collections.Counter = collections.Counter()
    if raw.ndim == 3 and not volume:
        rgb = raw[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        found, counts = np.unique(code, return_counts=True)
        colours.update(dict(zip(found.tolist(), counts.tolist())))
        return MaskInfo(path, "palette", tuple(found.tolist())), colours
    values = np.unique(raw)
    if ignore_label is not None:
        values = values[values != ignore_label]
    ints = values.tolist()
    if not np.issubdtype(values.dtype, np.integer) and not np.all(np.equal(np.mod(values, 1), 0)):
        return MaskInfo(path, "float", tuple(ints[:16])), colours
    ints = [int(v) for v in ints]
    kind = "binary" if any(set(ints) <= s for s in BINARY_SETS) or (len(ints) == 2 and 0 in ints) else "index"
    return MaskInfo(path, kind, tuple(ints)), colours


def _label_codes(raw: np.ndarray) -> np.ndarray:
    """One integer per pixel: the class id, or the RGB colour code of a palette mask."""
    return raw[..., :3].astype(np.int64) @ np.array([1 << 16, 1 << 8, 1]) if raw.ndim == 3 else raw.astype(np.int64)


def object_depth(raw: np.ndarray, ignore_label: int | None = None) -> float:
    """How thick a mask's objects are: the median, over the pixels of its non-zero labels, of the
    distance to the nearest pixel with another label (a stripe w px wide gives ~w/4; vessels ~1,
    a road or a large object tens). NaN when the mask has no object pixel."""
    labels = _label_codes(raw)
    objects = labels != 0
    if ignore_label is not None and raw.ndim == 2:
        objects &= labels != ignore_label
    if not objects.any():
        return math.nan
    edge = np.zeros(labels.shape, bool)  # pixels with a 4-neighbour of another label
    vertical, horizontal = labels[1:] != labels[:-1], labels[:, 1:] != labels[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    if not edge.any():
        return float(max(labels.shape))  # one label everywhere
    return float(np.median(ndimage.distance_transform_edt(~edge)[objects])) + 0.5


def label_layout(raw: np.ndarray, ignore_label: int | None = None, step: int = 4) -> dict[int, list[float]]:
    """Per label of a mask: [pixels, sum of row positions, sum of column positions], positions as
    fractions of the height and width, on every `step`-th row and column."""
    labels = _label_codes(raw)[::step, ::step]
    height, width = labels.shape
    rows = np.broadcast_to(((np.arange(height) + 0.5) / height)[:, None], labels.shape)
    cols = np.broadcast_to(((np.arange(width) + 0.5) / width)[None, :], labels.shape)
    flat = labels.ravel()
    if flat.size and 0 <= flat.min() and flat.max() < 65536:  # class ids: count them directly
        counts = np.bincount(flat)
        found = np.flatnonzero(counts)
        counts = counts[found]
        row_sums = np.bincount(flat, rows.ravel())[found]
        col_sums = np.bincount(flat, cols.ravel())[found]
    else:
        found, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        row_sums = np.bincount(inverse, rows.ravel(), minlength=len(found))
        col_sums = np.bincount(inverse, cols.ravel(), minlength=len(found))
    return {int(v): [float(n), float(r), float(c)] for v, n, r, c in zip(found, counts, row_sums, col_sums)
            if ignore_label is None or raw.ndim == 3 or v != ignore_label}


def survey(data_dir: str | os.PathLike, data_cfg: DataConfig | None = None, depth_samples: int = 32) -> Survey:
    """Reads every pair of `data_dir` once: channels and size of each image, kind and values of
    each mask. Unreadable files are listed in `problems` (as training would skip them)."""
    data_cfg = data_cfg or DataConfig()
    index = find_pairs(data_dir, data_cfg)
    if any(_is_volume(pair.image) for pair in index.pairs):
        return _survey_volumes(data_dir, data_cfg, index)
    problems = list(index.problems)
    channels: collections.Counter = collections.Counter()
    colours: collections.Counter = collections.Counter()
    sizes, masks = [], []
    train_names = {pair.name for pair in split_pairs(index, data_cfg)["train"]}
    train_pixels = 0
    depths: list[float] = []
    layout: dict[int, list[float]] = {}
    every = max(1, math.ceil(len(index.pairs) / depth_samples))
    for number, pair in enumerate(index.pairs):
        try:
            image = read_image(pair.image, data_cfg.max_pixels)
            raw = read_mask(pair.mask, data_cfg.max_pixels)
        except (ImageReadError, OSError) as err:
            problems.append((str(pair.image), str(err)))
            continue
        channels[int(image.shape[-1])] += 1
        sizes.append(tuple(image.shape[:2]))
        train_pixels += image.shape[0] * image.shape[1] if pair.name in train_names else 0
        info, found = _mask_info(str(pair.mask), raw, data_cfg.ignore_label)
        if number % every == 0:
            depth = object_depth(raw, data_cfg.ignore_label)
            if not math.isnan(depth):
                depths.append(depth)
            for label, sums in label_layout(raw, data_cfg.ignore_label).items():
                acc = layout.setdefault(label, [0.0, 0.0, 0.0])
                acc[:] = [a + b for a, b in zip(acc, sums)]
        masks.append(info)
        colours.update(found)
    return Survey(pathlib.Path(data_dir), len(index.pairs), channels, sizes, masks, colours, problems, train_pixels,
                  depths, layout)


# --------------------------------------------------------------------------------------------------
# The plan


def _is_volume(path: pathlib.Path) -> bool:
    """A NIfTI / .npy file, or a TIFF whose first series is a stack of pages."""
    if is_volume_only(path):
        return True
    if volume_suffix(path) in (".tif", ".tiff"):
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return bool(set(tif.series[0].axes) & set("ZQI"))
        except Exception:  # noqa: BLE001 - unreadable: the image reader reports it
            return False
    return False


def _survey_volumes(data_dir, data_cfg: DataConfig, index) -> Survey:
    """The survey of a folder of volumes: channels, (depth, height, width) and spacing of each, the masks'
    labels. A 2-D image among volumes is a problem (skipped), as training would skip it."""
    problems = list(index.problems)
    channels: collections.Counter = collections.Counter()
    sizes, masks, spacings = [], [], []
    train_names = {pair.name for pair in split_pairs(index, data_cfg)["train"]}
    voxels = 0
    for pair in index.pairs:
        try:
            if not _is_volume(pair.image):
                raise VolumeReadError(f"{pair.image}: a 2-D image in a folder of volumes; move it to a folder of "
                                      "images or save it as a stack of slices.")
            volume = read_volume(pair.image, max_voxels=data_cfg.max_pixels)
            labels = read_volume(pair.mask, mask=True, max_voxels=data_cfg.max_pixels)
        except (ImageReadError, OSError) as err:
            problems.append((str(pair.image), str(err)))
            continue
        channels[int(volume.array.shape[-1])] += 1
        sizes.append(volume.shape)
        spacings.append(volume.spacing or tuple(data_cfg.spacing or (1.0, 1.0, 1.0)))
        voxels += int(np.prod(volume.shape)) if pair.name in train_names else 0
        info, _ = _mask_info(str(pair.mask), labels.array, data_cfg.ignore_label, volume=True)
        masks.append(info)
    return Survey(pathlib.Path(data_dir), len(index.pairs), channels, sizes, masks, collections.Counter(), problems,
                  voxels, dims=3, spacings=spacings)
