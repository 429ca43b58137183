"""Training-speed levers of issue 16, each against its baseline in one process, alternated.

`python benchmarks/train_levers.py LEVER [--repeats 5]`, LEVER one of
- `bn`: Keras' BatchNormalization vs msunet's `FusedBatchNormalization` (TensorFlow's fused
  kernel), in mixed bfloat16 and float32;
- `optimizer`: AdamW as Keras writes it (about ten small ops per variable) vs one fused
  `ResourceApplyAdam` kernel per variable (weight decay as before), fused BN in both;
- `xla_loss`: the four heads' losses compiled by XLA on their own (`tf.function(jit_compile=True)`
  inside the step) vs as they are (XLA on the whole step was 17% slower, `train_step.py`);
- `metrics`: the eight training metrics (Dice and IoU of four heads) vs none: the ceiling of any
  metric fusion;
- `shapes`: batch size and patch shape at the default model (img/s and Mpx/s);
- `fpmath`: float32 training with and without `ONEDNN_DEFAULT_FPMATH_MODE=BF16` (oneDNN runs
  float32 convolutions with bfloat16 arithmetic); an environment setting read at start-up, so the
  two run in alternating child processes.
Every row: depth 4, 32 filters, 4 heads, Dice+CE, AdamW, `train_on_batch` on fixed data, medians
with [min-max] over the repeats (each repeat times every contender once, in turn, after two
warm-up steps each). Writes `benchmarks/results/train-levers-<lever>-<date>.json`.

Measured 2026-11-24 on the 2-core AMD EPYC (AVX512-BF16), TensorFlow 2.21, Keras 3.15: `bn` 1.35x
in bf16 (4.52 vs 3.35 img/s), 1.14x in float32 (kept: the default); `optimizer` 1.02x (medians of
9; not kept); `xla_loss` 0.98x; `metrics` 0.98x (the metrics cost nothing measurable); `fpmath`
0.98x; `shapes` 0.29-0.31 Mpx/s for batch 4-16 at 256x256 and batch 32 at 128x128, 0.27 at 512x512.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def fused_adamw(cfg_optimizer):
    """The same AdamW, its update one `ResourceApplyAdam` kernel per variable (TensorFlow backend)."""
    import keras
    import tensorflow as tf

    def handle(v):  # a Keras variable wraps the tf.Variable whose resource the kernel updates
        return (v.value if isinstance(v, keras.Variable) else v).handle

    class FusedAdamW(keras.optimizers.AdamW):
        def update_step(self, gradient, variable, learning_rate):
            dtype = variable.dtype
            step = tf.cast(self.iterations + 1, dtype)
            b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            index = self._get_variable_index(variable)
            tf.raw_ops.ResourceApplyAdam(
                var=handle(variable), m=handle(self._momentums[index]), v=handle(self._velocities[index]),
                beta1_power=tf.pow(b1, step), beta2_power=tf.pow(b2, step), lr=tf.cast(learning_rate, dtype),
                beta1=b1, beta2=b2, epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))

    return FusedAdamW.from_config(cfg_optimizer.get_config())


def contender(batch=8, size=256, precision="mixed_bfloat16", bn="fused", optimizer="keras", metrics=True,
              xla_loss=False):
    from msunet.config import RunConfig
    from msunet.training.trainer import MultiScaleTrainer, make_optimizer
    from train_profile import model_and_batch

    run = RunConfig().override([f"model.precision={precision}"])
    model, x, y = model_and_batch(run, batch, size, bn)
    trainer = MultiScaleTrainer(model, run)
    if xla_loss:
        import tensorflow as tf

        jit_loss = tf.function(lambda y, p: MultiScaleTrainer.compute_loss(trainer, y=y, y_pred=p), jit_compile=True)
        trainer.compute_loss = lambda x=None, y=None, y_pred=None, sample_weight=None, training=True: jit_loss(y, y_pred)
    if not metrics:
        trainer.scores, trainer._score_heads = [], []
    opt = make_optimizer(run, 10_000)
    trainer.compile(optimizer=fused_adamw(opt) if optimizer == "fused" else opt)
    return lambda: trainer.train_on_batch(x, y)


def alternate(fns: dict, repeats: int, images: dict) -> dict:
    for fn in fns.values():  # warm-up
        fn(), fn()
    from speed import stats, timed

    times = {k: [] for k in fns}
    for _ in range(repeats):  # every contender once per repeat, in turn
        for k, fn in fns.items():
            times[k] += timed(fn, 1)
    return {k: stats(ts, images[k]) for k, ts in times.items()}


def child_rate(precision: str, repeats: int, fpmath: str | None) -> list[float]:
    env = dict(os.environ)
    env.pop("ONEDNN_DEFAULT_FPMATH_MODE", None)
    if fpmath:
        env["ONEDNN_DEFAULT_FPMATH_MODE"] = fpmath
    out = subprocess.run([sys.executable, __file__, "single", "--precision", precision, "--repeats", str(repeats)],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("lever", choices=["bn", "optimizer", "xla_loss", "metrics", "shapes", "fpmath", "single"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="float32")
    args = parser.parse_args()
    if args.lever == "single":  # child of `fpmath`: one contender, per-step rates as JSON
        from speed import timed

        fn = contender(precision=args.precision)
        fn(), fn()
        print(json.dumps([8 / t for t in timed(fn, args.repeats)]))
        return
    from speed import cpu_model_and_flags

    images = {}
    if args.lever == "bn":
        fns = {f"{p}, {bn} BN": contender(precision=p, bn=bn)
               for p in ("mixed_bfloat16", "float32") for bn in ("keras", "fused")}
        ratios = {f"fused / keras BN, {p}": (f"{p}, fused BN", f"{p}, keras BN") for p in ("mixed_bfloat16", "float32")}
    elif args.lever == "optimizer":
        fns = {f"{o} AdamW": contender(optimizer=o) for o in ("keras", "fused")}
        ratios = {"fused / keras AdamW": ("fused AdamW", "keras AdamW")}
    elif args.lever == "xla_loss":
        fns = {"losses as they are": contender(), "losses under XLA": contender(xla_loss=True)}
        ratios = {"XLA losses / as they are": ("losses under XLA", "losses as they are")}
    elif args.lever == "metrics":
        fns = {"8 metrics": contender(), "no metrics": contender(metrics=False)}
        ratios = {"no metrics / 8 metrics": ("no metrics", "8 metrics")}
    elif args.lever == "shapes":
        shapes = [(4, 256), (8, 256), (16, 256), (32, 128), (2, 512)]
        fns = {f"batch {b}, {s}x{s}": contender(batch=b, size=s) for b, s in shapes}
        images = {f"batch {b}, {s}x{s}": b for b, s in shapes}
        ratios = {f"{k} / batch 8, 256x256": (k, "batch 8, 256x256") for k in fns if k != "batch 8, 256x256"}
    if args.lever == "fpmath":
        rates = {"float32": [], "float32, fpmath BF16": []}
        for _ in range(3):
            rates["float32"] += child_rate("float32", args.repeats, None)
            rates["float32, fpmath BF16"] += child_rate("float32", args.repeats, "BF16")
        table = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)} for k, v in rates.items()}
        ratios = {"fpmath BF16 / float32": ("float32, fpmath BF16", "float32")}
    else:
        images = {k: images.get(k, 8) for k in fns}
        table = alternate(fns, args.repeats, images)
    if args.lever == "shapes":
        for k, (b, s) in zip(fns, shapes):
            table[k]["mpx_per_s"] = table[k]["median"] * s * s / 1e6
    result = {"date": datetime.date.today().isoformat(), "cpu": cpu_model_and_flags(), "lever": args.lever,
              "images_per_s": table,
              "ratios": {k: table[a]["median"] / table[b]["median"] for k, (a, b) in ratios.items()}}
    for k, v in table.items():
        extra = f" ({v['mpx_per_s']:.2f} Mpx/s)" if "mpx_per_s" in v else ""
        print(f"{k:34} {v['median']:.2f} img/s [{v['min']:.2f}-{v['max']:.2f}]{extra}")
    for k, v in result["ratios"].items():
        print(f"{k:34} {v:.2f}x")
    out = pathlib.Path(__file__).parent / "results" / f"train-levers-{args.lever}-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
