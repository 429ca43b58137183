"""Decoders: one file a part, each declaring its name, options and builder (`msunet.config.parts`).

A decoder builder is `build(pyramid, cfg) -> {scale: tensor}` for the scales 1, 2, ...,
2**(cfg.depth - 1): the feature at scale `s` has exactly ceil(H/s) x ceil(W/s) pixels, the size
of the pyramid's entry at that scale; `cfg.decoder_options` holds the part's own options. Heads are
applied to it (`msunet.models.heads`). A new decoder is one file here with
`@register_decoder("name", options=...)` and one name in the import line below. Part files import no
keras at module level: builders import what they use.
"""

from __future__ import annotations

from msunet.config.parts import DECODERS, register_decoder  # noqa: F401

Features = dict  # {scale: KerasTensor}


def get_decoder(name: str):
    """The builder of the decoder `name` (an unknown name lists the valid ones)."""
    return DECODERS.lookup(name).build


from msunet.models.decoders import unet, unet3p, unetpp  # noqa: E402,F401  (one name per decoder: registers it)
