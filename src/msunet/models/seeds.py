"""The three seed snippets' intended architectures, as correct msunet configs.

The snippets people are usually given for "multi-scale masks from a Keras U-Net" are broken:

1. a 2-level U-Net with `UpSampling2D` that upsamples three times after two poolings, so a
   256x256 input gives a 512x512 mask, and the deepest encoder features never reach a head;
2. a 3-level U-Net with `UpSampling2D` whose coarse masks are meant to come from each decoder
   step, but which only works for sizes divisible by 8 (concatenation fails otherwise);
3. a `Conv2DTranspose` variant that fuses all decoder scales into one mask through "a series of
   convolutional layers process[ing] the concatenated feature maps", but refers to encoder
   tensors that are never defined (NameError).

`seed_example(n)` returns the config that does what snippet `n` meant, for any input size.
"""

from __future__ import annotations

from msunet.config import ModelConfig

SEED_EXAMPLES: dict[int, ModelConfig] = {
    # 2 poolings -> 2 upsamplings; masks at 1/1 and 1/2. Plain Conv-ReLU blocks as in the snippet.
    1: ModelConfig(
        in_channels=3,
        num_classes=1,
        depth=2,
        filters_per_level=(64, 128, 256),
        norm="none",
        upsample="nearest",
        fusion="concat",
        deep_supervision=True,
    ),
    # 3 poolings, grayscale input, masks at 1/1, 1/2 and 1/4 (its parameter count is checked by hand
    # in tests/test_models.py).
    2: ModelConfig(
        in_channels=1,
        num_classes=1,
        depth=3,
        filters_per_level=(16, 32, 64, 128),
        norm="none",
        upsample="nearest",
        fusion="concat",
        deep_supervision=True,
    ),
    # Transposed-convolution decoder, every decoder scale fused into "mask_fused", 3 classes.
    3: ModelConfig(
        in_channels=3,
        num_classes=3,
        depth=3,
        filters_per_level=(32, 64, 128, 256),
        norm="batch",
        upsample="transpose",
        fusion="concat",
        deep_supervision=True,
        fused_head=True,
    ),
}


def seed_example(number: int) -> ModelConfig:
    """Returns the corrected config of seed snippet `number` (1, 2 or 3).

    Example:
    ```python
    model = build_model(seed_example(1))
    model.predict(np.zeros((1, 256, 256, 3)))["mask"].shape  # (1, 256, 256, 1), not 512x512
    ```
    """
    if number not in SEED_EXAMPLES:
        raise ValueError(f"seed_example({number!r}) does not exist; valid: {', '.join(map(str, SEED_EXAMPLES))}.")
    return SEED_EXAMPLES[number]
