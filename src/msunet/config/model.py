"""The model section: encoder, decoder, heads, widths, precision (`ModelConfig`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from msunet.config.base import BaseConfig, ConfigError, check_choice, check_float, check_int, jsonable, parse_value
from msunet.config.parts import DECODERS, ENCODERS, PartOptions
from msunet.heads import contract_heads

# --------------------------------------------------------------------------------------------------
NORMS = ("batch", "group", "none")
DOWNSAMPLES = ("maxpool", "avgpool", "strided_conv")
UPSAMPLES = ("nearest", "bilinear", "transpose")
FUSIONS = ("concat", "add")
OUTPUT_ACTIVATIONS = ("auto", "sigmoid", "softmax", "linear")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "mish", "tanh", "relu6")
MAX_DEPTH = 7
# Parts (encoders, decoders) are declared by their own files and collected in msunet.config.parts.
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
            residual blocks as nnU-Net's ResEnc) or a `keras.applications` backbone (resnet50v2,
            efficientnetv2b0 ... efficientnetv2l, convnext_tiny, mobilenetv3large, ...; depth <= 5);
            any encoder registered in `msunet.config.parts.ENCODERS`.
        encoder_options: the encoder's own options, declared in its file ("resconv": res_blocks,
            preactivation); a mapping, or the part's options object.
        encoder_weights: a backbone's initial weights: "none" (random), "imagenet" (Keras'
            download, or its cache ~/.keras/models) or the path of a weights file.
        encoder_freeze_epochs: keep pretrained backbone weights (and batch-norm statistics) frozen
            for this many epochs while the decoder learns, then train everything at a tenth of the
            learning rate; 0 trains the backbone from the start.
        decoder: "unet" (upsample, fuse the skip, conv block), "unetpp" (UNet++: nested dense
            skips) or "unet3p" (UNet 3+: each decoder stage fuses every encoder scale and the
            deeper decoder stages; needs depth >= 2).
        decoder_options: the decoder's own options, declared in its file ("unet": attention, the
            gates of Attention U-Net on its skips). The flat keys of older configs
            (`model.attention`, `model.res_blocks`, `model.preactivation`) are read into these, and
            `--set model.attention=true` still works.
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
            float32 against the device's mixed precision and keeps the faster (`msunet.training.probe`);
            without a measurement, mixed precision on a GPU (bfloat16 from Ampere on, float16
            with loss scaling before) and on a TensorFlow CPU with bfloat16 instructions, else
            float32. Heads, losses and masks stay float32. MSUNET_PRECISION overrides "auto".
        output_activation: "auto" (sigmoid if num_classes == 1 else softmax), "sigmoid",
            "softmax" or "linear" (the heads return logits).
        input_size: optional fixed (height, width), or (depth, height, width) with dims=3; None
            accepts any size.
        dims: 2 for images (Conv2D, inputs (b, h, w, c)), 3 for volumes (Conv3D, inputs (b, d, h, w, c)).
            The heads keep their names; in 3-D "mask_s2" has ceil(D/2) x ceil(H/2) x ceil(W/2) voxels.
        inplane_levels: with dims=3, the first N downsamplings pool in-plane only (1 x 2 x 2), for
            volumes whose slices are thicker than their pixels (nnU-Net's rule; the planner sets it
            from the spacing): "mask_s2" then keeps all D slices.
    """

    encoder: str = "conv"
    encoder_weights: str = "none"
    encoder_freeze_epochs: int = 0
    encoder_options: Any = None
    decoder: str = "unet"
    decoder_options: Any = None
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
    input_size: tuple[int, ...] | None = None
    precision: str = "auto"
    dims: int = 2
    inplane_levels: int = 0

    def validate(self) -> None:
        owner = type(self).__name__
        if isinstance(self.decoder, str) and self.decoder.lower() in DECODER_ALIASES:  # the papers' spellings
            object.__setattr__(self, "decoder", DECODER_ALIASES[self.decoder.lower()])
        for kind, registry in (("encoder", ENCODERS), ("decoder", DECODERS)):
            name = getattr(self, kind)
            if not isinstance(name, str):
                raise ConfigError(f"{owner}.{kind}={name!r} must be a name; valid: {', '.join(registry.names())}.")
            object.__setattr__(self, f"{kind}_options",
                               registry.options_of(name, getattr(self, f"{kind}_options"), owner))
        if not isinstance(self.encoder_weights, str) or not self.encoder_weights.strip():
            raise ConfigError(f"{owner}.encoder_weights={self.encoder_weights!r} must be 'none', 'imagenet' or the "
                              "path of a weights file.")
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
        check_int(owner, "dims", self.dims, 2, 3)
        check_int(owner, "inplane_levels", self.inplane_levels, 0, self.depth)
        if self.inplane_levels and self.dims != 3:
            raise ConfigError(f"{owner}.inplane_levels={self.inplane_levels} keeps the slices of volumes; it needs "
                              "model.dims=3 (set model.inplane_levels=0 for images).")
        if self.input_size is not None:
            size = self.input_size
            if not isinstance(size, tuple) or len(size) != self.dims:
                axes = "[height, width]" if self.dims == 2 else "[depth, height, width]"
                raise ConfigError(f"{owner}.input_size={jsonable(size)!r} must be {axes} or null (model.dims="
                                  f"{self.dims}).")
            for i, value in enumerate(size):
                check_int(owner, f"input_size[{i}]", value, 1)
        self._validate_combination(owner)

    def _validate_combination(self, owner: str) -> None:
        """Options that are valid alone but not together: say why and what to change."""
        encoder, decoder = ENCODERS.lookup(self.encoder), DECODERS.lookup(self.decoder)
        for part in (encoder, decoder):
            if self.dims not in part.dims:
                builds = [n for n in (ENCODERS if part.kind == "encoder" else DECODERS).names()
                          if self.dims in (ENCODERS if part.kind == "encoder" else DECODERS)[n].dims]
                raise ConfigError(
                    f"{owner}.{part.kind}={part.name!r} is {'/'.join(map(str, part.dims))}-D only (model.dims="
                    f"{self.dims}); in {self.dims}-D use {', '.join(builds)}."
                )
            if self.depth < part.min_depth:
                raise ConfigError(
                    f"{owner}.{part.kind}={part.name!r} needs depth >= {part.min_depth} (received depth={self.depth}). "
                    f"Set model.depth={part.min_depth} or more, or another {part.kind}."
                )
            if part.max_depth is not None and self.depth > part.max_depth:
                raise ConfigError(
                    f"{owner}.{part.kind}={part.name!r} ends at stride {2**part.max_depth}, so depth={self.depth} has "
                    f"no features to use; set model.depth to {part.max_depth} or less."
                )
        if self.encoder_weights != "none" and not encoder.pretrained:
            pretrained = [n for n in ENCODERS.names() if ENCODERS[n].pretrained]
            raise ConfigError(
                f"{owner}.encoder_weights={self.encoder_weights!r} loads a pretrained backbone, but "
                f"encoder={self.encoder!r} is built here from scratch. Set model.encoder to one of "
                f"{', '.join(pretrained)}, or model.encoder_weights=none."
            )
        check_int(owner, "encoder_freeze_epochs", self.encoder_freeze_epochs, 0)
        if self.encoder_freeze_epochs and self.encoder_weights == "none":
            raise ConfigError(
                f"{owner}.encoder_freeze_epochs={self.encoder_freeze_epochs} freezes pretrained backbone weights, "
                "but encoder_weights='none' (random weights would stay random). Set model.encoder_weights=imagenet "
                "or a weights file, or model.encoder_freeze_epochs=0."
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """As `BaseConfig.from_dict`; also reads older configs: their `architecture` (always "unet" =
        encoder "conv" + decoder "unet", the defaults) and the parts' options written as flat keys
        (`attention`, `res_blocks`, `preactivation`), which now live in the parts' options."""
        if isinstance(data, Mapping) and "architecture" in data:
            data = dict(data)
            legacy = data.pop("architecture")
            if legacy != "unet":
                raise ConfigError(
                    f"{cls.__name__}.architecture={legacy!r}: models are now chosen by model.encoder "
                    f"({', '.join(ENCODERS.names())}) and model.decoder ({', '.join(DECODERS.names())}); "
                    "'architecture' only reads old configs, whose value is 'unet'."
                )
        if isinstance(data, Mapping):
            data = cls._route_part_options(dict(data), data.get("encoder", "conv"), data.get("decoder", "unet"))
        return super().from_dict(data)

    def replace(self, **changes: Any) -> ModelConfig:
        """As `BaseConfig.replace`; a part's option may be given by its own name (`attention=True`)."""
        changes = self._route_part_options(changes, changes.get("encoder", self.encoder),
                                           changes.get("decoder", self.decoder), self)
        return super().replace(**changes)

    def override(self, assignments) -> ModelConfig:
        """As `BaseConfig.override`, plus `encoder_options.NAME=value` / `decoder_options.NAME=value`
        and a part's option by its own name (`attention=true`, `res_blocks=2`)."""
        plain, nested = [], []
        for item in assignments:
            key = item.partition("=")[0].strip()
            (nested if key.startswith(("encoder_options.", "decoder_options.")) else plain).append(item)
        config = super().override(plain) if plain else self
        if nested:
            changes: dict[str, dict] = {}
            for item in nested:
                key, _, value = item.partition("=")
                field, _, name = key.strip().partition(".")
                current = changes.setdefault(field, getattr(config, field).to_dict())
                current[name] = parse_value(value)
            config = dataclasses.replace(config, **changes)
        return config

    @classmethod
    def _route_part_options(cls, changes: dict, encoder: Any, decoder: Any, current: ModelConfig | None = None) -> dict:
        """Moves keys that are not ModelConfig fields but options of the (new) encoder or decoder into
        `encoder_options` / `decoder_options`; other unknown keys are left for the usual error."""
        own = {f.name for f in dataclasses.fields(cls)}
        for kind, registry, name in (("encoder", ENCODERS, encoder), ("decoder", DECODERS, decoder)):
            if not isinstance(name, str):
                continue
            name = DECODER_ALIASES.get(name.lower(), name) if kind == "decoder" else name
            try:
                part = registry.lookup(name)
            except ConfigError:
                continue  # the name's own error comes from validation
            moved = {k: changes.pop(k) for k in list(changes) if k not in own and k in part.option_names}
            if moved:
                field = f"{kind}_options"
                base = changes.get(field)
                if base is None and current is not None and getattr(current, kind) == name:
                    base = getattr(current, field)
                base = base.to_dict() if isinstance(base, PartOptions) else dict(base or {})
                changes[field] = {**base, **moved}
        # Flat keys of another part (res_blocks with encoder=conv): the message says whose they are.
        for k in [k for k in changes if k not in own]:
            for registry in (ENCODERS, DECODERS):
                owners = [n for n in registry.names() if k in registry[n].option_names]
                defaults = {getattr(registry[n].options(), k) for n in owners}
                if owners and changes[k] in defaults:  # an older config's flat default: nothing to carry
                    changes.pop(k)
                    break
                if owners:
                    kind = registry.kind
                    raise ConfigError(
                        f"{cls.__name__}.{k} configures the {' / '.join(repr(o) for o in owners)} {kind}; "
                        f"{kind}={encoder if kind == 'encoder' else decoder!r} has no such option. Set "
                        f"model.{kind}={owners[0]} or leave {k} out."
                    )
        return changes

    # Derived values -----------------------------------------------------------------------------
    @property
    def level_filters(self) -> tuple[int, ...]:
        """Filters at each of the `depth + 1` encoder levels (the last is the bottleneck)."""
        if self.filters_per_level is not None:
            return tuple(self.filters_per_level)
        return tuple(max(1, int(round(self.filters * self.filter_growth**i))) for i in range(self.depth + 1))

    @property
    def level_strides(self) -> tuple[tuple[int, ...], ...]:
        """The downsampling from level i to i + 1, per spatial axis ((z,) y, x): (2, 2) in 2-D; (2, 2, 2)
        in 3-D, (1, 2, 2) for the first `inplane_levels`."""
        if self.dims == 2:
            return ((2, 2),) * self.depth
        return tuple((1 if i < self.inplane_levels else 2, 2, 2) for i in range(self.depth))

    def factor_between(self, fine: int, coarse: int) -> tuple[int, ...]:
        """The size ratio between level `fine` and the coarser level `coarse`, per spatial axis."""
        factor = [1] * self.dims
        for stride in self.level_strides[fine:coarse]:
            factor = [f * s for f, s in zip(factor, stride)]
        return tuple(factor)

    def scale_factor(self, scale: int) -> tuple[int, ...]:
        """The size ratio of the decoder scale `scale` (1, 2, 4, ...) to the input, per spatial axis."""
        return self.factor_between(0, scale.bit_length() - 1)

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
