"""Peak memory of `msunet predict` on a large volume: streamed from its file (slab by slab) vs read whole.

Writes a (D, H, W) float32 `.npy` volume (default 256x512x512 = 268 MB, written slab by slab, never whole
in memory), saves a small 3-D U-Net (depth 2, 4 filters, 3 classes, group norm, z-scored volumes: the
point is memory, not accuracy), then runs `msunet predict --engine keras` in two child processes, one
with the streaming threshold (`msunet.runtime.volumes.STREAM_VOXELS`) at 1 voxel and one at 10^12, and
reads each child's peak resident memory (ru_maxrss) and time; checks that both wrote the same masks.
Run alone: `.venv/bin/python benchmarks/volume_out_of_core.py [--shape 256,512,512] [--keep]`.
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

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import cpu_model_and_flags  # noqa: E402

CHILD = """
import sys, resource, time
from msunet.runtime import volumes
volumes.STREAM_VOXELS = int(sys.argv[1])
from msunet.cli import main
start = time.perf_counter()
code = main(["predict", "--model", sys.argv[2], "--input", sys.argv[3], "--out", sys.argv[4], "--engine", "keras",
             "--batch", "4", "--quiet", "--no-overlay"])
print("seconds", time.perf_counter() - start)
print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="256,512,512", help="D,H,W of the volume")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    work = pathlib.Path(tempfile.mkdtemp(prefix="msunet-volume-ooc-"))
    try:
        volume = np.lib.format.open_memmap(work / "big.npy", mode="w+", dtype=np.float32, shape=shape)
        rng = np.random.default_rng(0)
        for z in range(0, shape[0], 16):
            volume[z : z + 16] = rng.normal(100.0, 20.0, (min(16, shape[0] - z), *shape[1:])).astype(np.float32)
        volume.flush()
        del volume
        inputs = work / "in"
        inputs.mkdir()
        (work / "big.npy").rename(inputs / "big.npy")
        code = (
            "from msunet.config import RunConfig; from msunet.models import build_model; import pathlib; "
            f"d = pathlib.Path(r'{work}'); "
            "cfg = RunConfig().override(['model.dims=3', 'model.depth=2', 'model.filters=4', 'model.norm=group', "
            "'model.groups=2', 'model.num_classes=3', 'model.in_channels=1', 'data.patch_size=32', "
            "'data.normalization=volume']); build_model(cfg.model).save(d / 'm.keras'); cfg.to_json(d / 'config.json')"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
        runs = {}
        for name, threshold in (("streamed", 1), ("whole", 10**12)):
            proc = subprocess.run([sys.executable, "-c", CHILD, str(threshold), str(work / "m.keras"), str(inputs),
                                   str(work / name)], capture_output=True, text=True)
            values = dict(line.split() for line in proc.stdout.splitlines() if line.startswith(("seconds", "peak_kib")))
            runs[name] = {"returncode": proc.returncode, "seconds": float(values.get("seconds", "nan")),
                          "peak_rss_gib": int(values.get("peak_kib", 0)) / 1024**2, "stderr": proc.stderr[-1500:]}
        import nibabel

        masks = [np.asarray(nibabel.load(str(work / name / "big.nii.gz")).dataobj) for name in ("streamed", "whole")]
        result = {
            "date": datetime.date.today().isoformat(), "cpu": cpu_model_and_flags(),
            "volume": f"{'x'.join(map(str, shape))} float32 .npy ({np.prod(shape) * 4 / 1e9:.2f} GB)",
            "runs": runs, "masks_equal_fraction": float(np.mean(masks[0] == masks[1])),
            "rss_ratio_streamed_over_whole": runs["streamed"]["peak_rss_gib"] / max(runs["whole"]["peak_rss_gib"], 1e-9),
        }
        out = HERE / "results" / "volumes" / "out-of-core.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=float) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "cpu"}, indent=2, default=float))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
