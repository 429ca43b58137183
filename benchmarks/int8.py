"""int8 export: its accuracy cost and speed against the float32 bundle of the same run.

`python benchmarks/int8.py drive=RUN_DIR dsb2018-nuclei=RUN_DIR [--out FILE]`

For each trained run (a run of `benchmarks/accuracy/run.py` on that dataset, e.g. the newcomer's), the
run is exported twice (`msunet export --format onnx` and `--int8`), the dataset's test images are
predicted with each bundle by `msunet.runtime` (ONNX Runtime) and
scored by the dataset's protocol (`benchmarks/accuracy/run.py`: DRIVE F1/AUC inside the field of view,
DSB Dice and object F1). Also recorded: the agreement of the two bundles' masks, their largest
probability difference, the model file sizes and the prediction seconds per image (the two bundles
alternate image by image, so both see the same machine load).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "accuracy"))
sys.path.insert(0, str(HERE.parent / "src"))

import run as accuracy  # noqa: E402  (benchmarks/accuracy/run.py: views, protocols, scoring)


def bench(dataset: str, run_dir: pathlib.Path, work: pathlib.Path) -> dict:
    from msunet.config import RunConfig
    from msunet.export import export
    from msunet.imageio import read_image, read_mask
    from msunet.runtime import Predictor
    from msunet.runtime.files import predict_files

    accuracy.WORK = work
    (fold, labels), = accuracy.protocol(dataset)[:1]
    view = accuracy.make_view(dataset, labels, f"{dataset}-int8")
    test = sorted(s for s, split in labels.items() if split == "test")
    inputs = work / f"{dataset}-int8" / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir(parents=True)
    for stem in test:
        src = next((view / "images").glob(f"{stem}.*"))
        (inputs / src.name).symlink_to(src.resolve())
    protocol = RunConfig.from_json(HERE / "accuracy" / "configs" / f"{dataset}.json")
    binary = protocol.model.num_classes == 1
    out: dict = {"dataset": dataset, "run": str(run_dir), "test_images": len(test), "bundles": {}}
    bundles = {}
    for tag, int8 in (("float32", False), ("int8", True)):
        t0 = time.perf_counter()
        bundles[tag] = export(run_dir, work / f"{dataset}-int8" / f"bundle-{tag}", int8=int8, overwrite=True)
        meta = json.loads((bundles[tag] / "bundle.json").read_text())
        out["bundles"][tag] = {"export_s": time.perf_counter() - t0, "quantization": meta.get("quantization"),
                               "model_mb": (bundles[tag] / meta["model_file"]).stat().st_size / 1e6}
    # Masks and probabilities of each bundle, the whole test set, then scored by the protocol.
    # (OpenVINO ran the int8 graph too on 2026-11-24 and computed wrong masks, F1 0.04 on DRIVE:
    # int8-2026-11-24.json; the runtime now refuses that pairing.)
    contenders = [("float32", "onnxruntime"), ("int8", "onnxruntime")]
    seconds: dict[str, list[float]] = {f"{t}/{e}": [] for t, e in contenders}
    predictors = {f"{t}/{e}": Predictor(bundles[t], engine=e) for t, e in contenders}
    for name in sorted(p.name for p in inputs.iterdir()):  # alternate contenders image by image
        one = work / f"{dataset}-int8" / "one"
        shutil.rmtree(one, ignore_errors=True)
        one.mkdir()
        (one / name).symlink_to((inputs / name).resolve())
        for key, predictor in predictors.items():
            pred_dir = work / f"{dataset}-int8" / f"pred-{key.replace('/', '-')}"
            t0 = time.perf_counter()
            predict_files(predictor.engine(), one, pred_dir, probabilities=binary,
                                         overlay_images=False, overwrite=True, scales=["mask"],
                                         threshold=predictor.threshold)
            seconds[key].append(time.perf_counter() - t0)
    out["scores"] = {}
    for key in predictors:
        pred_dir = work / f"{dataset}-int8" / f"pred-{key.replace('/', '-')}"
        scores = accuracy.score(dataset, view, pred_dir, work / f"{dataset}-int8" / f"eval-{key.replace('/', '-')}",
                                test, protocol.model.num_classes, protocol.data, protocol.train.include_background)
        scores["predict_s_per_image_median"] = float(np.median(seconds[key]))
        out["scores"][key] = scores
    reference = work / f"{dataset}-int8" / "pred-float32-onnxruntime"
    for key in ("int8/onnxruntime",):
        agree, worst = [], 0.0
        for stem in test:
            a, b = read_mask(reference / f"{stem}.png"), read_mask(work / f"{dataset}-int8" /
                                                                     f"pred-{key.replace('/', '-')}" / f"{stem}.png")
            agree.append(float((a == b).mean()))
            if binary:
                pa = read_image(reference / f"{stem}_prob.tif")
                pb = read_image(work / f"{dataset}-int8" / f"pred-{key.replace('/', '-')}" / f"{stem}_prob.tif")
                worst = max(worst, float(np.abs(pa.astype(np.float64) - pb).max()))
        out["scores"][key]["mask_agreement_with_float32"] = float(np.mean(agree))
        if binary:
            out["scores"][key]["max_abs_probability_difference"] = worst
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="DATASET=RUN_DIR")
    parser.add_argument("--work", default=str(HERE / "accuracy" / "work"))
    parser.add_argument("--out", default=str(HERE / "results" / f"int8-{datetime.date.today().isoformat()}.json"))
    args = parser.parse_args(argv)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    results = {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(), "datasets": []}
    for item in args.runs:
        dataset, _, run_dir = item.partition("=")
        print(f"[{datetime.datetime.now():%H:%M:%S}] {dataset}: {run_dir}", flush=True)
        results["datasets"].append(bench(dataset, pathlib.Path(run_dir), pathlib.Path(args.work)))
        print(json.dumps(results["datasets"][-1]["scores"], indent=1), flush=True)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
