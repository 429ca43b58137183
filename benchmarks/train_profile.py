"""Where one training step's time goes, per op family: msunet (bf16 and float32) and the PyTorch peer.

msunet: the TensorFlow profiler traces `--steps` training steps (after warm-up; the first traced
step is dropped, the profiler slows it) of `MultiScaleTrainer.train_on_batch` on fixed data; the
trace (`.xplane.pb`, read with the protobuf that TensorFlow ships) gives every op's duration on
TensorFlow's compute threads, and each op is put in a family by its op type and the msunet layer
it belongs to: conv forward, conv backward data / filter, batch-norm forward / backward, pooling,
activation, concat / crop / upsampling, casts, heads (losses and metrics, forward and backward),
optimizer update, other. "outside the graph" is the step's wall time minus the graph's run time
(Python, NumPy-to-tensor hand-off, Keras' callbacks and metric reads).

PyTorch (when installed: `make bench-env`): `torch.profiler` over the same number of steps of the
same U-Net as `speed.py` (float32 and bf16 autocast), each op's self CPU time mapped to the same
families (its conv backward is one op, data and filter together).

Op times are summed per step; with two cores TensorFlow runs some ops side by side, so the sum can
exceed the wall time: shares are of the summed op time, and both are printed.

With two cores TensorFlow runs independent ops side by side, each then slower, so op sums overstate single
kernels; `TF_NUM_INTEROP_THREADS=1` runs one op at a time (what the 2026-12-07 table in docs/performance.md used).

Run: `.venv-bench/bin/python benchmarks/train_profile.py [--bn keras,fused] [--precision mixed_bfloat16,float32]`
(writes `benchmarks/results/train-profile-<date>.json` and prints a markdown table; the table of
2026-11-24 is in the README's Performance section). `--smoke`: a tiny run, the harness check of `make test`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import glob
import importlib.util
import json
import os
import pathlib
import re
import statistics
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from speed import timed  # noqa: E402  (per-call seconds)

FAMILIES = ["conv forward", "conv backward data", "conv backward filter", "batch norm forward",
            "batch norm backward", "pooling", "activation", "concat / crop / upsample", "casts",
            "heads: losses + metrics", "optimizer update", "other"]


@contextlib.contextmanager
def keras_batch_norm():
    """Builds models with Keras' own BatchNormalization instead of msunet's fused one (the baseline)."""
    import keras

    from msunet.models import blocks

    saved = blocks.BatchNormalization
    blocks.BatchNormalization = keras.layers.BatchNormalization
    try:
        yield
    finally:
        blocks.BatchNormalization = saved


def model_and_batch(run, batch, size, bn):
    """msunet's model for `run` (Keras' or the fused batch norm) and one fixed batch of its targets."""
    from msunet.data.targets import multiscale_targets
    from msunet.models import build_model

    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 3), dtype=np.float32)
    per = [multiscale_targets((rng.random((size, size)) > 0.7).astype(np.int16), run.model) for _ in range(batch)]
    y = {n: np.stack([p[n] for p in per]) for n in run.model.head_names}
    with keras_batch_norm() if bn == "keras" else contextlib.nullcontext():
        model = build_model(run.model)
    return model, x, y


def make_trainer(depth, filters, batch, size, precision, bn):
    from msunet.config import RunConfig
    from msunet.training.trainer import MultiScaleTrainer, make_optimizer

    run = RunConfig().override([f"model.depth={depth}", f"model.filters={filters}", f"model.precision={precision}"])
    model, x, y = model_and_batch(run, batch, size, bn)
    trainer = MultiScaleTrainer(model, run)
    trainer.compile(optimizer=make_optimizer(run, 10_000))
    return trainer, model, (lambda: trainer.train_on_batch(x, y))


def layer_kinds(model) -> dict:
    """msunet layer name -> family stem, from the layer classes."""
    import keras

    kinds = {}
    for layer in model.layers:
        name = type(layer).__name__
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            kinds[layer.name] = "conv"
        elif "BatchNormalization" in name:
            kinds[layer.name] = "batch norm"
        elif "Pooling" in name:
            kinds[layer.name] = "pooling"
        elif isinstance(layer, keras.layers.Activation) or "ReLU" in name:
            kinds[layer.name] = "activation"
        else:
            kinds[layer.name] = "concat / crop / upsample"
    return kinds


def layer_of(op_name: str, kinds: dict) -> str | None:
    """The msunet layer an op belongs to (a second model in the process gets "_1" on its scopes)."""
    for part in op_name.split("/"):
        for candidate in (part, re.sub(r"_\d+$", "", part)):
            if candidate in kinds:
                return candidate
    return None


def tf_family(op_name: str, op_type: str, kinds: dict) -> str:
    backward = "gradient_tape/" in op_name
    if op_type == "Cast":
        return "casts"
    if re.match(r"^(adam_w|adam|sgd|loss_scale_optimizer)(_\d+)?/", op_name) or op_name.startswith("AssignAddVariableOp"):
        return "optimizer update"
    layer = layer_of(op_name, kinds)
    kind = kinds[layer] if layer else None
    if kind is None:
        in_model = any(p.startswith("multi_scale_trainer") for p in op_name.split("/"))
        return "other" if in_model else "heads: losses + metrics"
    if kind == "conv":
        if not backward:
            return "conv forward"
        if "BackpropFilter" in op_type or op_type == "BiasAddGrad":
            return "conv backward filter"
        return "conv backward data"
    if kind in ("batch norm",):
        return f"batch norm {'backward' if backward else 'forward'}"
    return kind


def profile_keras(trainer, model, step, steps: int) -> dict:
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    step(), step()  # warm-up: traces, allocator pools
    walls = timed(step, steps)
    space = xplane_pb2.XSpace()
    with tempfile.TemporaryDirectory(prefix="msunet-profile-") as logdir:
        tf.profiler.experimental.start(logdir)
        step()  # dropped below: the profiler slows the first traced step
        profiled = timed(step, steps)
        tf.profiler.experimental.stop()
        path = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]
        space.ParseFromString(pathlib.Path(path).read_bytes())
    plane = next(p for p in space.planes if p.name == "/host:CPU")
    runs = []  # (start, end) of each graph run, in ps
    for line in plane.lines:
        if line.name == "python":
            for e in line.events:
                if re.match(r"EagerLocalExecute: __inference_(one_step_on_data|multi_step_on_iterator)", plane.event_metadata[e.metadata_id].name):
                    start = line.timestamp_ns * 1000 + e.offset_ps
                    runs.append((start, start + e.duration_ps))
    runs.sort()
    first_end = runs[0][1]  # the first traced step is dropped
    graph_s = [(b - a) / 1e12 for a, b in runs[1:]]
    kinds = layer_kinds(model)
    by_family = collections.Counter()
    by_op = collections.Counter()
    by_layer = collections.Counter()  # conv ops per layer: which convolutions cost most
    for line in plane.lines:
        if not line.name.startswith("tf_Compute"):
            continue
        for e in line.events:
            meta = plane.event_metadata[e.metadata_id]
            if ":" not in meta.name or "::" in meta.name:
                continue
            if line.timestamp_ns * 1000 + e.offset_ps < first_end:
                continue
            name = meta.name.rsplit(":", 1)[0]
            seconds = e.duration_ps / 1e12
            by_family[tf_family(name, meta.display_name, kinds)] += seconds
            by_op[meta.display_name] += seconds
            if "Conv2D" in meta.display_name:
                by_layer[f"{layer_of(name, kinds) or '?'} {meta.display_name}"] += seconds
    n = len(graph_s)
    wall = statistics.median(walls)
    graph = statistics.median(graph_s)
    # Outside the graph: the traced steps' wall time minus their graph run (both under the profiler).
    return {"wall_s": wall, "profiled_wall_s": statistics.median(profiled), "graph_s": graph,
            "outside_graph_s": max(statistics.median(profiled) - graph, 0.0),
            "op_sum_s": sum(by_family.values()) / n,
            "families_s": {f: by_family[f] / n for f in FAMILIES},
            "top_ops_s": {k: v / n for k, v in by_op.most_common(25)},
            "top_conv_ops_by_layer_s": {k: v / n for k, v in by_layer.most_common(30)}}


def torch_family(name: str) -> str | None:
    n = name.lower()
    if not n.startswith("aten::"):
        return None
    if "conv" in n:
        return "conv backward data + filter" if "backward" in n else "conv forward"
    if "batch_norm" in n:
        return f"batch norm {'backward' if 'backward' in n else 'forward'}"
    if "pool" in n:
        return "pooling"
    if "relu" in n or "threshold" in n:
        return "activation"
    if n in ("aten::cat", "aten::slice", "aten::narrow", "aten::slice_backward"):
        return "concat / crop / upsample"
    if n in ("aten::_to_copy", "aten::copy_", "aten::to", "aten::_copy_from"):
        return "casts"
    if "foreach" in n or "adam" in n or "lerp" in n or "addcdiv" in n or "addcmul" in n:
        return "optimizer update"
    return "heads: losses + metrics"


def profile_torch(contender, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    contender.train_step(), contender.train_step()
    walls = timed(contender.train_step, steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            contender.train_step()
    families = collections.Counter()
    ops = collections.Counter()
    for event in prof.key_averages():
        family = torch_family(event.key)
        if family is None:
            continue
        seconds = event.self_cpu_time_total / 1e6
        families[family] += seconds
        ops[event.key] += seconds
    return {"wall_s": statistics.median(walls), "op_sum_s": sum(families.values()) / steps,
            "families_s": {f: v / steps for f, v in families.items()},
            "top_ops_s": {k: v / steps for k, v in ops.most_common(25)}}


def table(results: dict) -> str:
    names = list(results)
    families = FAMILIES[:1] + ["conv backward data + filter"] + FAMILIES[1:]
    rows = ["| op family | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for fam in families:
        cells = []
        for r in results.values():
            v = r["families_s"].get(fam)
            if fam == "conv backward data + filter" and v is None and "conv backward data" in r["families_s"]:
                v = r["families_s"]["conv backward data"] + r["families_s"]["conv backward filter"]
            cells.append("-" if v is None else f"{1000 * v:.0f} ms ({v / r['op_sum_s']:.0%})")
        rows.append(f"| {fam} | " + " | ".join(cells) + " |")
    rows.append("| **sum of op times** | " + " | ".join(f"{1000 * r['op_sum_s']:.0f} ms" for r in results.values()) + " |")
    rows.append("| outside the graph (Python, hand-off) | " + " | ".join(
        f"{1000 * r['outside_graph_s']:.0f} ms" if "outside_graph_s" in r else "-" for r in results.values()) + " |")
    rows.append("| **wall per step** (median) | " + " | ".join(f"{1000 * r['wall_s']:.0f} ms" for r in results.values()) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", default="mixed_bfloat16,float32")
    parser.add_argument("--bn", default="keras,fused", help="batch norm layers to profile: keras and/or fused")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny model, float32, no peers (a harness check)")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.smoke:
        args.precision, args.steps, args.batch, args.size, args.depth, args.filters = "float32", 2, 2, 32, 2, 4
        args.no_torch = True
    from speed import cpu_model_and_flags

    results = {}
    for precision in args.precision.split(","):
        for bn in args.bn.split(","):
            trainer, model, step = make_trainer(args.depth, args.filters, args.batch, args.size, precision, bn)
            label = f"msunet {'bf16' if 'bfloat16' in precision else precision}, {bn} BN"
            results[label] = profile_keras(trainer, model, step, args.steps)
            print(label, f"{args.batch / results[label]['wall_s']:.2f} img/s", flush=True)
    if not args.no_torch and importlib.util.find_spec("torch") is not None:
        from speed import TorchContender, torch_unet

        for bf16 in (True, False):
            label = f"PyTorch {'bf16 autocast' if bf16 else 'float32'}"
            contender = TorchContender(label, torch_unet(args.depth, args.filters), args.batch, args.size, bf16=bf16)
            results[label] = profile_torch(contender, args.steps)
            print(label, f"{args.batch / results[label]['wall_s']:.2f} img/s", flush=True)
    text = table(results)
    print(text)
    out = pathlib.Path(args.out) if args.out else pathlib.Path(__file__).parent / "results" / (
        f"train-profile-{datetime.date.today().isoformat()}.json")
    out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "cpu": cpu_model_and_flags(),
                               "setup": {**vars(args),
                                         "TF_NUM_INTEROP_THREADS": os.environ.get("TF_NUM_INTEROP_THREADS")},
                               "results": results, "table": text}, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
