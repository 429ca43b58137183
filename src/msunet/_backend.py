"""Importing keras without TensorFlow's start-up chatter. No keras import at module level."""

from __future__ import annotations

import os
import sys
import tempfile


def import_keras_quietly():
    """Imports keras (and touches the device once) with file descriptor 2 sent to a temporary file.

    TensorFlow >= 2.20 writes start-up lines (oneDNN notice, CUDA probing on CPU-only machines)
    before its logging is configured, so TF_CPP_MIN_LOG_LEVEL cannot hide them. If the import
    fails, what it wrote is replayed on stderr. Set TF_CPP_MIN_LOG_LEVEL=0 to see everything; when
    keras is already imported this does nothing.

    Returns:
        The keras module.
    """
    if "keras" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        import keras

        return keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): import plainly
        import keras

        return keras
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import keras

            keras.ops.convert_to_tensor(0.0)  # first device use also logs (cuInit on CPU-only machines)
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return keras
