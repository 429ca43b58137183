"""Encoders: registry name -> builder returning a feature pyramid.

An encoder builder is `build(inputs, cfg) -> {scale: tensor}` with scales 1, 2, 4, ...,
2**cfg.depth: the feature at scale `s` has ceil(H/s) x ceil(W/s) pixels (its channel count is
`tensor.shape[-1]`). Register one with `@register_encoder("name")`; its name must also be listed
in `msunet.config.ENCODERS`, so that configs validate without keras.
"""

from __future__ import annotations

from collections.abc import Callable

from msunet.config import ConfigError, ModelConfig, close_matches

Pyramid = dict  # {scale: KerasTensor}
EncoderBuilder = Callable[[object, ModelConfig], Pyramid]
ENCODERS: dict[str, EncoderBuilder] = {}


def register_encoder(name: str):
    """Decorator registering an encoder builder under `name`."""

    def register(builder: EncoderBuilder) -> EncoderBuilder:
        if name in ENCODERS:
            raise ValueError(f"Encoder {name!r} is registered already (by {ENCODERS[name].__module__}).")
        ENCODERS[name] = builder
        return builder

    return register


def get_encoder(name: str) -> EncoderBuilder:
    """The builder registered as `name`; an unknown name lists the valid ones and the closest."""
    if name not in ENCODERS:
        raise ConfigError(
            f"model.encoder={name!r} is not registered; valid: {', '.join(repr(n) for n in sorted(ENCODERS))}."
            f"{close_matches(name, ENCODERS)}"
        )
    return ENCODERS[name]


from msunet.models.encoders import conv, resconv  # noqa: E402,F401  (registers the built-in encoders)
