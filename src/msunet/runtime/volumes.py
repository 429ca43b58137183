"""Predicting volumes: the file loop's step for a NIfTI / TIFF-stack / .npy input and a 3-D engine.

Per volume: `NAME.nii.gz` (labels: 0/255 binary, class ids otherwise), `NAME_s2.nii.gz`, ... (every
scale at its own grid, its affine scaled so each coarse voxel sits at the centre of the fine voxels it
covers), optionally `NAME_prob.nii.gz` (float32 probabilities, classes on the 4th axis) and
`NAME_overlay.png` (the middle slice with the mask). The header of the input is kept (orientation,
units), so masks lie on their volume in any viewer. 3-D windows with Gaussian blending
(`msunet.runtime.tiling`), in slabs: memory holds about a window's slices, not the volume's; test-time
augmentation averages the mirrorings over the axes training flipped. NumPy only.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from msunet.data.imageio import write_png
from msunet.data.preprocessing import to_unit_float
from msunet.data.volumes import (
    in_plane_target,
    needs_resampling,
    read_volume,
    resample_volume,
    resampled_shape,
    standardize_volume,
    write_volume,
)
from msunet.runtime.engine import Engine
from msunet.runtime.options import FileJob
from msunet.runtime.tiling import predict_tiled
from msunet.runtime.writers import head_paths, overlay, pending_outputs, probabilities_to_mask


def fitted_volume_tile(shape: Sequence[int], tile_size: int, quanta: Sequence[int]) -> tuple[int, ...]:
    """The window for a volume of `shape`: `tile_size` on every axis, cut to the volume (rounded up to 8
    voxels and to the coarsest scale of that axis) along an axis shorter than it."""
    return tuple(min(tile_size, -(-int(n) // max(q, 8)) * max(q, 8)) for n, q in zip(shape, quanta))


def predict_volume(engine: Engine, fn, image: np.ndarray, heads: Sequence[str], tile_size: int,
                   overlap: float = 0.5, batch_size: int = 2, blend: str = "gaussian",
                   progress: Callable[[int, int], None] | None = None,
                   spacing: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Every head's probabilities for one (D, H, W, C) volume: head -> (ceil(D/f), ceil(H/f), ceil(W/f), K).

    A volume whose `spacing` (z, y, x mm; None: the engine's fallback, else taken as the model's grid)
    differs from the model's `target_spacing` is resampled to it (linear), predicted there, and every
    head's probabilities resampled back onto the volume's own grid (linear), as training resampled it.
    """
    if engine.normalization.mode == "volume":
        x = standardize_volume(image)
    else:
        x = engine.normalization.apply(to_unit_float(image))
    shape = x.shape[:3]
    spacing = spacing or engine.spacing
    target = engine.target_spacing
    if engine.dims == 2 and spacing is not None:
        target = in_plane_target(spacing, target)
    resample = needs_resampling(spacing, target)
    if resample:
        x = resample_volume(x, resampled_shape(shape, spacing, target), order=1)
    factors = {h: engine.volume_factor(h) for h in heads}
    if engine.dims == 2:  # a slice model: each slice tiled as an image, the slices stacked
        scales = {h: engine.factor(h) for h in heads}
        coarsest = max(max(f) for f in scales.values())
        side = -(-int(tile_size) // coarsest) * coarsest
        tile = tuple(min(side, -(-n // coarsest) * coarsest) for n in x.shape[1:3])
        per_slice = [predict_tiled(fn, x[z], tile, overlap, batch_size, blend, scales=scales, pad_value=0.0)
                     for z in range(len(x))]
        if progress:
            progress(len(x), len(x))
        results = {h: np.stack([r[h] for r in per_slice]) for h in heads}
    else:
        quanta = [max(f[axis] for f in factors.values()) for axis in range(3)]
        tile = fitted_volume_tile(x.shape[:3], tile_size, quanta)
        results = predict_tiled(fn, x, tile, overlap, batch_size, blend, scales=factors, pad_value=0.0,
                                progress=progress)
    if resample:
        results = {h: resample_volume(p, [-(-n // f) for n, f in zip(shape, factors[h])], order=1)
                   for h, p in results.items()}
    return results


def predict_volume_file(engine: Engine, fn, path: pathlib.Path, stem: str, job: FileJob,
                        progress: Callable[[str, int, int], None] | None = None
                        ) -> tuple[str, list[pathlib.Path], list[pathlib.Path], float]:
    """Predicts one volume and writes its outputs: (status "written" or "existing", files written, every
    output of the volume, megavoxels). Raises `VolumeReadError` / `ValueError` for a bad file; the file
    loop (`msunet.runtime.files.predict_file`) reports it and goes on."""
    options = job.options
    volume = read_volume(path, max_voxels=max(engine.max_pixels, 2**34))
    paths, outputs = pending_outputs(
        head_paths(job.out, stem, job.heads, ".nii.gz", ".nii.gz" if options.probabilities else None), options)
    if not paths:
        return "existing", [], outputs, 0.0
    channels = volume.array.shape[-1]
    if channels != engine.in_channels:
        raise ValueError(f"{channels} channel(s), but the model takes {engine.in_channels}; "
                         "convert the volume or use a model trained on such volumes")
    results = predict_volume(engine, fn, volume.array, job.heads, job.tile_size, options.overlap,
                             options.batch_size, options.blend,
                             (lambda done, total: progress(path.name, done, total)) if progress else None,
                             spacing=volume.spacing)
    written = _write_volume_outputs(engine, volume, results, job, paths)
    return "written", written, outputs, volume.array[..., 0].size / 1e6


def _write_volume_outputs(engine: Engine, volume, results: dict[str, np.ndarray], job: FileJob,
                          paths: dict[str, pathlib.Path]) -> list[pathlib.Path]:
    written = []
    for head in job.heads:
        factor = engine.volume_factor(head)
        probs = np.asarray(results[head])
        if head in paths:
            write_volume(paths[head], probabilities_to_mask(probs, job.threshold), like=volume, factor=factor)
            written.append(paths[head])
        if f"{head}:prob" in paths:
            write_volume(paths[f"{head}:prob"], probs.astype(np.float32), like=volume, factor=factor)
            written.append(paths[f"{head}:prob"])
    if "overlay" in paths:  # the middle slice, with the finest head written
        head = "mask" if "mask" in results else job.heads[0]
        middle = volume.array.shape[0] // 2
        coarse = np.asarray(results[head])[middle // engine.volume_factor(head)[0]]
        write_png(paths["overlay"], overlay(volume.array[middle], probabilities_to_mask(coarse, job.threshold),
                                            engine.num_classes))
        written.append(paths["overlay"])
    return written
