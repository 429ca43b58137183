"""A Keras run as an `Engine`: the model as trained, preprocessed exactly as training did.

`run_engine(load_run(RUN))` is what `open_engine(RUN, engine="keras")` returns; the file loop
(`msunet.runtime.files`) drives it as it drives an exported bundle. The helpers below predict or
write a single in-memory image without the loop (the demo and tests use them).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import keras
import numpy as np

from msunet.data.imageio import write_png
from msunet.data.preprocessing import Normalization, to_unit_float
from msunet.heads import file_suffix
from msunet.models import output_names, select_outputs
from msunet.runtime.engine import Engine, batch_function
from msunet.runtime.writers import class_palette, overlay, probabilities_to_mask
from msunet.training.run_folder import LoadedRun, trained_heads


def make_predict_fn(model: keras.Model, heads: Sequence[str], batch_size: int, tta: bool | str = False):
    """A NumPy batch -> {head: probabilities} function for `predict_tiled` (`batch_function` over the model).

    Only `heads` are computed (the others are pruned); `tta` averages flips (`batch_function`).
    """
    sub = model if list(heads) == output_names(model) else select_outputs(model, list(heads))
    return batch_function(sub.predict_on_batch, batch_size, tta)


def run_engine(run: LoadedRun, description: str = "") -> Engine:
    """A Keras run as the `Engine` that `predict_files` drives."""
    patch = run.config.data.patch_size
    return Engine(
        heads=output_names(run.model), default_heads=trained_heads(run), in_channels=run.config.model.in_channels,
        num_classes=run.config.model.num_classes, normalization=run.normalization,
        make_fn=lambda heads, batch_size, tta: make_predict_fn(run.model, heads, batch_size, tta),
        resample_step=run.config.data.resample_step,
        default_tile=patch if run.config.model.dims == 3 else min(512, 2 * patch),  # volumes: the training cube
        max_pixels=run.config.data.max_pixels, flip=run.config.data.flip,
        description=description or f"Keras ({keras.backend.backend()}), the model as trained",
        dims=run.config.model.dims,
        scale_factors={h.name: run.config.model.scale_factor(h.scale) for h in run.config.model.heads},
        target_spacing=run.config.data.target_spacing, spacing=run.config.data.spacing,
        slices=run.config.data.slices and run.config.model.dims == 2,
    )


def preprocess(image: np.ndarray, normalization: Normalization) -> np.ndarray:
    """The training path: unit scale by dtype, then the run's normalisation."""
    return normalization.apply(to_unit_float(image))


def predict_probabilities(model: keras.Model, image: np.ndarray, normalization: Normalization,
                          heads: list[str] | None = None) -> dict[str, np.ndarray]:
    """Probabilities of each head for one whole (H, W, C) image, untiled: name -> (h_s, w_s, K) float32."""
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
        mask = probabilities_to_mask(p, threshold)
        path = out_dir / f"{stem}{file_suffix(head)}.png"
        write_png(path, mask, palette=palette)
        written.append(path)
        if head == "mask":
            path = out_dir / f"{stem}_overlay.png"
            write_png(path, overlay(image, mask, num_classes))
            written.append(path)
    return written
