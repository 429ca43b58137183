"""Tiled prediction with blended overlaps, for any image size and several output scales. NumPy only.

`predict_tiled(predict_fn, image, ...)` covers the image with windows of a fixed size (evenly
spread, the last flush with the border), runs `predict_fn` on batches of tiles and blends the
overlaps with a Gaussian importance map (sigma = tile/8, as nnU-Net and MONAI do; no zero weights)
or constant weights. Every output is stitched at its own resolution: a head at scale s (1/s of
the input) is accumulated on a ceil(H/s) x ceil(W/s) canvas. For that, tile origins are multiples
of the coarsest scale; the image is padded at the bottom/right as needed and the padding is cropped
from every result.

Memory stays bounded by the tile batch, not the image: the source is read tile by tile (any
array-like with NumPy slicing: `numpy.memmap`, `msunet.runtime.tiling.RowBandReader`, a zarr store), the
accumulators hold only the rows that later windows can still reach (windows go in row-major order),
and finished rows go to the result: an array in memory, or, `out_of_core`, a raw file appended
sequentially and returned as a read-only `numpy.memmap`. This module never imports keras.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

OUT_OF_CORE_PIXELS = 64_000_000  # above this many pixels, accumulate in memory-mapped files


def window_starts(length: int, tile: int, overlap: float, align: int = 1) -> list[int]:
    """Start offsets of windows of size `tile` covering `length`.

    Windows are evenly spread with at least `overlap` (fraction of `tile`) between neighbours; the
    first starts at 0 and the last ends exactly at `length` (flush with the border). Starts are
    multiples of `align` (then `length - tile` must be one too).

    Example:
    ```python
    window_starts(100, 40, 0.5)  # [0, 20, 40, 60]
    ```
    """
    if tile <= 0 or not 0 <= overlap < 1:
        raise ValueError(f"window_starts: tile must be > 0 and 0 <= overlap < 1, received tile={tile}, overlap={overlap}.")
    if length <= tile:
        return [0]
    span = length - tile
    if span % align:
        raise ValueError(f"window_starts: length - tile = {span} is not a multiple of align={align}.")
    step = max(tile * (1.0 - overlap), 1.0)
    count = int(math.ceil(span / step)) + 1
    units = span // align
    return sorted({int(round(i * units / (count - 1))) * align for i in range(count)})


@functools.lru_cache(maxsize=16)
def gaussian_importance(height: int, width: int, sigma_scale: float = 1 / 8) -> np.ndarray:
    """Gaussian weights of a (height, width) tile: 1 at the centre, sigma = side * sigma_scale.

    Zeros are replaced by the smallest non-zero weight so that every pixel of every tile counts
    (nnU-Net's rule). Cached: the same tile shape returns the same (read-only) array.
    """
    ys = np.arange(height, dtype=np.float64) - (height - 1) / 2
    xs = np.arange(width, dtype=np.float64) - (width - 1) / 2
    gy = np.exp(-0.5 * (ys / max(height * sigma_scale, 1e-6)) ** 2)
    gx = np.exp(-0.5 * (xs / max(width * sigma_scale, 1e-6)) ** 2)
    weights = np.outer(gy, gx)
    weights /= weights.max()
    positive = weights[weights > 0]
    weights[weights <= 0] = positive.min() if positive.size else 1.0
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


def _blend_weights(height: int, width: int, blend: str) -> np.ndarray:
    if blend == "gaussian":
        return gaussian_importance(height, width)
    if blend == "constant":
        return np.ones((height, width), np.float32)
    raise ValueError(f"predict_tiled: blend must be 'gaussian' or 'constant', received {blend!r}.")


class _ArraySink:
    """Receives finished rows into an in-memory array."""

    def __init__(self, shape):
        self.array = np.empty(shape, np.float32)
        self.row = 0

    def write(self, block: np.ndarray) -> None:
        self.array[self.row : self.row + len(block)] = block
        self.row += len(block)

    def close(self) -> np.ndarray:
        return self.array


class _FileSink:
    """Appends finished rows to a raw float32 file (no memory map while writing, so no RSS)."""

    def __init__(self, path: str, shape):
        self.path, self.shape = path, shape
        self.fh = open(path, "wb")

    def write(self, block: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(block, np.float32).tobytes())

    def close(self) -> np.ndarray:
        self.fh.close()
        return np.memmap(self.path, np.float32, "r", shape=self.shape)


class _RollingCanvas:
    """Weighted accumulator of one output at its own scale, holding only the rows still open.

    Windows arrive in row-major order; once no later window can touch a row, `flush` divides it
    by its weight and hands it to the sink. Memory: about (tile + batch rows) x width, whatever
    the image height.
    """

    def __init__(self, width: int, channels: int, out_hw: tuple[int, int], sink):
        self.width, self.channels = width, channels
        self.out_h, self.out_w = out_hw
        self.sink = sink
        self.origin = 0  # global row of sum[0]
        self.sum = np.zeros((0, width, channels), np.float32)
        self.weight = np.zeros((0, width), np.float32)

    def add(self, top: int, left: int, values: np.ndarray, weights: np.ndarray) -> None:
        h, w = values.shape[:2]
        need = top + h - self.origin
        if need > len(self.sum):
            grow = need - len(self.sum)
            self.sum = np.concatenate([self.sum, np.zeros((grow, self.width, self.channels), np.float32)])
            self.weight = np.concatenate([self.weight, np.zeros((grow, self.width), np.float32)])
        r = top - self.origin
        self.sum[r : r + h, left : left + w] += values * weights[..., None]
        self.weight[r : r + h, left : left + w] += weights

    def flush(self, until: int) -> None:
        """Finalises rows [origin, until) (rows past the output height are dropped)."""
        count = min(until - self.origin, len(self.sum))
        if count <= 0:
            return
        keep = max(0, min(until, self.out_h) - self.origin)
        if keep:
            block = self.sum[:keep, : self.out_w] / np.maximum(self.weight[:keep, : self.out_w, None], 1e-12)
            self.sink.write(block)
        self.sum, self.weight = self.sum[count:].copy(), self.weight[count:].copy()
        self.origin += count


def predict_tiled(
    predict_fn: Callable[[np.ndarray], Mapping[str, np.ndarray] | np.ndarray],
    image: Any,
    tile_size: int | tuple[int, int] = 256,
    overlap: float = 0.25,
    batch_size: int = 4,
    blend: str = "gaussian",
    scales: Mapping[str, int] | None = None,
    pad_value: float | np.ndarray = 0.0,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    out_of_core: bool | None = None,
    workdir: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Predicts an image of any size tile by tile and blends the overlaps.

    Example:
    ```python
    probs = predict_tiled(lambda b: model.predict_on_batch(b), image, tile_size=256, overlap=0.5,
                          scales={"mask": 1, "mask_s2": 2, "mask_s4": 4})
    probs["mask_s4"].shape  # (ceil(H/4), ceil(W/4), K)
    ```

    Args:
        predict_fn: maps a batch (B, th, tw, C) to a dict name -> (B, th/s, tw/s, K) (or one array,
            returned as "output").
        image: (H, W, C) array-like supporting NumPy slicing (ndarray, memmap, zarr store, ...).
        tile_size: tile side, or (height, width); must be a multiple of the coarsest scale.
        overlap: fraction of the tile shared by neighbouring windows, in [0, 1).
        batch_size: tiles per `predict_fn` call.
        blend: "gaussian" (sigma = tile/8, no zeros) or "constant".
        scales: output name -> downsampling factor; None infers them from the first batch's shapes.
        pad_value: value of padded pixels (images smaller than a tile, alignment padding), after
            `preprocess`: a number or one value per channel (msunet pads with what training pads: a
            black pixel, normalised).
        preprocess: applied to each raw tile (the source's dtype) before `predict_fn`, e.g. scaling
            and normalisation, so a huge source needs no normalised copy in memory; must return
            float32 of the same height and width.
        out_of_core: return results as memory-mapped files; None: when H*W > OUT_OF_CORE_PIXELS.
        workdir: folder for those files (default: the system's temporary folder).
        progress: called as progress(tiles_done, tiles_total) after each batch.

    Returns:
        name -> (ceil(H/s), ceil(W/s), K) float32 arrays (read-only memory maps in a temporary
        folder when out of core; the caller removes `os.path.dirname(result.filename)`).
    """
    if getattr(image, "ndim", None) == 2:
        image = image[..., None] if isinstance(image, np.ndarray) else np.asarray(image)[..., None]
    if getattr(image, "ndim", None) != 3:
        raise ValueError(f"predict_tiled: image must be (H, W, C), received shape {getattr(image, 'shape', None)}.")
    height, width, channels = (int(v) for v in image.shape)
    tile_h, tile_w = (tile_size, tile_size) if isinstance(tile_size, int) else (int(tile_size[0]), int(tile_size[1]))
    if batch_size < 1:
        raise ValueError(f"predict_tiled: batch_size must be >= 1, received {batch_size}.")
    if scales is not None:
        align = max(scales.values())
        if tile_h % align or tile_w % align:
            raise ValueError(
                f"predict_tiled: tile {tile_h}x{tile_w} must be a multiple of the coarsest scale {align} so that "
                f"every output is stitched at its own resolution; use e.g. {align * max(1, round(tile_h / align))}."
            )
    else:
        align = 1  # single-scale unless told otherwise; a coarse output then must fit the windows (checked)
    # Pad (virtually) to at least a tile and to a multiple of `align` beyond the tile.
    padded_h = tile_h if height <= tile_h else tile_h + _round_up(height - tile_h, align)
    padded_w = tile_w if width <= tile_w else tile_w + _round_up(width - tile_w, align)
    tops = window_starts(padded_h, tile_h, overlap, align)
    lefts = window_starts(padded_w, tile_w, overlap, align)
    windows = [(t, l) for t in tops for l in lefts]
    if out_of_core is None:
        out_of_core = height * width > OUT_OF_CORE_PIXELS
    folder = tempfile.mkdtemp(prefix="msunet-tiles-", dir=workdir) if out_of_core else None

    canvases: dict[str, _RollingCanvas] = {}
    factors: dict[str, int] = dict(scales or {})
    done = 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        batch = np.full((len(chunk), tile_h, tile_w, channels), pad_value, np.float32)
        for i, (top, left) in enumerate(chunk):
            part = image[top : min(top + tile_h, height), left : min(left + tile_w, width)]
            part = preprocess(part) if preprocess is not None else np.asarray(part, np.float32)
            batch[i, : part.shape[0], : part.shape[1]] = part
        outputs = predict_fn(batch)
        if not isinstance(outputs, Mapping):
            outputs = {"output": outputs}
        next_top = windows[start + batch_size][0] if start + batch_size < len(windows) else padded_h
        for name, values in outputs.items():
            values = np.asarray(values, np.float32)
            if values.ndim == 3:
                values = values[..., None]
            if name not in factors:
                factors[name] = max(1, round(tile_h / values.shape[1]))
                if any(t % factors[name] for t in tops) or any(l % factors[name] for l in lefts):
                    raise ValueError(
                        f"predict_tiled: output {name!r} is at scale 1/{factors[name]}; pass scales={{...}} (name -> "
                        "factor) so that windows start on that scale's grid."
                    )
            s = factors[name]
            if values.shape[1:3] != (-(-tile_h // s), -(-tile_w // s)):
                raise ValueError(
                    f"predict_tiled: output {name!r} has shape {values.shape[1:3]} for a {tile_h}x{tile_w} tile; "
                    f"expected {(-(-tile_h // s), -(-tile_w // s))} at scale 1/{s}."
                )
            if name not in canvases:
                out_hw = (-(-height // s), -(-width // s))
                shape = (*out_hw, values.shape[-1])
                sink = _FileSink(os.path.join(folder, f"{name}.f32"), shape) if folder else _ArraySink(shape)
                canvases[name] = _RollingCanvas(-(-padded_w // s), values.shape[-1], out_hw, sink)
            weights = _blend_weights(values.shape[1], values.shape[2], blend)
            for i, (top, left) in enumerate(chunk):
                canvases[name].add(top // s, left // s, values[i], weights)
            # Rows above the next window's top are final: no later window reaches them.
            canvases[name].flush(next_top // s)
        done += len(chunk)
        if progress is not None:
            progress(done, len(windows))
    results = {}
    for name, canvas in canvases.items():
        canvas.flush(canvas.origin + len(canvas.sum))
        results[name] = canvas.sink.close()
    return results


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


