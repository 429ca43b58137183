"""Training samples: a split loaded into memory, random patches with augmentation (flips, rotation,
zoom, intensity), fixed tiles for validation, calibration patches for int8 export."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from msunet.config import DataConfig, ModelConfig
from msunet.data.imageio import ImageReadError, read_image, read_mask
from msunet.data.pairs import IGNORE, Pair, decode_mask
from msunet.data.preprocessing import (
    DataError,
    downscale_image,
    to_unit_float,
)
from msunet.data.targets import downsample_target, one_hot_target


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
# Reduced resolution (data.resample): labels down for training (images: msunet.data.preprocessing)
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
