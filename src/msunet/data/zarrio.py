"""Reading Zarr images: OME-Zarr (OME-NGFF 0.4 and 0.5) stores and plain Zarr arrays, window by window,
and their label images as masks. Needs `zarr` (`pip install 'msunet[omezarr]'`); NumPy otherwise.

A store is a folder whose name ends in `.zarr` (`slide.ome.zarr`, `scene.zarr`). Its image is the first
multiscale's finest level (`multiscales[0].datasets[0]`), its axes named by the metadata: `c` becomes the
last axis, `t` and `z` of one plane are dropped (a stack of several planes is refused: msunet predicts
2-D images from Zarr), so every image is an (H, W, C) array-like read only where it is sliced. A plain
Zarr array (no NGFF metadata) is (y, x), (y, x, c), or (c, y, x) when its first axis has at most 4 entries
and its last more. As a mask (ground truth or a prediction), a store gives its label image
(`labels/mask`, else the first in `labels/`'s list) and every level of it with its scale, or, without
labels, its image's single channel.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

ZARR_SUFFIXES = (".ome.zarr", ".zarr")
BAND_ROWS = 512  # rows read at a time (at least those asked for)


class ZarrReadError(ValueError):
    """A store msunet cannot read; the message names it and the fix (an `ImageReadError` for the callers)."""


def is_zarr_store(path: str | os.PathLike) -> bool:
    """A folder named `*.zarr` (`*.ome.zarr`): a Zarr store, read as one image."""
    path = pathlib.Path(path)
    return path.name.lower().endswith(".zarr") and path.is_dir()


def zarr_stem(path: str | os.PathLike) -> str:
    """"slide.ome.zarr" -> "slide"."""
    name = pathlib.Path(path).name
    suffix = next((s for s in ZARR_SUFFIXES if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)] if suffix else pathlib.Path(name).stem


def _zarr(path):
    try:
        import zarr
    except ImportError as err:
        raise ZarrReadError(f"{path}: reading Zarr stores needs zarr: pip install 'msunet[omezarr]' "
                            "(or pip install zarr).") from err
    return zarr


def _open(path):
    zarr = _zarr(path)
    try:
        return zarr.open(str(path), mode="r")
    except Exception as err:  # noqa: BLE001 - any failure to open is the store's problem
        raise ZarrReadError(f"{path}: not a readable Zarr store ({str(err).splitlines()[0][:200] or type(err).__name__}); "
                            "check that the folder holds zarr.json or .zgroup / .zarray metadata.") from err


def _multiscales(attrs) -> list:
    """NGFF 0.4 keeps `multiscales` at the top of the attributes, 0.5 under `ome`."""
    return list(attrs.get("multiscales") or dict(attrs.get("ome") or {}).get("multiscales") or [])


def _axes(multiscale: dict, ndim: int, path) -> list[str]:
    axes = multiscale.get("axes")
    if not axes:  # NGFF 0.3 and earlier: 5-D t, c, z, y, x
        axes = ["t", "c", "z", "y", "x"][-ndim:]
    names = [str(a["name"] if isinstance(a, dict) else a).lower() for a in axes]
    if len(names) != ndim or "y" not in names or "x" not in names:
        raise ZarrReadError(f"{path}: axes {names} do not name the {ndim} dimensions with y and x; "
                            "the store's multiscales metadata is inconsistent.")
    return names


def _scale(dataset: dict, axes: list[str]) -> float:
    for transform in dataset.get("coordinateTransformations") or []:
        if transform.get("type") == "scale":
            return float(transform["scale"][axes.index("y")])
    return 1.0


class ZarrImage:
    """An (H, W, C) view of a Zarr array whose axes are named. `image[y0:y1, x0:x1]` reads a band of whole rows
    (at least `band_rows`) and keeps it, so the windows read left to right along a row of tiles decode each
    chunk about once; the resident memory is the band, never the image."""

    ndim = 3

    def __init__(self, array, axes: list[str], path, band_rows: int | None = None):
        self.array, self.axes, self.path, self.band_rows = array, axes, path, band_rows or BAND_ROWS
        for name, size in zip(axes, array.shape):
            if name not in ("y", "x", "c") and size != 1:
                raise ZarrReadError(f"{path}: its {name!r} axis holds {size} planes; msunet predicts 2-D images from "
                                    "Zarr: write one plane per store (or predict the volume as NIfTI / TIFF stack).")
        channels = array.shape[axes.index("c")] if "c" in axes else 1
        self.shape = (int(array.shape[axes.index("y")]), int(array.shape[axes.index("x")]), int(channels))
        self.dtype = np.dtype(array.dtype)
        self._band_start, self._band = 0, np.empty((0, *self.shape[1:]), self.dtype)

    def _read_rows(self, start: int, stop: int) -> np.ndarray:
        index = tuple(slice(start, stop) if a == "y" else slice(None) if a in ("x", "c") else 0 for a in self.axes)
        block = np.asarray(self.array[index])
        kept = [a for a in self.axes if a in ("y", "x", "c")]
        if "c" not in kept:
            block, kept = block[..., None], [*kept, "c"]
        return np.moveaxis(block, [kept.index("y"), kept.index("x"), kept.index("c")], [0, 1, 2])

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if not isinstance(key[0], slice) or key[0].step not in (None, 1):
            raise IndexError("a Zarr image is read by a contiguous row slice first, e.g. image[y0:y1, x0:x1]")
        start, stop, _ = key[0].indices(self.shape[0])
        if not (self._band_start <= start and stop <= self._band_start + len(self._band)):
            self._band_start = start
            self._band = self._read_rows(start, min(self.shape[0], max(stop, start + self.band_rows)))
        return self._band[(slice(start - self._band_start, stop - self._band_start), *key[1:])]

    def __array__(self, dtype=None, copy=None):
        array = self[:]
        return array if dtype is None else array.astype(dtype)


def _level(group, multiscale: dict, index: int, path) -> tuple[float, ZarrImage]:
    dataset = multiscale["datasets"][index]
    array = group[dataset["path"]]
    axes = _axes(multiscale, array.ndim, path)
    return _scale(dataset, axes), ZarrImage(array, axes, path)


def _plain_axes(shape: tuple[int, ...], path) -> list[str]:
    if len(shape) == 2:
        return ["y", "x"]
    if len(shape) == 3:
        return ["c", "y", "x"] if shape[0] <= 4 < shape[-1] else ["y", "x", "c"]
    raise ZarrReadError(f"{path}: a Zarr array of {len(shape)} dimensions without OME-NGFF axes; msunet reads (y, x), "
                        "(y, x, c) or (c, y, x), or an OME-Zarr store whose axes are named.")


def open_zarr_image(path: str | os.PathLike) -> ZarrImage:
    """The image of a store (its finest level), read lazily."""
    node = _open(path)
    if hasattr(node, "shape"):  # a bare array
        return ZarrImage(node, _plain_axes(node.shape, path), path)
    multiscales = _multiscales(node.attrs)
    if not multiscales:
        raise ZarrReadError(f"{path}: a Zarr group without OME-NGFF `multiscales` metadata; write the image as "
                            "OME-Zarr (ome-zarr-py, bioformats2raw) or as a bare Zarr array.")
    return _level(node, multiscales[0], 0, path)[1]


def label_levels(path: str | os.PathLike) -> list[tuple[int, ZarrImage]]:
    """A store as a mask: (scale, level) for every level of its label image, finest first (scale 1, 2, 4, ...
    relative to the finest); a store without labels: its image, one level, which must have one channel."""
    node = _open(path)
    if hasattr(node, "shape") or "labels" not in node:
        image = open_zarr_image(path)
        if image.shape[-1] != 1:
            raise ZarrReadError(f"{path}: no `labels/` group and an image of {image.shape[-1]} channels; a mask "
                                "store holds a label image (labels/NAME) or one channel.")
        return [(1, image)]
    names = list(node["labels"].attrs.get("labels") or dict(node["labels"].attrs.get("ome") or {}).get("labels") or [])
    if not names:
        raise ZarrReadError(f"{path}: its `labels/` group lists no label image (attribute `labels`).")
    name = "mask" if "mask" in names else names[0]
    group = node["labels"][name]
    multiscales = _multiscales(group.attrs)
    if not multiscales:
        raise ZarrReadError(f"{path}: the label image labels/{name} has no `multiscales` metadata.")
    levels = [_level(group, multiscales[0], i, path) for i in range(len(multiscales[0]["datasets"]))]
    finest = levels[0][0]
    return [(round(scale / finest), level) for scale, level in levels]
