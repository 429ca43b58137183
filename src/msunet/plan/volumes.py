"""The planner's part for folders of volumes (`Survey.dims == 3`): the model's dimensionality, the patch
cube and depth, in-plane pooling for thick slices, the batch, normalisation and augmentation.

As nnU-Net plans its 3d_fullres configuration: the median volume sets the patch, the voxel spacing sets
where pooling starts along z, and the device probe (`msunet.plan.device`, after this) times the step
and cuts width and batch on a CPU. Never imports keras.

| key                    | derived from                                                                  |
|------------------------|-------------------------------------------------------------------------------|
| model.dims             | 3: the folder holds volumes                                                   |
| data.normalization     | "volume": each volume z-scored as a whole (MRI)                               |
| data.rotate, data.scale| 0: rotation / zoom of volumes measured lower in a 20-minute budget            |
| data.target_spacing    | the median spacing where the volumes' spacings differ (nnU-Net's target spacing) |
| model.norm             | "group": a batch of 2 cubes gives batch norm no usable statistics             |
| data.patch_size        | the median volume's middle side, rounded up to a multiple of 8 (at most 64 on a CPU, 128 on a GPU) |
| model.depth            | a bottleneck of at least 4 voxels (at most 5 downsamplings)                   |
| model.inplane_levels   | log2(z spacing / in-plane spacing) where that ratio is 2 or more (nnU-Net's anisotropic pooling) |
| model.filters          | 16 on a CPU (a 3-D step is ~3x a 2-D one per voxel); the device probe narrows further |
| train.batch_size       | activation memory (at most 2 on a CPU, nnU-Net's 3-D batch); then the device probe cuts it by time |
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from msunet.config import RunConfig
from msunet.plan.survey import Survey

CPU_VOLUME_PATCH, GPU_VOLUME_PATCH = 64, 128  # cube sides
VOLUME_BOTTLENECK = 4  # voxels at the bottleneck, at least
MAX_VOLUME_DEPTH = 5
ANISOTROPY = 2.0  # z spacing / in-plane spacing from which the first poolings keep the slices
STRONG_ANISOTROPY = 3.0  # nnU-Net plans in-plane 2-D from here


def plan_volumes(found: Survey, config: RunConfig, user: set[str], values: dict, derive, notes: list[str],
                 accelerator: bool, memory: int) -> bool:
    """Derives the volume keys (see `msunet.plan.planner`'s table) into `values` through `derive`.
    Returns True where the plan is a 2-D model on the volumes' slices (`data.slices`): the planner then
    plans it as images, from the slices' sizes (`slice_survey`)."""
    derive("data.normalization", "volume", "each volume z-scored as a whole (MRI has no fixed intensity scale; for "
           "CT in Hounsfield units set data.normalization=dataset)")
    if found.sizes and found.spacings:
        spacings = np.array(found.spacings, np.float64)
        target = tuple(float(v) for v in np.median(spacings, axis=0))
        spread = spacings.max(0) / np.maximum(spacings.min(0), 1e-9)
        if np.any(spread > 1.01):
            derive("data.target_spacing", target, f"the spacings differ (up to {spread.max():.2f}x along an axis): "
                   f"every volume resampled to the median, {'x'.join(f'{v:g}' for v in target)} mm (z, y, x), "
                   "as nnU-Net does (a slice model: in-plane only); outputs come back on each volume's own grid")
    ratio = _anisotropy(_training_spacing(found, config, values))
    if "model.dims" in user:
        slices = config.model.dims == 2
        why = f"model.dims={config.model.dims} set"
    else:
        slices = ratio > STRONG_ANISOTROPY
        why = (f"the slices are {ratio:.1f}x thicker than their pixels (over {STRONG_ANISOTROPY:g}x): a 2-D U-Net on "
               "the in-plane slices, as nnU-Net plans such data (--set model.dims=3 for a 3-D one)" if slices else
               f"{len(found.sizes)} volumes (NIfTI / TIFF stacks / .npy): a 3-D U-Net")
    derive("model.dims", 2 if slices else 3, why)
    derive("data.slices", slices, "a 2-D model on each volume's slices; volumes predicted slice by slice" if slices
           else "a 3-D model")
    if slices:
        derive("data.resample", 1.0, "slices train at their own pixel grid")
        return True
    derive("data.rotate", 0.0, "volumes get flips on every axis and in-plane quarter turns; rotation about z "
           "(data.rotate=15) with zoom scored 0.766 against 0.774 test Dice on MSD Hippocampus in 20 CPU minutes "
           "(fewer steps to learn it in)")
    derive("data.scale", 0.0, "zoom (data.scale=0.15) with rotation: measured lower in a 20-minute budget (above)")
    derive("data.resample", 1.0, "volumes train at their own voxel grid")
    derive("model.norm", "group", "batches of a few 3-D patches make batch statistics noise: with batch norm a "
           "hippocampus run scored 0.58 Dice in training mode and 0.00 with the moving statistics on the same "
           "validation patches; group normalisation (nnU-Net uses instance normalisation) needs no batch")
    if not found.sizes:
        return False
    sizes = _resampled_sizes(found, config, values)
    median = np.median(sizes, axis=0)
    cap = GPU_VOLUME_PATCH if accelerator else CPU_VOLUME_PATCH
    side = float(np.median(median))  # the middle side of the median volume: most of it in one cube
    patch = int(min(cap, max(16, 8 * math.ceil(side / 8))))
    derive("data.patch_size", patch, f"the median volume is {'x'.join(f'{n:.0f}' for n in median)} voxels: a "
           f"{patch}^3 cube (its middle side rounded up to a multiple of 8, at most {cap} on "
           f"{'a GPU' if accelerator else 'a CPU'})")
    patch = values.get("data.patch_size", config.data.patch_size)
    depth = max(1, min(MAX_VOLUME_DEPTH, math.floor(math.log2(patch / VOLUME_BOTTLENECK))))
    derive("model.depth", depth, f"a bottleneck of ~{patch // 2 ** depth} voxels on a {patch}^3 patch")
    depth = values.get("model.depth", config.model.depth)
    spacing = _training_spacing(found, config, values)
    if spacing is not None:
        ratio = _anisotropy(spacing)
        levels = min(depth - 1, math.floor(math.log2(ratio))) if ratio >= ANISOTROPY else 0
        derive("model.inplane_levels", levels,
               f"median spacing {'x'.join(f'{s:g}' for s in spacing)} mm (z, y, x): "
               + (f"slices {ratio:.1f}x thicker than their pixels, the first {levels} pooling(s) in-plane only"
                  if levels else "about isotropic, every pooling in 3-D"))
    if not accelerator:
        # A 3-D step costs ~3x a 2-D one per voxel (27 weights a kernel, not 9) on a patch^3: at 32 filters and
        # batch 8 a 40^3 step takes ~20 s on a 2-core CPU, and the probe would spend minutes of the budget finding
        # that out. Start where the device probe then measures and cuts further: 16 filters, nnU-Net's batch 2.
        derive("model.filters", 16, "a 3-D model on a CPU starts at 16 filters (the device probe narrows it further "
               "where a step is still slow)")
    filters = values.get("model.filters", config.model.filters)
    per_sample = _volume_activation_bytes(patch, filters, depth)
    budget = min(memory * 0.5, 16 * 1024**3)
    batch = int(max(1, min(2 if not accelerator else 16, budget // max(per_sample, 1))))
    derive("train.batch_size", batch, "activation memory" + ("" if accelerator else ", at most 2 on a CPU (nnU-Net's "
           "3-D batch)"))
    return False


def _training_spacing(found: Survey, config: RunConfig, values: dict) -> np.ndarray | None:
    """The (z, y, x) spacing of the grid training uses: the target, else the volumes' median; None without any."""
    if not found.spacings:
        return None
    return np.array(values.get("data.target_spacing", config.data.target_spacing)
                    or np.median(np.array(found.spacings, np.float64), axis=0))


def _anisotropy(spacing: np.ndarray | None) -> float:
    """z spacing / finest in-plane spacing (1 without a spacing)."""
    return 1.0 if spacing is None else float(spacing[0] / max(min(spacing[1], spacing[2]), 1e-9))


def _resampled_sizes(found: Survey, config: RunConfig, values: dict, in_plane: bool = False) -> np.ndarray:
    """(N, 3) sizes of the volumes on the training grid (`data.target_spacing`; in-plane only for slices)."""
    sizes = np.array(found.sizes, np.float64)
    target = values.get("data.target_spacing", config.data.target_spacing)
    if target is not None and found.spacings:
        spacings = np.array(found.spacings, np.float64)
        target = np.broadcast_to(np.array(target, np.float64), spacings.shape).copy()
        if in_plane:
            target[:, 0] = spacings[:, 0]
        sizes = np.maximum(1, np.round(sizes * spacings / target))
    return sizes


def slice_survey(found: Survey, config: RunConfig, values: dict) -> Survey:
    """The survey of a folder of volumes seen as their slices: 2-D, one (height, width) per slice on the
    training grid, the same training pixels (a pass over the slices is a pass over the voxels)."""
    sizes = _resampled_sizes(found, config, values, in_plane=True)
    slices = [(int(h), int(w)) for d, h, w in sizes for _ in range(int(d))]
    return dataclasses.replace(found, dims=2, sizes=slices, spacings=[])


def _volume_activation_bytes(patch: int, filters: int, depth: int, convs: int = 2) -> float:
    """Rough float32 activation memory of one training sample: conv outputs, norms and activations,
    encoder and decoder, forward and backward (3x), summed over the levels (1/8 of the voxels and twice
    the filters per level)."""
    total = 0.0
    for level in range(depth + 1):
        voxels = (patch / 2**level) ** 3
        total += voxels * filters * 2**level * convs * 3 * (2 if level < depth else 1)
    return total * 4 * 3
