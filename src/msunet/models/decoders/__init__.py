"""Decoders: registry name -> builder turning a feature pyramid into decoder features.

A decoder builder is `build(pyramid, cfg) -> {scale: tensor}` for the scales 1, 2, ...,
2**(cfg.depth - 1): the feature at scale `s` has exactly ceil(H/s) x ceil(W/s) pixels, the size
of the pyramid's entry at that scale. Heads are applied to it (`msunet.models.heads`). Register
one with `@register_decoder("name")`; its name must also be listed in `msunet.config.DECODERS`.
"""

from __future__ import annotations

from msunet.models.registry import Registry

Features = dict  # {scale: KerasTensor}
DECODERS = Registry("decoder")
register_decoder = DECODERS.register
get_decoder = DECODERS.lookup

from msunet.models.decoders import unet, unet3p, unetpp  # noqa: E402,F401  (registers the built-in decoders)
