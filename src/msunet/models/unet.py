"""The multi-scale U-Net builder."""

from __future__ import annotations

import keras

from msunet.config import ModelConfig
from msunet.models.blocks import apply_conv_block, apply_down, apply_up
from msunet.models.heads import apply_fused_head, apply_head, head_name


def build_unet(config: ModelConfig | None = None) -> keras.Model:
    """Builds a U-Net with a mask at every decoder scale.

    The encoder has `depth + 1` levels; each downsampling rounds up (ceil(H/2)), and each decoder
    step upsamples by 2 and crops to the skip's size, so any input height and width works and the
    head at scale `s` returns exactly ceil(H/s) x ceil(W/s).

    Example:
    ```python
    model = build_unet(ModelConfig(depth=3, filters=16, num_classes=1))
    out = model.predict(np.zeros((1, 37, 101, 3), "float32"))
    out["mask"].shape, out["mask_s2"].shape  # (1, 37, 101, 1), (1, 19, 51, 1)
    ```

    Args:
        config: a `ModelConfig`; the defaults when None.

    Returns:
        A functional `keras.Model` with one input `"image"` of shape `(H, W, in_channels)` and a
        dict of outputs named by `config.head_names` ("mask", "mask_s2", ..., "mask_fused").
    """
    cfg = config if config is not None else ModelConfig()
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_unet expects a ModelConfig, got {type(cfg).__name__}.")
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "msunet models are channels-last; keras.config.image_data_format() is "
            f"{keras.config.image_data_format()!r}. Call keras.config.set_image_data_format('channels_last')."
        )
    filters = cfg.level_filters
    height, width = cfg.input_size if cfg.input_size is not None else (None, None)
    inputs = keras.Input(shape=(height, width, cfg.in_channels), name="image")

    # Encoder: levels 0..depth-1 keep a skip; level `depth` is the bottleneck.
    skips = []
    x = inputs
    for level in range(cfg.depth):
        dropout = cfg.dropout if level >= cfg.depth - 1 else 0.0
        x = apply_conv_block(x, filters[level], cfg, name=f"enc{level}", dropout=dropout)
        skips.append(x)
        x = apply_down(x, cfg, name=f"enc{level}_down")
    x = apply_conv_block(x, filters[cfg.depth], cfg, name="bottleneck", dropout=cfg.dropout)

    # Decoder: features at scale 2**level for level = depth-1 .. 0.
    features = {}
    for level in reversed(range(cfg.depth)):
        x = apply_up(x, skips[level], cfg, name=f"dec{level}_up")
        x = apply_conv_block(x, filters[level], cfg, name=f"dec{level}")
        features[2**level] = x

    outputs = {head_name(s): apply_head(features[s], cfg, head_name(s)) for s in cfg.head_scales}
    if cfg.fused_head:
        outputs["mask_fused"] = apply_fused_head(features, cfg)
    return keras.Model(inputs, outputs, name=f"unet_d{cfg.depth}")
