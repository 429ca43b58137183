"""The planner's part for folders of volumes (`Survey.dims == 3`): the model's dimensionality, the patch
cube and depth, in-plane pooling for thick slices, the batch, normalisation and augmentation.

As nnU-Net plans its 3d_fullres configuration: the median volume sets the patch, the voxel spacing sets
where pooling starts along z, and the device probe (`msunet.plan.device`, after this) times the step
and cuts width and batch on a CPU. Never imports keras.

| key                    | derived from                                                                  |
|------------------------|-------------------------------------------------------------------------------|
| model.dims             | 3: the folder holds volumes                                                   |
| data.normalization     | "volume": each volume z-scored as a whole (MRI)                               |
| data.rotate, data.scale| 0: rotation and zoom augmentation are 2-D only so far                         |
| model.norm             | "group": a batch of 2 cubes gives batch norm no usable statistics             |
| data.patch_size        | the median volume's middle side, rounded up to a multiple of 8 (at most 64 on a CPU, 128 on a GPU) |
| model.depth            | a bottleneck of at least 4 voxels (at most 5 downsamplings)                   |
| model.inplane_levels   | log2(z spacing / in-plane spacing) where that ratio is 2 or more (nnU-Net's anisotropic pooling) |
| model.filters          | 16 on a CPU (a 3-D step is ~3x a 2-D one per voxel); the device probe narrows further |
| train.batch_size       | activation memory (at most 2 on a CPU, nnU-Net's 3-D batch); then the device probe cuts it by time |
"""

from __future__ import annotations

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
                 accelerator: bool, memory: int) -> None:
    """Derives the volume keys (see `msunet.plan.planner`'s table) into `values` through `derive`."""
    derive("model.dims", 3, f"{len(found.sizes)} volumes (NIfTI / TIFF stacks / .npy): a 3-D U-Net")
    derive("data.normalization", "volume", "each volume z-scored as a whole (MRI has no fixed intensity scale; for "
           "CT in Hounsfield units set data.normalization=dataset)")
    derive("data.rotate", 0.0, "rotation augmentation is 2-D only so far; volumes get flips on every axis and "
           "in-plane quarter turns")
    derive("data.scale", 0.0, "zoom augmentation is 2-D only so far")
    derive("data.resample", 1.0, "volumes train at their own voxel grid")
    derive("model.norm", "group", "batches of a few 3-D patches make batch statistics noise: with batch norm a "
           "hippocampus run scored 0.58 Dice in training mode and 0.00 with the moving statistics on the same "
           "validation patches; group normalisation (nnU-Net uses instance normalisation) needs no batch")
    if not found.sizes:
        return
    median = np.median(np.array(found.sizes, np.float64), axis=0)
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
    if found.spacings:
        spacing = np.median(np.array(found.spacings, np.float64), axis=0)
        ratio = float(spacing[0] / max(min(spacing[1], spacing[2]), 1e-9))
        levels = min(depth - 1, math.floor(math.log2(ratio))) if ratio >= ANISOTROPY else 0
        derive("model.inplane_levels", levels,
               f"median spacing {'x'.join(f'{s:g}' for s in spacing)} mm (z, y, x): "
               + (f"slices {ratio:.1f}x thicker than their pixels, the first {levels} pooling(s) in-plane only"
                  if levels else "about isotropic, every pooling in 3-D"))
        if ratio > STRONG_ANISOTROPY:
            notes.append(f"the slices are {ratio:.1f}x thicker than their pixels: nnU-Net would train in-plane 2-D "
                         "here; msunet trains 3-D with in-plane pooling first (2-D training on slices of volumes "
                         "is not there yet)")
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


def _volume_activation_bytes(patch: int, filters: int, depth: int, convs: int = 2) -> float:
    """Rough float32 activation memory of one training sample: conv outputs, norms and activations,
    encoder and decoder, forward and backward (3x), summed over the levels (1/8 of the voxels and twice
    the filters per level)."""
    total = 0.0
    for level in range(depth + 1):
        voxels = (patch / 2**level) ** 3
        total += voxels * filters * 2**level * convs * 3 * (2 if level < depth else 1)
    return total * 4 * 3
