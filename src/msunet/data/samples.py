"""Training samples: a split loaded into memory, random patches with augmentation (flips, rotation,
zoom, intensity), fixed tiles for validation, calibration patches for int8 export.

Images and volumes take the same path: a sample's arrays are (H, W, C) / (H, W) or (D, H, W, C) /
(D, H, W), and a patch is `data.patch_size` on every spatial axis. Volumes get flips on every axis,
in-plane quarter turns, rotation about z and zoom, and the intensity changes.
"""

from __future__ import annotations

import dataclasses
import itertools
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
from msunet.data.volumes import (
    in_plane_target,
    needs_resampling,
    read_volume,
    resample_volume,
    resampled_shape,
    standardize_volume,
)


# --------------------------------------------------------------------------------------------------
# Loading a split into memory
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Sample:
    name: str
    image: np.ndarray  # (H, W, C) raw dtype; volumes (D, H, W, C) float32
    mask: np.ndarray  # (H, W) int16 class ids, IGNORE for ignored; volumes (D, H, W)
    foreground: np.ndarray  # (N, 2) coordinates of non-background pixels (subsampled); volumes (N, 3)


def load_samples(
    pairs: Sequence[Pair], data_cfg: DataConfig, model_cfg: ModelConfig, problems: list | None = None
) -> list[Sample]:
    """Reads and decodes pairs; a pair that cannot be used is reported in `problems` and skipped.
    With `data.slices` (a 2-D model on volumes) each volume gives one sample per slice ("NAME#z")."""
    samples = []
    rng = np.random.default_rng(data_cfg.seed)
    slices = data_cfg.slices and model_cfg.dims == 2
    for pair in pairs:
        try:
            if model_cfg.dims == 3 or slices:
                image, mask = _read_volume_pair(pair, data_cfg, model_cfg)
            else:
                image = read_image(pair.image, data_cfg.max_pixels)
                mask = decode_mask(read_mask(pair.mask, data_cfg.max_pixels), data_cfg, model_cfg.num_classes,
                                   pair.mask)
            if image.shape[-1] != model_cfg.in_channels:
                raise DataError(
                    f"{pair.image}: {image.shape[-1]} channel(s), but model.in_channels={model_cfg.in_channels}. "
                    f"Set model.in_channels={image.shape[-1]} or convert the image."
                )
            if mask.shape != image.shape[:-1]:
                raise DataError(
                    f"{pair.mask}: mask is {'x'.join(map(str, mask.shape[::-1]))} but the image {pair.image.name} is "
                    f"{'x'.join(map(str, image.shape[-2::-1]))} (width first); masks must match their image's size."
                )
        except (ImageReadError, DataError) as err:
            if problems is None:
                raise
            problems.append((str(pair.mask if "mask" in str(err).split(":")[0] else pair.image), str(err)))
            continue  # the caller reports `problems` (once each)
        if slices:
            for z in range(len(mask)):
                fg = np.argwhere(mask[z] > 0)
                if len(fg) > 2000:
                    fg = fg[rng.choice(len(fg), 2000, replace=False)]
                samples.append(Sample(f"{pair.name}#{z}", image[z], mask[z], fg.astype(np.int32)))
            continue
        if data_cfg.resample_step > 1 and model_cfg.dims == 2:
            image = downscale_image(image, data_cfg.resample_step)
            mask = downscale_labels(mask, data_cfg.resample_step, model_cfg.num_classes)
        fg = np.argwhere(mask > 0)
        if len(fg) > 20000:
            fg = fg[rng.choice(len(fg), 20000, replace=False)]
        samples.append(Sample(pair.name, image, mask, fg.astype(np.int32)))
    return samples


def _read_volume_pair(pair: Pair, data_cfg: DataConfig, model_cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """A volume and its labels; with `data.normalization=volume` the volume is z-scored as a whole here."""
    volume = read_volume(pair.image, max_voxels=data_cfg.max_pixels)
    labels = read_volume(pair.mask, mask=True, max_voxels=data_cfg.max_pixels)
    if volume.affine is not None and labels.affine is not None and not np.allclose(volume.affine, labels.affine,
                                                                                    atol=1e-3 * np.abs(volume.affine).max()):
        raise DataError(f"{pair.mask}: its affine (voxel-to-world) differs from the image {pair.image.name}'s; the "
                        "mask was made for another grid: resample it onto the image, or fix its header.")
    image = standardize_volume(volume.array) if data_cfg.normalization == "volume" else volume.array
    mask = decode_mask(labels.array, data_cfg, model_cfg.num_classes, pair.mask, volume=True)
    spacing = volume.spacing or data_cfg.spacing or (1.0, 1.0, 1.0)
    target = in_plane_target(spacing, data_cfg.target_spacing) if model_cfg.dims == 2 else data_cfg.target_spacing
    if needs_resampling(spacing, target):  # to the run's voxel grid (data.target_spacing)
        shape = resampled_shape(image.shape, spacing, target)
        image, mask = resample_volume(image, shape, order=1), resample_volume(mask, shape, order=0)
    return image, mask


# --------------------------------------------------------------------------------------------------
# Patch sampling and augmentation
# --------------------------------------------------------------------------------------------------
def sample_patch(
    sample: Sample, size: int, cfg: DataConfig, rng: np.random.Generator, augment: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size) patch ((size, size, size) of a volume) of unit-scaled image and class ids, jointly augmented.

    Geometry (zoom, rotation, flips, 90-degree turns) is one mapping from patch to image
    coordinates: the image is interpolated linearly, the mask by nearest neighbour (no value that
    is not a class), and pixels from outside the image are zero in the image and IGNORE in the mask,
    which also pads images smaller than a patch.
    """
    if sample.mask.ndim == 3:
        return _sample_volume_patch(sample, size, cfg, rng, augment)
    cy, cx = _patch_centre(sample, size, cfg, rng)
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


def _patch_centre(sample: Sample, size: int, cfg: DataConfig, rng: np.random.Generator) -> list[float]:
    """Where a patch is centred, per spatial axis: near a foreground pixel (`foreground_oversample`),
    else anywhere the patch stays inside the image. Along an axis shorter than the patch, an image sits
    in the middle of it; a volume anywhere inside it, as the sliding window meets it (at the start
    of a window, or cut by one), so that a 3-D network, which sees the padding, learns no fixed place
    for it. (2-D keeps the middle: its trained numbers stand.)"""
    shape = sample.mask.shape
    if cfg.foreground_oversample > 0 and len(sample.foreground) and rng.random() < cfg.foreground_oversample:
        return list(sample.foreground[rng.integers(len(sample.foreground))] + rng.uniform(-size / 4, size / 4, len(shape)))
    if len(shape) == 3:
        return [rng.uniform(min(size / 2, n - size / 2), max(size / 2, n - size / 2)) for n in shape]
    return [rng.uniform(min(size / 2, n / 2), max(n - size / 2, n / 2)) for n in shape]


VOLUME_FLIP_AXES = {True: (0, 1, 2), "vertical": (1,), "horizontal": (2,)}  # data.flip -> (z, y, x) axes


def _sample_volume_patch(sample: Sample, size: int, cfg: DataConfig, rng: np.random.Generator,
                         augment: bool) -> tuple[np.ndarray, np.ndarray]:
    """A cube of a volume: centred on a foreground voxel (`foreground_oversample`) or anywhere; rotation
    about the z axis (in-plane, which suits thick slices too) and zoom (`data.rotate`, `data.scale`), flips
    on every axis, in-plane quarter turns and the intensity changes."""
    centre = _patch_centre(sample, size, cfg, rng)
    angle = math.radians(rng.uniform(-cfg.rotate, cfg.rotate)) if augment and cfg.rotate > 0 else 0.0
    zoom = float(np.exp(rng.uniform(math.log(1 - cfg.scale), math.log(1 + cfg.scale)))) if augment and cfg.scale > 0 else 1.0
    if angle == 0.0 and zoom == 1.0:
        image, mask = crop_nd(sample.image, sample.mask, [int(round(c - size / 2)) for c in centre], (size,) * 3)
    else:
        image, mask = _warp_volume(sample.image, sample.mask, centre, size, angle, zoom)
    image *= _unit_scale(sample.image.dtype)
    if augment:
        if cfg.flip:
            flips = rng.random(3) < 0.5  # all three drawn: the same stream for any mode
            for axis in VOLUME_FLIP_AXES[cfg.flip]:
                if flips[axis]:
                    image, mask = np.flip(image, axis), np.flip(mask, axis)
        if cfg.rot90:
            k = int(rng.integers(4))
            image, mask = np.rot90(image, k, axes=(1, 2)), np.rot90(mask, k, axes=(1, 2))
        image = _intensity(image, cfg, rng)
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(mask)


def crop_nd(image: np.ndarray, mask: np.ndarray, corner, shape) -> tuple[np.ndarray, np.ndarray]:
    """A float32 window of `shape` at `corner` (any number of spatial axes; values in the image's own
    scale) and its mask, zero / IGNORE outside the image."""
    out_image = np.zeros((*shape, image.shape[-1]), np.float32)
    out_mask = np.full(shape, IGNORE, np.int16)
    lo = [max(c, 0) for c in corner]
    hi = [min(c + n, m) for c, n, m in zip(corner, shape, mask.shape)]
    if all(h > low for low, h in zip(lo, hi)):
        src = tuple(slice(low, h) for low, h in zip(lo, hi))
        dst = tuple(slice(low - c, h - c) for low, h, c in zip(lo, hi, corner))
        out_image[dst] = image[src]
        out_mask[dst] = mask[src]
    return out_image, out_mask


def _unit_scale(dtype) -> float:
    """The factor `to_unit_float` applies: 1 / dtype max for integers, 1 for floats."""
    return 1.0 / float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def _crop(image: np.ndarray, mask: np.ndarray, top: int, left: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size) float32 window (values in the image's own scale) and its mask, padded outside."""
    return crop_nd(image, mask, (top, left), (size, size))


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


def _warp_volume(image, mask, centre, size, angle, zoom):
    """A (size,)*3 cube around `centre`, rotated by `angle` about the z axis and zoomed by `zoom`: one
    mapping from cube to volume coordinates, the image linear, the mask nearest (IGNORE outside)."""
    reach = int(math.ceil(size * zoom * 0.75)) + 2
    corner = [int(c) - reach for c in centre]
    sub_image, sub_mask = crop_nd(image, mask, corner, (2 * reach,) * 3)
    zz, yy, xx = np.mgrid[0:size, 0:size, 0:size].astype(np.float32) - (size - 1) / 2
    cos, sin = math.cos(angle) * zoom, math.sin(angle) * zoom
    coords = np.stack([zz * zoom + (centre[0] - corner[0]), cos * yy - sin * xx + (centre[1] - corner[1]),
                       sin * yy + cos * xx + (centre[2] - corner[2])])
    out_mask = ndimage.map_coordinates(sub_mask, coords, order=0, mode="constant", cval=IGNORE).astype(np.int16)
    out_image = np.stack([ndimage.map_coordinates(sub_image[..., c], coords, order=1, mode="constant", cval=0.0)
                          for c in range(image.shape[-1])], axis=-1)
    return out_image, out_mask


def _intensity(image: np.ndarray, cfg: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """Gamma, contrast and brightness. Gamma acts on [0, 1]: unit-scaled images directly; z-scored
    volumes (`data.normalization=volume`, values of both signs) through the patch's own range, then
    given back the patch's mean and standard deviation, as nnU-Net does (clipping them at 0 erased half
    of every training patch, which inference never sees)."""
    image = np.asarray(image, np.float32)
    if cfg.gamma > 0:
        gamma = float(np.exp(rng.uniform(math.log(1 - cfg.gamma * 0.9), math.log(1 + cfg.gamma))))
        if cfg.normalization == "volume":
            low, high, mean, std = float(image.min()), float(image.max()), float(image.mean()), float(image.std())
            image = np.power((image - low) / max(high - low, 1e-6), gamma)
            image = (image - image.mean()) / max(float(image.std()), 1e-6) * std + mean
        else:
            image = np.power(np.clip(image, 0.0, None), gamma)
    if cfg.contrast > 0:
        factor = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        mean = image.mean(axis=tuple(range(image.ndim - 1)), keepdims=True)
        image = (image - mean) * factor + mean
    if cfg.brightness > 0:
        image = image + rng.uniform(-cfg.brightness, cfg.brightness)
    return image



def fixed_patches(
    samples: Sequence[Sample], size: int, limit: int = 512, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Non-overlapping tiles (cubes, for volumes) covering each image (padded at the border), at most
    `limit` in all."""
    images, masks = [], []
    for sample in samples:
        unit = to_unit_float(sample.image)
        shape = sample.mask.shape
        for corner in itertools.product(*(range(0, n, size) for n in shape)):
            image, mask = crop_nd(unit, sample.mask, corner, (size,) * len(shape))
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
        corner = [int(rng.integers(0, max(n - size, 0) + 1)) for n in sample.mask.shape]
        image, _ = crop_nd(sample.image, sample.mask, corner, (size,) * sample.mask.ndim)
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
