"""A residual encoder in the manner of nnU-Net's ResEnc: a stem conv, then residual blocks."""

from __future__ import annotations

import dataclasses

from msunet.config import ConfigError, ModelConfig, PartOptions, check_int
from msunet.models.encoders import Pyramid, register_encoder


@dataclasses.dataclass(frozen=True)
class ResConvOptions(PartOptions):
    """Options of the "resconv" encoder (`model.encoder_options`).

    Args:
        res_blocks: residual blocks per encoder level.
        preactivation: blocks in pre-activation order (norm -> act -> conv) instead of
            conv -> norm -> act with the activation after the sum.
    """

    res_blocks: int = 1
    preactivation: bool = False

    def validate(self) -> None:
        check_int(type(self).__name__, "res_blocks", self.res_blocks, 1, 16)
        if not isinstance(self.preactivation, bool):
            raise ConfigError(f"ResConvOptions.preactivation={self.preactivation!r} must be true or false.")


@register_encoder("resconv", options=ResConvOptions)
def build_resconv_encoder(inputs, cfg: ModelConfig) -> Pyramid:
    """A stem conv (conv -> norm -> act) at full resolution, then `options.res_blocks` residual blocks
    per level (`apply_res_block`, pre- or post-activation by `options.preactivation`).

    Between levels: with `downsample="strided_conv"` the first block of the level strides by 2
    (its shortcut average-pooled, as nnU-Net ResEnc); with "maxpool"/"avgpool" the pooling comes
    first. With pre-activation the skip of each level is norm -> act of the block output.
    """
    from keras import layers

    from msunet.models.blocks import apply_conv, apply_down, apply_norm_act, apply_res_block, conv_settings

    options: ResConvOptions = cfg.encoder_options
    filters, settings = cfg.level_filters, conv_settings(cfg)
    pyramid = {}
    x = apply_conv(inputs, filters[0], cfg.kernel_size, cfg.norm, name="stem_conv")
    x = apply_norm_act(x, cfg.norm, cfg.groups, cfg.activation, "stem_conv")
    for level in range(cfg.depth + 1):
        strides = 1
        if level > 0:
            if cfg.downsample == "strided_conv":
                strides = cfg.level_strides[level - 1]
            else:
                x = apply_down(x, cfg.downsample, factor=cfg.level_strides[level - 1], name=f"enc{level}_down")
        for block in range(options.res_blocks):
            x = apply_res_block(x, filters[level], strides=strides if block == 0 else 1,
                                preactivation=options.preactivation, **settings, name=f"enc{level}_res{block}")
        if cfg.dropout > 0 and level >= cfg.depth - 1:
            x = layers.Dropout(cfg.dropout, name=f"enc{level}_dropout")(x)
        # Pre-activation: the chain carries raw sums; the skip it hands the decoder is normalised.
        pyramid[2**level] = (apply_norm_act(x, cfg.norm, cfg.groups, cfg.activation, f"enc{level}_post")
                             if options.preactivation else x)
    return pyramid
