"""Backbones from `keras.applications` as U-Net encoders, ImageNet-pretrained or not, registered from
their table (`backbone_table.py`); the builder (`backbones.py`) is imported when a model is built.

Each backbone is registered as an encoder (`model.encoder=resnet50v2`, ...) that can load pretrained
weights (`model.encoder_weights`) and supports depth <= 5 (backbones end at stride 32), in 2-D only (they are image networks).
"""

from __future__ import annotations

from msunet.models.encoders import Pyramid, register_encoder
from msunet.models.encoders.backbone_table import BACKBONE_SPECS, FAMILIES

BACKBONE_MAX_DEPTH = 5  # backbones end at stride 32


def _registered(name: str):
    def build(inputs, cfg) -> Pyramid:
        from msunet.models.encoders.backbones import build_backbone_encoder  # keras: when a model is built

        return build_backbone_encoder(inputs, cfg)

    build.__name__ = f"build_{name}_encoder"
    return build


for _name, _spec in BACKBONE_SPECS.items():
    register_encoder(_name, max_depth=BACKBONE_MAX_DEPTH, pretrained=True, dims=(2,),
                     summary=f"keras.applications.{_spec.constructor} backbone (weights: none, imagenet or a file; "
                             f"input scaling {FAMILIES[_spec.family].scaling} in the graph; depth <= 5)")(_registered(_name))
