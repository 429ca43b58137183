"""int8 export: its accuracy cost and speed against the float32 bundle of the same run, per weight variant.

`python benchmarks/int8.py drive=RUN_DIR dsb2018-nuclei=RUN_DIR busi-subset=RUN_DIR [--out FILE]`

For each trained run (a run of `benchmarks/accuracy/run.py` on that dataset, e.g. the newcomer's), the
run is exported as a float32 bundle and as int8 bundles with each weight variant (`msunet export
--int8`, `export(weights=...)`: "int8" full-range weights, what msunet made before; "int7", 7-bit
weights that no x86 kernel saturates, the default; "uint8", U8U8). The dataset's test images are
predicted with each bundle's own graph by `msunet.runtime` (ONNX Runtime, self-check off) and scored
by the dataset's protocol (`benchmarks/accuracy/run.py`: DRIVE F1/AUC inside the field of view, DSB
Dice and object F1, BUSI Dice/IoU). Also recorded: each variant's mask agreement with float32, its
largest probability difference, the model file sizes, the prediction seconds per image (the bundles
alternate image by image, so all see the same machine load), the throughput of each graph on the
run's calibration patches at batch 1 and 8 (alternated, medians), the cost of a bundle's self-check
on first load and cached, and the machine (CPU model and the flags that matter).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
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
    from msunet.exporting.bundle import export
    from msunet.data.imageio import read_image, read_mask
    from msunet.runtime import Predictor
    from msunet.runtime.files import predict_files
    from msunet.runtime.options import PredictOptions

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
    for tag in VARIANTS:
        t0 = time.perf_counter()
        bundles[tag] = export(run_dir, work / f"{dataset}-int8" / f"bundle-{tag}", int8=tag != "float32",
                              weights=tag if tag != "float32" else "int7", overwrite=True)
        meta = json.loads((bundles[tag] / "bundle.json").read_text())
        out["bundles"][tag] = {"export_s": time.perf_counter() - t0, "quantization": meta.get("quantization"),
                               "model_mb": (bundles[tag] / meta["model_file"]).stat().st_size / 1e6}
    out["throughput"] = throughput(bundles, run_dir)
    out["self_check"] = self_check_cost(bundles)
    # Masks and probabilities of each bundle, the whole test set, then scored by the protocol.
    # (OpenVINO ran the int8 graph too on 2026-11-24 and computed wrong masks, F1 0.04 on DRIVE:
    # int8-2026-11-24.json; the runtime now refuses that pairing.)
    contenders = [(tag, "onnxruntime") for tag in VARIANTS]
    seconds: dict[str, list[float]] = {f"{t}/{e}": [] for t, e in contenders}
    # each graph as exported (check=False): the variants themselves, not the self-check's choice
    predictors = {f"{t}/{e}": Predictor(bundles[t], engine=e, check=False) for t, e in contenders}
    for name in sorted(p.name for p in inputs.iterdir()):  # alternate contenders image by image
        one = work / f"{dataset}-int8" / "one"
        shutil.rmtree(one, ignore_errors=True)
        one.mkdir()
        (one / name).symlink_to((inputs / name).resolve())
        for key, predictor in predictors.items():
            pred_dir = work / f"{dataset}-int8" / f"pred-{key.replace('/', '-')}"
            t0 = time.perf_counter()
            predict_files(predictor.engine(), one, pred_dir,
                          PredictOptions(probabilities=binary, overlay_images=False, overwrite=True, scales=("mask",)))
            seconds[key].append(time.perf_counter() - t0)
    out["scores"] = {}
    for key in predictors:
        pred_dir = work / f"{dataset}-int8" / f"pred-{key.replace('/', '-')}"
        scores = accuracy.score(dataset, view, pred_dir, work / f"{dataset}-int8" / f"eval-{key.replace('/', '-')}",
                                test, protocol.model.num_classes, protocol.data, protocol.train.include_background)
        scores["predict_s_per_image_median"] = float(np.median(seconds[key]))
        out["scores"][key] = scores
    reference = work / f"{dataset}-int8" / "pred-float32-onnxruntime"
    for key in [k for k in predictors if not k.startswith("float32/")]:
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


VARIANTS = ("float32", "int8", "int7", "uint8")  # int8: full-range weights (msunet before 0.1.x); int7: the default


def throughput(bundles: dict, run_dir: pathlib.Path, batch: int = 8, rounds: int = 7) -> dict:
    """Images/s of each bundle's graph on ONNX Runtime at batch 1 and `batch`, on the run's
    calibration patches (16, normalised), the graphs alternating round by round; medians."""
    from msunet.exporting.bundle import calibration_inputs
    from msunet.training.run_folder import load_run
    from msunet.runtime import Predictor

    patches = calibration_inputs(load_run(run_dir))[:16]
    predictors = {tag: Predictor(b, engine="onnxruntime", check=False) for tag, b in bundles.items()}
    out = {}
    for size in (1, batch):
        times: dict[str, list[float]] = {tag: [] for tag in predictors}
        for p in predictors.values():  # warm-up
            p.predict_batch(patches[:size], p.default_heads)
        for _ in range(rounds):
            for tag, p in predictors.items():
                t0 = time.perf_counter()
                for start in range(0, len(patches), size):
                    p.predict_batch(patches[start:start + size], p.default_heads)
                times[tag].append(len(patches) / (time.perf_counter() - t0))
        out[f"batch{size}_images_per_s"] = {tag: float(np.median(t)) for tag, t in times.items()}
        out[f"batch{size}_vs_int8"] = {tag: float(np.median(t) / np.median(times["int8"])) for tag, t in times.items()}
    out["patch"] = list(map(int, patches.shape[1:]))
    return out


def self_check_cost(bundles: dict, repeats: int = 3) -> dict:
    """Seconds to open each bundle with its self-check: the first load on a machine (a fresh cache:
    the reference run, and for a graph that strays the engine timing) and a cached load; medians."""
    import tempfile

    from msunet.runtime import Predictor

    out = {}
    for tag, bundle in bundles.items():
        first, cached, choice = [], [], None
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as cache:
                os.environ["MSUNET_CACHE_DIR"] = cache
                t0 = time.perf_counter()
                choice = Predictor(bundle).choice
                first.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                Predictor(bundle)
                cached.append(time.perf_counter() - t0)
        os.environ.pop("MSUNET_CACHE_DIR", None)
        out[tag] = {"first_load_s": float(np.median(first)), "cached_load_s": float(np.median(cached)),
                    "choice": choice}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="DATASET=RUN_DIR")
    parser.add_argument("--work", default=str(HERE / "accuracy" / "work"))
    parser.add_argument("--out", default=str(HERE / "results" / f"int8-{datetime.date.today().isoformat()}.json"))
    args = parser.parse_args(argv)
    from msunet import machine

    results = {"date": datetime.date.today().isoformat(), "machine": machine.describe(), "datasets": []}
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
