"""Segmentation heads: one per decoder scale, plus the optional fused head."""

from __future__ import annotations

from keras import layers

from msunet.config import ModelConfig
from msunet.models.blocks import apply_conv_block, match_size
from msunet.models.layers import BilinearUpsampling2D


def head_name(scale: int) -> str:
    """Output name of the head at downsampling factor `scale` ("mask", "mask_s2", ...)."""
    return "mask" if scale == 1 else f"mask_s{scale}"


def apply_head(x, cfg: ModelConfig, name: str):
    """1x1 conv to `num_classes` logits (`{name}_logits`), then the output activation (`name`).

    The 1x1 conv and the activation run in float32 (a negligible share of the FLOPs), so that
    mixed-precision models give float32 logits to the losses and float32 masks to the user.
    """
    logits = layers.Conv2D(cfg.num_classes, 1, dtype="float32", name=f"{name}_logits")(x)
    return layers.Activation(cfg.resolved_output_activation, dtype="float32", name=name)(logits)


def apply_fused_head(features: dict[int, object], cfg: ModelConfig, name: str = "mask_fused"):
    """Predicts from every decoder scale at full resolution.

    Each scale's features are projected to the first level's width with a 1x1 conv (cheap at the
    coarse size, and it keeps the full-resolution concatenation small), upsampled bilinearly to
    full resolution, cropped to the input size and concatenated; a conv block and a head follow.
    """
    full = features[1]
    width = cfg.level_filters[0]
    parts = [full]
    for scale, x in sorted(features.items()):
        if scale == 1:
            continue
        x = layers.Conv2D(width, 1, name=f"{name}_s{scale}_project")(x)
        x = BilinearUpsampling2D(scale, name=f"{name}_s{scale}_upsample")(x)
        parts.append(match_size(x, full, name=f"{name}_s{scale}_crop"))
    x = layers.Concatenate(name=f"{name}_concat")(parts) if len(parts) > 1 else full
    x = apply_conv_block(x, width, cfg, name=f"{name}_block")
    return apply_head(x, cfg, name)
