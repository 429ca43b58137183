"""The same msunet training step on Keras' TensorFlow, JAX and PyTorch backends, and the PyTorch peer.

Keras picks its backend at import, so every contender runs in a child process of its own; the parent
alternates them in each round (the order rotates from round to round) and reports, per round, each
contender's median seconds per step and its ratio to TensorFlow's in the same round: on a shared,
noisy machine the ratios are what to quote. Each child builds the model the planner chose for the
data (`--config busi`: busi-subset's plan, 1 channel, 128 px, depth 4, 16 filters, batch 8;
`--config photo`: DSB / DRIVE's plan, 3 channels, 256 px, depth 4, 16 filters, batch 4), compiles
`MultiScaleTrainer` as `msunet train` does (TensorFlow and PyTorch eager, JAX jit-compiled: Keras'
default on each), times `--warmup` steps apart (tracing / compiling) and then `--steps` steps of
`train_on_batch` on fixed data. `tf-xla` is msunet's step on TensorFlow jit-compiled with XLA;
`tf-plain` the same U-Net with one head, Keras' binary cross-entropy and no metrics (what Keras and
TensorFlow cost alone, before msunet's heads, losses and metrics). `peer` is the plain PyTorch U-Net of `benchmarks/speed.py` (same
depth, widths, batch and size, one head, Dice+BCE, float32, channels-last), the figure issue 27's
">= 1.2x the faster PyTorch configuration" is set against.

Needs an environment with jax[cpu] and torch 2.13.0 beside msunet (`make test-backends` adds both
to .venv); a missing backend is reported as skipped. Results: benchmarks/results/backend-step/.

Run: `.venv/bin/python benchmarks/backend_step.py --config busi --rounds 3`
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
CONFIGS = {
    "busi": {"channels": 1, "size": 128, "depth": 4, "filters": 16, "batch": 8},
    "photo": {"channels": 3, "size": 256, "depth": 4, "filters": 16, "batch": 4},
}
CONTENDERS = ("tensorflow", "jax", "torch", "peer", "tf-xla", "tf-plain")
BACKEND = {"peer": "torch", "tf-xla": "tensorflow", "tf-plain": "tensorflow"}


def child(name: str, cfg: dict, warmup: int, steps: int) -> dict:
    """One contender's step times, in this process (KERAS_BACKEND already set by the parent)."""
    import numpy as np

    rng = np.random.default_rng(0)
    b, s, c = cfg["batch"], cfg["size"], cfg["channels"]
    x = rng.random((b, s, s, c), dtype=np.float32)
    masks = [(rng.random((s, s)) > 0.7).astype(np.int16) for _ in range(b)]
    start = time.perf_counter()
    if name == "peer":
        sys.path.insert(0, str(HERE))
        import torch

        from speed import TorchContender, torch_unet

        torch.manual_seed(0)
        net = torch_unet(cfg["depth"], cfg["filters"], in_channels=c)
        contender = TorchContender("peer", net, b, s, channels=c)
        step = contender.train_step
        info = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    else:
        import keras

        from msunet.config import RunConfig
        from msunet.data.targets import multiscale_targets
        from msunet.models import build_model
        from msunet.training.trainer import MultiScaleTrainer, make_optimizer

        assert keras.backend.backend() == BACKEND.get(name, name), keras.backend.backend()
        run = RunConfig().override([f"model.in_channels={c}", f"model.depth={cfg['depth']}",
                                    f"model.filters={cfg['filters']}", "model.precision=float32",
                                    f"data.patch_size={s}", f"train.batch_size={b}"])
        per = [multiscale_targets(m, run.model) for m in masks]
        y = {n: np.stack([p[n] for p in per]) for n in run.model.head_names}
        if name == "tf-plain":  # the same U-Net, one head, Keras' own BCE, no metrics: Keras + TF alone
            trainer = build_model(run.override(["model.deep_supervision=false"]).model)
            trainer.compile(optimizer=make_optimizer(run, 1000), loss="binary_crossentropy", jit_compile=False)
            y = {"mask": y["mask"][..., :1]}
        else:
            trainer = MultiScaleTrainer(build_model(run.model), run)
            trainer.compile(optimizer=make_optimizer(run, 1000), jit_compile=True if name == "tf-xla" else "auto")
        info = {"keras": keras.__version__, "jit_compile": bool(trainer.jit_compile)}

        def step():
            trainer.train_on_batch(x, y)
    built = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"name": name, "build_s": built, "warmup_s": first, "step_s": times,
            "median_s": statistics.median(times), **info}


def available(name: str) -> str | None:
    """None when `name` can run here, else the reason it cannot."""
    needs = {"jax": "jax", "torch": "torch", "peer": "torch"}.get(name, "tensorflow")
    if importlib.util.find_spec(needs) is None:
        return f"{needs} is not installed (`make test-backends` installs jax[cpu] and torch 2.13.0)"
    return None


def run_child(name: str, args) -> dict:
    env = dict(os.environ, KERAS_BACKEND=BACKEND.get(name, name), TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, __file__, "--child", name, "--config", args.config,
           "--warmup", str(args.warmup), "--steps", str(args.steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return {"name": name, "error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", choices=sorted(CONFIGS), default="busi")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--only", nargs="*", choices=CONTENDERS, help="a subset of the contenders")
    parser.add_argument("--tag", default="", help="suffix of the result file's name")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results" / "backend-step")
    args = parser.parse_args()
    cfg = CONFIGS[args.config]
    if args.child:
        print(json.dumps(child(args.child, cfg, args.warmup, args.steps)))
        return

    sys.path.insert(0, str(HERE))
    from speed import cpu_model_and_flags

    names = list(args.only or CONTENDERS[:4])
    skipped = {n: why for n in names if (why := available(n))}
    names = [n for n in names if n not in skipped]
    rounds = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        results = {n: run_child(n, args) for n in order}
        base = results.get("tensorflow", {}).get("median_s")
        for n, res in results.items():
            if base and "median_s" in res:
                res["over_tensorflow"] = res["median_s"] / base
            print(f"round {r + 1} {n:10s}", f"{res['median_s']:.3f} s/step" if "median_s" in res else res["error"][-300:],
                  f"x{res['over_tensorflow']:.2f} of TF" if "over_tensorflow" in res else "", flush=True)
        rounds.append({"order": order, "results": results})

    summary = {}
    for n in names:
        meds = [r["results"][n]["median_s"] for r in rounds if "median_s" in r["results"][n]]
        ratios = [r["results"][n]["over_tensorflow"] for r in rounds if "over_tensorflow" in r["results"][n]]
        if meds:
            summary[n] = {"median_s_per_step": statistics.median(meds),
                          "img_per_s": cfg["batch"] / statistics.median(meds),
                          "median_over_tensorflow": statistics.median(ratios) if ratios else None,
                          "ratios": ratios}
    if "peer" in summary:
        for n in ("tensorflow", "jax", "torch"):
            if n in summary:
                per_round = [r["results"]["peer"]["median_s"] / r["results"][n]["median_s"] for r in rounds
                             if "median_s" in r["results"].get(n, {}) and "median_s" in r["results"]["peer"]]
                summary[n]["speed_over_peer"] = statistics.median(per_round) if per_round else None
    for n, s in summary.items():
        print(f"{n:10s} median {s['median_s_per_step']:.3f} s/step ({s['img_per_s']:.2f} img/s)",
              f"ratio to TF {s['median_over_tensorflow']:.2f}" if s["median_over_tensorflow"] else "",
              f"speed vs PyTorch peer {s['speed_over_peer']:.2f}x" if s.get("speed_over_peer") else "")
    record = {"date": datetime.date.today().isoformat(), "config": args.config, "shape": cfg,
              "machine": {"cpu": cpu_model_and_flags(), "cores": os.cpu_count(), "python": platform.python_version()},
              "warmup": args.warmup, "steps": args.steps, "skipped": skipped, "summary": summary, "rounds": rounds}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.config}{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(record, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
