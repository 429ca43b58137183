"""Tiled prediction with blended overlaps, for any image or volume size and several output scales. NumPy only.

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

Volumes ((D, H, W, C)) take the same path with 3-D windows and a 3-D Gaussian: "rows" are then
slices (z), so a volume larger than memory is predicted in slabs; a scale may differ per axis
((1, 2, 2) where a model pools in-plane only).
"""

from __future__ import annotations

import functools
import itertools
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
    return _gaussian_nd((height, width), sigma_scale)


@functools.lru_cache(maxsize=16)
def _gaussian_nd(shape: tuple[int, ...], sigma_scale: float = 1 / 8) -> np.ndarray:
    """`gaussian_importance` for any number of axes (a volume's windows): the outer product of one
    Gaussian per axis."""
    weights = np.ones((), np.float64)
    for n in shape:
        axis = np.arange(n, dtype=np.float64) - (n - 1) / 2
        weights = np.multiply.outer(weights, np.exp(-0.5 * (axis / max(n * sigma_scale, 1e-6)) ** 2))
    weights /= weights.max()
    positive = weights[weights > 0]
    weights[weights <= 0] = positive.min() if positive.size else 1.0
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


def _blend_weights(shape: tuple[int, ...], blend: str) -> np.ndarray:
    if blend == "gaussian":
        return _gaussian_nd(tuple(int(n) for n in shape))
    if blend == "constant":
        return np.ones(shape, np.float32)
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

    Windows arrive in row-major order (slices first, for volumes); once no later window can touch a
    row, `flush` divides it by its weight and hands it to the sink. Memory: about (tile + batch rows)
    x the rest of the output, whatever the image height (the volume's depth).
    """

    def __init__(self, rest: tuple[int, ...], channels: int, out_shape: tuple[int, ...], sink):
        self.rest, self.channels = tuple(rest), channels  # padded sizes of the axes after the first
        self.out_shape = tuple(out_shape)
        self.sink = sink
        self.origin = 0  # global row of sum[0]
        self.sum = np.zeros((0, *self.rest, channels), np.float32)
        self.weight = np.zeros((0, *self.rest), np.float32)

    def add(self, corner: tuple[int, ...], values: np.ndarray, weights: np.ndarray) -> None:
        size = values.shape[:-1]
        need = corner[0] + size[0] - self.origin
        if need > len(self.sum):
            grow = need - len(self.sum)
            self.sum = np.concatenate([self.sum, np.zeros((grow, *self.rest, self.channels), np.float32)])
            self.weight = np.concatenate([self.weight, np.zeros((grow, *self.rest), np.float32)])
        region = (slice(corner[0] - self.origin, corner[0] - self.origin + size[0]),
                  *(slice(c, c + n) for c, n in zip(corner[1:], size[1:])))
        self.sum[region] += values * weights[..., None]
        self.weight[region] += weights

    def flush(self, until: int) -> None:
        """Finalises rows [origin, until) (rows past the output height are dropped)."""
        count = min(until - self.origin, len(self.sum))
        if count <= 0:
            return
        keep = max(0, min(until, self.out_shape[0]) - self.origin)
        if keep:
            inner = (slice(0, keep), *(slice(0, n) for n in self.out_shape[1:]))
            block = self.sum[inner] / np.maximum(self.weight[inner][..., None], 1e-12)
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
            returned as "output"); for volumes (B, td, th, tw, C).
        image: (H, W, C) array-like supporting NumPy slicing (ndarray, memmap, zarr store, ...), or a
            volume (D, H, W, C).
        tile_size: tile side, or one per axis; must be a multiple of the coarsest scale.
        overlap: fraction of the tile shared by neighbouring windows, in [0, 1).
        batch_size: tiles per `predict_fn` call.
        blend: "gaussian" (sigma = tile/8, no zeros) or "constant".
        scales: output name -> downsampling factor (or one per axis); None infers them from the first
            batch's shapes.
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
        name -> (ceil(H/s), ceil(W/s), K) float32 arrays ((ceil(D/s), ...) for volumes) (read-only memory maps in a temporary
        folder when out of core; the caller removes `os.path.dirname(result.filename)`).
    """
    if getattr(image, "ndim", None) == 2:
        image = image[..., None] if isinstance(image, np.ndarray) else np.asarray(image)[..., None]
    if getattr(image, "ndim", None) not in (3, 4):
        raise ValueError(f"predict_tiled: image must be (H, W, C) or a volume (D, H, W, C), received shape "
                         f"{getattr(image, 'shape', None)}.")
    *spatial, channels = (int(v) for v in image.shape)
    nd = len(spatial)
    tile = (tile_size,) * nd if isinstance(tile_size, int) else tuple(int(t) for t in tile_size)
    if len(tile) != nd:
        raise ValueError(f"predict_tiled: tile_size {tile_size} for an input of {nd} spatial axes.")
    if batch_size < 1:
        raise ValueError(f"predict_tiled: batch_size must be >= 1, received {batch_size}.")
    factors: dict[str, tuple[int, ...]] = {name: _per_axis(f, nd) for name, f in (scales or {}).items()}
    if factors:
        align = tuple(max(f[axis] for f in factors.values()) for axis in range(nd))
        if any(t % a for t, a in zip(tile, align)):
            suggest = "x".join(str(a * max(1, round(t / a))) for t, a in zip(tile, align))
            raise ValueError(
                f"predict_tiled: tile {'x'.join(map(str, tile))} must be a multiple of the coarsest scale "
                f"{'x'.join(map(str, align)) if len(set(align)) > 1 else align[0]} so that every output is stitched "
                f"at its own resolution; use e.g. {suggest}."
            )
    else:
        align = (1,) * nd  # single-scale unless told otherwise; a coarse output then must fit the windows (checked)
    # Pad (virtually) to at least a tile and to a multiple of `align` beyond the tile.
    padded = tuple(t if n <= t else t + _round_up(n - t, a) for n, t, a in zip(spatial, tile, align))
    starts = [window_starts(p, t, overlap, a) for p, t, a in zip(padded, tile, align)]
    windows = list(itertools.product(*starts))  # row-major: the first axis outermost
    if out_of_core is None:
        out_of_core = math.prod(spatial) > OUT_OF_CORE_PIXELS
    folder = tempfile.mkdtemp(prefix="msunet-tiles-", dir=workdir) if out_of_core else None

    canvases: dict[str, _RollingCanvas] = {}
    done = 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        batch = np.full((len(chunk), *tile, channels), pad_value, np.float32)
        for i, corner in enumerate(chunk):
            part = image[tuple(slice(c, min(c + t, n)) for c, t, n in zip(corner, tile, spatial))]
            part = preprocess(part) if preprocess is not None else np.asarray(part, np.float32)
            batch[(i, *(slice(0, n) for n in part.shape[:-1]))] = part
        outputs = predict_fn(batch)
        if not isinstance(outputs, Mapping):
            outputs = {"output": outputs}
        next_top = windows[start + batch_size][0] if start + batch_size < len(windows) else padded[0]
        for name, values in outputs.items():
            values = np.asarray(values, np.float32)
            if values.ndim == nd + 1:
                values = values[..., None]
            if name not in factors:
                factors[name] = tuple(max(1, round(t / n)) for t, n in zip(tile, values.shape[1:-1]))
                if any(c % f for corner in windows for c, f in zip(corner, factors[name])):
                    raise ValueError(
                        f"predict_tiled: output {name!r} is at scale 1/{factors[name][-1]}; pass scales={{...}} (name "
                        "-> factor) so that windows start on that scale's grid."
                    )
            s = factors[name]
            expected = tuple(-(-t // f) for t, f in zip(tile, s))
            if tuple(values.shape[1:-1]) != expected:
                raise ValueError(
                    f"predict_tiled: output {name!r} has shape {tuple(values.shape[1:-1])} for a "
                    f"{'x'.join(map(str, tile))} tile; expected {expected} at scale 1/{'x'.join(map(str, s))}."
                )
            if name not in canvases:
                out_shape = tuple(-(-n // f) for n, f in zip(spatial, s))
                shape = (*out_shape, values.shape[-1])
                sink = _FileSink(os.path.join(folder, f"{name}.f32"), shape) if folder else _ArraySink(shape)
                rest = tuple(-(-p // f) for p, f in zip(padded[1:], s[1:]))
                canvases[name] = _RollingCanvas(rest, values.shape[-1], out_shape, sink)
            weights = _blend_weights(values.shape[1:-1], blend)
            for i, corner in enumerate(chunk):
                canvases[name].add(tuple(c // f for c, f in zip(corner, s)), values[i], weights)
            # Rows above the next window's top are final: no later window reaches them.
            canvases[name].flush(next_top // s[0])
        done += len(chunk)
        if progress is not None:
            progress(done, len(windows))
    results = {}
    for name, canvas in canvases.items():
        canvas.flush(canvas.origin + len(canvas.sum))
        results[name] = canvas.sink.close()
    return results


def _per_axis(factor, nd: int) -> tuple[int, ...]:
    """A scale given as an int (every axis) or one per axis."""
    return (int(factor),) * nd if isinstance(factor, (int, np.integer)) else tuple(int(f) for f in factor)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


