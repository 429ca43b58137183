"""Prediction without TensorFlow or Keras: exported bundles run by ONNX Runtime, NumPy tiling.

`msunet.runtime.Predictor(BUNDLE).predict(image)` returns every head's probabilities for an image of
any size; `msunet.runtime.predict(BUNDLE, inputs, out_dir)` writes masks, probabilities and overlays
exactly as `msunet predict` does (the same loop, `msunet.runtime.files`). Nothing here imports
keras, tensorflow or scipy (`pip install msunet[runtime]`: numpy, Pillow, tifffile, onnxruntime).
"""

from msunet.runtime.bundle import BUNDLE_FILE, BundleError, Predictor, is_bundle, predict, read_bundle
from msunet.runtime.options import PredictOptions

__all__ = ["BUNDLE_FILE", "BundleError", "PredictOptions", "Predictor", "is_bundle", "predict", "read_bundle"]
