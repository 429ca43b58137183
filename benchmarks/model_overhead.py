"""Issue 2 measurements: build time, and the cost of the any-size alignment layers.

- build time of a depth-5 U-Net (median of repeats);
- forward time of a 256x256x3 input through a depth-4, 32-filter U-Net built for any size
  (`(None, None, 3)`: CropToMatch layers in the graph) versus the same weights built for a fixed
  256x256 input (the builder leaves the crops out), alternating the two, median of repeats; the
  ratio is what matters on this shared, noisy machine.

Run: `.venv/bin/python benchmarks/model_overhead.py [--repeats 30] [--batch 1]`
Writes benchmarks/results/model-overhead-<date>-batch<N>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import time

import numpy as np

import msunet
from msunet.models import build_model


def median_ms(samples):
    return {
        "median_ms": 1e3 * statistics.median(samples),
        "min_ms": 1e3 * min(samples),
        "max_ms": 1e3 * max(samples),
        "n": len(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--builds", type=int, default=5)
    args = parser.parse_args()
    import keras

    # Build time of a depth-5 model.
    builds = []
    for _ in range(args.builds):
        keras.backend.clear_session()
        start = time.perf_counter()
        build_model(msunet.ModelConfig(depth=5))
        builds.append(time.perf_counter() - start)

    keras.utils.set_random_seed(0)
    cfg = msunet.ModelConfig(depth=4, filters=32)
    dynamic = build_model(cfg)
    fixed = build_model(cfg.replace(input_size=(256, 256)))
    fixed.set_weights(dynamic.get_weights())
    crops = sum(type(layer).__name__ == "CropToMatch" for layer in dynamic.layers)
    assert not any(type(layer).__name__ == "CropToMatch" for layer in fixed.layers)
    x = np.random.default_rng(0).random((args.batch, 256, 256, 3), dtype=np.float32)

    # Same compiled path for both: a traced predict function over one batch.
    outputs = {}
    for name, m in (("dynamic", dynamic), ("fixed", fixed)):
        outputs[name] = m.predict_on_batch(x)
        for _ in range(3):  # warm-up
            m.predict_on_batch(x)
    diff = max(float(np.abs(outputs["dynamic"][k] - outputs["fixed"][k]).max()) for k in outputs["fixed"])
    times = {"dynamic": [], "fixed": []}
    for _ in range(args.repeats):
        for name, m in (("dynamic", dynamic), ("fixed", fixed)):
            start = time.perf_counter()
            m.predict_on_batch(x)
            times[name].append(time.perf_counter() - start)
    ratios = [d / f for d, f in zip(times["dynamic"], times["fixed"])]
    result = {
        "date": datetime.date.today().isoformat(),
        "backend": keras.backend.backend(),
        "cpus": os.cpu_count(),
        "depth5_build": median_ms(builds),
        "forward_256_depth4": {
            "batch": args.batch,
            "any_size_with_crops": median_ms(times["dynamic"]),
            "fixed_size_no_crops": median_ms(times["fixed"]),
            "crop_layers": crops,
            "ratio_median_of_pairs": statistics.median(ratios),
            "ratio_of_medians": statistics.median(times["dynamic"]) / statistics.median(times["fixed"]),
            "max_abs_output_difference": diff,
        },
    }
    out = pathlib.Path(__file__).parent / "results" / f"model-overhead-{result['date']}-batch{args.batch}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
