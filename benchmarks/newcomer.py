"""Newcomer timing: `msunet train --data DATA --out RUN` with no settings, as a new user runs it.

`python benchmarks/newcomer.py [--work DIR]` makes the twelve-image 64x64 grayscale folder (msunet's
synthetic shapes, converted to gray) plus 24 held-out images labelled `test` in split.csv, then
runs, each as its own process, timed from the shell's point of view (Python start, TensorFlow
import, planning and the device probe included):

    msunet train --data DATA --out RUN                 # nothing set
    msunet evaluate --model RUN --data DATA --out EVAL # the 24 held-out images

and writes benchmarks/results/newcomer-tiny.json: wall-clock seconds of each command, the plan
(config.json "sources"), epochs and the full-resolution Dice on the held-out images (target:
under a minute of training, Dice above 0.9). The probe cache goes to WORK/cache, so the first
run on a machine (probe included) is what is measured; `--warm` reuses a cache left by a previous
run. The shared datasets' newcomer runs are `benchmarks/accuracy/run.py DATASET --newcomer`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def make_tiny(data: pathlib.Path, train: int = 12, test: int = 24, size: int = 64) -> None:
    from msunet.data.imageio import read_image, write_png
    from msunet.data.synthetic import make_dataset

    if data.exists():
        shutil.rmtree(data)
    make_dataset(data, count=train + test, size=(size, size), seed=11)
    names = sorted(p.stem for p in (data / "images").iterdir())
    for name in names:
        path = data / "images" / f"{name}.png"
        write_png(path, read_image(path).mean(axis=-1).round().astype(np.uint8))  # grayscale
    (data / "split.csv").write_text("name,split\n" + "".join(
        f"{n},{'train' if i < train else 'test'}\n" for i, n in enumerate(names)))


def timed(argv: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return seconds, result.stdout + result.stderr


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "work-newcomer"))
    parser.add_argument("--warm", action="store_true", help="keep the probe cache of a previous run")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    work = pathlib.Path(args.work)
    data, run, evaluation = work / "tiny", work / "run", work / "eval"
    make_tiny(data)
    for folder in (run, evaluation):
        shutil.rmtree(folder, ignore_errors=True)
    cache = work / "cache"
    if not args.warm:
        shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "MSUNET_CACHE_DIR": str(cache)}
    msunet = [sys.executable, "-m", "msunet"]
    train_s, train_log = timed([*msunet, "train", "--data", str(data), "--out", str(run)], env)
    eval_s, _ = timed([*msunet, "evaluate", "--model", str(run), "--data", str(data), "--out", str(evaluation),
                       "--quiet"], env)
    summary = json.loads((evaluation / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    info = json.loads((run / "run.json").read_text())
    per = summary["per_class_and_scale"]
    record = {
        "date": datetime.date.today().isoformat(), "machine": f"{os.cpu_count()} CPU cores",
        "data": "12 train + 24 test synthetic 64x64 grayscale (benchmarks/newcomer.py make_tiny)",
        "command": "msunet train --data DATA --out RUN", "probe_cache": "warm" if args.warm else "cold",
        "train_wall_s": round(train_s, 1), "evaluate_wall_s": round(eval_s, 1),
        "epochs_done": info.get("epochs_done"), "split": summary["split"], "test_images": summary["images"],
        "dice_full_mean": summary["overall"]["dice_mean"], "dice_full_pooled": summary["overall"]["dice_pooled"],
        "dice_pooled_by_scale": {k: v["dice_pooled"] for k, v in per.items()},
        "plan": {k: v for k, v in config.get("sources", {}).items() if v["source"] != "default"},
        "train_log_tail": train_log[-3000:],
    }
    out = pathlib.Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "newcomer-tiny.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"train {train_s:.1f} s (wall, cold start), evaluate {eval_s:.1f} s; "
          f"held-out Dice {record['dice_full_mean']:.4f} (mean), {record['dice_full_pooled']:.4f} (pooled); wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
