"""What prediction writes besides PNG masks: class colours, masks from probabilities, overlays, and
huge results streamed band by band to tiled TIFF (atomically). NumPy and tifffile only."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
import tifffile

from msunet.atomic import atomic_path
from msunet.data.imageio import RowBandReader, write_tiff
from msunet.data.preprocessing import to_unit_float
from msunet.heads import file_suffix

OVERLAY_MAX_SIDE = 4096  # overlays of larger images are subsampled to this side...
STREAMED_OVERLAY_MAX_SIDE = 2048  # ...and of streamed (huge) images to an overview of this side


# Class colours for overlays and indexed masks (class 0 black); tab10-like, then cycled.
PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190], [0, 128, 128]], np.uint8)


def class_palette(num_classes: int) -> np.ndarray:
    reps = -(-max(num_classes, 2) // len(PALETTE))
    return np.tile(PALETTE, (reps, 1))[: max(num_classes, 2)]


def probabilities_to_mask(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 mask: 0/255 for binary (one channel), class ids for multi-class."""
    if probs.shape[-1] == 1:
        return np.where(probs[..., 0] >= threshold, 255, 0).astype(np.uint8)
    return np.argmax(probs, axis=-1).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture of `mask` over `image`: filled classes at `alpha` plus 1-px contours.

    The image is contrast-stretched between its 1st and 99th percentiles (taken on a subsample) and
    worked on in place, so a 4096x4096 overlay needs about three float32 copies of one channel set.
    """
    rgb = to_unit_float(image)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    elif rgb.shape[-1] > 3:
        rgb = np.ascontiguousarray(rgb[..., :3])
    stride = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))
    low, high = np.percentile(rgb[::stride, ::stride], (1, 99))
    rgb -= low
    rgb /= max(high - low, 1e-6)
    np.clip(rgb, 0, 1, out=rgb)
    labels = (mask > 0).astype(np.uint8) if num_classes == 1 else mask.astype(np.int32)
    if num_classes > 1:
        labels = np.where((labels >= 0) & (labels < num_classes), labels, 0)  # void / unknown values: not drawn
    if labels.shape != rgb.shape[:2]:  # a coarse mask: nearest-upsample for display
        ry, rx = -(-rgb.shape[0] // labels.shape[0]), -(-rgb.shape[1] // labels.shape[1])
        labels = labels.repeat(ry, 0).repeat(rx, 1)[: rgb.shape[0], : rgb.shape[1]]
    colours = class_palette(max(num_classes, 2)).astype(np.float32) / 255.0
    if num_classes == 1:
        colours[1] = (0.1, 1.0, 0.25)  # green: visible on grey (EM), red (fundus) and colour images
    fg = labels > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours[labels[fg]]
    edge = fg & ~_eroded(fg)
    rgb[edge] = colours[labels[edge]]
    rgb *= 255
    return rgb.astype(np.uint8)


def _eroded(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by the 4-neighbour cross, outside counted as set (scipy's border_value=1)."""
    padded = np.pad(mask, 1, constant_values=True)
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])


def band_view(array):
    """Memory-mapped results are read through a band reader: touched pages of a map count as resident."""
    if isinstance(array, np.memmap):
        return RowBandReader(array.filename, array.offset, array.shape, array.dtype)
    return array


def subsample(array, step: int) -> np.ndarray:
    """Every `step`-th pixel of a (lazily read) array, read in row bands aligned to `step`."""
    array = band_view(array)
    rows = step * max(1, 1024 // step)
    # .copy(): a strided view would keep its whole band alive until the end (the whole image, in all).
    parts = [np.asarray(array[r : min(r + rows, array.shape[0])])[::step, ::step].copy()
             for r in range(0, array.shape[0], rows)]
    return np.concatenate(parts, axis=0)


TILE = 256  # tiled TIFF outputs: 256 x 256 tiles; overviews halve until the smallest fits one tile


def _tiles(reader, transform, dtype, tile: int = TILE):
    """Tiles (row-major) of `transform(row band)` for tifffile's tiled writer; one band in memory."""
    height, width = reader.shape[:2]
    for top in range(0, height, tile):
        band = transform(np.asarray(reader[top : min(top + tile, height)]))
        for left in range(0, width, tile):
            block = np.zeros((tile, tile, *band.shape[2:]), dtype)
            part = band[:, left : left + tile]
            block[: part.shape[0], : part.shape[1]] = part
            yield block


def overview_factors(height: int, width: int, tile: int = TILE) -> list[int]:
    """The overview levels of a tiled output (2, 4, 8, ...): halving until the level fits one tile, as GDAL's
    COG driver does; none for an output of one tile."""
    factors, factor = [], 2
    while max(-(-height // (factor // 2)), -(-width // (factor // 2))) > tile:  # the level above is over a tile
        factors.append(factor)
        factor *= 2
    return factors


class Decimated:
    """The nearest-neighbour overview of a (lazily read) (H, W[, C]) array at 1/`factor`: ceil(H/f) x
    ceil(W/f) pixels, pixel i from source pixel min(i*f + f//2, H-1) (the centre-most, as GDAL's
    `-r nearest`), read one source row at a time, so a 20000 x 20000 map is never in memory whole.
    Masks decimated stay class ids (never a blend of two classes)."""

    def __init__(self, array, factor: int):
        if isinstance(array, np.memmap):  # one pread per row: touched pages of a map count as resident
            array = RowBandReader(array.filename, array.offset, array.shape, array.dtype, band_rows=1)
        self.source = array
        height, width = array.shape[:2]
        self.rows = np.minimum(np.arange(-(-height // factor)) * factor + factor // 2, height - 1)
        self.cols = np.minimum(np.arange(-(-width // factor)) * factor + factor // 2, width - 1)
        self.shape = (len(self.rows), len(self.cols), *array.shape[2:])

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        return np.stack([np.asarray(self.source[r : r + 1])[0][self.cols] for r in self.rows[start:stop]])


def _write_tiled_tiff(path: pathlib.Path, reader, transform, dtype, channels: int | None,
                      extratags: list | None = None) -> None:
    """Streams `transform` of a (memory-mapped) result to a tiled, zlib-compressed TIFF with its overviews,
    atomically (`extratags`: e.g. a GeoTIFF's georeference, `msunet.data.geo`, on the full resolution).

    The layout of a Cloud-Optimized GeoTIFF (OGC 21-026): 256 x 256 tiles, then reduced-resolution
    images (NewSubfileType 1) at 1/2, 1/4, ... down to one tile, in the IFD chain, finest first; each
    level is read back from the result in bands (nearest, `Decimated`), so memory stays one band.
    """
    height, width = reader.shape[:2]
    shape = (height, width) if channels is None else (height, width, channels)
    factors = overview_factors(height, width)
    size = height * width * (channels or 1) * np.dtype(dtype).itemsize * 4 // 3  # with overviews, uncompressed
    options = {"dtype": dtype, "tile": (TILE, TILE), "compression": "zlib", "photometric": "minisblack",
               "planarconfig": "contig" if (channels or 1) > 1 else None}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=size > 2**32 - 2**25) as tif:
        tif.write(_tiles(band_view(reader), transform, dtype), shape=shape, extratags=extratags or (), **options)
        for factor in factors:
            level = Decimated(reader, factor)
            tif.write(_tiles(level, transform, dtype), shape=(*level.shape[:2], *shape[2:]), subfiletype=1,
                      **options)


def stream_mask_tiff(path: pathlib.Path, probs, threshold: float, extratags: list | None = None) -> None:
    """Writes the mask of a (memory-mapped) probability map as a tiled TIFF, band by band."""
    _write_tiled_tiff(path, probs, lambda band: probabilities_to_mask(band, threshold), np.uint8, None, extratags)


def write_probabilities(path: pathlib.Path, probs, extratags: list | None = None) -> None:
    if isinstance(probs, np.memmap) or extratags:
        _write_tiled_tiff(path, probs, lambda band: np.asarray(band, np.float32), np.float32, probs.shape[-1],
                          extratags)
    else:
        write_tiff(path, np.asarray(probs, np.float32))


def head_paths(out_dir: pathlib.Path, stem: str, heads: Sequence[str], ext: str, prob_ext: str | None
               ) -> dict[str, pathlib.Path]:
    """The files one input's outputs go to: each head's mask (`stem{suffix}{ext}`), its probabilities
    (`stem{suffix}_prob{prob_ext}`, unless None) and the overlay (`stem_overlay.png`)."""
    paths = {}
    for head in heads:
        suffix = file_suffix(head)
        paths[head] = out_dir / f"{stem}{suffix}{ext}"
        if prob_ext:
            paths[f"{head}:prob"] = out_dir / f"{stem}{suffix}_prob{prob_ext}"
    paths["overlay"] = out_dir / f"{stem}_overlay.png"
    return paths


def pending_outputs(paths: dict[str, pathlib.Path], options) -> tuple[dict[str, pathlib.Path], list[pathlib.Path]]:
    """(the outputs still to write, every output of the input) for `PredictOptions` `options`: without
    the overlay unless asked for; without `overwrite`, what exists is kept (a deleted mask or newly asked
    probabilities are written, the rest stays)."""
    if not options.overlay_images:
        paths = {k: p for k, p in paths.items() if k != "overlay"}
    outputs = list(paths.values())
    if not options.overwrite:
        paths = {k: p for k, p in paths.items() if not p.exists()}
    return paths, outputs
