"""Cost of each model part: parameters, GFLOP per image, training and inference img/s.

`python benchmarks/parts.py [--size 256] [--batch 4] [--repeats 5] [--smoke]`

Every combination in COMBOS at the defaults (depth 4, 32 filters, the default precision of this
machine), one process, contenders alternated inside every repeat, medians of img/s with min/max and
the ratio to the default (`conv` + `unet`), as benchmarks/speed.py does. FLOPs are counted
analytically from the conv layers' shapes (speed.conv_flops). Writes
benchmarks/results/parts-<date>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from speed import conv_flops, stats, timed  # noqa: E402

from msunet.config import RunConfig  # noqa: E402
from msunet.data import multiscale_targets  # noqa: E402
from msunet.models import build_model, resolve_precision, select_outputs  # noqa: E402
from msunet.train import MultiScaleTrainer, _optimizer  # noqa: E402

COMBOS = {
    "conv + unet": [],
    "resconv + unet": ["model.encoder=resconv"],
    "conv + unet + attention": ["model.attention=true"],
    "conv + unetpp": ["model.decoder=unetpp"],
    "conv + unet3p": ["model.decoder=unet3p", "model.upsample=bilinear"],  # bilinear: as the paper
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (a harness check)")
    parser.add_argument("--static", action="store_true", help="parameters and GFLOP only (no timing)")
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--out", help="results JSON (default benchmarks/results/parts-<date>.json)")
    args = parser.parse_args()
    size, batch, repeats = args.size, args.batch, args.repeats
    base = ["model.depth=4", f"model.filters={args.filters}"]
    if args.smoke:
        size, batch, repeats, base = 32, 2, 1, ["model.depth=2", "model.filters=4"]
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 3), dtype=np.float32)
    masks = [(rng.random((size, size)) > 0.7).astype(np.int16) for _ in range(batch)]

    info, ops = {}, {"train": {}, "infer": {}}
    if args.static:
        for name, overrides in COMBOS.items():
            cfg = RunConfig().override(base + overrides).model
            print(f"| {name} | {build_model(cfg).count_params() / 1e6:.2f} M | {conv_flops(cfg, size) / 1e9:.2f} |")
        return
    for name, overrides in COMBOS.items():
        run = RunConfig().override(base + overrides)
        per = [multiscale_targets(m, run.model) for m in masks]
        y = {h: np.stack([p[h] for p in per]) for h in run.model.head_names}
        model = build_model(run.model)
        trainer = MultiScaleTrainer(model, run)
        trainer.compile(optimizer=_optimizer(run, 10_000))
        infer = select_outputs(model, ["mask"])
        ops["train"][name] = lambda t=trainer, y=y: t.train_on_batch(x, y)
        ops["infer"][name] = lambda m=infer: m.predict_on_batch(x)
        info[name] = {"overrides": overrides, "parameters": model.count_params(),
                      "gflop_per_image": conv_flops(run.model, size) / 1e9}
    for row in ops.values():  # warm-up: traces, allocator pools
        for fn in row.values():
            fn()
            fn()
    samples = {row: {name: [] for name in fns} for row, fns in ops.items()}
    for _ in range(repeats):
        for row, fns in ops.items():
            for name, fn in fns.items():
                samples[row][name] += timed(fn, 1)
    table = {row: {name: stats(s, batch) for name, s in by.items()} for row, by in samples.items()}
    default = next(iter(COMBOS))
    for name in COMBOS:
        info[name]["train_img_s"] = table["train"][name]
        info[name]["infer_img_s"] = table["infer"][name]
        info[name]["train_ratio_to_default"] = table["train"][name]["median"] / table["train"][default]["median"]
        info[name]["infer_ratio_to_default"] = table["infer"][name]["median"] / table["infer"][default]["median"]

    result = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "precision": resolve_precision("auto"), "size": size, "batch": batch, "repeats": repeats,
              "base": base, "combos": info}
    lines = ["| encoder + decoder | parameters | GFLOP / image | train img/s (x default) | infer img/s (x default) |",
             "|---|---|---|---|---|"]
    for name, r in info.items():
        lines.append(f"| {name} | {r['parameters'] / 1e6:.2f} M | {r['gflop_per_image']:.1f} | "
                     f"{r['train_img_s']['median']:.2f} ({r['train_ratio_to_default']:.2f}x) | "
                     f"{r['infer_img_s']['median']:.2f} ({r['infer_ratio_to_default']:.2f}x) |")
    print("\n".join(lines))
    if not args.smoke or args.out:
        out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" / f"parts-{result['date']}.json")
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
