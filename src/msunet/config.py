"""Frozen, JSON round-tripping configuration dataclasses.

Every option of msunet lives in a frozen dataclass of plain types (int, float, bool, str,
tuples of those, or None). Each config:

- validates itself on construction and raises `ConfigError` (a `ValueError`) naming the field,
  the value received and what would be valid;
- round-trips through `to_dict()` / `from_dict()` and `to_json()` / `from_json()`;
- accepts `key=value` overrides (`cfg.override(["depth=3", "upsample=bilinear"])`), as the CLI's
  `--set` does, with a close-match suggestion for unknown keys.

This module never imports keras: configs are read by tools (tiling, IO, CLI parsing) that must not
pay for a backend import.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

from msunet.atomic import write_text_atomic
from msunet.heads import contract_heads, head_scale  # noqa: F401  (head_scale: kept importable from here)

C = TypeVar("C", bound="BaseConfig")


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the field and the valid values."""


def close_matches(word: str, choices: Iterable[str]) -> str:
    """Returns a ' Did you mean ...?' hint for `word` among `choices`, or ''."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


def check_choice(owner: str, field: str, value: Any, choices: Iterable[str]) -> None:
    """Raises `ConfigError` unless `value` is one of `choices`, suggesting the closest one."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(
            f"{owner}.{field}={value!r} is not a valid choice; valid: "
            f"{', '.join(repr(c) for c in choices)}.{close_matches(value, choices)}"
        )


def check_int(owner: str, field: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    """Raises `ConfigError` unless `value` is an int (not bool) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}.{field}={value!r} must be an integer{_range_text(lo, hi)}.")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{owner}.{field}={value!r} is out of range; valid: {_range_text(lo, hi, bare=True)}.")


def check_float(
    owner: str, field: str, value: Any, lo: float | None = None, hi: float | None = None, hi_open: bool = False
) -> None:
    """Raises `ConfigError` unless `value` is a finite number in [lo, hi] (or [lo, hi) if hi_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{owner}.{field}={value!r} must be a finite number{_range_text(lo, hi, hi_open=hi_open)}.")
    if (lo is not None and value < lo) or (hi is not None and (value >= hi if hi_open else value > hi)):
        raise ConfigError(
            f"{owner}.{field}={value!r} is out of range; valid: {_range_text(lo, hi, bare=True, hi_open=hi_open)}."
        )


def _range_text(lo: Any, hi: Any, bare: bool = False, hi_open: bool = False) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        text = f">= {lo}"
    elif lo is None:
        text = f"< {hi}" if hi_open else f"<= {hi}"
    else:
        text = f"{lo}..{hi}" + (" (exclusive)" if hi_open else "")
    return text if bare else f" ({text})"


def parse_value(text: str) -> Any:
    """Parses the value of a `key=value` override: JSON first, then Python-style words, else str."""
    text = text.strip()
    words = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in words:
        return words[text.lower()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:  # bare comma list: 16,32,64
        return [parse_value(part) for part in text.split(",") if part.strip()]
    return text


def read_json_source(source: str | os.PathLike) -> Any:
    """Parses a JSON file path, or JSON text starting with '{'; errors name the file and the position."""
    text = os.fspath(source)
    where = "JSON text"
    if not text.lstrip().startswith("{"):
        where = text
        try:
            with open(text, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as err:
            raise ConfigError(f"Cannot read config file {where!r}: {err.strerror}. Check the path.") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"Config {where!r} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}."
        ) from err


def _coerce(value: Any, hint: Any) -> Any:
    """Brings a JSON-ish value to the field's declared type where that is lossless."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        members = [a for a in args if a is not type(None)]
        if isinstance(value, (list, tuple)):
            members = [a for a in members if typing.get_origin(a) is tuple or a is tuple] or members
        elif len(members) > 1:
            return value  # e.g. str | tuple: a scalar keeps its own type
        return _coerce(value, members[0])
    if origin is tuple or hint is tuple:
        if isinstance(value, (list, tuple)):
            inner = args[0] if args else None
            return tuple(_coerce(v, inner) if inner not in (None, Ellipsis) else v for v in value)
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Behaviour shared by every msunet config: dict/JSON round trip, overrides, validation."""

    # Bumped when a field's meaning changes; stored in JSON so old files can be recognised.
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            coerced = _coerce(value, hints[f.name])
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
        self.validate()

    def validate(self) -> None:
        """Raises `ConfigError` on an invalid field. Subclasses extend this."""

    # Round trip ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a dict of JSON-compatible plain values (tuples become lists)."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Builds a config from a dict; unknown keys raise with a close-match suggestion."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} expects a mapping of field names to values, got {type(data).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            key = unknown[0]
            raise ConfigError(
                f"{cls.__name__} has no field {key!r}.{close_matches(key, names)} Valid fields: {', '.join(names)}."
            )
        return cls(**dict(data))

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        """Returns the config as JSON text; also writes it (atomically) to `path` when given."""
        text = json.dumps(self.to_dict(), indent=indent, sort_keys=False) + "\n"
        if path is not None:
            write_text_atomic(path, text)
        return text

    @classmethod
    def from_json(cls: type[C], source: str | os.PathLike) -> C:
        """Reads a config from a JSON file path, or from JSON text starting with '{'."""
        return cls.from_dict(read_json_source(source))

    # Overrides ----------------------------------------------------------------------------------
    def replace(self: C, **changes: Any) -> C:
        """Returns a copy with `changes` applied (validated). Unknown names raise `ConfigError`."""
        names = [f.name for f in dataclasses.fields(self)]
        for key in changes:
            if key not in names:
                raise ConfigError(
                    f"{type(self).__name__} has no field {key!r}.{close_matches(key, names)} "
                    f"Valid fields: {', '.join(names)}."
                )
        return dataclasses.replace(self, **changes)

    def override(self: C, assignments: Iterable[str]) -> C:
        """Applies `key=value` strings (values parsed as JSON, else as plain text).

        Example:
        ```python
        cfg = ModelConfig().override(["depth=3", "filters_per_level=[8,16,32,64]"])
        ```
        """
        changes: dict[str, Any] = {}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"Override {item!r} is not of the form key=value (e.g. depth=3).")
            key, _, value = item.partition("=")
            key, parsed = key.strip(), parse_value(value)
            if parsed is None and value.strip().lower() == "none" and isinstance(defaults.get(key), str):
                parsed = "none"  # a word of the field's own vocabulary (norm=none, encoder_weights=none)
            changes[key] = parsed
        return self.replace(**changes)


def jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
NORMS = ("batch", "group", "none")
DOWNSAMPLES = ("maxpool", "avgpool", "strided_conv")
UPSAMPLES = ("nearest", "bilinear", "transpose")
FUSIONS = ("concat", "add")
OUTPUT_ACTIVATIONS = ("auto", "sigmoid", "softmax", "linear")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "mish", "tanh", "relu6")
MAX_DEPTH = 7
# The names registered in msunet.models.encoders / .decoders (a test keeps them equal); listed here
# so that a config is validated without importing keras.
# Pretrained-able backbones from keras.applications (msunet.models.encoders.applications).
BACKBONES = (
    "resnet50v2", "resnet101v2", "resnet152v2",
    "efficientnetv2b0", "efficientnetv2b1", "efficientnetv2b2", "efficientnetv2b3",
    "efficientnetv2s", "efficientnetv2m", "efficientnetv2l",
    "convnext_tiny", "convnext_small", "convnext_base",
    "mobilenetv3large", "mobilenetv3small",
)
BACKBONE_MAX_DEPTH = 5  # backbones end at stride 32
ENCODERS = ("conv", "resconv") + BACKBONES
DECODERS = ("unet", "unetpp", "unet3p")
DECODER_ALIASES = {"unet++": "unetpp", "unetplusplus": "unetpp", "unet3+": "unet3p", "unet3plus": "unet3p"}


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseConfig):
    """Options of a multi-scale U-Net.

    `depth` is the number of downsampling steps, so the encoder has `depth + 1` levels (the last
    one is the bottleneck at 1/2**depth) and the decoder produces features at the `depth` scales
    1/2**(depth-1), ..., 1/2, 1/1. Every decoder scale can carry a mask head.

    A model is an encoder (a feature pyramid at scales 1, 2, ..., 2**depth), a decoder (features
    at scales 1, ..., 2**(depth-1)) and a head on each decoder scale; see `msunet.models`.

    Args:
        encoder: "conv" (plain conv blocks, the classic U-Net), "resconv" (a stem conv, then
            residual blocks as nnU-Net's ResEnc) or a `keras.applications` backbone (`BACKBONES`:
            resnet50v2, efficientnetv2b0 ... efficientnetv2l, convnext_tiny, mobilenetv3large, ...;
            depth <= 5).
        encoder_weights: a backbone's initial weights: "none" (random), "imagenet" (Keras'
            download, or its cache ~/.keras/models) or the path of a weights file.
        encoder_freeze_epochs: keep pretrained backbone weights (and batch-norm statistics) frozen
            for this many epochs while the decoder learns, then train everything at a tenth of the
            learning rate; 0 trains the backbone from the start.
        decoder: "unet" (upsample, fuse the skip, conv block), "unetpp" (UNet++: nested dense
            skips) or "unet3p" (UNet 3+: each decoder stage fuses every encoder scale and the
            deeper decoder stages; needs depth >= 2).
        attention: attention gates on the skips of the "unet" decoder (Attention U-Net).
        res_blocks: residual blocks per encoder level ("resconv").
        preactivation: "resconv" blocks in pre-activation order (norm -> act -> conv) instead of
            conv -> norm -> act with the activation after the sum.
        in_channels: channels of the input image (1 grayscale, 3 RGB, ...).
        num_classes: 1 for binary (sigmoid) masks, >= 2 for multi-class (softmax) masks.
        depth: number of downsampling steps, 1..7.
        filters: filters of the first level; level `i` has `filters * filter_growth**i`.
        filter_growth: growth factor of the filters per level (>= 1).
        filters_per_level: explicit filters for each of the `depth + 1` levels; overrides
            `filters` and `filter_growth`.
        convs_per_block: convolutions in each encoder/decoder block.
        kernel_size: odd kernel size of those convolutions.
        norm: "batch", "group" or "none".
        groups: groups of group normalisation (reduced to a divisor of the channels).
        activation: activation after every convolution.
        dropout: dropout rate at the end of each block of the two coarsest levels (0 disables).
        downsample: "maxpool", "avgpool" or "strided_conv".
        upsample: "nearest", "bilinear" or "transpose" (2x2 transposed convolution).
        fusion: skip fusion, "concat" or "add".
        deep_supervision: add a mask head at each coarse decoder scale ("mask_s2", ...).
        ds_heads: how many coarse heads (finest first); None means every coarse scale.
        fused_head: add "mask_fused", predicted from all decoder scales upsampled and concatenated.
        precision: "float32", "mixed_bfloat16", "mixed_float16" or "auto": training measures
            float32 against the device's mixed precision and keeps the faster (`msunet.probe`);
            without a measurement, mixed precision on a GPU (bfloat16 from Ampere on, float16
            with loss scaling before) and on a TensorFlow CPU with bfloat16 instructions, else
            float32. Heads, losses and masks stay float32. MSUNET_PRECISION overrides "auto".
        output_activation: "auto" (sigmoid if num_classes == 1 else softmax), "sigmoid",
            "softmax" or "linear" (the heads return logits).
        input_size: optional fixed (height, width); None accepts any size.
    """

    encoder: str = "conv"
    encoder_weights: str = "none"
    encoder_freeze_epochs: int = 0
    decoder: str = "unet"
    attention: bool = False
    res_blocks: int = 1
    preactivation: bool = False
    in_channels: int = 3
    num_classes: int = 1
    depth: int = 4
    filters: int = 32
    filter_growth: float = 2.0
    filters_per_level: tuple[int, ...] | None = None
    convs_per_block: int = 2
    kernel_size: int = 3
    norm: str = "batch"
    groups: int = 8
    activation: str = "relu"
    dropout: float = 0.0
    downsample: str = "maxpool"
    upsample: str = "transpose"
    fusion: str = "concat"
    deep_supervision: bool = True
    ds_heads: int | None = None
    fused_head: bool = False
    output_activation: str = "auto"
    input_size: tuple[int, int] | None = None
    precision: str = "auto"

    def validate(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "encoder", self.encoder, ENCODERS)
        if isinstance(self.decoder, str) and self.decoder.lower() in DECODER_ALIASES:  # the papers' spellings
            object.__setattr__(self, "decoder", DECODER_ALIASES[self.decoder.lower()])
        check_choice(owner, "decoder", self.decoder, DECODERS)
        if not isinstance(self.encoder_weights, str) or not self.encoder_weights.strip():
            raise ConfigError(f"{owner}.encoder_weights={self.encoder_weights!r} must be 'none', 'imagenet' or the "
                              "path of a weights file.")
        for flag in ("attention", "preactivation"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{owner}.{flag}={getattr(self, flag)!r} must be true or false.")
        check_int(owner, "res_blocks", self.res_blocks, 1, 16)
        check_int(owner, "in_channels", self.in_channels, 1)
        check_int(owner, "num_classes", self.num_classes, 1)
        check_int(owner, "depth", self.depth, 1, MAX_DEPTH)
        check_int(owner, "filters", self.filters, 1)
        check_float(owner, "filter_growth", self.filter_growth, 1.0, 8.0)
        if self.filters_per_level is not None:
            levels = self.filters_per_level
            if not isinstance(levels, tuple) or len(levels) != self.depth + 1:
                raise ConfigError(
                    f"{owner}.filters_per_level={jsonable(levels)!r} must list {self.depth + 1} positive integers "
                    f"(one per level: depth={self.depth} downsamplings + the bottleneck)."
                )
            for i, value in enumerate(levels):
                check_int(owner, f"filters_per_level[{i}]", value, 1)
        check_int(owner, "convs_per_block", self.convs_per_block, 1, 8)
        check_int(owner, "kernel_size", self.kernel_size, 1, 15)
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"{owner}.kernel_size={self.kernel_size} must be odd (1, 3, 5, ...) to keep sizes.")
        check_choice(owner, "norm", self.norm, NORMS)
        check_int(owner, "groups", self.groups, 1)
        check_choice(owner, "activation", self.activation, ACTIVATIONS)
        check_float(owner, "dropout", self.dropout, 0.0, 1.0, hi_open=True)
        check_choice(owner, "downsample", self.downsample, DOWNSAMPLES)
        check_choice(owner, "upsample", self.upsample, UPSAMPLES)
        check_choice(owner, "precision", self.precision, PRECISIONS)
        check_choice(owner, "fusion", self.fusion, FUSIONS)
        for flag in ("deep_supervision", "fused_head"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{owner}.{flag}={getattr(self, flag)!r} must be true or false.")
        if self.ds_heads is not None:
            check_int(owner, "ds_heads", self.ds_heads, 0, self.depth - 1)
        check_choice(owner, "output_activation", self.output_activation, OUTPUT_ACTIVATIONS)
        if self.output_activation == "softmax" and self.num_classes == 1:
            raise ConfigError(
                f"{owner}.output_activation='softmax' with num_classes=1 gives a constant 1; "
                "use 'sigmoid' (or 'auto') for binary masks."
            )
        if self.input_size is not None:
            size = self.input_size
            if not isinstance(size, tuple) or len(size) != 2:
                raise ConfigError(f"{owner}.input_size={jsonable(size)!r} must be [height, width] or null.")
            check_int(owner, "input_size[0]", size[0], 1)
            check_int(owner, "input_size[1]", size[1], 1)
        self._validate_combination(owner)

    def _validate_combination(self, owner: str) -> None:
        """Options that are valid alone but not together: say why and what to change."""
        if self.attention and self.decoder != "unet":
            raise ConfigError(
                f"{owner}.attention=true gates the skips of the 'unet' decoder; decoder={self.decoder!r} has "
                "no single skip per stage to gate. Set model.decoder=unet or model.attention=false."
            )
        if self.decoder == "unet3p" and self.depth < 2:
            raise ConfigError(
                f"{owner}.decoder='unet3p' with depth={self.depth}: full-scale skips need at least two "
                "downsamplings (with one, UNet 3+ is a plain U-Net). Set model.depth=2 or more, or model.decoder=unet."
            )
        if self.encoder in BACKBONES and self.depth > BACKBONE_MAX_DEPTH:
            raise ConfigError(
                f"{owner}.encoder={self.encoder!r} ends at stride 32, so depth={self.depth} has no features to "
                f"use; set model.depth to {BACKBONE_MAX_DEPTH} or less."
            )
        if self.encoder_weights != "none" and self.encoder not in BACKBONES:
            raise ConfigError(
                f"{owner}.encoder_weights={self.encoder_weights!r} loads a pretrained backbone, but "
                f"encoder={self.encoder!r} is built here from scratch. Set model.encoder to one of "
                f"{', '.join(BACKBONES)}, or model.encoder_weights=none."
            )
        check_int(owner, "encoder_freeze_epochs", self.encoder_freeze_epochs, 0)
        if self.encoder_freeze_epochs and self.encoder_weights == "none":
            raise ConfigError(
                f"{owner}.encoder_freeze_epochs={self.encoder_freeze_epochs} freezes pretrained backbone weights, "
                "but encoder_weights='none' (random weights would stay random). Set model.encoder_weights=imagenet "
                "or a weights file, or model.encoder_freeze_epochs=0."
            )
        if self.encoder != "resconv" and (self.res_blocks != 1 or self.preactivation):
            raise ConfigError(
                f"{owner}.res_blocks / preactivation configure the 'resconv' encoder; encoder={self.encoder!r} "
                "has no residual blocks. Set model.encoder=resconv or leave them at their defaults (1, false)."
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """As `BaseConfig.from_dict`; also reads configs written before the encoder/decoder split,
        whose `architecture` is always "unet" (= encoder "conv" + decoder "unet", the defaults)."""
        if isinstance(data, Mapping) and "architecture" in data:
            data = dict(data)
            legacy = data.pop("architecture")
            if legacy != "unet":
                raise ConfigError(
                    f"{cls.__name__}.architecture={legacy!r}: models are now chosen by model.encoder "
                    f"({', '.join(ENCODERS)}) and model.decoder ({', '.join(DECODERS)}); 'architecture' only "
                    "reads old configs, whose value is 'unet'."
                )
        return super().from_dict(data)

    # Derived values -----------------------------------------------------------------------------
    @property
    def level_filters(self) -> tuple[int, ...]:
        """Filters at each of the `depth + 1` encoder levels (the last is the bottleneck)."""
        if self.filters_per_level is not None:
            return tuple(self.filters_per_level)
        return tuple(max(1, int(round(self.filters * self.filter_growth**i))) for i in range(self.depth + 1))

    @property
    def head_scales(self) -> tuple[int, ...]:
        """Downsampling factors of the mask heads, finest first: (1, 2, 4, ...)."""
        if not self.deep_supervision:
            return (1,)
        count = self.depth - 1 if self.ds_heads is None else self.ds_heads
        return tuple(2**i for i in range(count + 1))

    @property
    def head_names(self) -> tuple[str, ...]:
        """Output names: "mask", "mask_s2", ..., then "mask_fused" if enabled."""
        return tuple(h.name for h in self.heads)

    @property
    def heads(self):
        """The output contract of this config: a `msunet.heads.Head` per output, canonical order."""
        return contract_heads(self.head_scales, self.fused_head)

    @property
    def resolved_output_activation(self) -> str:
        if self.output_activation == "auto":
            return "sigmoid" if self.num_classes == 1 else "softmax"
        return self.output_activation


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
MASK_ENCODINGS = ("auto", "binary", "index", "palette")
NORMALIZATIONS = ("dataset", "image", "unit")
FLIPS = ("horizontal", "vertical")
TARGET_DOWNSAMPLINGS = ("average", "nearest", "max")
RESAMPLE_FACTORS = (1.0, 0.5, 0.25, 0.125)


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseConfig):
    """How a dataset folder is read, split, normalised, sampled and augmented.

    Args:
        pairs_csv: optional CSV of `image,mask` paths (relative to the data folder) for layouts other
            than `images/` + `masks/` paired by file stem.
        mask_encoding: "auto" (binary if the masks hold two values, else class indices), "binary"
            (0/255 or 0/1; anything non-zero is foreground), "index" (pixel = class id) or
            "palette" (RGB colour -> class via `palette`).
        palette: for "palette": list of [r, g, b] colours, class i = colour i.
        ignore_label: mask value that contributes to no loss or metric (e.g. CamVid's void, 11).
        val_fraction: validation share when there is no `split.csv` (seeded by `seed`).
        normalization: "dataset" (per-channel mean/std of the training images, saved with the run
            and reused by predict), "image" (per-image z-score) or "unit" (the [0, 1] scale only:
            a backbone encoder applies its own ImageNet scaling inside the model).
        patch_size: square training patch side; images smaller than it are padded.
        foreground_oversample: share of patches centred on a foreground pixel.
        flip: random flips: true (both axes), "horizontal" (left-right only, for images with an up and
            a down such as street scenes), "vertical" or false.
        rot90: random 90-degree rotations.
        scale: random zoom range +-scale (0 disables).
        rotate: random rotation in degrees (0 disables).
        brightness, contrast, gamma: intensity augmentation strengths (0 disables each).
        target_downsampling: how coarse heads' targets are made: "average" (soft class fractions,
            the default: thin structures keep their mass), "nearest" or "max".
        max_pixels: refuse larger images (decompression-bomb guard).
        resample: train and predict at this fraction of the resolution (1, 0.5, 0.25 or 0.125), as
            nnU-Net's low-resolution configuration does for objects larger than an affordable patch:
            images are block-averaged, masks take each block's majority class; `predict` (tiling,
            TTA, every head) and `evaluate` return masks at the original size.
        seed: seed of the split and of the sampling.
    """

    pairs_csv: str | None = None
    mask_encoding: str = "auto"
    palette: tuple[tuple[int, int, int], ...] | None = None
    ignore_label: int | None = None
    val_fraction: float = 0.2
    normalization: str = "dataset"
    patch_size: int = 256
    foreground_oversample: float = 0.33
    flip: bool | str = True
    rot90: bool = True
    scale: float = 0.15
    rotate: float = 15.0
    brightness: float = 0.1
    contrast: float = 0.15
    gamma: float = 0.2
    target_downsampling: str = "average"
    max_pixels: int = 250_000_000
    resample: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "mask_encoding", self.mask_encoding, MASK_ENCODINGS)
        if self.mask_encoding == "palette" and not self.palette:
            raise ConfigError(f"{owner}.palette is empty; mask_encoding='palette' needs a list of [r, g, b] colours.")
        if self.palette is not None:
            for i, colour in enumerate(self.palette):
                if len(colour) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour):
                    raise ConfigError(f"{owner}.palette[{i}]={list(colour)!r} must be [r, g, b] with values 0..255.")
        if self.ignore_label is not None:
            check_int(owner, "ignore_label", self.ignore_label, 0, 65535)
        check_float(owner, "val_fraction", self.val_fraction, 0.0, 1.0, hi_open=True)
        check_choice(owner, "normalization", self.normalization, NORMALIZATIONS)
        check_int(owner, "patch_size", self.patch_size, 8, 8192)
        check_float(owner, "foreground_oversample", self.foreground_oversample, 0.0, 1.0)
        if not isinstance(self.flip, bool) and self.flip not in FLIPS:
            raise ConfigError(f"{owner}.flip={self.flip!r} must be true, false, \"horizontal\" or \"vertical\".")
        if not isinstance(self.rot90, bool):
            raise ConfigError(f"{owner}.rot90={self.rot90!r} must be true or false.")
        check_float(owner, "scale", self.scale, 0.0, 0.9)
        check_float(owner, "rotate", self.rotate, 0.0, 180.0)
        for name in ("brightness", "contrast", "gamma"):
            check_float(owner, name, getattr(self, name), 0.0, 1.0)
        check_choice(owner, "target_downsampling", self.target_downsampling, TARGET_DOWNSAMPLINGS)
        check_int(owner, "max_pixels", self.max_pixels, 1)
        if isinstance(self.resample, bool) or self.resample not in RESAMPLE_FACTORS:
            raise ConfigError(f"{owner}.resample={self.resample!r} is not valid; valid: "
                              f"{', '.join(str(f) for f in RESAMPLE_FACTORS)} (a fraction of the resolution).")
        check_int(owner, "seed", self.seed, 0)

    @property
    def resample_step(self) -> int:
        """The block side of `resample`: 1, 2, 4 or 8 pixels per trained pixel."""
        return round(1 / self.resample)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
LOSSES = ("dice_ce", "dice", "ce", "focal", "tversky", "dice_focal")
DS_WEIGHTINGS = ("nnunet", "halving", "equal")
OPTIMIZERS = ("adam", "adamw", "sgd")
DISTRIBUTIONS = ("none", "data_parallel")
SCHEDULES = ("cosine", "poly", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig(BaseConfig):
    """Optimisation options.

    Args:
        epochs, steps_per_epoch, batch_size: an epoch is `steps_per_epoch` batches of random patches.
        val_batches: validation batches of fixed patches per epoch (0: validate on all of them).
        loss: "dice_ce" (default), "dice", "ce", "focal", "tversky" or "dice_focal".
        dice_smooth: smoothing of the soft Dice.
        include_background: count the background class in the multi-class Dice.
        class_weights: per-class weights of the Dice/CE terms (None: equal).
        tversky_alpha, tversky_beta: false-positive / false-negative weights of the Tversky loss.
        focal_gamma: focusing parameter of the focal loss.
        ds_weights: weights of the heads, finest first: "halving" (default: 1/2^i normalised, every
            head trained), "nnunet" (the same with the coarsest at 0: that head is then not
            written by predict), "equal", or an explicit list.
        optimizer, learning_rate, weight_decay, schedule: optimiser and learning-rate schedule
            ("cosine" decay, "poly" (nnU-Net's 0.9 power) or "constant").
        early_stopping: stop after this many epochs without a better validation Dice (0: never).
        threshold: probability threshold of binary metrics.
        seed: seed of weights initialisation and sampling.
        workers: data-loading threads feeding `fit` (keras.utils.PyDataset workers).
        time_budget_min: wall-clock budget of the training in minutes (0: none), counted from the
            call of `train` (planning, the device probe, loading the data and building the model
            included). Training stops when it is spent (the epoch in progress is cut short, validated and saved) and the
            learning-rate schedule runs on the share of the budget used, so it anneals on time;
            `epochs` x `steps_per_epoch` stays an upper bound. A resumed run counts the time
            already spent.
        distribution: "none" (one device) or "data_parallel": `keras.distribution.DataParallel`
            over every device (and every host started with `keras.distribution.initialize`'s
            environment variables); `batch_size` is then per device, the global batch
            `batch_size` x devices. JAX backend (`msunet.distributed.training`).
    """

    epochs: int = 50
    steps_per_epoch: int = 100
    batch_size: int = 8
    val_batches: int = 0
    loss: str = "dice_ce"
    dice_smooth: float = 1.0
    include_background: bool = False
    class_weights: tuple[float, ...] | None = None
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    focal_gamma: float = 2.0
    ds_weights: str | tuple[float, ...] = "halving"
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    early_stopping: int = 0
    threshold: float = 0.5
    seed: int = 0
    workers: int = 2
    time_budget_min: float = 0.0
    distribution: str = "none"

    def validate(self) -> None:
        owner = type(self).__name__
        check_int(owner, "epochs", self.epochs, 1)
        check_int(owner, "steps_per_epoch", self.steps_per_epoch, 1)
        check_int(owner, "batch_size", self.batch_size, 1, 4096)
        check_int(owner, "val_batches", self.val_batches, 0)
        check_choice(owner, "loss", self.loss, LOSSES)
        check_float(owner, "dice_smooth", self.dice_smooth, 0.0)
        if not isinstance(self.include_background, bool):
            raise ConfigError(f"{owner}.include_background={self.include_background!r} must be true or false.")
        if self.class_weights is not None:
            for i, w in enumerate(self.class_weights):
                check_float(owner, f"class_weights[{i}]", w, 0.0)
        check_float(owner, "tversky_alpha", self.tversky_alpha, 0.0, 1.0)
        check_float(owner, "tversky_beta", self.tversky_beta, 0.0, 1.0)
        check_float(owner, "focal_gamma", self.focal_gamma, 0.0, 10.0)
        if isinstance(self.ds_weights, str):
            check_choice(owner, "ds_weights", self.ds_weights, DS_WEIGHTINGS)
        else:
            if not self.ds_weights:
                raise ConfigError(f"{owner}.ds_weights=[] must name a scheme or list one weight per head.")
            for i, w in enumerate(self.ds_weights):
                check_float(owner, f"ds_weights[{i}]", w, 0.0)
            if sum(self.ds_weights) <= 0:
                raise ConfigError(f"{owner}.ds_weights={list(self.ds_weights)!r} must have a positive sum.")
        check_choice(owner, "optimizer", self.optimizer, OPTIMIZERS)
        check_float(owner, "learning_rate", self.learning_rate, 0.0, 10.0)
        if self.learning_rate <= 0:
            raise ConfigError(f"{owner}.learning_rate={self.learning_rate!r} must be > 0.")
        check_float(owner, "weight_decay", self.weight_decay, 0.0, 1.0)
        check_choice(owner, "schedule", self.schedule, SCHEDULES)
        check_int(owner, "early_stopping", self.early_stopping, 0)
        check_float(owner, "threshold", self.threshold, 0.0, 1.0)
        check_int(owner, "seed", self.seed, 0)
        check_int(owner, "workers", self.workers, 0, 64)
        check_float(owner, "time_budget_min", self.time_budget_min, 0.0, 100_000.0)
        check_choice(owner, "distribution", self.distribution, DISTRIBUTIONS)


# --------------------------------------------------------------------------------------------------
# A run: model + data + train, saved as RUN/config.json
# --------------------------------------------------------------------------------------------------
SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; `RUN/config.json` holds it and predict reads it back.

    Overrides take `section.key=value` (`train.epochs=5`) or a bare `key=value` when the key
    belongs to one section only (`epochs=5`; `seed` is in data and train, so it needs a section).
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"RunConfig expects a mapping with sections {', '.join(SECTIONS)}.")
        # A run's config.json also records where each value came from (msunet.plan); not a setting.
        data = {k: v for k, v in data.items() if k != "sources"}
        unknown = [k for k in data if k not in SECTIONS]
        if unknown:
            raise ConfigError(
                f"RunConfig has no section {unknown[0]!r}.{close_matches(unknown[0], SECTIONS)} "
                f"Valid sections: {', '.join(SECTIONS)}."
            )
        return cls(**{name: SECTIONS[name].from_dict(data.get(name, {})) for name in SECTIONS})

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            write_text_atomic(path, text)
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> RunConfig:
        return cls.from_dict(as_run_sections(read_json_source(source)))

    def override(self, assignments: Iterable[str]) -> RunConfig:
        grouped: dict[str, list[str]] = {name: [] for name in SECTIONS}
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"Override {item!r} is not of the form key=value (e.g. train.epochs=5).")
            key, _, value = item.partition("=")
            key = key.strip()
            if "." in key:
                section, _, field = key.partition(".")
                if section not in SECTIONS:
                    raise ConfigError(
                        f"Override {item!r}: no section {section!r}.{close_matches(section, SECTIONS)} "
                        f"Valid sections: {', '.join(SECTIONS)}."
                    )
            else:
                owners = [s for s, c in SECTIONS.items() if key in {f.name for f in dataclasses.fields(c)}]
                if len(owners) > 1:
                    raise ConfigError(
                        f"Override {item!r} is ambiguous: {key!r} is in {' and '.join(owners)}; "
                        f"write {owners[0]}.{key}=... or {owners[1]}.{key}=..."
                    )
                if not owners:
                    every = [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in dataclasses.fields(c)]
                    bare = [f.name for c in SECTIONS.values() for f in dataclasses.fields(c)]
                    hint = close_matches(key, bare) or close_matches(key, every)
                    raise ConfigError(f"Override {item!r}: no config field {key!r}.{hint}")
                section, field = owners[0], key
            grouped[section].append(f"{field}={value}")
        return RunConfig(**{name: getattr(self, name).override(grouped[name]) for name in SECTIONS})


def as_run_sections(data: Any) -> Any:
    """A bare ModelConfig mapping (examples/seed1.json) as a run's model section; anything else as is."""
    if isinstance(data, Mapping) and data and not set(data) & set(SECTIONS) and "sources" not in data:
        return {"model": data}
    return data


def user_keys_of(config_data: dict | None = None, overrides: Iterable[str] = ()) -> set[str]:
    """The "section.field" keys a user set: in a config file's JSON and in `key=value` overrides."""
    keys = set()
    if config_data and isinstance(config_data.get("sources"), Mapping):
        # A run's config.json: what that run's user set stays set; what was planned is planned anew.
        keys = {k for k, entry in config_data["sources"].items()
                if isinstance(entry, Mapping) and entry.get("source") == "user"}
    elif config_data:
        sections = config_data if set(config_data) & set(SECTIONS) else {"model": config_data}
        for section, fields in sections.items():
            if isinstance(fields, dict):
                keys |= {f"{section}.{name}" for name in fields}
    for item in overrides:
        key = item.partition("=")[0].strip()
        if "." not in key:
            owners = [s for s, c in SECTIONS.items() if key in {f.name for f in dataclasses.fields(c)}]
            key = f"{owners[0]}.{key}" if len(owners) == 1 else key
        keys.add(key)
    return keys


def non_default_keys(config: RunConfig) -> set[str]:
    """Keys whose value differs from the default: what a Python caller's RunConfig set."""
    default = RunConfig()
    return {f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(SECTIONS[s])
            if getattr(getattr(config, s), f.name) != getattr(getattr(default, s), f.name)}


def resolve_run_config(config: RunConfig | Mapping | str | os.PathLike | None = None,
                       overrides: Iterable[str] = ()) -> tuple[RunConfig, set[str]]:
    """A run config from any of the forms the public functions take, and the keys the user set.

    `config`: a `RunConfig` (its non-default values count as set), a dict or a JSON file (run
    sections, or a bare model section; the keys written there count as set), or None (defaults).
    `overrides`: `key=value` strings, as `--set` (they count as set and win).
    """
    overrides = list(overrides or [])
    if isinstance(config, RunConfig):
        return config.override(overrides), non_default_keys(config) | user_keys_of(None, overrides)
    if config is None:
        data = None
    elif isinstance(config, Mapping):
        data = dict(config)
    elif isinstance(config, (str, os.PathLike)):
        data = read_json_source(config)
    else:
        raise ConfigError(f"config must be a RunConfig, a dict, a JSON file or None, not {type(config).__name__}.")
    data = as_run_sections(data)
    base = RunConfig() if data is None else RunConfig.from_dict(data)
    return base.override(overrides), user_keys_of(data, overrides)
