"""Writes tests/data/compat_v0: configs, a tiny saved model and outputs, made by msunet before the model-parts change."""
import json, os, pathlib
os.environ["MSUNET_PRECISION"] = "float32"
import numpy as np, keras
from msunet.config import RunConfig, ModelConfig
from msunet.models import build_model
out = pathlib.Path("tests/data/compat_v0")
x3 = np.random.default_rng(0).random((1, 13, 17, 3), dtype=np.float32)
x1 = x3[..., :1]
arrays = {}
for n in (1, 2, 3):
    cfg = RunConfig.from_json(f"examples/seed{n}.json").model
    keras.utils.set_random_seed(0)
    m = build_model(cfg)
    y = m(x1 if cfg.in_channels == 1 else x3, training=False)
    for k, v in y.items():
        arrays[f"seed{n}/{k}"] = keras.ops.convert_to_numpy(v)
# a tiny run: config.json as train writes it, and its saved model
run = RunConfig(model=ModelConfig(depth=2, filters=4, fused_head=True, num_classes=3))
run.to_json(out / "config.json")
keras.utils.set_random_seed(0)
m = build_model(run.model)
m.save(out / "tiny.keras")
for k, v in m(x3, training=False).items():
    arrays[f"tiny/{k}"] = keras.ops.convert_to_numpy(v)
np.savez_compressed(out / "outputs.npz", input=x3, **arrays)
print(sorted(arrays), os.path.getsize(out / "tiny.keras"), os.path.getsize(out / "outputs.npz"))
