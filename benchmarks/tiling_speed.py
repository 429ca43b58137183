"""Tiling overhead: `predict_tiled` on a 2048x2048 image vs the raw model on the same tile pixels.

One process, alternating: (A) `predict_tiled` with the default U-Net (depth 4, 32 filters, all
heads stitched), tile 256, overlap 0.25, batch 8, Gaussian blending; (B) the model alone on exactly
the tiles A predicts, pre-cut into batches. Overhead = median(A) / median(B) - 1.
Run: `.venv/bin/python benchmarks/tiling_speed.py [--repeats 3] [--size 2048]`
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import time

import keras
import numpy as np

from msunet.config import ModelConfig, head_scale
from msunet.models import build_model
from msunet.inference.keras_engine import make_predict_fn
from msunet.runtime.tiling import predict_tiled, window_starts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    cfg = ModelConfig()
    model = build_model(cfg)
    heads = list(cfg.head_names)
    fn = make_predict_fn(model, heads, args.batch)
    scales = {h: head_scale(h) for h in heads}
    image = np.random.default_rng(0).random((args.size, args.size, 3), dtype=np.float32)
    starts = window_starts(args.size, args.tile, args.overlap, max(scales.values()))
    tiles = np.stack([image[t : t + args.tile, l : l + args.tile] for t in starts for l in starts])
    batches = [tiles[i : i + args.batch] for i in range(0, len(tiles), args.batch)]
    fn(batches[0])  # trace
    times = {"predict_tiled": [], "raw_model": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        predict_tiled(fn, image, args.tile, args.overlap, args.batch, scales=scales)
        times["predict_tiled"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for b in batches:
            fn(b)
        times["raw_model"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "date": datetime.date.today().isoformat(),
        "backend": keras.backend.backend(),
        "setup": f"{args.size}x{args.size}, default U-Net (4 heads), tile {args.tile}, overlap {args.overlap}, "
                 f"batch {args.batch}, {len(tiles)} tiles",
        "median_s": med,
        "min_max_s": {k: [min(v), max(v)] for k, v in times.items()},
        "tiled_megapixels_per_s": args.size**2 / 1e6 / med["predict_tiled"],
        "raw_tile_megapixels_per_s": len(tiles) * args.tile**2 / 1e6 / med["raw_model"],
        "overhead": med["predict_tiled"] / med["raw_model"] - 1,
    }
    out = pathlib.Path(__file__).parent / "results" / f"tiling-speed-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
