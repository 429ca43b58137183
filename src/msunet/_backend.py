"""Importing keras late and quietly. No keras import at module level.

`import msunet` does not import keras (so `msunet --help`, `msunet.plan.planner` and the config stay
cheap). It installs `KerasImportHook` instead: whenever keras is first imported afterwards, by
msunet or by the user, the import runs with TensorFlow's start-up chatter held back and msunet's
layers are registered right after it, so `keras.saving.load_model` finds them with no
`custom_objects` (as `import keras_hub` gives).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 sent to a temporary file; replayed on stderr if the block raises.

    TensorFlow >= 2.20 writes start-up lines (oneDNN notice, CUDA probing on CPU-only machines)
    before its logging is configured, so TF_CPP_MIN_LOG_LEVEL cannot hide them. Set
    TF_CPP_MIN_LOG_LEVEL=0 to see everything.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): nothing to hold back
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _after_keras_import(keras_module) -> None:
    if int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1") or 1) > 1:
        return  # a multi-process run: keras.distribution.initialize() must come before any computation
    keras_module.ops.convert_to_tensor(0.0)  # the first device use logs too (cuInit on CPU-only machines)


def _register_layers() -> None:
    importlib.import_module("msunet.models.layers")


class KerasImportHook(importlib.abc.MetaPathFinder):
    """Wraps the first import of keras: quiet, then msunet's layers registered. Removes itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        remove_keras_hook()
        spec = importlib.util.find_spec("keras")  # the other finders (this one is gone)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_quietly_then_register(module):
            with quiet_stderr():
                exec_module(module)
                _after_keras_import(module)
            _register_layers()

        loader.exec_module = exec_quietly_then_register
        return spec


def install_keras_hook() -> None:
    """Registers msunet's layers now if keras is already imported, else when it is."""
    if "keras" in sys.modules:
        _register_layers()
    elif not any(isinstance(finder, KerasImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, KerasImportHook())


def remove_keras_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, KerasImportHook)]


def import_keras_quietly():
    """Imports keras (through the hook when it is installed, else quietly here); returns the module."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    if any(isinstance(finder, KerasImportHook) for finder in sys.meta_path):
        return importlib.import_module("keras")
    with quiet_stderr():
        keras = importlib.import_module("keras")
        _after_keras_import(keras)
    return keras
