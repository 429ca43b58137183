"""Prediction entry points: one engine choice (`engines.open_engine`) for `msunet.predict`, the CLI,
`msunet evaluate` and the Ray actors, and the Keras engine (`keras_engine`, imported only when a Keras
run is chosen). Options, the file loop, tiling, writers and the bundle runtimes live in
`msunet.runtime`, which imports no TensorFlow.
"""
