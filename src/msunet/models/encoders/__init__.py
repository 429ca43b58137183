"""Encoders: registry name -> builder returning a feature pyramid.

An encoder builder is `build(inputs, cfg) -> {scale: tensor}` with scales 1, 2, 4, ...,
2**cfg.depth: the feature at scale `s` has ceil(H/s) x ceil(W/s) pixels (its channel count is
`tensor.shape[-1]`). Register one with `@register_encoder("name")`; its name must also be listed
in `msunet.config.ENCODERS`, so that configs validate without keras.
"""

from __future__ import annotations

from msunet.models.registry import Registry

Pyramid = dict  # {scale: KerasTensor}
ENCODERS = Registry("encoder")
register_encoder = ENCODERS.register
get_encoder = ENCODERS.lookup

from msunet.models.encoders import applications, conv, resconv  # noqa: E402,F401  (registers the encoders)
