"""Prediction: load a run, preprocess exactly as training did, write masks at every scale and overlays.

`predict(model, inputs, out_dir)` runs tiled prediction (`msunet.tiling.predict_tiled`, Gaussian
blending, optional flip test-time augmentation) over a file or a folder and writes per image:
`NAME.png` (binary 0/255, or class ids as an indexed PNG with a palette), `NAME_s2.png`, ... (every
scale, each at its own resolution), `NAME_fused.png` (if the model has that head), `NAME_overlay.png`
and optionally `NAME_prob.tif` (float32 probabilities, per scale too). Images above
`STREAM_PIXELS` are read lazily where the format allows and their masks are streamed to tiled TIFF
(`NAME.tif`, ...), so memory stays bounded by the tile batch. Every file is written atomically;
existing outputs are kept unless `overwrite`; an unreadable input is reported and skipped.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import keras
import numpy as np

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence

import tifffile

from msunet.config import ModelConfig, RunConfig
from msunet.heads import file_suffix, head_name, head_scale, parse_head
from msunet.data import Normalization, compute_normalization, downscale_image, resize_probabilities, to_unit_float
from msunet.losses import deep_supervision_weights
from msunet.imageio import ImageReadError, RowBandReader, is_image_file, open_image_lazy, read_image, write_png, write_tiff
from msunet.models import load_model, output_names, select_outputs
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


@dataclasses.dataclass
class LoadedRun:
    model: keras.Model
    config: RunConfig
    normalization: Normalization
    run_dir: pathlib.Path | None


def model_config_from(model: keras.Model) -> ModelConfig:
    """What a bare .keras file tells of its config: channels, classes and heads (read off the graph)."""
    heads = [parse_head(name) for name in output_names(model)]
    scales = [h.scale for h in heads if h.kind == "scale"]
    mask = model.get_layer(head_name(1)).output
    return ModelConfig(in_channels=int(model.inputs[0].shape[-1]), num_classes=int(mask.shape[-1]),
                       depth=max(2, max(scales).bit_length()), deep_supervision=len(scales) > 1,
                       ds_heads=len(scales) - 1, fused_head=any(h.kind == "fused" for h in heads))


def load_run(path: str | os.PathLike, which: str = "best") -> LoadedRun:
    """Loads a run folder (its best/last model, config.json, normalization.json) or a .keras file.

    A bare .keras file is used with the config and normalisation beside it when present, else with
    a config derived from the model and per-image normalisation.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        model_path = path / f"{which}.keras"
        if not model_path.is_file():
            raise FileNotFoundError(f"{path}: no {which}.keras in this folder; pass a run folder written by msunet train.")
        run_dir = path
    else:
        model_path, run_dir = path, path.parent
    model = load_model(model_path)
    config_path, norm_path = run_dir / "config.json", run_dir / "normalization.json"
    if config_path.is_file():
        config = RunConfig.from_json(config_path)
    else:
        config = RunConfig(model=model_config_from(model))
    normalization = Normalization.from_json(norm_path) if norm_path.is_file() else Normalization("image")
    return LoadedRun(model, config, normalization, run_dir if config_path.is_file() else None)


def preprocess(image: np.ndarray, normalization: Normalization) -> np.ndarray:
    """The training path: unit scale by dtype, then the run's normalisation."""
    return normalization.apply(to_unit_float(image))


def predict_probabilities(model: keras.Model, image: np.ndarray, normalization: Normalization,
                          heads: list[str] | None = None) -> dict[str, np.ndarray]:
    """Probabilities of each head for one (H, W, C) image: name -> (h_s, w_s, K) float32."""
    x = preprocess(image, normalization)[None]
    outputs = model(x, training=False)
    names = heads or output_names(model)
    return {name: keras.ops.convert_to_numpy(outputs[name])[0].astype(np.float32) for name in names}


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
    from scipy import ndimage

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
    edge = fg & ~ndimage.binary_erosion(fg, border_value=1)
    rgb[edge] = colours[labels[edge]]
    rgb *= 255
    return rgb.astype(np.uint8)


def write_prediction(out_dir: pathlib.Path, stem: str, image: np.ndarray, probs: dict[str, np.ndarray],
                     num_classes: int, threshold: float = 0.5) -> list[pathlib.Path]:
    """Writes name.png (full mask), name_s2.png ... (coarse masks), name_fused.png and name_overlay.png."""
    written = []
    palette = class_palette(num_classes) if num_classes > 1 else None
    for head, p in probs.items():
        suffix = file_suffix(head)
        mask = probabilities_to_mask(p, threshold)
        path = out_dir / f"{stem}{suffix}.png"
        write_png(path, mask, palette=palette)
        written.append(path)
        if head == "mask":
            path = out_dir / f"{stem}_overlay.png"
            write_png(path, overlay(image, mask, num_classes))
            written.append(path)
    return written


def read_for_prediction(path: str | os.PathLike, run: LoadedRun) -> np.ndarray:
    image = read_image(path, run.config.data.max_pixels)
    if image.shape[-1] != run.config.model.in_channels:
        raise ValueError(
            f"{path}: {image.shape[-1]} channel(s), but the model takes {run.config.model.in_channels}; "
            "convert the image or use a model trained on such images."
        )
    return image


# --------------------------------------------------------------------------------------------------
# Tiled prediction of files
# --------------------------------------------------------------------------------------------------
def make_predict_fn(model: keras.Model, heads: Sequence[str], batch_size: int, tta: bool = False):
    """A NumPy batch -> {head: probabilities} function for `predict_tiled`.

    Only `heads` are computed (the others are pruned). A short last batch is padded to
    `batch_size` so the traced function keeps one shape. With `tta`, the four flips (none,
    vertical, horizontal, both) are predicted and their un-flipped probabilities averaged; tiles
    are multiples of the coarsest scale, so the coarse outputs flip onto the same cells.
    """
    sub = model if list(heads) == output_names(model) else select_outputs(model, list(heads))

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count, *batch.shape[1:]), batch.dtype)])
        out = sub.predict_on_batch(batch)
        result = {k: np.asarray(v, np.float32) for k, v in out.items()}
        if tta:
            for axes in ((1,), (2,), (1, 2)):
                flipped = sub.predict_on_batch(np.ascontiguousarray(np.flip(batch, axis=axes)))
                for k in result:
                    result[k] += np.flip(np.asarray(flipped[k], np.float32), axis=axes)
            result = {k: v / 4.0 for k, v in result.items()}
        return {k: v[:count] for k, v in result.items()}

    return run


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
    path = pathlib.Path(inputs)
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


def trained_heads(run: LoadedRun) -> list[str]:
    """The model's outputs that training gave a loss weight: a deliberately untrained head (weight 0,
    e.g. the coarsest under `train.ds_weights=nnunet`) is not written unless asked for by name."""
    names = output_names(run.model)
    try:
        weights = deep_supervision_weights(names, run.config.train.ds_weights)
    except ValueError:  # weights that do not fit this model (a hand-made config): every head
        return names
    return [name for name in names if weights.get(name, 1.0) > 0]


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


def predict(
    model: str | os.PathLike | LoadedRun,
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
    """Predicts every image of `inputs` (a file or a folder) and writes masks at every scale.

    Example:
    ```python
    summary = msunet.predict("runs/first", "scans/", "masks/", tta=True)
    summary.written, summary.failed
    ```

    Args:
        model: a run folder, a .keras file, or a `LoadedRun`.
        inputs: an image file or a folder of images.
        out_dir: output folder (created).
        tile_size: tile side (rounded up to a multiple of the coarsest scale); default: twice the
            run's training patch, at most 512.
        overlap: tile overlap fraction; batch_size: tiles per model call.
        tta: average the four flips.
        threshold: binary threshold on the probability.
        scales: heads to write ("mask", "mask_s2", ..., "mask_fused"); default: all.
        probabilities: also write float32 probability TIFFs.
        overlay_images: write NAME_overlay.png.
        overwrite: replace existing outputs (otherwise only the missing ones are written; an image whose
            outputs all exist is kept as it is).
        progress: called as progress(file_name, tiles_done, tiles_total).

    Returns:
        A `PredictSummary` (written files, images kept because outputs existed, failures with reasons).
    """
    check_tiling_args(tile_size, overlap, batch_size, threshold)
    run = model if isinstance(model, LoadedRun) else load_run(model)
    available = output_names(run.model)
    heads = list(scales) if scales else trained_heads(run)
    for head in heads:
        if head not in available:
            raise ValueError(f"The model has no output {head!r}; valid: {', '.join(available)}.")
    coarsest = max(head_scale(h) for h in heads)
    if tile_size is None:
        tile_size = min(512, 2 * run.config.data.patch_size)
    tile_size = -(-int(tile_size) // coarsest) * coarsest
    fn = make_predict_fn(run.model, heads, batch_size, tta)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    start = time.perf_counter()
    files = list_inputs(inputs)
    stems = output_stems(files)
    for path in files:
        if not is_image_file(path):
            summary.ignored.append(path)
            continue
        try:
            source = open_image_lazy(path, max(run.config.data.max_pixels, 2**34))
            height, width, channels = source.shape
            streamed = height * width > STREAM_PIXELS
            paths = output_paths(out, stems[path], heads, streamed, probabilities)
            if not overlay_images:
                paths.pop("overlay")
            if not overwrite:  # write what is missing (a deleted mask, newly asked probabilities), keep the rest
                paths = {k: p for k, p in paths.items() if not p.exists()}
                if not paths:
                    summary.existing.append(path)
                    continue
            if channels != run.config.model.in_channels:
                raise ValueError(f"{channels} channel(s), but the model takes {run.config.model.in_channels}; "
                                 "convert the image or use a model trained on such images")
            summary.written.extend(_predict_one(path, source, run, fn, heads, paths, tile_size, overlap, batch_size,
                                                threshold, probabilities, overlay_images, streamed, blend, progress))
            summary.megapixels += height * width / 1e6
        except (ImageReadError, ValueError, OSError) as err:
            text = str(err)
            summary.failed.append((str(path), text.split(": ", 1)[1] if text.startswith(str(path)) else text))
    summary.seconds = time.perf_counter() - start
    return summary


def _predict_one(path, source, run, fn, heads, paths, tile_size, overlap, batch_size, threshold, probabilities,
                 overlay_images, streamed, blend, progress) -> list[pathlib.Path]:
    workdir = tempfile.mkdtemp(prefix="msunet-predict-") if streamed else None
    step = run.config.data.resample_step
    if step > 1 and streamed:
        raise ValueError(f"{source.shape[1]}x{source.shape[0]} px is above the in-memory limit and the run trains at "
                         f"data.resample={run.config.data.resample}: reduced-resolution prediction of images this "
                         "large is not supported yet; downscale the image first")
    try:
        tiled_source = downscale_image(np.asarray(source[:]), step) if step > 1 else source
        preprocess = tile_preprocess(tiled_source, run.normalization)
        results = predict_tiled(
            fn, tiled_source, fitted_tile(tiled_source.shape[:2], tile_size, max(head_scale(h) for h in heads)),
            overlap, batch_size, blend, scales={h: head_scale(h) for h in heads}, preprocess=preprocess,
            pad_value=preprocess(np.zeros((1, 1, tiled_source.shape[-1]), tiled_source.dtype))[0, 0],
            out_of_core=streamed, workdir=workdir,
            progress=(lambda done, total: progress(path.name, done, total)) if progress else None,
        )
        if step > 1:  # back to each head's size on the original image: ceil(H/s) x ceil(W/s)
            height, width = source.shape[:2]
            results = {h: resize_probabilities(p, (-(-height // head_scale(h)), -(-width // head_scale(h))))
                       for h, p in results.items()}
        num_classes = run.config.model.num_classes
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tifffile.imwrite(tmp, _tiles(_band_view(reader), transform, dtype), shape=shape, dtype=dtype,
                         tile=(256, 256), compression="zlib")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _stream_mask_tiff(path: pathlib.Path, probs, threshold: float) -> None:
    """Writes the mask of a (memory-mapped) probability map as a tiled TIFF, band by band."""
    _write_tiled_tiff(path, probs, lambda band: probabilities_to_mask(band, threshold), np.uint8, None)


def _write_probabilities(path: pathlib.Path, probs) -> None:
    if isinstance(probs, np.memmap):
        _write_tiled_tiff(path, probs, lambda band: band, np.float32, probs.shape[-1])
    else:
        write_tiff(path, np.asarray(probs, np.float32))
