"""Predicting volumes: the file loop's step for a NIfTI / TIFF-stack / .npy input and a 3-D engine.

Per volume: `NAME.nii.gz` (labels: 0/255 binary, class ids otherwise), `NAME_s2.nii.gz`, ... (every
scale at its own grid, its affine scaled so each coarse voxel sits at the centre of the fine voxels it
covers), optionally `NAME_prob.nii.gz` (float32 probabilities, classes on the 4th axis) and
`NAME_overlay.png` (the middle slice with the mask). The header of the input is kept (orientation,
units), so masks lie on their volume in any viewer. 3-D windows with Gaussian blending
(`msunet.runtime.tiling`), in slabs: memory holds about a window's slices, not the volume's; a volume
over `STREAM_VOXELS` (NIfTI, `.npy`) is also read from its file slab by slab and its outputs accumulated
in memory-mapped files, so neither it nor its probabilities are ever held whole (the written mask is,
at one byte a voxel). Test-time augmentation averages the mirrorings over the axes training flipped.
NumPy only.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Callable, Sequence

import numpy as np

from msunet.data.imageio import write_png
from msunet.data.preprocessing import to_unit_float
from msunet.data.volumes import (
    LazyVolume,
    in_plane_target,
    needs_resampling,
    open_volume_lazy,
    read_volume,
    resample_volume,
    resampled_shape,
    standardize_volume,
    volume_moments,
    write_volume,
)
from msunet.runtime.engine import Engine
from msunet.runtime.options import FileJob
from msunet.runtime.tiling import predict_tiled
from msunet.runtime.writers import head_paths, overlay, pending_outputs, probabilities_to_mask

STREAM_VOXELS = 2**27  # volumes above this (512 MB as float32) are predicted from their file, slab by slab


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
    preprocess = None
    if isinstance(image, LazyVolume):  # streamed from its file: normalised window by window
        x, preprocess = image, _window_normalization(engine, image)
    elif engine.normalization.mode == "volume":
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
                                preprocess=preprocess, out_of_core=True if preprocess else None, progress=progress)
    if resample:
        results = {h: resample_volume(p, [-(-n // f) for n, f in zip(shape, factors[h])], order=1)
                   for h, p in results.items()}
    return results


def _window_normalization(engine: Engine, volume: LazyVolume):
    """The training normalisation applied to one window of a streamed volume: the whole volume's
    z-score (statistics from one pass over its slabs) or the engine's normalisation."""
    if engine.normalization.mode == "volume":
        mean, std = volume_moments(volume)
        return lambda window: (np.asarray(window, np.float32) - mean) / np.maximum(std, 1e-6)
    return lambda window: engine.normalization.apply(to_unit_float(np.asarray(window)))


def open_volume(engine: Engine, path: pathlib.Path):
    """The volume to predict: streamed from its file (`LazyVolume`) where it has over `STREAM_VOXELS`
    voxels, the model is 3-D and no resampling is needed; else read whole. Returns (voxels, Volume)."""
    max_voxels = max(engine.max_pixels, 2**34)
    opened = open_volume_lazy(path, max_voxels) if engine.dims == 3 else None
    if opened is not None:
        lazy, meta = opened
        spacing = meta.spacing or engine.spacing
        if lazy.shape[0] * lazy.shape[1] * lazy.shape[2] > STREAM_VOXELS and not needs_resampling(
                spacing, engine.target_spacing):
            return lazy, meta
    volume = read_volume(path, max_voxels=max_voxels)
    return volume.array, volume


def predict_volume_file(engine: Engine, fn, path: pathlib.Path, stem: str, job: FileJob,
                        progress: Callable[[str, int, int], None] | None = None
                        ) -> tuple[str, list[pathlib.Path], list[pathlib.Path], float]:
    """Predicts one volume and writes its outputs: (status "written" or "existing", files written, every
    output of the volume, megavoxels). Raises `VolumeReadError` / `ValueError` for a bad file; the file
    loop (`msunet.runtime.files.predict_file`) reports it and goes on."""
    options = job.options
    array, volume = open_volume(engine, path)
    paths, outputs = pending_outputs(
        head_paths(job.out, stem, job.heads, ".nii.gz", ".nii.gz" if options.probabilities else None), options)
    if not paths:
        return "existing", [], outputs, 0.0
    channels = array.shape[-1]
    if channels != engine.in_channels:
        raise ValueError(f"{channels} channel(s), but the model takes {engine.in_channels}; "
                         "convert the volume or use a model trained on such volumes")
    results = predict_volume(engine, fn, array, job.heads, job.tile_size, options.overlap,
                             options.batch_size, options.blend,
                             (lambda done, total: progress(path.name, done, total)) if progress else None,
                             spacing=volume.spacing)
    try:
        written = _write_volume_outputs(engine, volume, array, results, job, paths)
    finally:
        _remove_tile_files(results)
    return "written", written, outputs, int(np.prod(array.shape[:3])) / 1e6


def _slabs(probs, rows: int = 8):
    """(first slice, slab) over a (D, h, w, K) result; a memory-mapped one is read from its file, so the
    resident memory is a slab (touched pages of a map count as resident), not the whole result."""
    if not isinstance(probs, np.memmap):
        for start in range(0, len(probs), rows):
            yield start, np.asarray(probs[start : start + rows])
        return
    slab_bytes = int(np.prod(probs.shape[1:])) * probs.dtype.itemsize
    with open(probs.filename, "rb") as fh:
        for start in range(0, probs.shape[0], rows):
            count = min(rows, probs.shape[0] - start)
            data = os.pread(fh.fileno(), count * slab_bytes, probs.offset + start * slab_bytes)
            yield start, np.frombuffer(data, probs.dtype).reshape(count, *probs.shape[1:])


def _remove_tile_files(results: dict[str, np.ndarray]) -> None:
    """Removes the folder of out-of-core results (memory maps), once written."""
    for value in results.values():
        name = getattr(value, "filename", None)
        if name:
            shutil.rmtree(os.path.dirname(name), ignore_errors=True)
            return


def _write_volume_outputs(engine: Engine, volume, array, results: dict[str, np.ndarray], job: FileJob,
                          paths: dict[str, pathlib.Path]) -> list[pathlib.Path]:
    written = []
    for head in job.heads:
        factor = engine.volume_factor(head)
        probs = results[head]
        if head in paths:
            mask = np.empty(probs.shape[:3], np.uint8)  # one byte a voxel; the probabilities read slab by slab
            for start, slab in _slabs(probs):
                mask[start : start + len(slab)] = probabilities_to_mask(slab, job.threshold)
            write_volume(paths[head], mask, like=volume, factor=factor)
            written.append(paths[head])
        if f"{head}:prob" in paths:
            write_volume(paths[f"{head}:prob"], np.asarray(probs, np.float32), like=volume, factor=factor)
            written.append(paths[f"{head}:prob"])
    if "overlay" in paths:  # the middle slice, with the finest head written
        head = "mask" if "mask" in results else job.heads[0]
        middle = array.shape[0] // 2
        coarse = np.asarray(results[head][middle // engine.volume_factor(head)[0]])
        write_png(paths["overlay"], overlay(np.asarray(array[middle]), probabilities_to_mask(coarse, job.threshold),
                                            engine.num_classes))
        written.append(paths["overlay"])
    return written
