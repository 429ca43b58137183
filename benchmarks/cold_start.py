"""Cold start: process start to the first mask on disk, per way of predicting.

`python benchmarks/cold_start.py RUN IMAGE [--repeats 3] [--out FILE]`

Copies RUN's files (not its bundles) to a temporary folder, exports it as ONNX, int8 ONNX and LiteRT bundles (into a temporary folder), then times, each as a
new process from the shell's point of view (Python start, imports, model load, one prediction,
the files written), alternating the contenders in every repeat, medians with min/max:

    msunet predict --model RUN --engine keras ...             # Keras + TensorFlow
    msunet predict --model RUN    --input IMAGE --out OUT     # the default: the run's int8 bundle, made earlier
    msunet predict --model RUN ...  (no RUN/bundle-int8 yet)  # the default the first time: the export included
    msunet predict --model BUNDLE --input IMAGE --out OUT     # ONNX Runtime (float32, then int8)
    msunet predict --model BUNDLE --engine openvino ...       # OpenVINO (the float32 ONNX bundle)
    msunet predict --model BUNDLE --engine litert ...         # LiteRT

Writes benchmarks/results/cold-start-DATE.json.
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             f"cold-start-{datetime.date.today().isoformat()}.json"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from msunet.exporting.bundle import export
    from msunet.exporting.run_bundle import RUN_BUNDLE, run_bundle

    work = pathlib.Path(tempfile.mkdtemp(prefix="msunet-cold-"))
    run = work / "run"
    shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("bundle-*", "state", "*.png", "last.keras"))
    args.run = str(run)
    bundles = {"onnx": export(args.run, work / "onnx"), "int8": export(args.run, work / "int8", int8=True),
               "litert": export(args.run, work / "litert", format="litert")}
    msunet = [sys.executable, "-m", "msunet"]
    contenders = {
        "keras_run": ["--model", args.run, "--engine", "keras"],
        "run_default_first_time": ["--model", args.run],  # RUN/bundle-int8 removed before each call
        "run_default": ["--model", args.run],  # RUN/bundle-int8 made by the call before
        "onnxruntime_float32": ["--model", str(bundles["onnx"])],
        "onnxruntime_int8": ["--model", str(bundles["int8"])],
        "openvino": ["--model", str(bundles["onnx"]), "--engine", "openvino"],
        "litert": ["--model", str(bundles["litert"]), "--engine", "litert"],
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, extra in contenders.items():
            out = work / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            if name == "run_default_first_time":
                shutil.rmtree(run / RUN_BUNDLE, ignore_errors=True)
            t0 = time.perf_counter()
            result = subprocess.run([*msunet, "predict", *extra, "--input", args.image, "--out", str(out), "--quiet",
                                     "--no-overlay"], capture_output=True, text=True, env=env)
            seconds[name].append(time.perf_counter() - t0)
            if result.returncode != 0:
                raise SystemExit(f"{name} failed: {result.stderr[-2000:]}")
    assert run_bundle(run)[1] == "made earlier from this model"  # (and run_default used it, not Keras)
    table = {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for name, v in seconds.items()}
    record = {"date": datetime.date.today().isoformat(), "cores": os.cpu_count(), "run": args.run, "image": args.image,
              "repeats": args.repeats, "seconds": table,
              "ratios": {f"keras_run / {n}": table["keras_run"]["median_s"] / t["median_s"] for n, t in table.items()
                         if n != "keras_run"}}
    pathlib.Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
