"""Building a model from its config (`build_model`), loading it, its views (logits, selected outputs),
and the precision it runs in. The output contract is described in `msunet.models`."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import zipfile

import keras

from msunet import machine
from msunet.config import PRECISIONS, ConfigError, ModelConfig, close_matches
from msunet.heads import parse_head, sort_names
from msunet.models.decoders import DECODERS, get_decoder
from msunet.models.encoders import ENCODERS, get_encoder
from msunet.models.heads import apply_heads
from msunet.models.layers import BilinearUpsampling2D, CropToMatch
from msunet.models.seeds import SEED_EXAMPLES, seed_example


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True on a CPU with bfloat16 instructions (AVX512-BF16 or AMX; `msunet.machine`)."""
    return bool(machine.features()["bf16"])


def accelerators() -> list[str]:
    """The non-CPU devices Keras sees ("gpu:0", ...); none where the backend has no device list."""
    try:
        return [d for d in keras.distribution.list_devices() if not d.lower().startswith("cpu")]
    except Exception:  # noqa: BLE001 - backends without keras.distribution
        return []


def gpu_compute_capability() -> tuple[int, int] | None:
    """The first GPU's CUDA compute capability, where the backend can tell (TensorFlow, PyTorch)."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return tuple(tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")) if gpus else None
        if backend == "torch":
            import torch

            return tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no details: unknown
        return None
    return None


def mixed_precision_for_gpu() -> str:
    """bfloat16 from compute capability 8.0 (Ampere) on, float16 with loss scaling before; unknown: bfloat16."""
    capability = gpu_compute_capability()
    return "mixed_float16" if capability is not None and capability < (8, 0) else "mixed_bfloat16"


def resolve_precision(precision: str = "auto") -> str:
    """The Keras dtype policy name for `ModelConfig.precision`.

    Training resolves "auto" by measurement (`msunet.training.probe`, through the planner) and saves the
    choice in the run; this is the estimate used without one (a model built directly): on a GPU,
    mixed precision (bfloat16 from Ampere on, float16 with loss scaling before); on a CPU-only
    TensorFlow backend whose CPU has bfloat16 instructions, mixed bfloat16 (1.5x faster on the AMD
    EPYC where it was measured, slower on some Xeons: hence the probe); else float32.
    `MSUNET_PRECISION` in the environment replaces "auto".
    """
    if precision == "auto":
        precision = os.environ.get("MSUNET_PRECISION", "auto")
        if precision not in PRECISIONS:
            raise ConfigError(f"MSUNET_PRECISION={precision!r} is not valid; valid: {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    if any(d.lower().startswith("gpu") for d in accelerators()):
        return mixed_precision_for_gpu()
    if keras.backend.backend() == "tensorflow" and cpu_has_bf16():
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
    """Builds `config.encoder` -> `config.decoder` -> a head at every decoder scale.

    Example:
    ```python
    model = build_model(ModelConfig(depth=3, filters=16, encoder="resconv", decoder="unetpp"))
    out = model.predict(np.zeros((1, 37, 101, 3), "float32"))
    out["mask"].shape, out["mask_s2"].shape  # (1, 37, 101, 1), (1, 19, 51, 1)
    ```

    Args:
        config: a `ModelConfig`; the defaults (a classic U-Net with deep supervision) when None.

    Returns:
        A functional `keras.Model` with the output contract of this module's docstring, built
        under the dtype policy of `config.precision`.

    Raises:
        ConfigError: an encoder or decoder name that is not registered (the message lists the
            valid names and the closest one).
    """
    cfg = config if config is not None else ModelConfig()
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model expects a ModelConfig, got {type(cfg).__name__}.")
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "msunet models are channels-last; keras.config.image_data_format() is "
            f"{keras.config.image_data_format()!r}. Call keras.config.set_image_data_format('channels_last')."
        )
    build_encoder, build_decoder = get_encoder(cfg.encoder), get_decoder(cfg.decoder)
    with precision_scope(cfg.precision):
        spatial = tuple(cfg.input_size) if cfg.input_size is not None else (None,) * cfg.dims
        inputs = keras.Input(shape=(*spatial, cfg.in_channels), name="image")
        pyramid = build_encoder(inputs, cfg)
        features = build_decoder(pyramid, cfg)
        missing = [s for s in cfg.head_scales if s not in features]
        if missing:  # a decoder that breaks the contract is a bug in that decoder, not in the config
            raise RuntimeError(f"Decoder {cfg.decoder!r} returned no features at scale(s) {missing}.")
        suffix = "_att" if getattr(cfg.decoder_options, "attention", False) else ""  # the name before options moved
        return keras.Model(inputs, apply_heads(features, cfg), name=f"{cfg.encoder}_{cfg.decoder}{suffix}_d{cfg.depth}")


def registered_parts() -> dict[str, list[str]]:
    """The registered encoders and decoders by name."""
    return {"encoders": ENCODERS.names(), "decoders": DECODERS.names()}


def describe_parts() -> str:
    """What `msunet summary --list` prints: each registered part, its config key, options and what it is."""

    def line(part) -> str:
        options = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(part.options))
        return f"  {part.name:<16} {part.describe()}" + (f" [options: {options}]" if options else "")

    lines = ["encoders (model.encoder=NAME, model.encoder_options.OPTION=VALUE):"]
    lines += [line(ENCODERS[name]) for name in ENCODERS.names()]
    lines.append("decoders (model.decoder=NAME, model.decoder_options.OPTION=VALUE):")
    lines += [line(DECODERS[name]) for name in DECODERS.names()]
    lines.append("model.encoder_weights=none|imagenet|PATH for the pretrained backbones.")
    lines.append("heads: 'mask' and 'mask_s2', 'mask_s4', ... on every decoder scale (model.deep_supervision, "
                 "model.ds_heads); 'mask_fused' (model.fused_head).")
    return "\n".join(lines)


def output_names(model: keras.Model) -> list[str]:
    """Names of a msunet model's outputs in canonical order: "mask", "mask_s2", "mask_s4", ..., "mask_fused".

    (Keras flattens dict outputs by sorted key, so `model.outputs` order is not this one.)
    """

    return sort_names(t._keras_history[0].name for t in model.outputs)


def logits_model(model: keras.Model) -> keras.Model:
    """A model sharing `model`'s weights whose outputs are the heads' logits (before activation).

    Use it with losses computed from logits, which are numerically stable.
    """
    outputs = {name: model.get_layer(parse_head(name).logits_name).output for name in output_names(model)}
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
    "BilinearUpsampling2D",
    "CropToMatch",
    "DECODERS",
    "ENCODERS",
    "SEED_EXAMPLES",
    "build_model",
    "describe_parts",
    "registered_parts",
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


def parse_size(text: str) -> tuple[int, ...]:
    """Parses "HxW" (or "N" for N x N) into (height, width), or "DxHxW" into (depth, height, width)."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        size = tuple(int(p) for p in (parts * 2 if len(parts) == 1 else parts))
    except ValueError:
        size = ()
    if len(size) not in (2, 3) or min(size) < 1:
        raise ValueError(f"Size {text!r} is not of the form HxW or DxHxW with positive integers (e.g. 256x256, 37x101 "
                         "or 32x64x64 for a volume).")
    return size


def output_shapes(model: keras.Model, size: tuple[int, ...], batch: int = 1) -> dict[str, tuple]:
    """Shape of each output for an input of `size` = (height, width) or, for a volume model,
    (depth, height, width), inferred without running it."""
    channels = model.inputs[0].shape[-1]
    spec = model.compute_output_spec(keras.KerasTensor((batch, *size, channels)))
    return {name: tuple(spec[name].shape) for name in output_names(model)}


def summarize(model: keras.Model, size: tuple[int, int] | None = None) -> str:
    """Text summary: Keras' layer table, parameter count, and each output's name and shape."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=110)
    lines.append(f"Parameters: {model.count_params():,}")
    if size is not None:
        lines.append(f"Outputs for a {'x'.join(map(str, size))} input:")
        for name, shape in output_shapes(model, size).items():
            lines.append(f"  {name:<12} {shape}")
    return "\n".join(lines)
