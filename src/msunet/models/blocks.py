"""Functional building blocks shared by the encoders, decoders and heads.

Each `apply_*` helper takes a tensor and explicit settings (filters, kernel, norm, activation, ...)
and returns a tensor, naming every layer it creates under `name` so that weights can be found
and compared by name. None of them reads a config: `conv_settings(cfg)` turns a `ModelConfig`
into the keyword arguments of `apply_conv_block` / `apply_res_block`, for the builders.

The same helpers build images and volumes: the rank of the tensor they get picks the layer
(Conv2D for (b, h, w, c), Conv3D for (b, d, h, w, c)), so the parts are written once. A down- or
upsampling factor is an int or one per spatial axis ((1, 2, 2): in-plane only).
"""

from __future__ import annotations

import math

from keras import layers

from msunet.config import ModelConfig
from msunet.models.layers import BatchNormalization, BilinearUpsampling2D, CropToMatch, LinearUpsampling3D

_LAYERS = {  # kind -> (the 2-D layer, the 3-D layer)
    "conv": (layers.Conv2D, layers.Conv3D),
    "transpose": (layers.Conv2DTranspose, layers.Conv3DTranspose),
    "maxpool": (layers.MaxPooling2D, layers.MaxPooling3D),
    "avgpool": (layers.AveragePooling2D, layers.AveragePooling3D),
    "nearest": (layers.UpSampling2D, layers.UpSampling3D),
}


def spatial_rank(x) -> int:
    """2 for an image tensor (b, h, w, c), 3 for a volume (b, d, h, w, c)."""
    return len(x.shape) - 2


def spatial_layer(kind: str, x):
    """The Keras layer class of `kind` ("conv", "transpose", "maxpool", "avgpool", "nearest") for `x`'s rank."""
    return _LAYERS[kind][spatial_rank(x) - 2]


def as_factor(factor, x) -> tuple[int, ...]:
    """`factor` (an int, or one per spatial axis) as one int per spatial axis of `x`."""
    factor = (factor,) * spatial_rank(x) if isinstance(factor, int) else tuple(factor)
    if len(factor) != spatial_rank(x):
        raise ValueError(f"a factor {factor} for a tensor of {spatial_rank(x)} spatial axes")
    return factor


def pointwise_conv(x, filters: int, name: str, **kwargs):
    """A 1x1 (1x1x1) convolution."""
    return spatial_layer("conv", x)(filters, 1, name=name, **kwargs)(x)


def conv_settings(cfg: ModelConfig) -> dict:
    """The block settings a `ModelConfig` fixes: keyword arguments of the conv / residual blocks."""
    return dict(convs=cfg.convs_per_block, kernel_size=cfg.kernel_size, norm=cfg.norm, groups=cfg.groups,
                activation=cfg.activation)


def apply_norm(x, norm: str, groups: int, name: str):
    """Normalisation: "batch", "group" (groups reduced to a divisor of the channels) or "none"."""
    if norm == "batch":
        # momentum 0.9 (PyTorch's 0.1): Keras' 0.99 leaves the moving statistics near their initial
        # values for the first few hundred steps, so short runs predicted poorly in inference mode.
        # msunet's BatchNormalization: the fused kernel on TensorFlow, Keras' own layer elsewhere.
        return BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    if norm == "group":
        return layers.GroupNormalization(groups=math.gcd(groups, x.shape[-1]), name=f"{name}_gn")(x)
    return x


def apply_norm_act(x, norm: str, groups: int, activation: str, name: str):
    """Normalisation (batch / group / none) followed by the activation."""
    x = apply_norm(x, norm, groups, name)
    return layers.Activation(activation, name=f"{name}_act")(x)


def apply_conv(x, filters: int, kernel_size: int, norm: str, name: str, strides: int = 1):
    """A "same"-padded convolution; no bias before a normalisation (it would be cancelled by it)."""
    return spatial_layer("conv", x)(filters, kernel_size, strides=strides, padding="same", use_bias=norm == "none",
                                    name=name)(x)


def apply_conv_block(x, filters: int, *, convs: int = 2, kernel_size: int = 3, norm: str = "batch",
                     groups: int = 8, activation: str = "relu", dropout: float = 0.0, name: str):
    """`convs` x (conv -> norm -> activation), then optional dropout."""
    for i in range(1, convs + 1):
        x = apply_conv(x, filters, kernel_size, norm, name=f"{name}_conv{i}")
        x = apply_norm_act(x, norm, groups, activation, f"{name}_conv{i}")
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def apply_res_block(x, filters: int, *, strides=1, preactivation: bool = False, convs: int = 2,
                    kernel_size: int = 3, norm: str = "batch", groups: int = 8, activation: str = "relu",
                    name: str):
    """A residual block (He et al.), in nnU-Net ResEnc's "D" form when it downsamples.

    Post-activation (default): `convs` x (conv -> norm -> act) with the last activation moved after
    the sum with the shortcut. Pre-activation: `convs` x (norm -> act -> conv), nothing after the sum.
    The first conv carries `strides`; the shortcut is then average-pooled ("same" padding, so
    ceil(H/2) like the main path) and projected by a 1x1 conv where the channels change.
    """
    shortcut = x
    strides = as_factor(strides, x)
    if max(strides) > 1:
        shortcut = spatial_layer("avgpool", x)(strides, padding="same", name=f"{name}_shortcut_pool")(shortcut)
    if shortcut.shape[-1] != filters:
        shortcut = apply_conv(shortcut, filters, 1, "none" if preactivation else norm, name=f"{name}_shortcut_conv")
        if not preactivation:
            shortcut = apply_norm(shortcut, norm, groups, f"{name}_shortcut")
    for i in range(1, convs + 1):
        stride = strides if i == 1 else 1
        if preactivation:
            x = apply_norm_act(x, norm, groups, activation, f"{name}_pre{i}")
            x = apply_conv(x, filters, kernel_size, "none" if i == convs else norm, name=f"{name}_conv{i}",
                           strides=stride)
        else:
            x = apply_conv(x, filters, kernel_size, norm, name=f"{name}_conv{i}", strides=stride)
            x = apply_norm(x, norm, groups, f"{name}_conv{i}")
            if i < convs:
                x = layers.Activation(activation, name=f"{name}_conv{i}_act")(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    if not preactivation:
        x = layers.Activation(activation, name=f"{name}_act")(x)
    return x


def apply_down(x, method: str, norm: str = "batch", groups: int = 8, activation: str = "relu", *, factor=2,
               name: str):
    """Divides the spatial size by `factor` (2, or one per axis), rounding up (ceil(H/2)) so no pixel
    of an odd size is lost.

    `method` is "maxpool", "avgpool" or "strided_conv" (3x3, stride `factor`, then norm and activation).
    """
    factor = as_factor(factor, x)
    if method in ("maxpool", "avgpool"):
        return spatial_layer(method, x)(factor, padding="same", name=f"{name}_{method}")(x)
    x = apply_conv(x, x.shape[-1], 3, norm, name=f"{name}_strided_conv", strides=factor)
    return apply_norm_act(x, norm, groups, activation, f"{name}_strided_conv")


def match_size(x, reference, name: str):
    """Crops `x` to `reference`'s spatial size unless both are statically known to match."""
    if None not in x.shape[1:-1] and tuple(x.shape[1:-1]) == tuple(reference.shape[1:-1]):
        return x
    return CropToMatch(name=name)([x, reference])


def apply_upsample(x, reference, factor, method: str, channels: int | None, name: str):
    """Upsamples `x` by `factor` (an int, or one per spatial axis) and crops it to `reference`'s size.

    "transpose": a factor x factor transposed conv with stride `factor` to `channels` (required);
    "nearest" / "bilinear": when `channels` is given and differs, a 1x1 projection first (the
    upsampling is linear with weights summing to 1, so projecting before is the same and
    factor**2 times cheaper), then the parameter-free upsampling.
    """
    factor = as_factor(factor, x)
    if method == "transpose":
        x = spatial_layer("transpose", x)(channels, factor, strides=factor, name=f"{name}_transpose")(x)
    else:
        if channels is not None and x.shape[-1] != channels:
            x = pointwise_conv(x, channels, name=f"{name}_project")
        x = linear_upsample(x, factor, name=f"{name}_upsample") if method == "bilinear" else nearest_upsample(
            x, factor, name=f"{name}_upsample")
    return match_size(x, reference, name=f"{name}_crop")


def linear_upsample(x, factor, name: str):
    """Bilinear (images) or trilinear (volumes) upsampling by `factor`."""
    factor = as_factor(factor, x)
    if spatial_rank(x) == 2:
        if factor[0] != factor[1]:
            raise ValueError(f"bilinear upsampling of an image by {factor}: the factor must be the same on both axes")
        return BilinearUpsampling2D(factor[0], name=name)(x)
    return LinearUpsampling3D(factor, name=name)(x)


def nearest_upsample(x, factor, name: str):
    """Nearest-neighbour upsampling by `factor`."""
    factor = as_factor(factor, x)
    if spatial_rank(x) == 2:
        return layers.UpSampling2D(factor, interpolation="nearest", name=name)(x)
    return layers.UpSampling3D(factor, name=name)(x)


def apply_fusion(parts: list, fusion: str, name: str):
    """Concatenates `parts` ("concat") or sums them ("add"; 1x1 projections to the first's channels
    where they differ)."""
    if len(parts) == 1:
        return parts[0]
    if fusion == "concat":
        return layers.Concatenate(name=f"{name}_concat")(parts)
    width = parts[0].shape[-1]
    parts = [p if p.shape[-1] == width else pointwise_conv(p, width, name=f"{name}_project{i}")
             for i, p in enumerate(parts)]
    return layers.Add(name=f"{name}_add")(parts)


def apply_attention_gate(skip, gate, name: str):
    """Attention gate of Attention U-Net (Oktay et al. 2018) on a skip, at the skip's resolution.

    `gate` is the upsampled coarser decoder feature, already cropped to `skip`'s size (computing
    the gate there, rather than with a strided `theta` on the skip, keeps odd sizes exact):
    alpha = sigmoid(psi(relu(theta(skip) + phi(gate)))), and the skip is scaled by alpha.
    """
    inter = max(1, skip.shape[-1] // 2)
    theta = pointwise_conv(skip, inter, use_bias=False, name=f"{name}_theta")
    phi = pointwise_conv(gate, inter, name=f"{name}_phi")
    q = layers.Activation("relu", name=f"{name}_relu")(layers.Add(name=f"{name}_add")([theta, phi]))
    alpha = pointwise_conv(q, 1, activation="sigmoid", name=f"{name}_psi")
    return layers.Multiply(name=f"{name}_scale")([skip, alpha])


def apply_up(x, skip, upsample: str, fusion: str, attention: bool = False, *, factor=2, name: str):
    """The U-Net decoder step: upsample `x` by `factor` to `skip`'s size and fuse the two (concat or add).

    With a transposed conv `x` gets the skip's channels; with "nearest"/"bilinear" it keeps its own
    (concat) or is projected to the skip's (add). With `attention` the skip is gated by `x` first.
    """
    skip_channels = skip.shape[-1]
    channels = skip_channels if upsample == "transpose" or fusion == "add" else None
    x = apply_upsample(x, skip, factor, upsample, channels, name=name)
    if attention:
        skip = apply_attention_gate(skip, x, name=f"{name}_gate")
    if fusion == "concat":
        return layers.Concatenate(name=f"{name}_concat")([x, skip])
    return layers.Add(name=f"{name}_add")([x, skip])
