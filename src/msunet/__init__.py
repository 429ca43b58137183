"""msunet: multi-scale U-Net segmentation for Keras 3.

Public API (imported lazily, so `msunet.config` and the NumPy-only modules never import keras):
    ModelConfig, ConfigError            configuration (msunet.config)
    build_model, build_unet             model builders (msunet.models)
    logits_model, select_outputs        views of a built model sharing its weights
    seed_example                        the seed snippets' intended architectures, fixed
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "ConfigError": "msunet.config",
    "ModelConfig": "msunet.config",
    "build_model": "msunet.models",
    "build_unet": "msunet.models",
    "logits_model": "msunet.models",
    "select_outputs": "msunet.models",
    "seed_example": "msunet.models",
    "output_names": "msunet.models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'msunet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
