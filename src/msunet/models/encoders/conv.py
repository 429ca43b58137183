"""The classic U-Net encoder: a conv block per level, downsampling between levels."""

from __future__ import annotations

from msunet.config import ModelConfig
from msunet.models.encoders import Pyramid, register_encoder


@register_encoder("conv")
def build_conv_encoder(inputs, cfg: ModelConfig) -> Pyramid:
    """Levels 0..depth-1 are conv blocks at scale 2**level; level `depth` is the bottleneck.

    Dropout (`cfg.dropout`) ends the blocks of the two coarsest levels.
    """
    from msunet.models.blocks import apply_conv_block, apply_down, conv_settings

    filters, settings = cfg.level_filters, conv_settings(cfg)
    pyramid = {}
    x = inputs
    for level in range(cfg.depth):
        dropout = cfg.dropout if level >= cfg.depth - 1 else 0.0
        x = apply_conv_block(x, filters[level], **settings, dropout=dropout, name=f"enc{level}")
        pyramid[2**level] = x
        x = apply_down(x, cfg.downsample, cfg.norm, cfg.groups, cfg.activation, factor=cfg.level_strides[level],
                       name=f"enc{level}_down")
    pyramid[2**cfg.depth] = apply_conv_block(x, filters[cfg.depth], **settings, dropout=cfg.dropout, name="bottleneck")
    return pyramid
