"""The data section: how a dataset folder is read, split, normalised, sampled and augmented (`DataConfig`)."""

from __future__ import annotations

import dataclasses

from msunet.config.base import BaseConfig, ConfigError, check_choice, check_float, check_int

# --------------------------------------------------------------------------------------------------
MASK_ENCODINGS = ("auto", "binary", "index", "palette")
NORMALIZATIONS = ("dataset", "image", "unit", "volume")
FLIPS = ("horizontal", "vertical")
TARGET_DOWNSAMPLINGS = ("average", "nearest", "max")
RESAMPLE_FACTORS = (1.0, 0.5, 0.25, 0.125)


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseConfig):
    """How a dataset folder is read, split, normalised, sampled and augmented.

    Args:
        pairs_csv: optional CSV of `image,mask` paths (relative to the data folder) for layouts other
            than `images/` + `masks/` paired by file stem.
        mask_encoding: "auto" (binary if the masks hold two values, else class indices), "binary"
            (0/255 or 0/1; anything non-zero is foreground), "index" (pixel = class id) or
            "palette" (RGB colour -> class via `palette`).
        palette: for "palette": list of [r, g, b] colours, class i = colour i.
        ignore_label: mask value that contributes to no loss or metric (e.g. CamVid's void, 11).
        val_fraction: validation share when there is no `split.csv` (seeded by `seed`).
        normalization: "dataset" (per-channel mean/std of the training images, saved with the run
            and reused by predict), "image" (per-image z-score), "unit" (the [0, 1] scale only:
            a backbone encoder applies its own ImageNet scaling inside the model) or "volume" (each
            volume z-scored as a whole when it is read, for MRI; volumes only).
        patch_size: square training patch side (a cube's, for volumes); images smaller than it are padded.
        foreground_oversample: share of patches centred on a foreground pixel.
        flip: random flips: true (both axes), "horizontal" (left-right only, for images with an up and
            a down such as street scenes), "vertical" or false.
        rot90: random 90-degree rotations.
        scale: random zoom range +-scale (0 disables).
        rotate: random rotation in degrees (0 disables).
        brightness, contrast, gamma: intensity augmentation strengths (0 disables each).
        target_downsampling: how coarse heads' targets are made: "average" (soft class fractions,
            the default: thin structures keep their mass), "nearest" or "max".
        max_pixels: refuse larger images (decompression-bomb guard).
        resample: train and predict at this fraction of the resolution (1, 0.5, 0.25 or 0.125), as
            nnU-Net's low-resolution configuration does for objects larger than an affordable patch:
            images are block-averaged, masks take each block's majority class; `predict` (tiling,
            TTA, every head) and `evaluate` return masks at the original size.
        seed: seed of the split and of the sampling.
        spacing: the voxel size (z, y, x) in mm of volumes whose files do not say it (TIFF stacks,
            .npy); NIfTI headers take precedence. None: 1 mm.
        target_spacing: the voxel size (z, y, x) in mm that volumes are resampled to for training and
            prediction (linear for images, nearest for labels; masks and probabilities come back on each
            input's own grid). None: every volume at its own grid. Planned as the median spacing where
            the volumes' spacings differ (nnU-Net's target spacing).
        slices: train a 2-D model (`model.dims=2`) on the in-plane slices of volumes, and predict
            volumes slice by slice (planned for volumes whose slices are over 3x thicker than their
            pixels, as nnU-Net plans its 2-D configuration; `model.dims=2` on volumes sets it too).
    """

    pairs_csv: str | None = None
    mask_encoding: str = "auto"
    palette: tuple[tuple[int, int, int], ...] | None = None
    ignore_label: int | None = None
    val_fraction: float = 0.2
    normalization: str = "dataset"
    patch_size: int = 256
    foreground_oversample: float = 0.33
    flip: bool | str = True
    rot90: bool = True
    scale: float = 0.15
    rotate: float = 15.0
    brightness: float = 0.1
    contrast: float = 0.15
    gamma: float = 0.2
    target_downsampling: str = "average"
    max_pixels: int = 250_000_000
    resample: float = 1.0
    seed: int = 0
    spacing: tuple[float, float, float] | None = None
    target_spacing: tuple[float, float, float] | None = None
    slices: bool = False

    def validate(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "mask_encoding", self.mask_encoding, MASK_ENCODINGS)
        if self.mask_encoding == "palette" and not self.palette:
            raise ConfigError(f"{owner}.palette is empty; mask_encoding='palette' needs a list of [r, g, b] colours.")
        if self.palette is not None:
            for i, colour in enumerate(self.palette):
                if len(colour) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour):
                    raise ConfigError(f"{owner}.palette[{i}]={list(colour)!r} must be [r, g, b] with values 0..255.")
        if self.ignore_label is not None:
            check_int(owner, "ignore_label", self.ignore_label, 0, 65535)
        check_float(owner, "val_fraction", self.val_fraction, 0.0, 1.0, hi_open=True)
        check_choice(owner, "normalization", self.normalization, NORMALIZATIONS)
        check_int(owner, "patch_size", self.patch_size, 8, 8192)
        check_float(owner, "foreground_oversample", self.foreground_oversample, 0.0, 1.0)
        if not isinstance(self.flip, bool) and self.flip not in FLIPS:
            raise ConfigError(f"{owner}.flip={self.flip!r} must be true, false, \"horizontal\" or \"vertical\".")
        if not isinstance(self.rot90, bool):
            raise ConfigError(f"{owner}.rot90={self.rot90!r} must be true or false.")
        check_float(owner, "scale", self.scale, 0.0, 0.9)
        check_float(owner, "rotate", self.rotate, 0.0, 180.0)
        for name in ("brightness", "contrast", "gamma"):
            check_float(owner, name, getattr(self, name), 0.0, 1.0)
        check_choice(owner, "target_downsampling", self.target_downsampling, TARGET_DOWNSAMPLINGS)
        check_int(owner, "max_pixels", self.max_pixels, 1)
        if isinstance(self.resample, bool) or self.resample not in RESAMPLE_FACTORS:
            raise ConfigError(f"{owner}.resample={self.resample!r} is not valid; valid: "
                              f"{', '.join(str(f) for f in RESAMPLE_FACTORS)} (a fraction of the resolution).")
        check_int(owner, "seed", self.seed, 0)
        for key in ("spacing", "target_spacing"):
            value = getattr(self, key)
            if value is None:
                continue
            if not isinstance(value, tuple) or len(value) != 3:
                raise ConfigError(f"{owner}.{key}={list(value) if isinstance(value, tuple) else value!r} must be "
                                  f"[z, y, x] voxel sizes in mm (e.g. --set data.{key}=2.5,0.8,0.8).")
            for i, size in enumerate(value):
                check_float(owner, f"{key}[{i}]", size, 1e-6, 1e6)

    @property
    def resample_step(self) -> int:
        """The block side of `resample`: 1, 2, 4 or 8 pixels per trained pixel."""
        return round(1 / self.resample)


# --------------------------------------------------------------------------------------------------
# Training
