"""Scale-out overheads on one machine: Ray batch prediction vs one process, data parallel vs one device.

`python benchmarks/scale.py ray RUN IMAGES [--repeats 3]`
    `msunet predict` in one process against `predict_ray` (`--engine ray`, a local Ray with every
    core, one actor per core) on the same folder, for the Keras run and for its ONNX bundle
    (exported into a temporary folder); alternated in every repeat, medians. Each Ray call starts
    its actor pool (the model loaded once per actor); Ray's own start is timed apart.
`python benchmarks/scale.py data-parallel [--steps 40] [--repeats 2]`
    JAX training steps of a depth-3, 8-filter U-Net at 64x64: one device with a batch of 8
    against `train.distribution=data_parallel` over two virtual CPU devices
    (XLA_FLAGS=--xla_force_host_platform_device_count=2) x 4, the same global batch on the same
    cores: what the split and the all-reduce cost. Median step time after 5 warm-up steps. (At
    depth 4, 16 filters, 128x128, XLA's in-process all-reduce between the two virtual devices timed
    out after 40 s on 2 cores: one device's thread never got a core in time.)

On 2 cores neither can gain: the numbers are the overhead. Real speed-ups need more devices or
hosts (README: Scale out). Writes benchmarks/results/scale-KIND-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def bench_ray(args) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    import ray

    from msunet.distributed.ray_predict import predict_ray
    from msunet.exporting.bundle import export
    from msunet.inference.engines import predict
    from msunet.runtime import predict as predict_bundle

    work = pathlib.Path(tempfile.mkdtemp(prefix="msunet-scale-"))
    bundle = export(args.run, work / "bundle")
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - t0
    contenders = {
        "keras_one_process": lambda out: predict(args.run, args.images, out, engine="keras", overlay_images=False),
        "keras_ray": lambda out: predict_ray(args.run, args.images, out, engine="keras", overlay_images=False),
        "onnx_one_process": lambda out: predict_bundle(bundle, args.images, out, engine="onnxruntime",
                                                       overlay_images=False),
        "onnx_ray": lambda out: predict_ray(bundle, args.images, out, engine="onnxruntime", threads=1,
                                            overlay_images=False),
    }
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    megapixels = 0.0
    for _ in range(args.repeats):
        for name, call in contenders.items():
            out = work / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            summary = call(out)
            seconds[name].append(time.perf_counter() - t0)
            assert not summary.failed, summary.failed
            megapixels = summary.megapixels or megapixels
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    table = {n: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                 "mpx_per_s": megapixels / statistics.median(v)} for n, v in seconds.items()}
    return {"run": args.run, "images": args.images, "megapixels": megapixels, "ray_init_s": ray_start,
            "seconds": table,
            "ratios": {"keras ray / one process": table["keras_one_process"]["median_s"] / table["keras_ray"]["median_s"],
                       "onnx ray / one process": table["onnx_one_process"]["median_s"] / table["onnx_ray"]["median_s"]}}


STEP_SCRIPT = r"""
import json, sys, time, keras
from msunet.data.synthetic import make_dataset
from msunet.training.run import train

class Clock(keras.callbacks.Callback):
    def __init__(self):
        super().__init__(); self.t = []
    def on_train_batch_end(self, batch, logs=None):
        self.t.append(time.perf_counter())

data, out, mode, batch, steps = sys.argv[1:6]
clock = Clock()
train(None, data, out, plan=False, callbacks=[clock], verbose=0, overrides=[
    "model.depth=3", "model.filters=8", "data.patch_size=64", "model.precision=float32", "train.epochs=1",
    f"train.steps_per_epoch={steps}", f"train.batch_size={batch}", f"train.distribution={mode}",
    "train.val_batches=1", "train.workers=2"])
steps = [b - a for a, b in zip(clock.t[5:], clock.t[6:])]
print("STEPS", json.dumps(steps))
"""


def bench_data_parallel(args) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from msunet.data.synthetic import make_dataset

    work = pathlib.Path(tempfile.mkdtemp(prefix="msunet-dp-"))
    data = make_dataset(work / "data", count=16, size=(192, 192), seed=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "KERAS_BACKEND": "jax",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "MSUNET_PROBE": "0"}
    modes = {"one_device_batch8": ("none", 8), "data_parallel_2x4": ("data_parallel", 4)}
    step_s: dict[str, list[float]] = {name: [] for name in modes}
    for r in range(args.repeats):
        for name, (mode, batch) in modes.items():
            result = subprocess.run([sys.executable, "-c", STEP_SCRIPT, str(data), str(work / f"{name}-{r}"), mode,
                                     str(batch), str(args.steps)], env=env, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"{name} failed: {result.stderr[-3000:]}")
            step_s[name].append(statistics.median(json.loads(result.stdout.split("STEPS", 1)[1])))
    shutil.rmtree(work, ignore_errors=True)
    table = {n: {"median_step_s": statistics.median(v), "img_per_s": 8 / statistics.median(v), "per_repeat": v}
             for n, v in step_s.items()}
    return {"backend": "jax", "global_batch": 8, "patch": 64, "steps": args.steps, "steps_timed": args.steps - 6,
            "table": table, "ratio data_parallel / one device (img/s)":
                table["data_parallel_2x4"]["img_per_s"] / table["one_device_batch8"]["img_per_s"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("ray")
    p.add_argument("run")
    p.add_argument("images")
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("data-parallel")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    record = bench_ray(args) if args.kind == "ray" else bench_data_parallel(args)
    record = {"date": datetime.date.today().isoformat(), "cores": os.cpu_count(), "kind": args.kind,
              "repeats": args.repeats, **record}
    out = RESULTS / f"scale-{args.kind}-{record['date']}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
