"""The U-Net decoder (Ronneberger et al. 2015), optionally with attention gates (Oktay et al. 2018)."""

from __future__ import annotations

from msunet.config import ModelConfig
from msunet.models.blocks import apply_conv_block, apply_up, conv_settings
from msunet.models.decoders import Features, register_decoder


@register_decoder("unet")
def build_unet_decoder(pyramid: dict, cfg: ModelConfig) -> Features:
    """From the coarsest pyramid level up: upsample by 2, fuse the skip of that scale (gated when
    `cfg.attention`), conv block with the level's filters."""
    filters, settings = cfg.level_filters, conv_settings(cfg)
    x = pyramid[2**cfg.depth]
    features = {}
    for level in reversed(range(cfg.depth)):
        x = apply_up(x, pyramid[2**level], cfg.upsample, cfg.fusion, cfg.attention, name=f"dec{level}_up")
        x = apply_conv_block(x, filters[level], **settings, name=f"dec{level}")
        features[2**level] = x
    return features
