"""Prediction: load a run, preprocess exactly as training did, write masks at every scale and overlays.

This module holds the run loading, the per-image forward pass and the writers. Images are predicted
whole (the model takes any size); tiled prediction for images larger than memory is issue 4's
`msunet.tiling`, which plugs in at `predict_probabilities`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import keras
import numpy as np

from msunet.config import RunConfig
from msunet.data import Normalization, to_unit_float
from msunet.imageio import read_image, write_png
from msunet.models import load_model, output_names

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
        config = RunConfig()
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
    """RGB uint8 picture of `mask` over `image`: filled classes at `alpha` plus 1-px contours."""
    from scipy import ndimage

    rgb = to_unit_float(image)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    rgb = rgb[..., :3]
    low, high = np.percentile(rgb, (1, 99))
    rgb = np.clip((rgb - low) / max(high - low, 1e-6), 0, 1)
    labels = (mask > 0).astype(np.int32) if num_classes == 1 else mask.astype(np.int32)
    if labels.shape != rgb.shape[:2]:  # a coarse mask: nearest-upsample for display
        ry, rx = -(-rgb.shape[0] // labels.shape[0]), -(-rgb.shape[1] // labels.shape[1])
        labels = labels.repeat(ry, 0).repeat(rx, 1)[: rgb.shape[0], : rgb.shape[1]]
    colours = class_palette(max(num_classes, 2)).astype(np.float32) / 255.0
    if num_classes == 1:
        colours[1] = (1.0, 0.15, 0.15)
    out = rgb.copy()
    fg = labels > 0
    out[fg] = (1 - alpha) * rgb[fg] + alpha * colours[labels[fg]]
    edge = fg & ~ndimage.binary_erosion(fg, border_value=1)
    out[edge] = colours[labels[edge]]
    return (out * 255).astype(np.uint8)


def write_prediction(out_dir: pathlib.Path, stem: str, image: np.ndarray, probs: dict[str, np.ndarray],
                     num_classes: int, threshold: float = 0.5) -> list[pathlib.Path]:
    """Writes name.png (full mask), name_s2.png ... (coarse masks), name_fused.png and name_overlay.png."""
    written = []
    palette = class_palette(num_classes) if num_classes > 1 else None
    for head, p in probs.items():
        suffix = "" if head == "mask" else "_" + head[5:]
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
