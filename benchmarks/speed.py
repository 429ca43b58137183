"""Speed side by side: msunet (Keras, default backend) vs a native PyTorch U-Net vs MONAI BasicUNet.

One process, contenders alternated in every repeat, medians with min/max; ratios are what to quote
on a shared, noisy machine. Contenders: msunet in its default precision ("auto": mixed_bfloat16 on
a CPU with bfloat16 instructions), the same msunet model in float32, the native PyTorch U-Net in
float32 and under bfloat16 autocast, MONAI BasicUNet, and for inference the exported bundle's
network on ONNX Runtime (float32; `msunet export`, what `msunet predict --model BUNDLE` runs), on
OpenVINO (its default precision), on ONNX Runtime in int8 (`--int8`) and on LiteRT (`--format litert`). Rows:
- train images/s (batch 8, 256x256x3; msunet with its 4 deep-supervision heads and Dice+CE, the
  peers with one head and Dice+BCE);
- inference images/s at batch 1 and 8 (msunet: the "mask" head alone, as `predict` computes it);
- tiled prediction of a 2048x2048 image, Mpx/s: msunet `predict_tiled` vs MONAI
  `sliding_window_inference` (tile 256, overlap 0.25, Gaussian blending sigma = tile/8, batch 8),
  each around the model of its framework with the same architecture, and vs msunet's raw model
  on the same number of tiles (what tiling itself costs);
- data wait: share of the `fit` step spent waiting for `PatchDataset` (DRIVE training images,
  patch sampling + augmentation + multi-scale targets in 2 threads) vs the same batches in memory;
- achieved GFLOP/s of msunet training and inference (FLOPs counted analytically from the layer
  shapes) against the best GFLOP/s of a single conv layer, in the same precision, measured in the
  same process.
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
from msunet.data.targets import multiscale_targets
from msunet.models import build_model, resolve_precision, select_outputs
from msunet.runtime.tiling import predict_tiled, window_starts
from msunet.training.trainer import MultiScaleTrainer, make_optimizer

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("tf2onnx") is not None
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


def conv_ceiling(batch: int, size: int, repeats: int, dtype: str = "float32") -> float:
    """Best GFLOP/s of one 3x3 conv in Keras over a few widths (64..256 channels, the U-Net's middle
    levels), in `dtype` ("float32" or "mixed_bfloat16"): the machine's practical ceiling here."""
    best = 0.0
    for channels, side in ((64, size), (128, max(size // 2, 8)), (256, max(size // 4, 8))):
        layer = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, dtype=dtype)
        x = keras.ops.convert_to_tensor(
            np.random.default_rng(0).random((batch, side, side, channels), dtype=np.float32))
        keras.ops.convert_to_numpy(layer(x))
        flops = 2.0 * batch * side * side * 9 * channels * channels
        for _ in range(repeats):
            start = time.perf_counter()
            keras.ops.convert_to_numpy(layer(x))
            best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


# --------------------------------------------------------------------------------------------------
# PyTorch peers
# --------------------------------------------------------------------------------------------------
def torch_unet(depth: int, filters: int, in_channels: int = 3):
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
            self.enc = nn.ModuleList([block(in_channels if i == 0 else f[i - 1], f[i]) for i in range(depth)])
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
    """A PyTorch network's training step and inference; `bf16` runs both under CPU autocast to bfloat16."""

    def __init__(self, name, net, batch, size, bf16=False, channels=3):
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        self.name, self.net, self.torch, self.bf16 = name, net, torch, bf16
        rng = np.random.default_rng(0)
        self.x = torch.from_numpy(rng.random((batch, channels, size, size), dtype=np.float32)).to(memory_format=torch.channels_last)
        self.y = torch.from_numpy((rng.random((batch, 1, size, size)) > 0.7).astype(np.float32))
        self.opt = torch.optim.AdamW(net.parameters(), 1e-3)
        self.params = sum(p.numel() for p in net.parameters())

    def autocast(self):
        return self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.bf16)

    def train_step(self):
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.net(self.x)
        loss = torch_dice_bce(logits.float(), self.y)
        loss.backward()
        self.opt.step()

    def infer(self, batch):
        self.net.eval()
        with self.torch.inference_mode(), self.autocast():
            return self.net(self.x[:batch])


# --------------------------------------------------------------------------------------------------
def data_wait(run, size: int, batch: int, smoke: bool) -> dict:
    """`data_pipeline.measure_data_wait` on DRIVE's training images (synthetic ones without ../shared)."""
    import tempfile

    from data_pipeline import SHARED, measure_data_wait
    from msunet.data.pairs import find_pairs, split_pairs
    from msunet.data.samples import load_samples
    from msunet.data.synthetic import make_dataset

    cfg = run.override([f"data.patch_size={size}", f"train.batch_size={batch}"])
    with tempfile.TemporaryDirectory() as tmp:
        if (SHARED / "drive").is_dir() and not smoke:
            folder, source = SHARED / "drive", "DRIVE training images"
        else:
            folder = make_dataset(pathlib.Path(tmp) / "synth", count=8, size=(2 * size, 2 * size), seed=0)
            source = "synthetic images"
        index = find_pairs(folder, cfg.data)
        samples = load_samples(split_pairs(index, cfg.data)["train"], cfg.data, cfg.model, [])
        result = measure_data_wait(cfg, samples, steps=3 if smoke else 10, rounds=1 if smoke else 2)
    return {"source": source, **result}


def timed(fn, repeats):
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def cpu_model_and_flags() -> dict:
    """The CPU's model name and the flags that decide bf16 / int8 speed (Linux; empty elsewhere)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
    return {"model": model, "flags": [f for f in wanted if f in flags]}


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
    precision = resolve_precision(run.model.precision)
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 3), dtype=np.float32)
    per = [multiscale_targets((rng.random((size, size)) > 0.7).astype(np.int16), run.model) for _ in range(batch)]
    y = {n: np.stack([p[n] for p in per]) for n in run.model.head_names}

    def keras_contender(cfg):
        model = build_model(cfg.model)
        trainer = MultiScaleTrainer(model, cfg)
        trainer.compile(optimizer=make_optimizer(cfg, 10_000))
        infer_model = select_outputs(model, ["mask"])
        return (model, infer_model, (lambda: trainer.train_on_batch(x, y)),
                (lambda b: lambda: infer_model.predict_on_batch(x[:b])))

    model, infer_model, msunet_train, msunet_infer = keras_contender(run)
    keras_rows = {"msunet": (msunet_train, msunet_infer)}
    if precision != "float32":  # what the default precision buys: the same model in float32
        _, _, train32, infer32 = keras_contender(run.override(["model.precision=float32"]))
        keras_rows["msunet_float32"] = (train32, infer32)

    contenders = {}
    skipped = {}
    ort_session = ov_session = ov_precision = int8_session = litert_session = None
    if HAVE_ORT:  # the bundle's network: float32, the "mask" head, dynamic shapes, ONNX Runtime
        import tempfile

        float32 = build_model(run.model.replace(precision="float32"))
        float32.set_weights(model.get_weights())
        mask_only = select_outputs(float32, ["mask"])
        mask_only.predict_on_batch(x[:1])
        onnx_path = os.path.join(tempfile.mkdtemp(prefix="msunet-speed-"), "model.onnx")
        mask_only.export(onnx_path, format="onnx", verbose=False)
        from msunet.runtime.sessions import onnx_session  # the runtime's session options

        ort_session = onnx_session(pathlib.Path(onnx_path), None)
        ort_input = ort_session.get_inputs()[0].name
        ort_infer = lambda b: lambda: ort_session.run(["mask"], {ort_input: x[:b]})  # noqa: E731
        if importlib.util.find_spec("openvino") is not None:  # the same ONNX file, OpenVINO's own precision choice
            from msunet.runtime.sessions import OpenVINOSession

            ov_session = OpenVINOSession(pathlib.Path(onnx_path), None, None)
            ov_precision = ov_session.precision
            ov_infer = lambda b: lambda: ov_session.run(["mask"], {"image": x[:b]})  # noqa: E731
        else:
            ov_session = None
            skipped["msunet_openvino"] = "openvino is not installed (pip install 'msunet[openvino]')"
        # `msunet export --int8`: the same graph quantized (static QDQ; calibration values do not change its speed).
        from msunet.exporting.quantize import quantize_int8

        int8_path = pathlib.Path(onnx_path).with_name("int8.onnx")
        int8_path.write_bytes(pathlib.Path(onnx_path).read_bytes())
        quantize_int8(int8_path, x[:8])
        int8_session = onnx_session(int8_path, None)
        int8_infer = lambda b: lambda: int8_session.run(["mask"], {ort_input: x[:b]})  # noqa: E731
        if importlib.util.find_spec("ai_edge_litert") is not None:  # `msunet export --format litert`
            from msunet.runtime.sessions import LiteRTSession

            litert_path = pathlib.Path(onnx_path).with_name("model.tflite")
            mask_only.export(str(litert_path), format="litert", verbose=False)
            litert_session = LiteRTSession(litert_path, None, [{"name": "mask", "scale": 1}])
            litert_infer = lambda b: lambda: litert_session.run(["mask"], {"image": x[:b]})  # noqa: E731
        else:
            skipped["msunet_litert"] = "ai-edge-litert is not installed (pip install 'msunet[litert]')"
    else:
        skipped["msunet_onnxruntime"] = "onnxruntime or tf2onnx is not installed (pip install 'msunet[export]')"
    if HAVE_TORCH:
        contenders["torch_unet"] = TorchContender("torch_unet", torch_unet(depth, filters), batch, size)
        if not args.smoke:
            contenders["torch_unet_bf16"] = TorchContender("torch_unet_bf16", torch_unet(depth, filters), batch, size,
                                                           bf16=True)
    else:
        skipped["torch_unet"] = "torch is not installed (make bench-env)"
    if HAVE_MONAI and not args.smoke:
        contenders["monai_basicunet"] = TorchContender("monai_basicunet", monai_unet(), batch, size)
    else:
        skipped["monai_basicunet"] = "monai is not installed (make bench-env)" if not HAVE_MONAI else "not in --smoke"

    ops = {
        "train": {name: t for name, (t, _) in keras_rows.items()},
        "infer_b1": {name: i(1) for name, (_, i) in keras_rows.items()},
        f"infer_b{batch}": {name: i(batch) for name, (_, i) in keras_rows.items()},
    }
    engines = {"msunet_onnxruntime": (ort_session, lambda b: ort_infer(b)),
               "msunet_openvino": (ov_session, lambda b: ov_infer(b)),
               "msunet_onnxruntime_int8": (int8_session, lambda b: int8_infer(b)),
               "msunet_litert": (litert_session, lambda b: litert_infer(b))}
    for name, (session, infer) in engines.items():
        if session is not None:
            ops["infer_b1"][name] = infer(1)
            ops[f"infer_b{batch}"][name] = infer(batch)
    for name, c in contenders.items():
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
    # The raw model on the same number of tiles, in batches of the same size: the ceiling of tiling.
    n_tiles = len(window_starts(tiled, tile, 0.25)) ** 2
    tile_batch = rng.random((batch, tile, tile, 3), dtype=np.float32)

    def raw_tiles():
        for start in range(0, n_tiles, batch):
            fn(tile_batch[: min(batch, n_tiles - start)])

    tiled_rows["msunet_raw_model_same_tiles"] = raw_tiles
    if ort_session is not None:
        ort_fn = lambda b: ort_session.run(["mask"], {ort_input: b})[0]  # noqa: E731
        tiled_rows["msunet_onnxruntime_predict_tiled"] = lambda: predict_tiled(ort_fn, image, tile, 0.25, batch)
    if ov_session is not None:
        ov_fn = lambda b: ov_session.run(["mask"], {"image": b})[0]  # noqa: E731
        tiled_rows["msunet_openvino_predict_tiled"] = lambda: predict_tiled(ov_fn, image, tile, 0.25, batch)
    if int8_session is not None:
        int8_fn = lambda b: int8_session.run(["mask"], {ort_input: b})[0]  # noqa: E731
        tiled_rows["msunet_onnxruntime_int8_predict_tiled"] = lambda: predict_tiled(int8_fn, image, tile, 0.25, batch)
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

    # Data pipeline: share of the fit step spent waiting for PatchDataset (vs the same batches in memory).
    wait = data_wait(run, size, batch, smoke=args.smoke)

    # Achieved GFLOP/s vs a single conv's ceiling, in the precision msunet runs in.
    forward = conv_flops(run.model, size)
    ceilings = {"float32": conv_ceiling(batch, min(size, 128), max(3, repeats))}
    if precision != "float32":
        ceilings[precision] = conv_ceiling(batch, min(size, 128), max(3, repeats), precision)
    ceiling = ceilings[precision]
    train_gflops = 3 * forward * table["train"]["msunet"]["median"] / 1e9  # forward + 2x backward
    infer_gflops = forward * table[f"infer_b{batch}"]["msunet"]["median"] / 1e9
    ratios = {}
    for row in ("train", "infer_b1", f"infer_b{batch}"):
        for peer in ("msunet_float32", "torch_unet", "torch_unet_bf16", "monai_basicunet"):
            if peer in table[row]:
                ratios[f"{row}: msunet / {peer}"] = table[row]["msunet"]["median"] / table[row][peer]["median"]
        for engine in ("msunet_onnxruntime", "msunet_openvino", "msunet_onnxruntime_int8", "msunet_litert"):
            for peer in ("msunet", "torch_unet", "torch_unet_bf16"):
                if engine in table[row] and peer in table[row]:
                    ratios[f"{row}: {engine} / {peer}"] = table[row][engine]["median"] / table[row][peer]["median"]
    t = table["tiled_mpx_per_s"]
    ratios["tiled: msunet predict_tiled / raw model on the same tiles"] = (
        t["msunet_predict_tiled"]["median"] / t["msunet_raw_model_same_tiles"]["median"])
    if "monai_sliding_window" in t:
        ratios["tiled: msunet predict_tiled / monai sliding_window"] = (
            t["msunet_predict_tiled"]["median"] / t["monai_sliding_window"]["median"])
        for engine in ("onnxruntime", "openvino", "onnxruntime_int8"):
            if f"msunet_{engine}_predict_tiled" in t:
                ratios[f"tiled: msunet {engine} predict_tiled / monai sliding_window"] = (
                    t[f"msunet_{engine}_predict_tiled"]["median"] / t["monai_sliding_window"]["median"])
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cpu": cpu_model_and_flags(),
        "backend": keras.backend.backend(),
        "smoke": args.smoke,
        "setup": {"image": size, "batch": batch, "depth": depth, "filters": filters, "tiled_image": tiled,
                  "repeats": repeats},
        "msunet_precision": precision,
        "openvino_precision": ov_precision,
        "parameters": {"msunet": model.count_params(), **{n: c.params for n, c in contenders.items()}},
        "forward_gflop_per_image": forward / 1e9,
        "conv_ceiling_gflops": ceiling,
        "conv_ceiling_gflops_by_precision": ceilings,
        "data_pipeline": wait,
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
    print(f"data wait {wait['data_wait_fraction']:.1%} of the fit step ({wait['source']})")
    print(f"GFLOP/image {forward / 1e9:.1f}; conv ceiling {ceiling:.0f} GFLOP/s ({precision}); msunet train {train_gflops:.0f} "
          f"({train_gflops / ceiling:.0%}), infer {infer_gflops:.0f} ({infer_gflops / ceiling:.0%}); skipped: {skipped}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
