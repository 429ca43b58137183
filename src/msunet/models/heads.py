"""Segmentation heads over decoder features: one per decoder scale, plus the optional fused head.

The same for every encoder and decoder; names come from `msunet.heads`, the output contract.
"""

from __future__ import annotations

from keras import layers

from msunet.config import ModelConfig
from msunet.heads import FUSED, Head, parse_head
from msunet.models.blocks import apply_conv_block, conv_settings, linear_upsample, match_size, pointwise_conv


def apply_head(x, num_classes: int, activation: str, name: str):
    """1x1 conv to `num_classes` logits (`{name}_logits`), then the output activation (`name`).

    The 1x1 conv and the activation run in float32 (a negligible share of the FLOPs), so that
    mixed-precision models give float32 logits to the losses and float32 masks to the user.
    """
    logits = pointwise_conv(x, num_classes, dtype="float32", name=parse_head(name).logits_name)
    return layers.Activation(activation, dtype="float32", name=name)(logits)


def apply_fused_head(features: dict[int, object], cfg: ModelConfig, name: str = FUSED):
    """Predicts from every decoder scale at full resolution.

    Each scale's features are projected to the first level's width with a 1x1 conv (cheap at the
    coarse size, and it keeps the full-resolution concatenation small), upsampled (bi/trilinearly) to
    full resolution, cropped to the input size and concatenated; a conv block and a head follow.
    """
    full = features[1]
    width = cfg.level_filters[0]
    parts = [full]
    for scale, x in sorted(features.items()):
        if scale == 1:
            continue
        x = pointwise_conv(x, width, name=f"{name}_s{scale}_project")
        x = linear_upsample(x, cfg.factor_between(0, scale.bit_length() - 1), name=f"{name}_s{scale}_upsample")
        parts.append(match_size(x, full, name=f"{name}_s{scale}_crop"))
    x = layers.Concatenate(name=f"{name}_concat")(parts) if len(parts) > 1 else full
    x = apply_conv_block(x, width, **conv_settings(cfg), name=f"{name}_block")
    return apply_head(x, cfg.num_classes, cfg.resolved_output_activation, name)


def apply_heads(features: dict[int, object], cfg: ModelConfig) -> dict:
    """Every head of `cfg.heads` over the decoder `features` ({scale: tensor}), keyed by head name."""
    outputs = {}
    for head in cfg.heads:
        if head.kind == "fused":
            outputs[head.name] = apply_fused_head(features, cfg, head.name)
        else:
            outputs[head.name] = apply_head(features[head.scale], cfg.num_classes, cfg.resolved_output_activation,
                                            head.name)
    return outputs


__all__ = ["Head", "apply_fused_head", "apply_head", "apply_heads"]
