"""Decoders: registry name -> builder turning a feature pyramid into decoder features.

A decoder builder is `build(pyramid, cfg) -> {scale: tensor}` for the scales 1, 2, ...,
2**(cfg.depth - 1): the feature at scale `s` has exactly ceil(H/s) x ceil(W/s) pixels, the size
of the pyramid's entry at that scale. Heads are applied to it (`msunet.models.heads`). Register
one with `@register_decoder("name")`; its name must also be listed in `msunet.config.DECODERS`.
"""

from __future__ import annotations

from collections.abc import Callable

from msunet.config import ConfigError, ModelConfig, close_matches

Features = dict  # {scale: KerasTensor}
DecoderBuilder = Callable[[dict, ModelConfig], Features]
DECODERS: dict[str, DecoderBuilder] = {}


def register_decoder(name: str):
    """Decorator registering a decoder builder under `name`."""

    def register(builder: DecoderBuilder) -> DecoderBuilder:
        if name in DECODERS:
            raise ValueError(f"Decoder {name!r} is registered already (by {DECODERS[name].__module__}).")
        DECODERS[name] = builder
        return builder

    return register


def get_decoder(name: str) -> DecoderBuilder:
    """The builder registered as `name`; an unknown name lists the valid ones and the closest."""
    if name not in DECODERS:
        raise ConfigError(
            f"model.decoder={name!r} is not registered; valid: {', '.join(repr(n) for n in sorted(DECODERS))}."
            f"{close_matches(name, DECODERS)}"
        )
    return DECODERS[name]


from msunet.models.decoders import unet, unet3p, unetpp  # noqa: E402,F401  (registers the built-in decoders)
