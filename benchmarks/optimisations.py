"""The optimisation round of issue 6: one setting per process, median of 4 steps after 2 warm-ups.

`python benchmarks/optimisations.py MODE` with MODE one of
- `float32`: the default U-Net (depth 4, 32 filters, 4 heads) in float32;
- `default`: the same with msunet's default precision ("auto": mixed_bfloat16 on this CPU);
- `xla_train`: default + `jit_compile=True` for training;
- `xla_infer`: default + `jit_compile=True` for inference;
- `threads`: run with `TF_NUM_INTEROP_THREADS=1 TF_NUM_INTRAOP_THREADS=2` in the environment.
Batch 8 (train and infer_b8) and 1 (infer_b1), 256x256x3; prints images/s.

Measured 2026-11-23/24 on the 2-core AMD EPYC (AVX512-BF16, VNNI), TensorFlow 2.21, Keras 3.15:

| mode | train img/s | infer b8 img/s | infer b1 img/s |
|---|---|---|---|
| float32 | 2.12 | 7.85 | 7.36 |
| default (mixed_bfloat16) | 3.14 / 3.42 | 12.51 / 13.45 | 11.00 / 12.06 |
| xla_infer (bf16) | 3.34 | 5.98 | 6.37 |
| threads inter 1 / intra 2 (bf16) | 3.29 | 13.62 | 11.70 |

(two default runs at different times.) Kept: mixed_bfloat16 as "auto" (1.5x training, 1.6x
inference). Not kept: XLA (2.2x slower inference here; 17% slower float32 training, see
train_step.py), thread settings (no difference beyond noise). Keras int8 quantization
(`model.quantize("int8")`) quantizes Dense/EinsumDense/Embedding only in Keras 3.15: on a U-Net
it changes no layer (it warns for each one), so there is no int8 inference to measure.
"""
import os
import statistics
import sys
import time

mode = sys.argv[1] if len(sys.argv) > 1 else "default"
if mode == "threads":
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")

import numpy as np  # noqa: E402

from msunet.config import RunConfig  # noqa: E402
from msunet.data.targets import multiscale_targets
from msunet.models import build_model, select_outputs  # noqa: E402
from msunet.training.trainer import MultiScaleTrainer, make_optimizer  # noqa: E402

run = RunConfig().override(["model.precision=float32"] if mode == "float32" else [])
rng = np.random.default_rng(0)
x = rng.random((8, 256, 256, 3), dtype=np.float32)
per = [multiscale_targets((rng.random((256, 256)) > 0.7).astype(np.int16), run.model) for _ in range(8)]
y = {n: np.stack([p[n] for p in per]) for n in run.model.head_names}
model = build_model(run.model)
trainer = MultiScaleTrainer(model, run)
trainer.compile(optimizer=make_optimizer(run, 1000), jit_compile=(mode == "xla_train"))
infer = select_outputs(model, ["mask"])
if mode == "xla_infer":
    infer.compile(jit_compile=True)
for _ in range(2):
    trainer.train_on_batch(x, y)
    infer.predict_on_batch(x)
    infer.predict_on_batch(x[:1])
times = {"train": [], "infer_b8": [], "infer_b1": []}
for _ in range(4):
    for key, fn in (("train", lambda: trainer.train_on_batch(x, y)), ("infer_b8", lambda: infer.predict_on_batch(x)),
                    ("infer_b1", lambda: infer.predict_on_batch(x[:1]))):
        start = time.perf_counter()
        fn()
        times[key].append(time.perf_counter() - start)
rates = {k: (1 if k == "infer_b1" else 8) / statistics.median(v) for k, v in times.items()}
print(mode, " ".join(f"{k} {v:.2f} img/s" for k, v in rates.items()), flush=True)
