"""TensorFlow's CPU kernels: oneDNN against Eigen, for msunet's 2-D and 3-D training steps, with the PyTorch peer.

TensorFlow picks its CPU kernels once, at import, from `TF_ENABLE_ONEDNN_OPTS`; unset, it turns oneDNN on
only on CPUs with AVX512-VNNI / -BF16, AVX-VNNI or AMX and runs Eigen's kernels elsewhere (an AVX2-only
CPU). `import msunet` now sets it to 1 on x86-64 unless the user set it. This script measures what that
buys: every contender runs in a child process of its own (the variable is read once per process), the
parent alternates them round by round (the order rotates) and reports medians and per-round ratios.

- `eigen`:  `TF_ENABLE_ONEDNN_OPTS=0` (what an AVX2-only CPU ran before);
- `onednn`: `TF_ENABLE_ONEDNN_OPTS=1` (msunet's default now).
Each child times, in float32 (the probe's choice without bfloat16 instructions):
- `2d`: `benchmarks/speed.py`'s training step (msunet's 4 heads, depth 4, 32 filters, batch 8, 256x256x3)
  and, when torch is installed, its plain PyTorch U-Net in the same process (the ratio to it);
- `3d`: `benchmarks/volume_speed.py`'s step (the MSD Hippocampus plan: 40^3, depth 3, 16 filters, batch 2,
  group norm) and its tiled inference of a 35x50x36 volume, and the plain PyTorch 3-D U-Net's step.

`--isa AVX2` holds oneDNN (TensorFlow's and PyTorch's) to AVX2 and PyTorch's own kernels to AVX2
(`ONEDNN_MAX_CPU_ISA`, `ATEN_CPU_CAPABILITY`): on an AVX-512 machine this shows what an AVX2-only CPU gets
(an emulation: its clock, caches and Eigen's code paths are this machine's). Run it alone:
`.venv-bench/bin/python benchmarks/tf_kernels.py [--isa AVX2] [--rounds 3]` (writes
`benchmarks/results/tf-kernels-<date>[-isa].json`). `--smoke`: tiny, one round (the harness check).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
MODES = {"eigen": "0", "onednn": "1"}


def child(shape: str, steps: int, smoke: bool) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(HERE))
    import numpy as np

    from msunet.training.probe import tensorflow_kernels

    have_torch = importlib.util.find_spec("torch") is not None
    fns = {}
    if shape == "2d":
        from speed import TorchContender, torch_unet

        from msunet.config import RunConfig
        from msunet.data.targets import multiscale_targets
        from msunet.models import build_model
        from msunet.training.trainer import MultiScaleTrainer, make_optimizer

        size, batch, depth, filters = (32, 2, 2, 4) if smoke else (256, 8, 4, 32)
        run = RunConfig().override([f"model.depth={depth}", f"model.filters={filters}", "model.precision=float32",
                                    "train.compiler=graph"])
        rng = np.random.default_rng(0)
        x = rng.random((batch, size, size, 3), dtype=np.float32)
        per = [multiscale_targets((rng.random((size, size)) > 0.7).astype(np.int16), run.model) for _ in range(batch)]
        y = {n: np.stack([p[n] for p in per]) for n in run.model.head_names}
        trainer = MultiScaleTrainer(build_model(run.model), run)
        trainer.compile(optimizer=make_optimizer(run, 10_000))
        fns["msunet_train"] = lambda: trainer.train_on_batch(x, y)
        if have_torch:
            fns["torch_train"] = TorchContender("torch", torch_unet(depth, filters), batch, size).train_step
        images = batch
    else:
        import volume_speed

        if smoke:
            volume_speed.PATCH, volume_speed.DEPTH, volume_speed.FILTERS, volume_speed.VOLUME = 16, 1, 8, (12, 14, 10)
        train, infer, *_ = volume_speed.msunet_contender()
        fns["msunet_train"], fns["msunet_infer_volume"] = train, infer
        if have_torch and importlib.util.find_spec("monai") is not None:
            fns["torch_train"] = volume_speed.torch_contender(volume_speed.torch_unet3d())[0]
        images = volume_speed.BATCH
    for fn in fns.values():  # tracing, allocator pools
        fn()
    times = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {"tensorflow_kernels": tensorflow_kernels().strip(), "images_per_step": images,
            "seconds": {name: statistics.median(t) for name, t in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per contender in each child")
    parser.add_argument("--shapes", default="2d,3d")
    parser.add_argument("--isa", help="hold oneDNN and PyTorch to this ISA (e.g. AVX2): an emulation")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.steps, args.smoke)))
        return
    sys.path.insert(0, str(HERE))
    from speed import cpu_model_and_flags

    rounds = 1 if args.smoke else args.rounds
    shapes = args.shapes.split(",")
    runs = []
    for r in range(rounds):
        order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
        for shape in shapes:
            for mode in order:
                env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": MODES[mode], "KERAS_BACKEND": "tensorflow"}
                if args.isa:
                    env["ONEDNN_MAX_CPU_ISA"] = args.isa.upper()
                    env["ATEN_CPU_CAPABILITY"] = args.isa.lower()
                cmd = [sys.executable, __file__, "--child", shape, "--steps", str(1 if args.smoke else args.steps)]
                out = subprocess.run(cmd + (["--smoke"] if args.smoke else []), env=env, capture_output=True,
                                     text=True, check=True).stdout
                result = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))
                runs.append({"round": r, "shape": shape, "mode": mode, **result})
                print(r, shape, mode, result["tensorflow_kernels"],
                      {k: round(v, 3) for k, v in result["seconds"].items()}, flush=True)
    summary = {}
    for shape in shapes:
        for mode in MODES:
            mine = [x for x in runs if x["shape"] == shape and x["mode"] == mode]
            summary[f"{shape} {mode}"] = {name: statistics.median(x["seconds"][name] for x in mine)
                                         for name in mine[0]["seconds"]}
            if "torch_train" in mine[0]["seconds"]:
                summary[f"{shape} {mode}"]["msunet / torch images per second, per round"] = [
                    round(x["seconds"]["torch_train"] / x["seconds"]["msunet_train"], 3) for x in mine]
        pairs = [(e, o) for e in runs for o in runs if e["shape"] == o["shape"] == shape and e["round"] == o["round"]
                 and e["mode"] == "eigen" and o["mode"] == "onednn"]
        summary[f"{shape} onednn / eigen step time, per round"] = {
            name: [round(o["seconds"][name] / e["seconds"][name], 3) for e, o in pairs] for name in pairs[0][0]["seconds"]}
    record = {"date": datetime.date.today().isoformat(), "cpu": cpu_model_and_flags(), "isa": args.isa, "smoke": args.smoke,
              "rounds": rounds, "steps": args.steps, "summary": summary, "runs": runs}
    print(json.dumps(summary, indent=1))
    if args.out or not args.smoke:
        name = f"tf-kernels-{record['date']}" + (f"-{args.isa.lower()}" if args.isa else "") + ".json"
        path = pathlib.Path(args.out) if args.out else HERE / "results" / name
        path.write_text(json.dumps(record, indent=2) + "\n")
        print("wrote", path)


if __name__ == "__main__":
    main()
