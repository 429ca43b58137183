"""A residual encoder in the manner of nnU-Net's ResEnc: a stem conv, then residual blocks."""

from __future__ import annotations

from keras import layers

from msunet.config import ModelConfig
from msunet.models.blocks import apply_conv, apply_down, apply_norm_act, apply_res_block, conv_settings
from msunet.models.encoders import Pyramid, register_encoder


@register_encoder("resconv")
def build_resconv_encoder(inputs, cfg: ModelConfig) -> Pyramid:
    """A stem conv (conv -> norm -> act) at full resolution, then `cfg.res_blocks` residual blocks
    per level (`apply_res_block`, pre- or post-activation by `cfg.preactivation`).

    Between levels: with `downsample="strided_conv"` the first block of the level strides by 2
    (its shortcut average-pooled, as nnU-Net ResEnc); with "maxpool"/"avgpool" the pooling comes
    first. With pre-activation the skip of each level is norm -> act of the block output.
    """
    filters, settings = cfg.level_filters, conv_settings(cfg)
    pyramid = {}
    x = apply_conv(inputs, filters[0], cfg.kernel_size, cfg.norm, name="stem_conv")
    x = apply_norm_act(x, cfg.norm, cfg.groups, cfg.activation, "stem_conv")
    for level in range(cfg.depth + 1):
        strides = 1
        if level > 0:
            if cfg.downsample == "strided_conv":
                strides = 2
            else:
                x = apply_down(x, cfg.downsample, name=f"enc{level}_down")
        for block in range(cfg.res_blocks):
            x = apply_res_block(x, filters[level], strides=strides if block == 0 else 1,
                                preactivation=cfg.preactivation, **settings, name=f"enc{level}_res{block}")
        if cfg.dropout > 0 and level >= cfg.depth - 1:
            x = layers.Dropout(cfg.dropout, name=f"enc{level}_dropout")(x)
        # Pre-activation: the chain carries raw sums; the skip it hands the decoder is normalised.
        pyramid[2**level] = (apply_norm_act(x, cfg.norm, cfg.groups, cfg.activation, f"enc{level}_post")
                             if cfg.preactivation else x)
    return pyramid
