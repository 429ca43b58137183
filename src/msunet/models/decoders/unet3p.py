"""UNet 3+ (Huang et al. 2020): full-scale skip connections."""

from __future__ import annotations

from msunet.config import ModelConfig
from msunet.models.decoders import Features, register_decoder


@register_decoder("unet3p", min_depth=2)
def build_unet3p_decoder(pyramid: dict, cfg: ModelConfig) -> Features:
    """Each decoder stage i (scale 2**i, coarsest first) fuses `depth + 1` parts of `cat` channels
    (`cat` = the first level's filters, 64 in the paper):

    - every encoder feature at scales 2**j <= 2**i, max-pooled by 2**(i-j) ("same" padding, so
      exactly ceil(H/2**i) pixels), then conv -> norm -> act;
    - every deeper decoder stage k > i (the bottleneck counts as the deepest), upsampled by
      2**(k-i) with `cfg.upsample` and cropped to the stage's size, then conv -> norm -> act;

    then one conv -> norm -> act to `cat * (depth + 1)` channels, the paper's aggregation.
    """
    depth, cat = cfg.depth, cfg.level_filters[0]
    from msunet.models.blocks import apply_conv, apply_fusion, apply_norm_act, apply_upsample, spatial_layer

    kernel, norm, groups, act = cfg.kernel_size, cfg.norm, cfg.groups, cfg.activation

    def conv_norm_act(x, filters, name):
        return apply_norm_act(apply_conv(x, filters, kernel, norm, name=f"{name}_conv"), norm, groups, act,
                              f"{name}_conv")

    stages = {depth: pyramid[2**depth]}
    for i in reversed(range(depth)):
        reference = pyramid[2**i]
        parts = []
        for j in range(i + 1):
            x = pyramid[2**j]
            if j < i:
                factor = cfg.factor_between(j, i)
                x = spatial_layer("maxpool", x)(factor, padding="same", name=f"dec{i}_from_enc{j}_maxpool")(x)
            parts.append(conv_norm_act(x, cat, f"dec{i}_from_enc{j}"))
        for k in range(i + 1, depth + 1):
            x = apply_upsample(stages[k], reference, cfg.factor_between(i, k), cfg.upsample, cat,
                               name=f"dec{i}_from_dec{k}")
            parts.append(conv_norm_act(x, cat, f"dec{i}_from_dec{k}"))
        x = apply_fusion(parts, cfg.fusion, name=f"dec{i}")
        stages[i] = conv_norm_act(x, cat * (depth + 1), f"dec{i}")
    return {2**i: stages[i] for i in range(depth)}
