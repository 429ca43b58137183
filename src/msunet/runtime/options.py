"""How images are predicted and what is written: one frozen `PredictOptions`, validated once, passed whole.

`msunet predict`'s flags, `msunet.predict`'s keyword arguments, `msunet.runtime.predict`, the Ray
actors and `msunet evaluate` all build one of these and hand it on unchanged: nothing downstream
re-validates or re-rounds. What depends on the model (its heads, its default tile, its threshold,
the flips it was trained with) is settled against the engine by `FileJob.fit`, once per call.
NumPy only.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from msunet.heads import head_scale

BLENDS = ("gaussian", "constant")
OUTPUT_FORMATS = ("auto", "ome-zarr")
TTA_MODES = (None, False, True, "horizontal", "vertical")


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """Options of a prediction call, the same for every image.

    Example:
    ```python
    from msunet.runtime import PredictOptions
    options = PredictOptions(tile_size=256, tta=True, scales=("mask", "mask_s2"))
    options.replace(overwrite=True).overwrite   # True
    ```

    Args:
        tile_size: tile side in pixels (rounded up to a multiple of the coarsest written scale);
            None: the model's default (twice the training patch, at most 512; a bundle's `tile`).
        overlap: tile overlap fraction, in [0, 1).
        batch_size: tiles per model call.
        tta: average the flips the model was trained with (True: as trained; "horizontal" or
            "vertical": that flip only); None: on for volumes (the 8 mirrorings, as nnU-Net predicts:
            +0.004 test Dice on MSD Hippocampus for 4-6x the time), off for 2-D images.
        threshold: binary threshold on the probability; None: the model's (0.5, or a bundle's).
        scales: heads to write ("mask", "mask_s2", ..., "mask_fused"); None: every trained head.
        probabilities: also write float32 probability TIFFs.
        overlay_images: write NAME_overlay.png.
        overwrite: replace existing outputs (otherwise only missing ones are written).
        blend: how overlapping tiles are blended: "gaussian" (nnU-Net's importance map) or "constant".
        output_format: "auto" (PNG masks; tiled TIFF for huge images, GeoTIFF for georeferenced
            ones; NIfTI for volumes) or "ome-zarr" (one OME-NGFF store per image: the image and a
            label pyramid of every scale, `msunet.runtime.omezarr`).
    """

    tile_size: int | None = None
    overlap: float = 0.25
    batch_size: int = 4
    tta: bool | str | None = None
    threshold: float | None = None
    scales: tuple[str, ...] | None = None
    probabilities: bool = False
    overlay_images: bool = True
    overwrite: bool = False
    blend: str = "gaussian"
    output_format: str = "auto"

    def __post_init__(self) -> None:
        if self.scales is not None:
            scales = (self.scales,) if isinstance(self.scales, str) else tuple(self.scales)
            object.__setattr__(self, "scales", scales or None)
        tile, overlap, batch, threshold = self.tile_size, self.overlap, self.batch_size, self.threshold
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1):
            raise ValueError(f"tile size (--tile) must be a positive number of pixels, e.g. 256; received {tile!r}.")
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.floating)) or not 0 <= overlap < 1:
            raise ValueError(f"overlap (--overlap) must be in [0, 1), e.g. 0.25; received {overlap!r}.")
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch size (--batch) must be a positive number of tiles, e.g. 4; received {batch!r}.")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating))
                                      or not 0 <= threshold <= 1):
            raise ValueError(f"threshold (--threshold) must be in [0, 1], e.g. 0.5; received {threshold!r}.")
        if self.tta not in TTA_MODES or not isinstance(self.tta, (bool, str, type(None))):
            raise ValueError(f"tta must be true, false, 'horizontal', 'vertical' or None (on for volumes); received "
                             f"{self.tta!r}.")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output format (--format) must be one of {', '.join(OUTPUT_FORMATS)}; received "
                             f"{self.output_format!r}.")
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {', '.join(BLENDS)}; received {self.blend!r}.")
        for flag in ("probabilities", "overlay_images", "overwrite"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false; received {getattr(self, flag)!r}.")

    def replace(self, **changes: Any) -> PredictOptions:
        """A copy with `changes` (validated); an unknown name lists the valid ones."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = [k for k in changes if k not in names]
        if unknown:
            raise TypeError(f"PredictOptions has no option {unknown[0]!r}; valid: {', '.join(names)}.")
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, options: PredictOptions | None = None, **values: Any) -> PredictOptions:
        """`options` (or the defaults) with keyword `values` applied: the form the public functions take.

        Example: `PredictOptions.of(None, tta=True)`, `PredictOptions.of(options, overwrite=True)`.
        """
        if options is not None and not isinstance(options, PredictOptions):
            raise TypeError(f"options must be a PredictOptions, not {type(options).__name__}.")
        return (options or cls()).replace(**values) if values else (options or cls())


def tta_mode(tta: bool | str | None, flip: bool | str, volumes: bool = False) -> bool | str:
    """The flips test-time augmentation averages for a model trained with `data.flip=flip`: those it
    was trained on ("horizontal" for street scenes, never upside down), all four otherwise (all eight
    mirrorings of a volume); a flip asked for by name is used as asked; None: on for `volumes`, off
    otherwise."""
    if tta is None:
        tta = volumes
    if tta in ("horizontal", "vertical"):
        return tta
    return (flip if flip in ("horizontal", "vertical") else True) if tta else False


@dataclasses.dataclass(frozen=True)
class FileJob:
    """`PredictOptions` settled against one engine: what every image of one call shares."""

    out: pathlib.Path
    heads: tuple[str, ...]
    tile_size: int
    tta: bool | str
    threshold: float
    options: PredictOptions

    @classmethod
    def fit(cls, options: PredictOptions, out_dir, heads: Sequence[str], default_heads: Sequence[str],
            default_tile: int, threshold: float, flip: bool | str, volumes: bool = False) -> FileJob:
        """The heads to write (checked against the model's), the tile rounded to the coarsest of them,
        the threshold and the flips; a clear error before any image is read."""
        chosen = list(options.scales) if options.scales else list(default_heads)
        for head in chosen:
            if head not in heads:
                raise ValueError(f"The model has no output {head!r}; valid: {', '.join(heads)}.")
        coarsest = max(head_scale(h) for h in chosen)
        tile = default_tile if options.tile_size is None else options.tile_size
        return cls(pathlib.Path(out_dir), tuple(chosen), -(-int(tile) // coarsest) * coarsest,
                   tta_mode(options.tta, flip, volumes), threshold if options.threshold is None else options.threshold,
                   options)
