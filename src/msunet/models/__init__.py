"""Architectures: the `ARCHITECTURES` registry, `build_model`, and views of a built model."""

from __future__ import annotations

import contextlib
import functools
import os
import zipfile
from collections.abc import Callable

import keras

from msunet.config import PRECISIONS, ConfigError, ModelConfig, close_matches, head_scale
from msunet.models.layers import BilinearUpsampling2D, CropToMatch
from msunet.models.seeds import SEED_EXAMPLES, seed_example
from msunet.models.unet import build_unet

ARCHITECTURES: dict[str, Callable[[ModelConfig], keras.Model]] = {"unet": build_unet}


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str = "auto") -> str:
    """The Keras dtype policy name for `ModelConfig.precision`.

    "auto" is "mixed_bfloat16" on a CPU-only TensorFlow backend whose CPU has bfloat16 instructions
    (measured there: about 1.5x faster training and inference, benchmarks/speed.py), else "float32".
    `MSUNET_PRECISION` in the environment replaces "auto".
    """
    if precision == "auto":
        precision = os.environ.get("MSUNET_PRECISION", "auto")
        if precision not in PRECISIONS:
            raise ConfigError(f"MSUNET_PRECISION={precision!r} is not valid; valid: {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    if keras.backend.backend() == "tensorflow" and _cpu_has_bf16():
        if not any(d.lower().startswith("gpu") for d in keras.distribution.list_devices()):
            return "mixed_bfloat16"
    return "float32"


@contextlib.contextmanager
def precision_scope(precision: str = "auto"):
    """Builds layers under the dtype policy of `precision`, restoring the global policy after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolve_precision(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(config: ModelConfig | None = None) -> keras.Model:
    """Builds the architecture named by `config.architecture` (default: a U-Net).

    Raises:
        ConfigError: the name is not registered; the message lists the valid names.
    """
    cfg = config if config is not None else ModelConfig()
    builder = ARCHITECTURES.get(cfg.architecture)
    if builder is None:
        names = sorted(ARCHITECTURES)
        raise ConfigError(
            f"ModelConfig.architecture={cfg.architecture!r} is not registered; valid: "
            f"{', '.join(repr(n) for n in names)}.{close_matches(cfg.architecture, names)}"
        )
    with precision_scope(cfg.precision):
        return builder(cfg)


def output_names(model: keras.Model) -> list[str]:
    """Names of a msunet model's outputs in canonical order: "mask", "mask_s2", "mask_s4", ..., "mask_fused".

    (Keras flattens dict outputs by sorted key, so `model.outputs` order is not this one.)
    """

    def order(name: str) -> tuple[int, str]:
        if name == "mask":
            return (0, name)
        return (head_scale(name) if head_scale(name) > 1 else 1 << 30, name)

    return sorted((t._keras_history[0].name for t in model.outputs), key=order)


def logits_model(model: keras.Model) -> keras.Model:
    """A model sharing `model`'s weights whose outputs are the heads' logits (before activation).

    Use it with losses computed from logits, which are numerically stable.
    """
    outputs = {name: model.get_layer(f"{name}_logits").output for name in output_names(model)}
    return keras.Model(model.input, outputs, name=f"{model.name}_logits")


def select_outputs(model: keras.Model, names: list[str] | tuple[str, ...] = ("mask",)) -> keras.Model:
    """A model sharing `model`'s weights that computes only the outputs `names`.

    Layers that feed no selected output are pruned, so inference of only "mask" skips the coarse
    heads.
    """
    available = output_names(model)
    for name in names:
        if name not in available:
            raise ValueError(
                f"Model {model.name!r} has no output {name!r}; valid: {', '.join(available)}."
                f"{close_matches(name, available)}"
            )
    return keras.Model(model.input, {n: model.get_layer(n).output for n in names}, name=f"{model.name}_select")


__all__ = [
    "ARCHITECTURES",
    "BilinearUpsampling2D",
    "CropToMatch",
    "SEED_EXAMPLES",
    "build_model",
    "build_unet",
    "load_model",
    "logits_model",
    "output_names",
    "output_shapes",
    "parse_size",
    "seed_example",
    "select_outputs",
    "summarize",
]


def load_model(path: str | os.PathLike) -> keras.Model:
    """Loads a `.keras` model saved by msunet (plain `keras.saving.load_model`, safe mode on).

    Raises:
        FileNotFoundError / ValueError: naming the file and what to do.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file {path!r} does not exist. Pass a .keras file written by msunet.")
    if not path.endswith(".keras"):
        raise ValueError(f"Model file {path!r} is not a .keras archive; msunet saves models as NAME.keras.")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"Model file {path!r} is not a readable .keras archive ({err}); it may be truncated.") from err


def parse_size(text: str) -> tuple[int, int]:
    """Parses "HxW" (or "N" for N x N) into a (height, width) tuple of positive ints."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        if len(parts) == 1:
            parts = parts * 2
        height, width = (int(p) for p in parts)
    except ValueError:
        height = width = 0
    if len(parts) != 2 or height < 1 or width < 1:
        raise ValueError(f"Size {text!r} is not of the form HxW with positive integers (e.g. 256x256 or 37x101).")
    return height, width


def output_shapes(model: keras.Model, size: tuple[int, int], batch: int = 1) -> dict[str, tuple]:
    """Shape of each output for an input of `size` = (height, width), inferred without running it."""
    channels = model.inputs[0].shape[-1]
    spec = model.compute_output_spec(keras.KerasTensor((batch, *size, channels)))
    return {name: tuple(spec[name].shape) for name in output_names(model)}


def summarize(model: keras.Model, size: tuple[int, int] | None = None) -> str:
    """Text summary: Keras' layer table, parameter count, and each output's name and shape."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=110)
    lines.append(f"Parameters: {model.count_params():,}")
    if size is not None:
        lines.append(f"Outputs for a {size[0]}x{size[1]} input:")
        for name, shape in output_shapes(model, size).items():
            lines.append(f"  {name:<12} {shape}")
    return "\n".join(lines)
