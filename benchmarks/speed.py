"""Speed side by side: msunet (Keras, default backend) vs a native PyTorch U-Net vs MONAI BasicUNet.

One process, contenders alternated in every repeat, medians with min/max; ratios are what to quote
on a shared, noisy machine. Rows:
- train images/s (batch 8, 256x256x3; msunet with its 4 deep-supervision heads and Dice+CE, the
  peers with one head and Dice+BCE);
- inference images/s at batch 1 and 8 (msunet: the "mask" head alone, as `predict` computes it);
- tiled prediction of a 2048x2048 image, Mpx/s: msunet `predict_tiled` vs MONAI
  `sliding_window_inference` (tile 256, overlap 0.25, Gaussian blending sigma = tile/8, batch 8),
  each around the model of its framework with the same architecture;
- achieved GFLOP/s of msunet training and inference (FLOPs counted analytically from the layer
  shapes) against the best GFLOP/s of a single conv layer measured in the same process.
The peers live in a separate environment (`make bench-env`: CPU torch 2.13.0 + monai); missing
peers are reported as skipped. `--smoke` runs everything tiny, once (used by `make test`).

Run: `make bench-speed` (or `.venv-bench/bin/python benchmarks/speed.py [--repeats 5]`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import time

import keras
import numpy as np

from msunet.config import RunConfig
from msunet.data import multiscale_targets
from msunet.models import build_model, select_outputs
from msunet.tiling import predict_tiled
from msunet.train import MultiScaleTrainer, _optimizer

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_MONAI = HAVE_TORCH and importlib.util.find_spec("monai") is not None


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------
def conv_flops(cfg, size: int) -> float:
    """Forward FLOPs (2 x multiply-adds) of the conv and transposed-conv layers for one image."""
    fixed = build_model(cfg.replace(input_size=(size, size)))  # static shapes to read off each layer
    total = 0.0
    for layer in fixed.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            h, w = layer.input.shape[1:3]
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += 2.0 * h * w * k * layer.input.shape[-1] * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            h, w = layer.output.shape[1:3]
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += 2.0 * h * w * k * layer.input.shape[-1] * layer.filters
    return total


def conv_ceiling(batch: int, size: int, repeats: int) -> float:
    """Best GFLOP/s of one 3x3 conv (64 -> 64 channels) in Keras, the machine's practical ceiling here."""
    layer = keras.layers.Conv2D(64, 3, padding="same", use_bias=False)
    x = keras.ops.convert_to_tensor(np.random.default_rng(0).random((batch, size, size, 64), dtype=np.float32))
    layer(x)
    flops = 2.0 * batch * size * size * 9 * 64 * 64
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(layer(x))
        best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


# --------------------------------------------------------------------------------------------------
# PyTorch peers
# --------------------------------------------------------------------------------------------------
def torch_unet(depth: int, filters: int):
    """The msunet default architecture in plain PyTorch: (conv3x3-BN-ReLU) x2 blocks, max-pool,
    2x2 transposed-conv upsampling, concatenation, 1x1 head."""
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=0.1),
                             nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                             nn.BatchNorm2d(cout, momentum=0.1), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            f = [filters * 2**i for i in range(depth + 1)]
            self.enc = nn.ModuleList([block(3 if i == 0 else f[i - 1], f[i]) for i in range(depth)])
            self.bottleneck = block(f[depth - 1], f[depth])
            self.up = nn.ModuleList([nn.ConvTranspose2d(f[i + 1], f[i], 2, stride=2) for i in range(depth)])
            self.dec = nn.ModuleList([block(2 * f[i], f[i]) for i in range(depth)])
            self.head = nn.Conv2d(f[0], 1, 1)

        def forward(self, x):
            skips = []
            for enc in self.enc:
                x = enc(x)
                skips.append(x)
                x = torch.nn.functional.max_pool2d(x, 2)
            x = self.bottleneck(x)
            for i in reversed(range(len(self.enc))):
                x = self.dec[i](torch.cat([self.up[i](x), skips[i]], dim=1))
            return self.head(x)

    return UNet().to(memory_format=torch.channels_last)


def monai_unet():
    from monai.networks.nets import BasicUNet

    import torch

    return BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=(32, 64, 128, 256, 512, 32)).to(
        memory_format=torch.channels_last)


def torch_dice_bce(logits, target):
    import torch

    probs = torch.sigmoid(logits)
    inter = (probs * target).sum()
    dice = 1 - (2 * inter + 1) / (probs.sum() + target.sum() + 1)
    return dice + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


class TorchContender:
    def __init__(self, name, net, batch, size):
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        self.name, self.net, self.torch = name, net, torch
        rng = np.random.default_rng(0)
        self.x = torch.from_numpy(rng.random((batch, 3, size, size), dtype=np.float32)).to(memory_format=torch.channels_last)
        self.y = torch.from_numpy((rng.random((batch, 1, size, size)) > 0.7).astype(np.float32))
        self.opt = torch.optim.AdamW(net.parameters(), 1e-3)
        self.params = sum(p.numel() for p in net.parameters())

    def train_step(self):
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        loss = torch_dice_bce(self.net(self.x), self.y)
        loss.backward()
        self.opt.step()

    def infer(self, batch):
        self.net.eval()
        with self.torch.inference_mode():
            return self.net(self.x[:batch])


# --------------------------------------------------------------------------------------------------
def timed(fn, repeats):
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def stats(samples, per):
    """Throughput from per-call times: median, min, max of `per / t`."""
    rates = sorted(per / t for t in samples)
    return {"median": statistics.median(rates), "min": rates[0], "max": rates[-1], "n": len(rates)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (a harness check)")
    parser.add_argument("--out", help="results JSON path (default benchmarks/results/speed-<date>.json)")
    args = parser.parse_args()
    if args.smoke:
        size, batch, depth, filters, tiled, repeats = 32, 2, 2, 4, 64, 1
    else:
        size, batch, depth, filters, tiled, repeats = 256, 8, 4, 32, 2048, args.repeats

    run = RunConfig().override([f"model.depth={depth}", f"model.filters={filters}"])
    model = build_model(run.model)
    trainer = MultiScaleTrainer(model, run)
    trainer.compile(optimizer=_optimizer(run, 10_000))
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 3), dtype=np.float32)
    per = [multiscale_targets((rng.random((size, size)) > 0.7).astype(np.int16), run.model) for _ in range(batch)]
    y = {n: np.stack([p[n] for p in per]) for n in run.model.head_names}
    infer_model = select_outputs(model, ["mask"])

    contenders = {"msunet": None}
    skipped = {}
    if HAVE_TORCH:
        contenders["torch_unet"] = TorchContender("torch_unet", torch_unet(depth, filters), batch, size)
    else:
        skipped["torch_unet"] = "torch is not installed (make bench-env)"
    if HAVE_MONAI and not args.smoke:
        contenders["monai_basicunet"] = TorchContender("monai_basicunet", monai_unet(), batch, size)
    else:
        skipped["monai_basicunet"] = "monai is not installed (make bench-env)" if not HAVE_MONAI else "not in --smoke"

    def msunet_train():
        trainer.train_on_batch(x, y)

    def msunet_infer(b):
        return lambda: infer_model.predict_on_batch(x[:b])

    ops = {
        "train": {"msunet": msunet_train},
        "infer_b1": {"msunet": msunet_infer(1)},
        f"infer_b{batch}": {"msunet": msunet_infer(batch)},
    }
    for name, c in contenders.items():
        if c is None:
            continue
        ops["train"][name] = c.train_step
        ops["infer_b1"][name] = (lambda c=c: c.infer(1))
        ops[f"infer_b{batch}"][name] = (lambda c=c: c.infer(batch))
    for row in ops.values():  # warm-up: traces, allocator pools
        for fn in row.values():
            fn()
            fn()
    results = {row: {name: [] for name in fns} for row, fns in ops.items()}
    for _ in range(repeats):  # alternate the contenders inside each repeat
        for row, fns in ops.items():
            for name, fn in fns.items():
                results[row][name] += timed(fn, 1)
    table = {}
    for row, by_name in results.items():
        images = batch if row in ("train", f"infer_b{batch}") else 1
        table[row] = {name: stats(samples, images) for name, samples in by_name.items()}

    # Tiled prediction: msunet predict_tiled vs MONAI sliding_window_inference, same tile/overlap/blend.
    image = rng.random((tiled, tiled, 3), dtype=np.float32)
    tile = min(256, tiled)
    fn = lambda b: infer_model.predict_on_batch(b)  # noqa: E731
    tiled_rows = {"msunet_predict_tiled": lambda: predict_tiled(fn, image, tile, 0.25, batch)}
    if HAVE_MONAI:
        import torch
        from monai.inferers import sliding_window_inference

        net = contenders["torch_unet"].net.eval()
        timage = torch.from_numpy(image.transpose(2, 0, 1)[None].copy())

        def monai_tiled():
            with torch.inference_mode():
                sliding_window_inference(timage, (tile, tile), batch, net, overlap=0.25, mode="gaussian",
                                         sigma_scale=0.125)

        tiled_rows["monai_sliding_window"] = monai_tiled
    else:
        skipped["monai_sliding_window"] = "monai is not installed (make bench-env)"
    for f in tiled_rows.values():
        f()
    tiled_samples = {k: [] for k in tiled_rows}
    for _ in range(max(1, repeats // 2)):
        for k, f in tiled_rows.items():
            tiled_samples[k] += timed(f, 1)
    table["tiled_mpx_per_s"] = {k: stats(v, tiled * tiled / 1e6) for k, v in tiled_samples.items()}

    # Achieved GFLOP/s vs a single conv's ceiling.
    forward = conv_flops(run.model, size)
    ceiling = conv_ceiling(batch, min(size, 128), max(3, repeats))
    train_gflops = 3 * forward * table["train"]["msunet"]["median"] / 1e9  # forward + 2x backward
    infer_gflops = forward * table[f"infer_b{batch}"]["msunet"]["median"] / 1e9
    ratios = {}
    for row in ("train", "infer_b1", f"infer_b{batch}"):
        for peer in ("torch_unet", "monai_basicunet"):
            if peer in table[row]:
                ratios[f"{row}: msunet / {peer}"] = table[row]["msunet"]["median"] / table[row][peer]["median"]
    if "monai_sliding_window" in table["tiled_mpx_per_s"]:
        t = table["tiled_mpx_per_s"]
        ratios["tiled: msunet predict_tiled / monai sliding_window"] = (
            t["msunet_predict_tiled"]["median"] / t["monai_sliding_window"]["median"])
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "backend": keras.backend.backend(),
        "smoke": args.smoke,
        "setup": {"image": size, "batch": batch, "depth": depth, "filters": filters, "tiled_image": tiled,
                  "repeats": repeats},
        "parameters": {"msunet": model.count_params(),
                       **{n: c.params for n, c in contenders.items() if c is not None}},
        "forward_gflop_per_image": forward / 1e9,
        "conv_ceiling_gflops": ceiling,
        "achieved_gflops": {"train": train_gflops, "infer": infer_gflops,
                            "train_fraction_of_ceiling": train_gflops / ceiling,
                            "infer_fraction_of_ceiling": infer_gflops / ceiling},
        "throughput": table,
        "ratios": ratios,
        "skipped": skipped,
    }
    out = pathlib.Path(args.out) if args.out else pathlib.Path(__file__).parent / "results" / (
        f"speed-{result['date']}{'-smoke' if args.smoke else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'row':52} {'ratio':>7}")
    for key, value in ratios.items():
        print(f"{key:52} {value:7.2f}")
    for row, by_name in table.items():
        print(row + ": " + ", ".join(f"{n} {s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]" for n, s in by_name.items()))
    print(f"GFLOP/image {forward / 1e9:.1f}; conv ceiling {ceiling:.0f} GFLOP/s; msunet train {train_gflops:.0f} "
          f"({train_gflops / ceiling:.0%}), infer {infer_gflops:.0f} ({infer_gflops / ceiling:.0%}); skipped: {skipped}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
