"""Prediction with a Keras run: load it, preprocess exactly as training did, write masks at every scale.

`predict(model, inputs, out_dir)` wraps the run as an `Engine` and calls
`msunet.runtime.files.predict_files`, the loop that exported bundles use too (tiled prediction
with Gaussian blending, every scale, overlays, probabilities, out-of-core streaming, atomic writes;
see that module). The names it defines are importable from here as before.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence

import keras
import numpy as np

from msunet.config import ModelConfig, RunConfig
from msunet.heads import file_suffix, head_name, parse_head
from msunet.imageio import read_image, write_png
from msunet.losses import deep_supervision_weights
from msunet.models import load_model, output_names, select_outputs
from msunet.runtime.files import (  # noqa: F401 - part of this module's interface
    OVERLAY_MAX_SIDE, PALETTE, STREAM_PIXELS, Engine, PredictSummary, batch_function, check_tiling_args, class_palette, fitted_tile,
    list_inputs, output_paths, output_stems, overlay, predict_files, probabilities_to_mask, tile_preprocess,
)
from msunet.runtime.preprocessing import Normalization, to_unit_float


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
def make_predict_fn(model: keras.Model, heads: Sequence[str], batch_size: int, tta: bool | str = False):
    """A NumPy batch -> {head: probabilities} function for `predict_tiled` (`batch_function` over the model).

    Only `heads` are computed (the others are pruned); `tta` averages flips (`batch_function`).
    """
    sub = model if list(heads) == output_names(model) else select_outputs(model, list(heads))
    return batch_function(sub.predict_on_batch, batch_size, tta)


def trained_heads(run: LoadedRun) -> list[str]:
    """The model's outputs that training gave a loss weight: a deliberately untrained head (weight 0,
    e.g. the coarsest under `train.ds_weights=nnunet`) is not written unless asked for by name."""
    names = output_names(run.model)
    try:
        weights = deep_supervision_weights(names, run.config.train.ds_weights)
    except ValueError:  # weights that do not fit this model (a hand-made config): every head
        return names
    return [name for name in names if weights.get(name, 1.0) > 0]


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
        inputs: an image file, a folder of images, or a glob pattern ("scans/*.tif").
        out_dir: output folder (created).
        tile_size: tile side (rounded up to a multiple of the coarsest scale); default: twice the
            run's training patch, at most 512.
        overlap: tile overlap fraction; batch_size: tiles per model call.
        tta: average the flips the model was trained with (all four, or left-right only for
            `data.flip="horizontal"`).
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
    check_tiling_args(tile_size, overlap, batch_size, threshold)  # once, before the model is loaded
    run = model if isinstance(model, LoadedRun) else load_run(model)
    return predict_files(run_engine(run), inputs, out_dir, tile_size, overlap, batch_size, tta, threshold, scales,
                         probabilities, overlay_images, overwrite, blend, progress)


def run_engine(run: LoadedRun) -> Engine:
    """A Keras run as the `Engine` that `predict_files` drives."""
    return Engine(
        heads=output_names(run.model), default_heads=trained_heads(run), in_channels=run.config.model.in_channels,
        num_classes=run.config.model.num_classes, normalization=run.normalization,
        make_fn=lambda heads, batch_size, tta: make_predict_fn(run.model, heads, batch_size, tta),
        resample_step=run.config.data.resample_step, default_tile=min(512, 2 * run.config.data.patch_size),
        max_pixels=run.config.data.max_pixels, flip=run.config.data.flip,
    )
