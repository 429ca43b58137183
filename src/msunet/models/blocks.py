"""Functional building blocks of the U-Net: conv block, downsampling, upsampling + fusion.

Each `apply_*` helper takes a tensor and returns a tensor, naming every layer it creates under
`name` so that weights can be found and compared by name.
"""

from __future__ import annotations

import math

from keras import layers

from msunet.config import ModelConfig
from msunet.models.layers import BilinearUpsampling2D, CropToMatch


def apply_norm_act(x, cfg: ModelConfig, name: str):
    """Normalisation (batch / group / none) followed by the activation."""
    channels = x.shape[-1]
    if cfg.norm == "batch":
        # momentum 0.9 (PyTorch's 0.1): Keras' 0.99 leaves the moving statistics near their initial
        # values for the first few hundred steps, so short runs predicted poorly in inference mode.
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    elif cfg.norm == "group":
        x = layers.GroupNormalization(groups=math.gcd(cfg.groups, channels), name=f"{name}_gn")(x)
    return layers.Activation(cfg.activation, name=f"{name}_act")(x)


def apply_conv_block(x, filters: int, cfg: ModelConfig, name: str, dropout: float = 0.0):
    """`cfg.convs_per_block` x (conv -> norm -> activation), then optional dropout."""
    for i in range(1, cfg.convs_per_block + 1):
        x = layers.Conv2D(
            filters,
            cfg.kernel_size,
            padding="same",
            use_bias=cfg.norm == "none",  # a bias before a normalisation is cancelled by it
            name=f"{name}_conv{i}",
        )(x)
        x = apply_norm_act(x, cfg, f"{name}_conv{i}")
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def apply_down(x, cfg: ModelConfig, name: str):
    """Halves height and width, rounding up (ceil(H/2)) so no pixel of an odd size is lost."""
    if cfg.downsample == "maxpool":
        return layers.MaxPooling2D(2, padding="same", name=f"{name}_maxpool")(x)
    if cfg.downsample == "avgpool":
        return layers.AveragePooling2D(2, padding="same", name=f"{name}_avgpool")(x)
    x = layers.Conv2D(
        x.shape[-1], 3, strides=2, padding="same", use_bias=cfg.norm == "none", name=f"{name}_strided_conv"
    )(x)
    return apply_norm_act(x, cfg, f"{name}_strided_conv")


def match_size(x, reference, name: str):
    """Crops `x` to `reference`'s height and width unless both are statically known to match."""
    if None not in x.shape[1:3] and tuple(x.shape[1:3]) == tuple(reference.shape[1:3]):
        return x
    return CropToMatch(name=name)([x, reference])


def apply_up(x, skip, cfg: ModelConfig, name: str):
    """Upsamples `x` by 2 to `skip`'s size and fuses the two (concat or add)."""
    skip_channels = skip.shape[-1]
    if cfg.upsample == "transpose":
        x = layers.Conv2DTranspose(skip_channels, 2, strides=2, name=f"{name}_transpose")(x)
    else:
        if cfg.fusion == "add" and x.shape[-1] != skip_channels:
            # 1x1 projection before the (linear, weights summing to 1) upsampling: same result, 4x cheaper.
            x = layers.Conv2D(skip_channels, 1, name=f"{name}_project")(x)
        if cfg.upsample == "bilinear":
            x = BilinearUpsampling2D(2, name=f"{name}_upsample")(x)
        else:
            x = layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_upsample")(x)
    x = match_size(x, skip, name=f"{name}_crop")
    if cfg.fusion == "concat":
        return layers.Concatenate(name=f"{name}_concat")([x, skip])
    return layers.Add(name=f"{name}_add")([x, skip])
