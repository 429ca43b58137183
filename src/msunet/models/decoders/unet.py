"""The U-Net decoder (Ronneberger et al. 2015), optionally with attention gates (Oktay et al. 2018)."""

from __future__ import annotations

import dataclasses

from msunet.config import ConfigError, ModelConfig, PartOptions
from msunet.models.decoders import Features, register_decoder


@dataclasses.dataclass(frozen=True)
class UNetOptions(PartOptions):
    """Options of the "unet" decoder (`model.decoder_options`).

    Args:
        attention: attention gates on the skips (Attention U-Net, Oktay et al. 2018).
    """

    attention: bool = False

    def validate(self) -> None:
        if not isinstance(self.attention, bool):
            raise ConfigError(f"UNetOptions.attention={self.attention!r} must be true or false.")


@register_decoder("unet", options=UNetOptions)
def build_unet_decoder(pyramid: dict, cfg: ModelConfig) -> Features:
    """From the coarsest pyramid level up: upsample by 2, fuse the skip of that scale (gated when
    `cfg.decoder_options.attention`), conv block with the level's filters."""
    from msunet.models.blocks import apply_conv_block, apply_up, conv_settings

    filters, settings = cfg.level_filters, conv_settings(cfg)
    x = pyramid[2**cfg.depth]
    features = {}
    for level in reversed(range(cfg.depth)):
        x = apply_up(x, pyramid[2**level], cfg.upsample, cfg.fusion, cfg.decoder_options.attention,
                     factor=cfg.level_strides[level], name=f"dec{level}_up")
        x = apply_conv_block(x, filters[level], **settings, name=f"dec{level}")
        features[2**level] = x
    return features
