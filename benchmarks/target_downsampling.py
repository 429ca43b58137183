"""Which rule should make the coarse heads' targets? Measured on thin structures.

For DRIVE (vessels = 255) and ISBI 2012 (membranes = 0, the thin class), each mask is reduced to
1/2, 1/4, 1/8 by each rule of `msunet.data.targets.downsample_target`, and we report:
- survival: share of thin-structure pixels whose coarse cell still carries the structure (> 0);
- mass ratio: structure mass at the coarse scale / at full resolution (1.0 = nothing lost or added).
Run: `.venv/bin/python benchmarks/target_downsampling.py` (writes benchmarks/results/target-downsampling.json).
"""

from __future__ import annotations

import json
import pathlib
import statistics

import numpy as np

from msunet.data.targets import foreground_survival
from msunet.data.imageio import read_mask

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"drive": lambda m: m > 0, "isbi2012-membrane": lambda m: m == 0}


def main() -> None:
    results = {}
    for name, thin in SETS.items():
        masks = sorted((SHARED / name / "masks").glob("*"))
        if not masks:
            print(f"{SHARED / name} is absent; skipped")
            continue
        results[name] = {}
        for scale in (2, 4, 8):
            for rule in ("nearest", "max", "average"):
                runs = [foreground_survival(thin(read_mask(p)).astype(np.uint8), scale, rule) for p in masks]
                results[name][f"1/{scale} {rule}"] = {
                    "survival": statistics.median(r["survival"] for r in runs),
                    "mass_ratio": statistics.median(r["mass_ratio"] for r in runs),
                    "images": len(runs),
                }
    out = pathlib.Path(__file__).parent / "results" / "target-downsampling.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'dataset':20} {'scale rule':16} {'survival':>9} {'mass ratio':>11}")
    for name, rows in results.items():
        for key, r in rows.items():
            print(f"{name:20} {key:16} {r['survival']:9.3f} {r['mass_ratio']:11.3f}")


if __name__ == "__main__":
    main()
