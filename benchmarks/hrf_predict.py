"""Prediction speed on HRF (3504x2336 fundus photographs), with and without flip TTA.

Needs a trained run (e.g. `msunet train --data ../shared/data/hrf --out runs/hrf ...`).
Run: `.venv/bin/python benchmarks/hrf_predict.py RUN [--images 3]`; writes
benchmarks/results/hrf-predict-<date>.json with images/s and Mpx/s for each mode.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shutil
import tempfile

from msunet.training.run_folder import load_run
from msunet.inference.engines import predict

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hrf" / "images"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", help="keep the outputs here (default: a temporary folder)")
    args = parser.parse_args()
    run = load_run(args.run)
    work = pathlib.Path(tempfile.mkdtemp(prefix="msunet-hrf-"))
    inputs = work / "in"
    inputs.mkdir()
    for path in sorted(SHARED.glob("*.jpg"))[: args.images]:
        (inputs / path.name).symlink_to(path)
    predict(run, next(inputs.iterdir()), work / "warm", tile_size=args.tile, batch_size=args.batch)  # trace
    result = {"date": datetime.date.today().isoformat(), "images": args.images, "tile": args.tile,
              "model": run.config.model.to_dict()}
    for mode, tta in (("plain", False), ("tta", True)):
        out = pathlib.Path(args.out) / mode if args.out else work / mode
        summary = predict(run, inputs, out, tile_size=args.tile, batch_size=args.batch, tta=tta, overwrite=True)
        result[mode] = {"seconds": summary.seconds, "images_per_s": args.images / summary.seconds,
                        "megapixels_per_s": summary.megapixels / summary.seconds, "failed": summary.failed}
    result["tta_slowdown"] = result["tta"]["seconds"] / result["plain"]["seconds"]
    shutil.rmtree(work, ignore_errors=True)
    path = pathlib.Path(__file__).parent / "results" / f"hrf-predict-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "model"}, indent=2))


if __name__ == "__main__":
    main()
