"""The `Engine` seam: what the file loop needs of a model (Keras run, exported bundle, Ray actor), and
the batch function with flip test-time augmentation that every engine wraps its model call in. NumPy
only."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from msunet.data.preprocessing import Normalization
from msunet.heads import head_scale


@dataclasses.dataclass
class Engine:
    """What `predict_files` needs of a model (a Keras run or an exported bundle).

    Args:
        heads: every output the model has ("mask", "mask_s2", ..., "mask_fused").
        default_heads: those written when none are asked for (the trained ones).
        in_channels, num_classes: input channels; 1 (sigmoid) or the number of classes (softmax).
        normalization: the training normalisation (after the [0, 1] scaling by dtype).
        make_fn: (heads, batch_size, tta) -> a NumPy batch (B, h, w, C) -> {head: (B, h/s, w/s, K)} function
            (`tta` as `batch_function` takes it).
        resample_step: pixels per model pixel (`data.resample` = 1 / step): images are block-averaged
            before tiling and the probabilities resized back.
        default_tile: tile side when none is given.
        max_pixels: refuse larger images (decompression-bomb guard).
        flip: the model's training flips (`data.flip`): test-time augmentation uses only those.
        threshold: the binary threshold when the options give none (a bundle's, else 0.5).
        description: what runs, on what, and why it was chosen (printed by `msunet predict`).
        dims: 2 for images, 3 for volumes (batches (B, d, h, w, C)).
        scale_factors: head -> its size ratio to the input per spatial axis, where it is not the head's
            scale on every axis (a volume model that pools in-plane first: "mask_s2" is (1, 2, 2)).
        target_spacing: the voxel grid (z, y, x mm) a volume model trained on (`data.target_spacing`):
            volumes at another spacing are resampled to it and their outputs back. None: none.
        spacing: the spacing of volumes whose files do not say it (`data.spacing`); None: the model's grid.
        slices: a 2-D model trained on the slices of volumes (`data.slices`): it takes volumes, predicted
            slice by slice, and not 2-D images.
    """

    heads: list[str]
    default_heads: list[str]
    in_channels: int
    num_classes: int
    normalization: Normalization
    make_fn: Callable[[Sequence[str], int, bool], Callable[[np.ndarray], dict[str, np.ndarray]]]
    resample_step: int = 1
    default_tile: int = 512
    max_pixels: int = 250_000_000
    flip: bool | str = True
    threshold: float = 0.5
    description: str = ""
    dims: int = 2
    scale_factors: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    target_spacing: tuple[float, ...] | None = None
    spacing: tuple[float, ...] | None = None
    slices: bool = False

    def factor(self, head: str) -> tuple[int, ...]:
        """The head's size ratio to the input, per spatial axis."""
        return tuple(self.scale_factors.get(head, (head_scale(head),) * self.dims))

    @property
    def takes_volumes(self) -> bool:
        return self.dims == 3 or self.slices

    def volume_factor(self, head: str) -> tuple[int, int, int]:
        """The head's size ratio to an input volume, (z, y, x): a slice model keeps every slice."""
        factor = self.factor(head)
        return factor if len(factor) == 3 else (1, *factor)


TTA_AXES = {True: ((1,), (2,), (1, 2)), "horizontal": ((2,),), "vertical": ((1,),)}
# Volumes (B, D, H, W, C): every combination of the three axes (nnU-Net's 8 mirrorings with the original).
TTA_AXES_3D = {True: ((1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)), "horizontal": ((3,),), "vertical": ((2,),)}


def batch_function(call: Callable[[np.ndarray], dict], batch_size: int, tta: bool | str = False
                   ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A NumPy batch -> {head: float32 probabilities} function for `predict_tiled` over `call`.

    A short last batch is padded to `batch_size` so a traced or compiled model keeps one shape. With
    `tta`, the four flips (none, vertical, horizontal, both) are predicted and their un-flipped
    probabilities averaged ("horizontal" or "vertical": that flip only, for models trained on
    images with an up and a down); tiles are multiples of the coarsest scale, so coarse outputs flip
    onto the same cells. Volumes average the eight mirrorings over their three axes.
    """
    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        axes_list = ((TTA_AXES_3D if batch.ndim == 5 else TTA_AXES)[tta]) if tta else ()
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count, *batch.shape[1:]), batch.dtype)])
        result = {k: np.asarray(v, np.float32) for k, v in call(batch).items()}
        for axes in axes_list:
            flipped = call(np.ascontiguousarray(np.flip(batch, axis=axes)))
            for k in result:
                result[k] += np.flip(np.asarray(flipped[k], np.float32), axis=axes)
        if axes_list:
            result = {k: v / (len(axes_list) + 1.0) for k, v in result.items()}
        return {k: v[:count] for k, v in result.items()}

    return run
