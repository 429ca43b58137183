"""msunet: multi-scale U-Net segmentation for Keras 3.

`import msunet` registers msunet's Keras layers, so saved models reload with plain
`keras.saving.load_model(path)` (no `custom_objects`), as with keras-hub.

Public API:
    ModelConfig, ConfigError            configuration (msunet.config)
    build_model                         encoder -> decoder -> heads (msunet.models)
    logits_model, select_outputs        views of a built model sharing its weights
    output_names                        a model's outputs in canonical order
    seed_example                        the seed snippets' intended architectures, fixed
    load_model                          `keras.saving.load_model` with clear errors
    train                               train(config, data_dir, out_dir) -> run folder (msunet.train)
    check_dataset                       validate and plan a dataset folder (msunet.check)
    run_demo                            the demo (msunet.demo)
    RunConfig, DataConfig, TrainConfig  the other config sections
"""

from __future__ import annotations

__version__ = "0.1.0"

from msunet._backend import import_keras_quietly

import_keras_quietly()

from msunet.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from msunet.models import (  # noqa: E402
    build_model,
    load_model,
    logits_model,
    output_names,
    seed_example,
    select_outputs,
)
from msunet.check import check_dataset  # noqa: E402
from msunet.demo import run_demo  # noqa: E402
from msunet.train import train  # noqa: E402  (binds msunet.train to the function; the module stays importable)

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "check_dataset",
    "run_demo",
    "train",
    "__version__",
    "build_model",
    "load_model",
    "logits_model",
    "output_names",
    "seed_example",
    "select_outputs",
]
