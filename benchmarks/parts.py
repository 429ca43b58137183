"""Cost of each model part: parameters, GFLOP per image, training and inference img/s.

`python benchmarks/parts.py [--size 256] [--batch 4] [--repeats 5] [--smoke] [--backbones]`

Every combination in COMBOS at the defaults (depth 4, 32 filters, the default precision of this
machine), one process, contenders alternated inside every repeat, medians of img/s with min/max and
the ratio to the default (`conv` + `unet`), as benchmarks/speed.py does. FLOPs are counted
analytically from the shapes of every convolution, depthwise convolution and dense layer, nested
models (backbones) included (`model_flops`). `--backbones` adds one `keras.applications` backbone
of each family + `unet` at depth 5 (random weights: the cost does not depend on them). Writes
benchmarks/results/parts-<date>.json (parts-backbones-<date>.json with --backbones) and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from speed import stats, timed  # noqa: E402

from msunet.config import RunConfig  # noqa: E402
from msunet.data.targets import multiscale_targets
from msunet.models import build_model, resolve_precision, select_outputs  # noqa: E402
from msunet.training.trainer import MultiScaleTrainer, make_optimizer  # noqa: E402

COMBOS = {
    "conv + unet": [],
    "resconv + unet": ["model.encoder=resconv"],
    "conv + unet + attention": ["model.attention=true"],
    "conv + unetpp": ["model.decoder=unetpp"],
    "conv + unet3p": ["model.decoder=unet3p", "model.upsample=bilinear"],  # bilinear: as the paper
}


BACKBONE_COMBOS = {f"{b} + unet": [f"model.encoder={b}", "model.depth=5"]
                   for b in ("resnet50v2", "efficientnetv2b0", "convnext_tiny", "mobilenetv3large")}


def model_flops(model, input_shape) -> float:
    """Forward FLOPs (2 x multiply-adds) of one image: convolutions (also depthwise, transposed)
    and dense layers applied per pixel (ConvNeXt's pointwise layers), nested models included."""
    import keras

    counted = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Conv2DTranspose, keras.layers.Dense)
    layers = [layer for layer in model.layers if isinstance(layer, counted + (keras.Model,))]
    plain = [layer for layer in layers if not isinstance(layer, keras.Model)]
    def called_with(layer):  # a nested model's `.input` is its own Input; its call in this graph is the node's
        return layer._inbound_nodes[-1].input_tensors[0] if isinstance(layer, keras.Model) else layer.input

    probe = keras.Model(model.inputs, [called_with(layer) for layer in layers] + [layer.output for layer in plain])
    shapes = probe.compute_output_shape(tuple(input_shape))
    ins, outs = shapes[: len(layers)], dict(zip(map(id, plain), shapes[len(layers):]))
    total = 0.0
    for layer, shape_in in zip(layers, ins):
        if isinstance(layer, keras.Model):
            total += model_flops(layer, shape_in)
            continue
        out = outs[id(layer)]
        pixels = float(np.prod(out[1:-1])) if len(out) > 2 else 1.0
        c_in = shape_in[-1]
        if isinstance(layer, keras.layers.Dense):
            total += 2.0 * pixels * c_in * layer.units
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            total += 2.0 * pixels * np.prod(layer.kernel_size) * c_in * layer.depth_multiplier
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            total += 2.0 * float(np.prod(shape_in[1:-1])) * np.prod(layer.kernel_size) * c_in * layer.filters
        else:
            total += 2.0 * pixels * np.prod(layer.kernel_size) * c_in * layer.filters / layer.groups
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (a harness check)")
    parser.add_argument("--static", action="store_true", help="parameters and GFLOP only (no timing)")
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--backbones", action="store_true",
                        help="also one keras.applications backbone per family (+ unet, depth 5)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/parts-<date>.json)")
    args = parser.parse_args()
    size, batch, repeats = args.size, args.batch, args.repeats
    base = ["model.depth=4", f"model.filters={args.filters}"]
    if args.smoke:
        size, batch, repeats, base = 32, 2, 1, ["model.depth=2", "model.filters=4"]
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 3), dtype=np.float32)
    masks = [(rng.random((size, size)) > 0.7).astype(np.int16) for _ in range(batch)]

    combos = {**COMBOS, **(BACKBONE_COMBOS if args.backbones else {})}
    if args.smoke and not args.backbones:  # a harness check: one combination of each decoder
        combos = {name: over for name, over in combos.items() if name in ("conv + unet", "conv + unetpp", "conv + unet3p")}
    if args.smoke and args.backbones:  # backbones need depth >= their first feature; keep it small
        combos = {name: [o for o in over if not o.startswith("model.depth")] for name, over in combos.items()}
    info, ops = {}, {"train": {}, "infer": {}}
    if args.static:
        for name, overrides in combos.items():
            cfg = RunConfig().override(base + overrides).model
            model = build_model(cfg)
            flops = model_flops(model, (1, size, size, cfg.in_channels))
            print(f"| {name} | {model.count_params() / 1e6:.2f} M | {flops / 1e9:.2f} |")
        return
    for name, overrides in combos.items():
        run = RunConfig().override(base + overrides)
        per = [multiscale_targets(m, run.model) for m in masks]
        y = {h: np.stack([p[h] for p in per]) for h in run.model.head_names}
        model = build_model(run.model)
        trainer = MultiScaleTrainer(model, run)
        trainer.compile(optimizer=make_optimizer(run, 10_000))
        infer = select_outputs(model, ["mask"])
        ops["train"][name] = lambda t=trainer, y=y: t.train_on_batch(x, y)
        ops["infer"][name] = lambda m=infer: m.predict_on_batch(x)
        info[name] = {"overrides": overrides, "parameters": model.count_params(),
                      "gflop_per_image": model_flops(model, (1, size, size, run.model.in_channels)) / 1e9}
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
    default = next(iter(combos))
    for name in combos:
        info[name]["train_img_s"] = table["train"][name]
        info[name]["infer_img_s"] = table["infer"][name]
        info[name]["train_ratio_to_default"] = table["train"][name]["median"] / table["train"][default]["median"]
        info[name]["infer_ratio_to_default"] = table["infer"][name]["median"] / table["infer"][default]["median"]

    from msunet import machine

    result = {"date": datetime.date.today().isoformat(), "machine": machine.describe(),
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
        stem = "parts-backbones" if args.backbones else "parts"
        out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" / f"{stem}-{result['date']}.json")
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
