"""Peak memory of `msunet predict` on a 20000x20000 RGB image (target: under 2 GiB).

Writes an uncompressed 20000x20000x3 TIFF (1.2 GB, in strips, never whole in memory), saves a small
U-Net (depth 2, 4 filters: the point is memory, not accuracy), then runs `msunet predict` in a child
process and reads its peak resident memory (ru_maxrss of the child). Needs ~3 GB of free disk.
Run: `.venv/bin/python benchmarks/out_of_core.py [--size 20000] [--keep]`
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import tifffile

from msunet import machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="msunet-ooc-"))
    try:
        size = args.size
        rng = np.random.default_rng(0)

        def strips():
            for top in range(0, size, 256):
                rows = min(256, size - top)
                yield rng.integers(0, 255, (rows, size, 3), dtype=np.uint8)

        image = work / "huge.tif"
        tifffile.imwrite(image, strips(), shape=(size, size, 3), dtype=np.uint8, rowsperstrip=256)
        code = (
            "import msunet, keras; from msunet.config import RunConfig; "
            "from msunet.models import build_model; import pathlib, json; d = pathlib.Path(r'%s'); "
            "cfg = RunConfig().override(['model.depth=2', 'model.filters=4']); "
            "build_model(cfg.model).save(d / 'm.keras'); cfg.to_json(d / 'config.json')" % work
        )
        subprocess.run([sys.executable, "-c", code], check=True)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "msunet", "predict", "--model", str(work / "m.keras"), "--input", str(image),
             "--out", str(work / "out"), "--tile", str(args.tile), "--batch", "4", "--quiet"],
            capture_output=True, text=True,
        )
        seconds = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child: predict
        result = {
            "date": datetime.date.today().isoformat(),
            "machine": machine.describe(),
            "image": f"{size}x{size}x3 uint8 uncompressed TIFF ({image.stat().st_size / 1e9:.2f} GB)",
            "returncode": proc.returncode,
            "peak_rss_gib": peak_kib / 1024**2,
            "seconds": seconds,
            "megapixels_per_s": size * size / 1e6 / seconds,
            "outputs": sorted(p.name for p in (work / "out").iterdir()) if (work / "out").is_dir() else [],
            "stdout": proc.stdout[-500:],
            "stderr": proc.stderr[-1500:],
        }
        out = pathlib.Path(__file__).parent / "results" / f"out-of-core-{result['date']}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
