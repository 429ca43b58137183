"""Training step cost: msunet's multi-scale trainer (with and without XLA) vs a plain single-output U-Net.

Each mode runs in its own process (`python benchmarks/train_step.py MODE`, MODE = noxla | xla | plain):
depth 4, 32 filters, batch 8, 256x256, `train_on_batch` on fixed data, median of 6 steps after one
warm-up. `plain` is the same U-Net without deep supervision, compiled with Keras' binary
cross-entropy: the baseline a Keras user would write. Measured 2026-11-23 (2-core CPU, TF 2.21):
noxla 3.79 s/step (2.11 img/s), xla 4.55 s (1.76 img/s), plain 3.54 s (2.26 img/s): the four heads,
their Dice+CE losses and eight metrics cost 7%; XLA is 17% slower on this CPU, so training keeps
jit_compile=False.
"""
import time, statistics, numpy as np, sys
from msunet.config import RunConfig
from msunet.models import build_model
from msunet.training.trainer import MultiScaleTrainer, make_optimizer
from msunet.data.targets import multiscale_targets
mode = sys.argv[1]
run = RunConfig()
rng = np.random.default_rng(0)
x = rng.random((8, 256, 256, 3), dtype=np.float32)
masks = [(rng.random((256, 256)) > 0.7).astype(np.int16) for _ in range(8)]
per = [multiscale_targets(m, run.model) for m in masks]
y = {n: np.stack([p[n] for p in per]) for n in run.model.head_names}
if mode in ("xla", "noxla"):
    t = MultiScaleTrainer(build_model(run.model), run)
    t.compile(optimizer=make_optimizer(run, 1000), jit_compile=(mode == "xla"))
    data = (x, y)
else:  # plain single-output model with built-in BCE: the "Keras U-Net" baseline
    run2 = run.override(["model.deep_supervision=false"])
    t = build_model(run2.model)
    t.compile(optimizer="adamw", loss="binary_crossentropy", jit_compile=False)
    data = (x, {"mask": y["mask"][..., :1]})
t.train_on_batch(*data)
times = []
for _ in range(6):
    s = time.perf_counter(); t.train_on_batch(*data); times.append(time.perf_counter() - s)
print(mode, "median step s", round(statistics.median(times), 3), "img/s", round(8 / statistics.median(times), 2))
