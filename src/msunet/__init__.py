"""msunet: multi-scale U-Net segmentation for Keras 3.

Public API, as functions (each also a command of the `msunet` CLI, with the same arguments):

    train(config, data_dir, out_dir, ...)     -> TrainResult      msunet train --data --out
    check(data_dir, config=None, ...)          -> CheckReport      msunet check DATA
    predict(model, inputs, out_dir, options=None, engine="auto", ...)
                                               -> PredictSummary   msunet predict --model --input --out
    evaluate(model, data_dir, out_dir, ...)    -> EvaluationResult msunet evaluate --model --data --out
    evaluate(pred_dir=, gt_dir=, out_dir=)     (scores mask folders: msunet evaluate --pred --gt)
    export(run, out, format="onnx")            -> bundle folder    msunet export RUN --out BUNDLE
    run_demo(out_dir, ...)                                         msunet demo

Without TensorFlow: `msunet.runtime.Predictor(BUNDLE).predict(image)` (ONNX Runtime, NumPy tiling).

`config` is a `RunConfig`, a dict, a JSON file or None, and `overrides=["train.epochs=5", ...]`
are `--set`; whatever is left unset is planned from the data (`msunet.plan.planner`).

Prediction: `PredictOptions` (every option of a prediction call, validated once) and `open_engine`
(the one engine choice `predict`, the CLI, `evaluate` and Ray share).

Models: build_model, load_model, logits_model, select_outputs, output_names, seed_example; and
the configuration classes ModelConfig, RunConfig, DataConfig, TrainConfig, ConfigError.

`import msunet` is cheap: it imports no keras (names are loaded on first use) and `msunet --help`
starts no TensorFlow. It does arrange for msunet's layers to be registered the moment keras is
imported, so saved models reload with plain `keras.saving.load_model(path)` and no
`custom_objects` (as with keras-hub).

`msunet.train`, `msunet.check`, `msunet.predict`, `msunet.evaluate` and `msunet.export` are these
functions; their modules have other names (`msunet.training.run`, `msunet.training.check`,
`msunet.inference.engines`, `msunet.evaluation.evaluate`, `msunet.exporting.bundle`), so nothing shadows anything.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> (module, attribute): loaded on first use, so that `import msunet` imports no keras.
_LAZY = {
    "train": ("msunet.training.run", "train"),
    "check": ("msunet.training.check", "check_dataset"),
    "predict": ("msunet.inference.engines", "predict"),
    "open_engine": ("msunet.inference.engines", "open_engine"),
    "PredictOptions": ("msunet.runtime.options", "PredictOptions"),
    "evaluate": ("msunet.evaluation.evaluate", "evaluate"),
    "export": ("msunet.exporting.bundle", "export"),
    "run_demo": ("msunet.demo", "run_demo"),
    "check_dataset": ("msunet.training.check", "check_dataset"),
    "ConfigError": ("msunet.config", "ConfigError"),
    "DataConfig": ("msunet.config", "DataConfig"),
    "ModelConfig": ("msunet.config", "ModelConfig"),
    "RunConfig": ("msunet.config", "RunConfig"),
    "TrainConfig": ("msunet.config", "TrainConfig"),
    "build_model": ("msunet.models", "build_model"),
    "load_model": ("msunet.models", "load_model"),
    "logits_model": ("msunet.models", "logits_model"),
    "output_names": ("msunet.models", "output_names"),
    "seed_example": ("msunet.models", "seed_example"),
    "select_outputs": ("msunet.models", "select_outputs"),
}
__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'msunet' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


from msunet._backend import install_keras_hook  # noqa: E402
from msunet.machine import prefer_onednn  # noqa: E402

prefer_onednn()  # TensorFlow's oneDNN kernels on every x86-64 CPU, if TensorFlow is not loaded yet
install_keras_hook()
