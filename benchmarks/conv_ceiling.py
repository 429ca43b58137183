"""How fast msunet's training step could be against PyTorch's: every convolution of the U-Net, alone.

`benchmarks/speed.py`'s U-Net (depth 4, 32 filters, batch 8, 256x256x3) has 22 convolutions (encoder, bottleneck,
transposed-conv upsampling, decoder). For each, this script times forward + backward (filter gradient, and
the input gradient except for the first layer, whose input is the image) on TensorFlow (a `tf.function`
with a gradient tape, the variable cast to the compute dtype as Keras' mixed precision does) and on PyTorch
(channels-last, under bfloat16 autocast for bf16), alternated in one process, medians of `--repeats`; then
msunet's whole training step (`MultiScaleTrainer.train_on_batch`, graph, 4 heads) and the PyTorch peer's
(`speed.py`'s U-Net, one head) alternated the same way, first (the per-layer runs left PyTorch's whole step
~1.5x slower when they came before it in the same process).

What it tells: the sum of TensorFlow's convolutions is a floor under msunet's step on this CPU (the rest,
batch norm, activations, pooling, heads, optimizer, only adds), so `PyTorch step / TensorFlow conv sum` is
the best ratio msunet could reach against the peer with TensorFlow's kernels, whatever msunet does around
them. Issue 27 asks for 1.2x.

Run alone: `.venv-bench/bin/python benchmarks/conv_ceiling.py [--precision bf16|float32] [--repeats 5]`
(writes `benchmarks/results/conv-ceiling-<date>-<precision>.json`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def unet_convs(depth: int, filters: int, size: int, channels: int = 3) -> list[tuple]:
    """(name, kind, input side, in channels, out channels, first) of every conv of speed.py's U-Net."""
    f = [filters * 2**i for i in range(depth + 1)]
    out, cin = [], channels
    for i in range(depth):
        side = size // 2**i
        out += [(f"enc{i}_conv1", "conv", side, cin, f[i], i == 0), (f"enc{i}_conv2", "conv", side, f[i], f[i], False)]
        cin = f[i]
    side = size // 2**depth
    out += [("bottleneck_conv1", "conv", side, f[depth - 1], f[depth], False),
            ("bottleneck_conv2", "conv", side, f[depth], f[depth], False)]
    for i in reversed(range(depth)):
        side = size // 2**i
        out += [(f"dec{i}_up", "transpose", side // 2, f[i + 1], f[i], False),
                (f"dec{i}_conv1", "conv", side, 2 * f[i], f[i], False), (f"dec{i}_conv2", "conv", side, f[i], f[i], False)]
    return out


def tf_conv(kind, side, cin, cout, first, batch, bf16, rng):
    import tensorflow as tf

    dtype = tf.bfloat16 if bf16 else tf.float32
    x = tf.constant(rng.random((batch, side, side, cin), dtype=np.float32), dtype=dtype)
    shape = (3, 3, cin, cout) if kind == "conv" else (2, 2, cout, cin)
    w = tf.Variable(rng.random(shape, dtype=np.float32) * 0.01)
    out_side = side if kind == "conv" else 2 * side
    dy = tf.constant(rng.random((batch, out_side, out_side, cout), dtype=np.float32), dtype=dtype)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            kernel = tf.cast(w, dtype)
            if kind == "conv":
                y = tf.nn.conv2d(x, kernel, 1, "SAME")
            else:
                y = tf.nn.conv2d_transpose(x, kernel, [batch, out_side, out_side, cout], 2, "SAME")
            loss = tf.reduce_sum(tf.cast(y * dy, tf.float32))  # its gradient wrt y is dy
        grads = tape.gradient(loss, [w] if first else [w, x])
        return [tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads]

    return lambda: [g.numpy() for g in step()]


def torch_conv(kind, side, cin, cout, first, batch, bf16, rng):
    import torch

    dtype = torch.bfloat16 if bf16 and not first else torch.float32  # autocast hands bf16 activations on
    x = torch.from_numpy(rng.random((batch, cin, side, side), dtype=np.float32)).to(dtype).contiguous(
        memory_format=torch.channels_last).requires_grad_(not first)
    layer = (torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False) if kind == "conv"
             else torch.nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)).to(memory_format=torch.channels_last)
    out_side = side if kind == "conv" else 2 * side
    dy = torch.from_numpy(rng.random((batch, cout, out_side, out_side), dtype=np.float32)).contiguous(
        memory_format=torch.channels_last)

    def step():
        x.grad = None
        layer.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer(x)
        y.backward(dy.to(y.dtype))

    return step


def alternate(fns: dict, repeats: int) -> dict:
    for fn in fns.values():
        fn()
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", choices=("bf16", "float32"), default="bf16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import torch
    from speed import TorchContender, cpu_model_and_flags, torch_unet

    from msunet.config import RunConfig
    from msunet.data.targets import multiscale_targets
    from msunet.models import build_model
    from msunet.training.probe import tensorflow_kernels
    from msunet.training.trainer import MultiScaleTrainer, make_optimizer

    torch.set_num_threads(os.cpu_count() or 1)
    bf16 = args.precision == "bf16"
    depth, filters, size, batch = 4, 32, 256, 8
    rng = np.random.default_rng(0)
    run = RunConfig().override([f"model.depth={depth}", f"model.filters={filters}", "train.compiler=graph",
                                f"model.precision={'mixed_bfloat16' if bf16 else 'float32'}"])
    x = rng.random((batch, size, size, 3), dtype=np.float32)
    per = [multiscale_targets((rng.random((size, size)) > 0.7).astype(np.int16), run.model) for _ in range(batch)]
    y = {n: np.stack([p[n] for p in per]) for n in run.model.head_names}
    trainer = MultiScaleTrainer(build_model(run.model), run)
    trainer.compile(optimizer=make_optimizer(run, 10_000))
    peer = TorchContender("torch", torch_unet(depth, filters), batch, size, bf16=bf16)
    steps = alternate({"msunet": lambda: trainer.train_on_batch(x, y), "torch": peer.train_step}, args.repeats)

    convs = unet_convs(depth, filters, size)
    fns = {}
    for name, kind, side, cin, cout, first in convs:
        fns[("tensorflow", name)] = tf_conv(kind, side, cin, cout, first, batch, bf16, rng)
        fns[("torch", name)] = torch_conv(kind, side, cin, cout, first, batch, bf16, rng)
    per_layer = alternate(fns, args.repeats)

    tf_sum = sum(per_layer[("tensorflow", c[0])] for c in convs)
    torch_sum = sum(per_layer[("torch", c[0])] for c in convs)
    summary = {
        "tensorflow conv fwd+bwd sum, s": tf_sum, "torch conv fwd+bwd sum, s": torch_sum,
        "tensorflow / torch conv sum": tf_sum / torch_sum,
        "msunet step, s": steps["msunet"], "torch step, s": steps["torch"],
        "msunet / torch images per second": steps["torch"] / steps["msunet"],
        "convs' share of msunet's step": tf_sum / steps["msunet"],
        "convs' share of torch's step": torch_sum / steps["torch"],
        "ceiling: torch step / tensorflow conv sum": steps["torch"] / tf_sum,
        "msunet step for 1.2x, s": steps["torch"] / 1.2,
    }
    layers = {c[0]: {"tensorflow_s": per_layer[("tensorflow", c[0])], "torch_s": per_layer[("torch", c[0])],
                     "ratio": per_layer[("tensorflow", c[0])] / per_layer[("torch", c[0])]} for c in convs}
    for name, row in layers.items():
        print(f"{name:18s} tensorflow {row['tensorflow_s'] * 1e3:7.1f} ms  torch {row['torch_s'] * 1e3:7.1f} ms  "
              f"ratio {row['ratio']:.2f}")
    for key, value in summary.items():
        print(f"{key}: {value:.3f}")
    record = {"date": datetime.date.today().isoformat(), "cpu": cpu_model_and_flags(), "precision": args.precision,
              "tensorflow_kernels": tensorflow_kernels().strip(), "torch": torch.__version__,
              "shape": {"depth": depth, "filters": filters, "size": size, "batch": batch}, "repeats": args.repeats,
              "summary": summary, "layers": layers}
    path = pathlib.Path(args.out) if args.out else HERE / "results" / f"conv-ceiling-{record['date']}-{args.precision}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
