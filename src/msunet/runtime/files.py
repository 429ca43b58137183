"""Writing predictions of files: the loop shared by `msunet predict` (Keras) and the runtime (bundles).

`predict_files(engine, inputs, out_dir)` runs tiled prediction (`msunet.runtime.tiling.predict_tiled`,
Gaussian blending, optional flip test-time augmentation) over a file or a folder and writes per
image: `NAME.png` (binary 0/255, or class ids as an indexed PNG with a palette), `NAME_s2.png`, ...
(every scale, each at its own resolution), `NAME_fused.png` (if the model has that head),
`NAME_overlay.png` and optionally `NAME_prob.tif` (float32 probabilities, per scale too). Images
above `STREAM_PIXELS` are read lazily where the format allows and their masks are streamed to tiled
TIFF (`NAME.tif`, ...), so memory stays bounded by the tile batch. Every file is written atomically;
existing outputs are kept unless `overwrite`; an unreadable input is reported and skipped.

An `Engine` is what the loop needs of a model: its heads, channels, classes, preprocessing and a
batch -> {head: probabilities} function. NumPy only: no Keras, TensorFlow or SciPy."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from msunet.atomic import FolderLock, check_writable, not_writable, sweep_leftovers
from msunet.data.geo import GeoReference, read_georeference
from msunet.data.imageio import ImageReadError, is_image_file, open_image_lazy, write_png
from msunet.data.preprocessing import (
    Normalization,
    compute_normalization,
    downscale_image,
    resize_probabilities,
    to_unit_float,
)
from msunet.data.volumes import is_volume_only, volume_stem, volume_suffix
from msunet.data.zarrio import is_zarr_store
from msunet.heads import head_scale
from msunet.runtime.engine import Engine
from msunet.runtime.omezarr import write_ome_zarr, zarr_module
from msunet.runtime.options import FileJob, PredictOptions
from msunet.runtime.tiling import predict_tiled
from msunet.runtime.volumes import predict_volume_file
from msunet.runtime.writers import (
    OVERLAY_MAX_SIDE,
    STREAMED_OVERLAY_MAX_SIDE,
    class_palette,
    head_paths,
    overlay,
    pending_outputs,
    probabilities_to_mask,
    stream_mask_tiff,
    subsample,
    write_probabilities,
)
from msunet.stopping import DISK_ERRNOS

STREAM_PIXELS = 64_000_000  # above this, results stay on disk and masks are streamed to tiled TIFF
def tile_preprocess(image, normalization: Normalization) -> Callable[[np.ndarray], np.ndarray]:
    """The training normalisation as a per-tile function (per-image statistics computed once, lazily read)."""
    if normalization.mode == "image":
        fixed = compute_normalization([image], "dataset")
        return lambda tile: fixed.apply(to_unit_float(np.asarray(tile)))
    return lambda tile: normalization.apply(to_unit_float(np.asarray(tile)))


@dataclasses.dataclass
class PredictSummary:
    written: list[pathlib.Path] = dataclasses.field(default_factory=list)
    existing: list[pathlib.Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    ignored: list[pathlib.Path] = dataclasses.field(default_factory=list)  # not image files
    seconds: float = 0.0
    megapixels: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def list_inputs(inputs: str | os.PathLike) -> list[pathlib.Path]:
    """The files to predict: a file, every file of a folder, or the files a glob pattern matches ("scans/*.tif").
    A Zarr store (a folder named `*.zarr`) is one input. Broken links are kept: they are reported as failed
    files, so that the summary accounts for every input."""
    path = pathlib.Path(inputs)
    if not path.exists() and glob.has_magic(str(inputs)):
        files = sorted(pathlib.Path(p) for p in glob.glob(str(inputs), recursive=True)
                       if os.path.isfile(p) or _broken_link(p) or is_zarr_store(p))
        if not files:
            raise FileNotFoundError(f"{inputs}: the pattern matches no file; check the folder and the extension.")
        return files
    if path.is_dir() and not is_zarr_store(path):
        files = sorted(p for p in path.iterdir() if (p.is_file() or _broken_link(p) or is_zarr_store(p))
                       and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"{path}: the folder is empty; pass an image file or a folder of images.")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder.")
    return [path]


def _broken_link(path) -> bool:
    return os.path.islink(path) and not os.path.exists(path)


def output_stems(files: Sequence[pathlib.Path]) -> dict[pathlib.Path, str]:
    """The name each input's outputs start with: its stem, or stem + "_" + extension for inputs that
    share a stem (a.png and a.tif write a_png.png and a_tif.png, never over each other)."""
    count: dict[str, int] = {}
    for path in files:
        count[volume_stem(path)] = count.get(volume_stem(path), 0) + 1
    suffix = {p: (volume_suffix(p) or p.suffix).lstrip(".").replace(".", "_").lower() for p in files}
    return {p: volume_stem(p) if count[volume_stem(p)] == 1 else f"{volume_stem(p)}_{suffix[p]}" for p in files}


def output_paths(out_dir: pathlib.Path, stem: str, heads: Sequence[str], streamed: bool,
                 probabilities: bool, geo: bool = False) -> dict[str, pathlib.Path]:
    """PNG masks; tiled TIFF for streamed images, GeoTIFF for georeferenced ones; TIFF probabilities."""
    return head_paths(out_dir, stem, heads, ".tif" if streamed or geo else ".png", ".tif" if probabilities else None)


@dataclasses.dataclass
class FileOutcome:
    """One input's result: status "written", "existing" (outputs kept), "ignored" (not an image) or "failed"."""

    path: pathlib.Path
    status: str
    written: list[pathlib.Path] = dataclasses.field(default_factory=list)
    reason: str = ""
    megapixels: float = 0.0
    outputs: list[pathlib.Path] = dataclasses.field(default_factory=list)  # all of the image's outputs

    def add_to(self, summary: PredictSummary) -> None:
        if self.status == "ignored":
            summary.ignored.append(self.path)
        elif self.status == "existing":
            summary.existing.append(self.path)
        elif self.status == "failed":
            summary.failed.append((str(self.path), self.reason))
        else:
            summary.written.extend(self.written)
            summary.megapixels += self.megapixels


def file_job(engine: Engine, options: PredictOptions, out_dir: str | os.PathLike) -> FileJob:
    """`options` settled against `engine` (heads, tile, threshold, flips): once per call, before any image."""
    return FileJob.fit(options, out_dir, engine.heads, engine.default_heads, engine.default_tile, engine.threshold,
                       engine.flip, engine.takes_volumes)


def predict_file(engine: Engine, fn, path: pathlib.Path, stem: str, job: FileJob,
                 progress: Callable[[str, int, int], None] | None = None) -> FileOutcome:
    """Predicts one input and writes its outputs (`fn` = `engine.make_fn(job.heads, batch_size, job.tta)`).

    Never raises for a bad image: an unreadable file or one with the wrong channels is a "failed"
    outcome with the reason (the path is the outcome's). The step `predict_files` and the Ray actors
    (`msunet.distributed.ray_predict`) share.
    """
    if _broken_link(path):
        return FileOutcome(path, "failed", reason=f"a broken link (its target {os.readlink(path)} does not exist); "
                                                  "fix or remove the link")
    if engine.takes_volumes or is_volume_only(path):
        return _predict_volume_file(engine, fn, path, stem, job, progress)
    if not is_image_file(path):
        return FileOutcome(path, "ignored")
    options = job.options
    try:
        source = open_image_lazy(path, max(engine.max_pixels, 2**34))
        height, width, channels = source.shape
        streamed = height * width > STREAM_PIXELS
        geo = read_georeference(path) if path.suffix.lower() in (".tif", ".tiff") else None
        paths = output_paths(job.out, stem, job.heads, streamed, options.probabilities, geo is not None)
        if options.output_format == "ome-zarr":  # one store for every scale (and the probabilities)
            paths = {"ome-zarr": job.out / f"{stem}.ome.zarr", "overlay": paths["overlay"]}
        paths, outputs = pending_outputs(paths,
                                         options)
        if not paths:
            return FileOutcome(path, "existing", outputs=outputs)
        if channels != engine.in_channels:
            raise ValueError(f"{channels} channel(s), but the model takes {engine.in_channels}; "
                             "convert the image or use a model trained on such images")
        written = _predict_one(path, source, engine, fn, job, paths, streamed, progress, geo)
        return FileOutcome(path, "written", written, megapixels=height * width / 1e6, outputs=outputs)
    except (ImageReadError, ValueError, OSError) as err:
        return _failed(path, err, job.out)


def _failed(path: pathlib.Path, err: Exception, out: pathlib.Path) -> FileOutcome:
    """A "failed" outcome whose reason is the error's message without the path it starts with. A full
    or read-only output folder is not the image's fault and would fail every image after it: it stops
    the run (`not_writable`'s message; finished images stay, a re-run does the rest)."""
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS and not str(err.filename or "").startswith(str(path)):
        raise not_writable(out, err) from err
    text = str(err)
    return FileOutcome(path, "failed", reason=text.split(": ", 1)[1] if text.startswith(str(path)) else text)


def _predict_volume_file(engine: Engine, fn, path: pathlib.Path, stem: str, job: FileJob, progress) -> FileOutcome:
    if not engine.takes_volumes:
        return FileOutcome(path, "failed", reason="a volume; this model segments 2-D images (train one on volumes: "
                                                  "docs/volumes.md)")
    if job.options.output_format == "ome-zarr":
        return FileOutcome(path, "failed", reason="OME-Zarr output is written for 2-D images; volumes are written as "
                                                  "NIfTI (leave --format at auto)")
    if not volume_suffix(path):
        if is_image_file(path):
            return FileOutcome(path, "failed", reason="a 2-D image; this model segments volumes (NIfTI, TIFF stacks, "
                                                      ".npy)")
        return FileOutcome(path, "ignored")
    try:
        status, written, outputs, megavoxels = predict_volume_file(engine, fn, path, stem, job, progress)
        return FileOutcome(path, status, written, megapixels=megavoxels, outputs=outputs)
    except (ImageReadError, ValueError, OSError) as err:
        return _failed(path, err, job.out)


@contextlib.contextmanager
def output_folder(out: pathlib.Path) -> Iterator[pathlib.Path]:
    """A prediction's output folder, held for the block: locked (a second predict into it is refused,
    never interleaved), checked writable (read-only or full: refused before the first image) and swept
    of a killed run's temporary files (its finished outputs are kept)."""
    with FolderLock(out, "predict"):
        check_writable(out)
        sweep_leftovers(out)
        yield out


def predict_files(engine: Engine, inputs: str | os.PathLike, out_dir: str | os.PathLike,
                  options: PredictOptions | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> PredictSummary:
    """Predicts every image of `inputs` (a file, a folder or a glob pattern) with `engine` and writes
    masks at every scale into `out_dir`, as `options` say (`PredictOptions`; default: the defaults).

    Returns:
        A `PredictSummary` (written files, images kept because outputs existed, failures with reasons).
    """
    job = file_job(engine, options or PredictOptions(), out_dir)
    fn = engine.make_fn(job.heads, job.options.batch_size, job.tta)
    if job.options.output_format == "ome-zarr":
        zarr_module()  # missing: one clear error before any image
    files = list_inputs(inputs)
    with output_folder(job.out):
        summary = PredictSummary()
        start = time.perf_counter()
        for path, stem in output_stems(files).items():
            predict_file(engine, fn, path, stem, job, progress).add_to(summary)
        summary.seconds = time.perf_counter() - start
    return summary


def predict_image(engine: Engine, fn, source, heads: Sequence[str], tile_size: int, overlap: float = 0.25,
                  batch_size: int = 4, blend: str = "gaussian", out_of_core: bool = False, workdir=None,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Every head's probabilities for one (H, W, C) image (array or lazy reader): head -> (ceil(H/s), ceil(W/s), K).

    The training preprocessing per tile, a tile fitted to images smaller than it, padding with what
    training pads (a black pixel, normalised), and `resample_step` applied both ways.
    """
    step = engine.resample_step
    if step > 1 and out_of_core:
        raise ValueError(f"{source.shape[1]}x{source.shape[0]} px is above the in-memory limit and the run trains at "
                         f"data.resample={1 / step:g}: reduced-resolution prediction of images this "
                         "large is not supported yet; downscale the image first")
    tiled_source = downscale_image(np.asarray(source[:]), step) if step > 1 else source
    preprocess = tile_preprocess(tiled_source, engine.normalization)
    results = predict_tiled(
        fn, tiled_source, fitted_tile(tiled_source.shape[:2], tile_size, max(head_scale(h) for h in heads)),
        overlap, batch_size, blend, scales={h: head_scale(h) for h in heads}, preprocess=preprocess,
        pad_value=preprocess(np.zeros((1, 1, tiled_source.shape[-1]), tiled_source.dtype))[0, 0],
        out_of_core=out_of_core, workdir=workdir, progress=progress,
    )
    if step > 1:  # back to each head's size on the original image: ceil(H/s) x ceil(W/s)
        height, width = source.shape[:2]
        results = {h: resize_probabilities(p, (-(-height // head_scale(h)), -(-width // head_scale(h))))
                   for h, p in results.items()}
    return results


def _predict_one(path, source, engine: Engine, fn, job: FileJob, paths, streamed, progress,
                 geo: GeoReference | None = None) -> list[pathlib.Path]:
    workdir = tempfile.mkdtemp(prefix="msunet-predict-") if streamed else None
    heads, threshold, options = job.heads, job.threshold, job.options
    try:
        results = predict_image(engine, fn, source, heads, job.tile_size, options.overlap, options.batch_size,
                                options.blend, streamed, workdir,
                                (lambda done, total: progress(path.name, done, total)) if progress else None)
        num_classes = engine.num_classes
        palette = class_palette(num_classes) if num_classes > 1 else None
        written = []
        if "ome-zarr" in paths:
            written.append(write_ome_zarr(paths["ome-zarr"], source, results, heads, threshold, num_classes,
                                          options.probabilities))
        for head in heads:  # `paths` holds only the outputs still to write
            probs = results[head]
            tags = geo.scaled(head_scale(head)).extratags() if geo else None  # the head's own pixel size
            if head in paths:
                if streamed or geo:
                    stream_mask_tiff(paths[head], probs, threshold, tags)
                else:
                    write_png(paths[head], probabilities_to_mask(np.asarray(probs), threshold), palette=palette)
                written.append(paths[head])
            if f"{head}:prob" in paths:
                write_probabilities(paths[f"{head}:prob"], probs, tags)
                written.append(paths[f"{head}:prob"])
        if "overlay" in paths:
            side = STREAMED_OVERLAY_MAX_SIDE if streamed else OVERLAY_MAX_SIDE
            step = max(1, -(-max(source.shape[:2]) // side))
            small = subsample(source, step)
            mask = probabilities_to_mask(subsample(results["mask" if "mask" in results else heads[0]], step), threshold)
            write_png(paths["overlay"], overlay(small, mask[: small.shape[0], : small.shape[1]], num_classes))
            written.append(paths["overlay"])
        return written
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def fitted_tile(shape, tile_size: int, coarsest: int) -> tuple[int, int]:
    """The tile for an image of `shape`: `tile_size`, cut to the image (rounded up to 16 px and the coarsest
    scale) along a side shorter than it.

    Padding a 64 px image into a 128 px tile showed the model a border it never met in training (its
    patches were the image itself): the padded side's masks grew false-positive blobs (held-out Dice
    0.85 where validation said 0.98). Rounding to 16 px bounds the number of traced shapes.
    """
    quantum = max(coarsest, 16)
    return tuple(min(tile_size, -(-int(side) // quantum) * quantum) for side in shape)
