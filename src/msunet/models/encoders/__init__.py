"""Encoders: one file a part, each declaring its name, options and builder (`msunet.config.parts`).

An encoder builder is `build(inputs, cfg) -> {scale: tensor}` with scales 1, 2, 4, ...,
2**cfg.depth: the feature at scale `s` has ceil(H/s) x ceil(W/s) pixels (its channel count is
`tensor.shape[-1]`); `cfg.encoder_options` holds the part's own options. A new encoder is one file
here with `@register_encoder("name", options=...)` and one name in the import line below; the
harness (`tests/models/harness.py`) then covers it with every decoder. Part files import no keras
at module level (configs validate against them without it): builders import what they use.
"""

from __future__ import annotations

from msunet.config.parts import ENCODERS, register_encoder  # noqa: F401

Pyramid = dict  # {scale: KerasTensor}


def get_encoder(name: str):
    """The builder of the encoder `name` (an unknown name lists the valid ones)."""
    return ENCODERS.lookup(name).build


from msunet.models.encoders import applications, conv, resconv  # noqa: E402,F401  (one name per encoder: registers it)
