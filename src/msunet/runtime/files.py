"""Writing predictions of files: the loop shared by `msunet predict` (Keras) and the runtime (bundles).

`predict_files(engine, inputs, out_dir)` runs tiled prediction (`msunet.tiling.predict_tiled`,
Gaussian blending, optional flip test-time augmentation) over a file or a folder and writes per
image: `NAME.png` (binary 0/255, or class ids as an indexed PNG with a palette), `NAME_s2.png`, ...
(every scale, each at its own resolution), `NAME_fused.png` (if the model has that head),
`NAME_overlay.png` and optionally `NAME_prob.tif` (float32 probabilities, per scale too). Images
above `STREAM_PIXELS` are read lazily where the format allows and their masks are streamed to tiled
TIFF (`NAME.tif`, ...), so memory stays bounded by the tile batch. Every file is written atomically;
existing outputs are kept unless `overwrite`; an unreadable input is reported and skipped.

An `Engine` is what the loop needs of a model: its heads, channels, classes, preprocessing and a
batch -> {head: probabilities} function. NumPy only: no Keras, TensorFlow or SciPy.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import tifffile

from msunet.atomic import atomic_path
from msunet.heads import file_suffix, head_scale
from msunet.imageio import ImageReadError, RowBandReader, is_image_file, open_image_lazy, write_png, write_tiff
from msunet.runtime.preprocessing import (Normalization, compute_normalization, downscale_image, resize_probabilities,
                                          to_unit_float)
from msunet.tiling import predict_tiled

STREAM_PIXELS = 64_000_000  # above this, results stay on disk and masks are streamed to tiled TIFF
OVERLAY_MAX_SIDE = 4096  # overlays of larger images are subsampled to this side...
STREAMED_OVERLAY_MAX_SIDE = 2048  # ...and of streamed (huge) images to an overview of this side


# Class colours for overlays and indexed masks (class 0 black); tab10-like, then cycled.
PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190], [0, 128, 128]], np.uint8)


def class_palette(num_classes: int) -> np.ndarray:
    reps = -(-max(num_classes, 2) // len(PALETTE))
    return np.tile(PALETTE, (reps, 1))[: max(num_classes, 2)]


def probabilities_to_mask(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 mask: 0/255 for binary (one channel), class ids for multi-class."""
    if probs.shape[-1] == 1:
        return np.where(probs[..., 0] >= threshold, 255, 0).astype(np.uint8)
    return np.argmax(probs, axis=-1).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture of `mask` over `image`: filled classes at `alpha` plus 1-px contours.

    The image is contrast-stretched between its 1st and 99th percentiles (taken on a subsample) and
    worked on in place, so a 4096x4096 overlay needs about three float32 copies of one channel set.
    """
    rgb = to_unit_float(image)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    elif rgb.shape[-1] > 3:
        rgb = np.ascontiguousarray(rgb[..., :3])
    stride = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))
    low, high = np.percentile(rgb[::stride, ::stride], (1, 99))
    rgb -= low
    rgb /= max(high - low, 1e-6)
    np.clip(rgb, 0, 1, out=rgb)
    labels = (mask > 0).astype(np.uint8) if num_classes == 1 else mask.astype(np.int32)
    if num_classes > 1:
        labels = np.where((labels >= 0) & (labels < num_classes), labels, 0)  # void / unknown values: not drawn
    if labels.shape != rgb.shape[:2]:  # a coarse mask: nearest-upsample for display
        ry, rx = -(-rgb.shape[0] // labels.shape[0]), -(-rgb.shape[1] // labels.shape[1])
        labels = labels.repeat(ry, 0).repeat(rx, 1)[: rgb.shape[0], : rgb.shape[1]]
    colours = class_palette(max(num_classes, 2)).astype(np.float32) / 255.0
    if num_classes == 1:
        colours[1] = (0.1, 1.0, 0.25)  # green: visible on grey (EM), red (fundus) and colour images
    fg = labels > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours[labels[fg]]
    edge = fg & ~_eroded(fg)
    rgb[edge] = colours[labels[edge]]
    rgb *= 255
    return rgb.astype(np.uint8)


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
    """The files to predict: a file, every file of a folder, or the files a glob pattern matches ("scans/*.tif")."""
    path = pathlib.Path(inputs)
    if not path.exists() and glob.has_magic(str(inputs)):
        files = sorted(pathlib.Path(p) for p in glob.glob(str(inputs), recursive=True) if os.path.isfile(p))
        if not files:
            raise FileNotFoundError(f"{inputs}: the pattern matches no file; check the folder and the extension.")
        return files
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"{path}: the folder is empty; pass an image file or a folder of images.")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder.")
    return [path]


def output_stems(files: Sequence[pathlib.Path]) -> dict[pathlib.Path, str]:
    """The name each input's outputs start with: its stem, or stem + "_" + extension for inputs that
    share a stem (a.png and a.tif write a_png.png and a_tif.png, never over each other)."""
    count: dict[str, int] = {}
    for path in files:
        count[path.stem] = count.get(path.stem, 0) + 1
    return {p: p.stem if count[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}" for p in files}


def output_paths(out_dir: pathlib.Path, stem: str, heads: Sequence[str], streamed: bool,
                 probabilities: bool) -> dict[str, pathlib.Path]:
    ext = ".tif" if streamed else ".png"
    paths = {}
    for head in heads:
        suffix = file_suffix(head)
        paths[head] = out_dir / f"{stem}{suffix}{ext}"
        if probabilities:
            paths[f"{head}:prob"] = out_dir / f"{stem}{suffix}_prob.tif"
    paths["overlay"] = out_dir / f"{stem}_overlay.png"
    return paths


def check_tiling_args(tile_size, overlap, batch_size, threshold=0.5) -> None:
    """Raises one ValueError naming the option and the valid range (once, not once per image)."""
    if tile_size is not None and (isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer))
                                  or tile_size < 1):
        raise ValueError(f"tile size (--tile) must be a positive number of pixels, e.g. 256; received {tile_size!r}.")
    if not isinstance(overlap, (int, float, np.floating)) or not 0 <= overlap < 1:
        raise ValueError(f"overlap (--overlap) must be in [0, 1), e.g. 0.25; received {overlap!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch size (--batch) must be a positive number of tiles, e.g. 4; received {batch_size!r}.")
    if not isinstance(threshold, (int, float, np.floating)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold (--threshold) must be in [0, 1], e.g. 0.5; received {threshold!r}.")


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


TTA_AXES = {True: ((1,), (2,), (1, 2)), "horizontal": ((2,),), "vertical": ((1,),)}


def tta_mode(tta: bool, flip: bool | str) -> bool | str:
    """The flips test-time augmentation averages for a model trained with `data.flip=flip`: those it
    was trained on ("horizontal" for street scenes, never upside down), all four otherwise."""
    return (flip if flip in ("horizontal", "vertical") else True) if tta else False


def batch_function(call: Callable[[np.ndarray], dict], batch_size: int, tta: bool | str = False
                   ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A NumPy batch -> {head: float32 probabilities} function for `predict_tiled` over `call`.

    A short last batch is padded to `batch_size` so a traced or compiled model keeps one shape. With
    `tta`, the four flips (none, vertical, horizontal, both) are predicted and their un-flipped
    probabilities averaged ("horizontal" or "vertical": that flip only, for models trained on
    images with an up and a down); tiles are multiples of the coarsest scale, so coarse outputs flip
    onto the same cells.
    """
    axes_list = TTA_AXES[tta] if tta else ()

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
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


@dataclasses.dataclass(frozen=True)
class FileJob:
    """What every image of one `predict_files` call shares: the output folder, heads and options."""

    out: pathlib.Path
    heads: tuple[str, ...]
    tile_size: int
    overlap: float
    batch_size: int
    tta: bool | str
    threshold: float
    probabilities: bool
    overlay_images: bool
    overwrite: bool
    blend: str


def file_job(engine: Engine, out_dir: str | os.PathLike, tile_size: int | None = None, overlap: float = 0.25,
             batch_size: int = 4, tta: bool = False, threshold: float = 0.5, scales: Sequence[str] | None = None,
             probabilities: bool = False, overlay_images: bool = True, overwrite: bool = False,
             blend: str = "gaussian") -> FileJob:
    """Checks `msunet predict`'s options against the engine once (clear errors before any image)."""
    check_tiling_args(tile_size, overlap, batch_size, threshold)
    heads = list(scales) if scales else list(engine.default_heads)
    for head in heads:
        if head not in engine.heads:
            raise ValueError(f"The model has no output {head!r}; valid: {', '.join(engine.heads)}.")
    coarsest = max(head_scale(h) for h in heads)
    tile_size = engine.default_tile if tile_size is None else tile_size
    return FileJob(pathlib.Path(out_dir), tuple(heads), -(-int(tile_size) // coarsest) * coarsest, overlap,
                   batch_size, tta_mode(tta, engine.flip), threshold, probabilities, overlay_images, overwrite, blend)


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


def predict_file(engine: Engine, fn, path: pathlib.Path, stem: str, job: FileJob,
                 progress: Callable[[str, int, int], None] | None = None) -> FileOutcome:
    """Predicts one input and writes its outputs (`fn` = `engine.make_fn(job.heads, job.batch_size, job.tta)`).

    Never raises for a bad image: an unreadable file or one with the wrong channels is a "failed"
    outcome with the reason (the path is the outcome's). The step `predict_files` and the Ray actors
    (`msunet.distributed.ray_predict`) share.
    """
    if not is_image_file(path):
        return FileOutcome(path, "ignored")
    try:
        source = open_image_lazy(path, max(engine.max_pixels, 2**34))
        height, width, channels = source.shape
        streamed = height * width > STREAM_PIXELS
        paths = output_paths(job.out, stem, job.heads, streamed, job.probabilities)
        if not job.overlay_images:
            paths.pop("overlay")
        outputs = list(paths.values())
        if not job.overwrite:  # write what is missing (a deleted mask, newly asked probabilities), keep the rest
            paths = {k: p for k, p in paths.items() if not p.exists()}
            if not paths:
                return FileOutcome(path, "existing", outputs=outputs)
        if channels != engine.in_channels:
            raise ValueError(f"{channels} channel(s), but the model takes {engine.in_channels}; "
                             "convert the image or use a model trained on such images")
        written = _predict_one(path, source, engine, fn, job.heads, paths, job.tile_size, job.overlap,
                               job.batch_size, job.threshold, job.probabilities, job.overlay_images, streamed,
                               job.blend, progress)
        return FileOutcome(path, "written", written, megapixels=height * width / 1e6, outputs=outputs)
    except (ImageReadError, ValueError, OSError) as err:
        text = str(err)
        return FileOutcome(path, "failed", reason=text.split(": ", 1)[1] if text.startswith(str(path)) else text)


def predict_files(
    engine: Engine,
    inputs: str | os.PathLike,
    out_dir: str | os.PathLike,
    tile_size: int | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    tta: bool = False,
    threshold: float = 0.5,
    scales: Sequence[str] | None = None,
    probabilities: bool = False,
    overlay_images: bool = True,
    overwrite: bool = False,
    blend: str = "gaussian",
    progress: Callable[[str, int, int], None] | None = None,
) -> PredictSummary:
    """Predicts every image of `inputs` with `engine` and writes masks at every scale.

    The arguments after `out_dir` are those of `msunet.predict` (which calls this with a Keras engine).

    Returns:
        A `PredictSummary` (written files, images kept because outputs existed, failures with reasons).
    """
    job = file_job(engine, out_dir, tile_size, overlap, batch_size, tta, threshold, scales, probabilities,
                   overlay_images, overwrite, blend)
    fn = engine.make_fn(job.heads, job.batch_size, job.tta)
    job.out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    start = time.perf_counter()
    files = list_inputs(inputs)
    for path, stem in output_stems(files).items():
        predict_file(engine, fn, path, stem, job, progress).add_to(summary)
    summary.seconds = time.perf_counter() - start
    return summary


def _eroded(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by the 4-neighbour cross, outside counted as set (scipy's border_value=1)."""
    padded = np.pad(mask, 1, constant_values=True)
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])


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


def _predict_one(path, source, engine: Engine, fn, heads, paths, tile_size, overlap, batch_size, threshold, probabilities,
                 overlay_images, streamed, blend, progress) -> list[pathlib.Path]:
    workdir = tempfile.mkdtemp(prefix="msunet-predict-") if streamed else None
    try:
        results = predict_image(engine, fn, source, heads, tile_size, overlap, batch_size, blend, streamed, workdir,
                                (lambda done, total: progress(path.name, done, total)) if progress else None)
        num_classes = engine.num_classes
        palette = class_palette(num_classes) if num_classes > 1 else None
        written = []
        for head in heads:  # `paths` holds only the outputs still to write
            probs = results[head]
            if head in paths:
                if streamed:
                    _stream_mask_tiff(paths[head], probs, threshold)
                else:
                    write_png(paths[head], probabilities_to_mask(np.asarray(probs), threshold), palette=palette)
                written.append(paths[head])
            if f"{head}:prob" in paths:
                _write_probabilities(paths[f"{head}:prob"], probs)
                written.append(paths[f"{head}:prob"])
        if "overlay" in paths:
            side = STREAMED_OVERLAY_MAX_SIDE if streamed else OVERLAY_MAX_SIDE
            step = max(1, -(-max(source.shape[:2]) // side))
            small = _subsample(source, step)
            mask = probabilities_to_mask(_subsample(results["mask" if "mask" in results else heads[0]], step), threshold)
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


def _band_view(array):
    """Memory-mapped results are read through a band reader: touched pages of a map count as resident."""
    if isinstance(array, np.memmap):
        return RowBandReader(array.filename, array.offset, array.shape, array.dtype)
    return array


def _subsample(array, step: int) -> np.ndarray:
    """Every `step`-th pixel of a (lazily read) array, read in row bands aligned to `step`."""
    array = _band_view(array)
    rows = step * max(1, 1024 // step)
    # .copy(): a strided view would keep its whole band alive until the end (the whole image, in all).
    parts = [np.asarray(array[r : min(r + rows, array.shape[0])])[::step, ::step].copy()
             for r in range(0, array.shape[0], rows)]
    return np.concatenate(parts, axis=0)


def _tiles(reader, transform, dtype, tile: int = 256):
    """Tiles (row-major) of `transform(row band)` for tifffile's tiled writer; one band in memory."""
    height, width = reader.shape[:2]
    for top in range(0, height, tile):
        band = transform(np.asarray(reader[top : min(top + tile, height)]))
        for left in range(0, width, tile):
            block = np.zeros((tile, tile, *band.shape[2:]), dtype)
            part = band[:, left : left + tile]
            block[: part.shape[0], : part.shape[1]] = part
            yield block


def _write_tiled_tiff(path: pathlib.Path, reader, transform, dtype, channels: int | None) -> None:
    """Streams `transform` of a (memory-mapped) result to a tiled, zlib-compressed TIFF, atomically."""
    height, width = reader.shape[:2]
    shape = (height, width) if channels is None else (height, width, channels)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, _tiles(_band_view(reader), transform, dtype), shape=shape, dtype=dtype,
                         tile=(256, 256), compression="zlib")


def _stream_mask_tiff(path: pathlib.Path, probs, threshold: float) -> None:
    """Writes the mask of a (memory-mapped) probability map as a tiled TIFF, band by band."""
    _write_tiled_tiff(path, probs, lambda band: probabilities_to_mask(band, threshold), np.uint8, None)


def _write_probabilities(path: pathlib.Path, probs) -> None:
    if isinstance(probs, np.memmap):
        _write_tiled_tiff(path, probs, lambda band: band, np.float32, probs.shape[-1])
    else:
        write_tiff(path, np.asarray(probs, np.float32))
