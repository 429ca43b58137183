"""Input scaling, normalisation and reduced-resolution resampling: NumPy only (no Keras, no SciPy).

Training (`msunet.data.pairs`), prediction (`msunet.predict`) and the TensorFlow-free runtime use these
same functions, so a bundle preprocesses exactly as training did.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from msunet.atomic import write_text_atomic


class DataError(ValueError):
    """A dataset, image or statistics file that cannot be used; the message names the file and the fix."""


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Scales integer images to [0, 1] by their dtype's range (uint8 / 255, uint16 / 65535)."""
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / float(np.iinfo(image.dtype).max)
    return image.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel statistics (on the [0, 1] scale) or per-image z-score; saved as normalization.json."""

    mode: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def apply(self, unit_image: np.ndarray) -> np.ndarray:
        """Normalises an image already scaled by `to_unit_float`."""
        x = unit_image.astype(np.float32, copy=False)
        if self.mode in ("unit", "volume"):  # "volume": z-scored as a whole when read (msunet.data.volumes)
            return x
        if self.mode == "image":
            mean = x.mean(axis=tuple(range(x.ndim - 1)), keepdims=True)
            std = x.std(axis=tuple(range(x.ndim - 1)), keepdims=True)
            return (x - mean) / np.maximum(std, 1e-6)
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        return cls(mode=data["mode"], mean=tuple(data.get("mean", ())), std=tuple(data.get("std", ())))

    def to_json(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Normalization:
        try:
            with open(path, encoding="utf-8") as fh:
                return cls.from_dict(json.load(fh))
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{path}: cannot read normalisation statistics ({err}); re-run training or restore it.") from err


def channel_moments(image, rows: int = 128) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel sum and sum of squares (float64) of an image on the unit scale, and its pixel count.

    Reads `image` (an array or a lazy reader) in row chunks without a float64 copy, so a huge image
    costs a few row bands of memory.
    """
    height, channels = image.shape[0], image.shape[-1]
    total, squares = np.zeros(channels, np.float64), np.zeros(channels, np.float64)
    for r in range(0, height, rows):
        x = to_unit_float(np.asarray(image[r : min(r + rows, height)])).reshape(-1, channels)
        total += x.sum(0, dtype=np.float64)
        squares += np.einsum("ij,ij->j", x, x, dtype=np.float64)
    return total, squares, height * int(np.prod(image.shape[1:-1]))


def compute_normalization(images, mode: str) -> Normalization:
    """Per-channel mean and std over `images` (unit-scaled, pooled over all pixels), or the per-image mode."""
    if mode in ("image", "unit", "volume"):
        return Normalization(mode)
    if not images:
        raise DataError("No training images to compute normalisation statistics from.")
    moments = [channel_moments(image) for image in images]
    count = sum(m[2] for m in moments)
    mean = sum(m[0] for m in moments) / count
    std = np.sqrt(np.maximum(sum(m[1] for m in moments) / count - mean * mean, 0.0))
    return Normalization("dataset", tuple(float(v) for v in mean), tuple(float(max(v, 1e-6)) for v in std))


def downscale_image(image: np.ndarray, step: int) -> np.ndarray:
    """(ceil(H/step), ceil(W/step), C): each block's mean over its pixels (border blocks: those that
    exist), in the image's dtype. The model's own ceil-rounded downsampling grid."""
    if step == 1:
        return image
    height, width, channels = image.shape
    out_h, out_w = -(-height // step), -(-width // step)
    padded = np.zeros((out_h * step, out_w * step, channels), np.float64)
    padded[:height, :width] = image
    inside = np.zeros((out_h * step, out_w * step), np.float64)
    inside[:height, :width] = 1.0
    sums = padded.reshape(out_h, step, out_w, step, channels).sum(axis=(1, 3))
    counts = inside.reshape(out_h, step, out_w, step).sum(axis=(1, 3))[..., None]
    mean = sums / counts
    if np.issubdtype(image.dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(image.dtype)


def _linear_axis(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation along `axis` to `size` samples between pixel centres, edges held."""
    n = values.shape[axis]
    centres = (np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5
    centres = np.clip(centres, 0, n - 1)
    low = np.floor(centres).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    weight = (centres - low).astype(np.float32)
    shape = [1] * values.ndim
    shape[axis] = size
    weight = weight.reshape(shape)
    return np.take(values, low, axis=axis) * (1 - weight) + np.take(values, high, axis=axis) * weight


def resize_probabilities(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, K) -> (size[0], size[1], K) by bilinear interpolation between pixel centres (the
    inverse of the block grid of `downscale_image`), float32.

    Equal to `scipy.ndimage.zoom(probs, zoom, order=1, mode="nearest", grid_mode=True)` (tested),
    in NumPy so the runtime needs no SciPy.
    """
    probs = np.asarray(probs, np.float32)
    if probs.shape[:2] == tuple(size):
        return probs
    out = _linear_axis(_linear_axis(probs, int(size[0]), 0), int(size[1]), 1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
