"""UNet++ (Zhou et al. 2018): nested, dense skip pathways between encoder and decoder."""

from __future__ import annotations

from msunet.config import ModelConfig
from msunet.models.decoders import Features, register_decoder


@register_decoder("unetpp")
def build_unetpp_decoder(pyramid: dict, cfg: ModelConfig) -> Features:
    """Node X[i, j] (level i, column j >= 1) is a conv block over the fusion of X[i, 0..j-1] and
    X[i+1, j-1] upsampled to level i; X[i, 0] is the encoder's feature at scale 2**i.

    The decoder feature at scale 2**i is the last node of its level, X[i, depth - i], so the head
    at every scale sees the deepest path that reaches it (the full-resolution head sees X[0, depth],
    the UNet++ output). Upsampled nodes get level i's filters.
    """
    from msunet.models.blocks import apply_conv_block, apply_fusion, apply_upsample, conv_settings

    filters, settings, depth = cfg.level_filters, conv_settings(cfg), cfg.depth
    nodes = {(i, 0): pyramid[2**i] for i in range(depth + 1)}
    for j in range(1, depth + 1):
        for i in range(depth - j + 1):
            name = f"dec{i}_{j}"
            up = apply_upsample(nodes[(i + 1, j - 1)], nodes[(i, 0)], cfg.level_strides[i], cfg.upsample, filters[i],
                                name=f"{name}_up")
            x = apply_fusion([*(nodes[(i, k)] for k in range(j)), up], cfg.fusion, name=name)
            nodes[(i, j)] = apply_conv_block(x, filters[i], **settings, name=name)
    return {2**i: nodes[(i, depth - i)] for i in range(depth)}
