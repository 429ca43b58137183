"""Smoke test of the builder, a training step and save/reload on the JAX and PyTorch backends.

Keras picks its backend at import, so each backend runs in a subprocess. Skipped (with the reason)
when the backend's package is not installed: `make test-backends` installs both.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import sys, numpy as np, keras, msunet
from msunet.models import build_model, output_shapes, select_outputs
assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
cfg = msunet.ModelConfig(depth=2, filters=4, upsample="bilinear", fused_head=True, norm="group")
model = build_model(cfg)
x = np.random.default_rng(0).random((2, 37, 41, 3), dtype=np.float32)
out = {k: keras.ops.convert_to_numpy(v) for k, v in model(x, training=False).items()}
shapes = {k: v.shape for k, v in out.items()}
assert shapes == {"mask": (2, 37, 41, 1), "mask_s2": (2, 19, 21, 1), "mask_fused": (2, 37, 41, 1)}, shapes
assert output_shapes(model, (37, 41), batch=2) == shapes
only = select_outputs(model, ["mask"])
only.compile(optimizer="adam", loss={"mask": "binary_crossentropy"})
before = only.get_layer("mask_logits").get_weights()[0].copy()
only.fit(x, {"mask": (x[..., :1] > 0.5).astype("float32")}, epochs=1, batch_size=2, verbose=0)
assert not np.allclose(before, only.get_layer("mask_logits").get_weights()[0]), "no training step happened"
model.save(sys.argv[2])
again = keras.saving.load_model(sys.argv[2])
y = keras.ops.convert_to_numpy(again(x, training=False)["mask"])
np.testing.assert_allclose(y, keras.ops.convert_to_numpy(model(x, training=False)["mask"]), atol=1e-6)
# Batch norm: msunet's layer is Keras' own on this backend (the fused kernel is TensorFlow's).
bn = build_model(msunet.ModelConfig(depth=2, filters=4))
assert keras.ops.convert_to_numpy(bn(x, training=True)["mask"]).shape == (2, 37, 41, 1)
print("ok", sys.argv[1])
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_smoke(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (run `make test-backends` to install it and run this test)")
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, backend, str(tmp_path / "m.keras")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"ok {backend}" in result.stdout
