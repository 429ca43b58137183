"""3-D training and inference speed: msunet's volume U-Net against MONAI's 3-D UNet, in one process.

`python benchmarks/volume_speed.py [--rounds 5] [--smoke]` (peers from `make bench-env`: CPU torch +
monai). The shapes are the plan for MSD Hippocampus on a CPU (`msunet.plan.volumes` + the probe): 40^3
cubes, one channel, 3 classes, depth 3, 16 filters (16-32-64-128), batch 2, group normalisation, every
head trained. Contenders, alternated round by round (the machine is shared and noisy; medians and ratios):

- `msunet`: `MultiScaleTrainer.train_on_batch` (Keras 3, TensorFlow, graph, float32), 3 heads;
- `torch_unet3d`: the same U-Net in plain PyTorch (two conv-GN-ReLU a level, max-pool, transposed conv,
  one head), MONAI's Dice + cross-entropy, AdamW;
- `monai_basicunet`: `monai.networks.nets.BasicUNet(spatial_dims=3, features=(16, 32, 64, 128, 256, 16))`, its
  classic U-Net, whose depth is fixed at 4 (one level more than the plan). MONAI's `UNet` is left out: its
  blocks are one strided conv a level, a much smaller network than a U-Net of these widths;
- inference: a 35x50x36 volume (the median) in 40^3 windows with 50% overlap and Gaussian blending:
  `msunet.runtime.tiling.predict_tiled` over the Keras model, and over the same model's ONNX bundles
  (`msunet_bundle_float32`, `msunet_bundle_int8` on ONNX Runtime: what `msunet predict` runs; inference
  only), vs `monai.inferers.sliding_window_inference`.

Writes `benchmarks/results/volumes/speed.json` (voxels/s medians, ratios, the CPU model and flags).
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import cpu_model_and_flags  # noqa: E402

PATCH, BATCH, CLASSES, FILTERS, DEPTH = 40, 2, 3, 16, 3
VOLUME = (35, 50, 36)
BF16 = False  # --bf16: msunet in mixed_bfloat16 (what the probe chooses on an AVX512-BF16 CPU), PyTorch in bf16 autocast


def msunet_contender():
    import keras

    from msunet.config import RunConfig
    from msunet.data.targets import batch_targets
    from msunet.models import build_model, output_names
    from msunet.training.trainer import MultiScaleTrainer, make_optimizer

    run = RunConfig().override([f"model.dims=3", "model.in_channels=1", f"model.num_classes={CLASSES}",
                                f"model.depth={DEPTH}", f"model.filters={FILTERS}", "model.norm=group",
                                f"model.precision={'mixed_bfloat16' if BF16 else 'float32'}",
                                f"data.patch_size={PATCH}", f"train.batch_size={BATCH}"])
    model = build_model(run.model)
    trainer = MultiScaleTrainer(model, run)
    trainer.compile(optimizer=make_optimizer(run, 1000))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, PATCH, PATCH, PATCH, 1)).astype(np.float32)
    masks = [rng.integers(0, CLASSES, (PATCH, PATCH, PATCH)).astype(np.int16) for _ in range(BATCH)]
    y = batch_targets(masks, run.model, "average")
    heads = output_names(model)

    def train():
        trainer.train_on_batch(x, y)

    from msunet.inference.keras_engine import make_predict_fn
    from msunet.runtime.tiling import predict_tiled

    fn = make_predict_fn(model, ["mask"], batch_size=BATCH)
    volume = rng.standard_normal((*VOLUME, 1)).astype(np.float32)

    def infer():
        predict_tiled(fn, volume, PATCH, 0.5, BATCH, scales={"mask": 1})

    return train, infer, model.count_params(), heads, keras, (model, run, fn)


def bundle_contenders(model, run) -> dict:
    """Inference over the Keras model's float32 and int8 ONNX bundles (ONNX Runtime), the same windows."""
    import tempfile

    from msunet.data.preprocessing import Normalization
    from msunet.exporting.bundle import export
    from msunet.runtime import Predictor
    from msunet.runtime.engine import batch_function
    from msunet.runtime.tiling import predict_tiled
    from msunet.training.run_folder import LoadedRun

    folder = pathlib.Path(tempfile.mkdtemp(prefix="msunet-volume-speed-"))
    rng = np.random.default_rng(1)
    (folder / "run").mkdir()
    np.savez(folder / "run" / "calibration.npz",
             patches=rng.standard_normal((16, PATCH, PATCH, PATCH, 1)).astype(np.float16))
    loaded = LoadedRun(model, run, Normalization("volume"), folder / "run")
    volume = rng.standard_normal((*VOLUME, 1)).astype(np.float32)
    out = {}
    for name, int8 in (("msunet_bundle_float32", False), ("msunet_bundle_int8", True)):
        predictor = Predictor(export(loaded, folder / name, int8=int8), engine="onnxruntime", check=False)
        fn = batch_function(lambda b, p=predictor: p.predict_batch(b, ["mask"]), BATCH)
        out[name] = (None, lambda fn=fn: predict_tiled(fn, volume, PATCH, 0.5, BATCH, scales={"mask": 1}))
    return out


def torch_unet3d():
    """msunet's volume U-Net in plain PyTorch: (conv3x3x3-GN-ReLU) x2 blocks, max-pool, 2x2x2 transposed-conv
    upsampling, concatenation, a 1x1x1 head (one head: msunet trains three)."""
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(8, cout), nn.ReLU(inplace=True),
                             nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(8, cout), nn.ReLU(inplace=True))

    class UNet3D(nn.Module):
        def __init__(self):
            super().__init__()
            f = [FILTERS * 2**i for i in range(DEPTH + 1)]
            self.enc = nn.ModuleList([block(1 if i == 0 else f[i - 1], f[i]) for i in range(DEPTH)])
            self.bottleneck = block(f[DEPTH - 1], f[DEPTH])
            self.up = nn.ModuleList([nn.ConvTranspose3d(f[i + 1], f[i], 2, stride=2) for i in range(DEPTH)])
            self.dec = nn.ModuleList([block(2 * f[i], f[i]) for i in range(DEPTH)])
            self.head = nn.Conv3d(f[0], CLASSES, 1)

        def forward(self, x):
            skips = []
            for enc in self.enc:
                x = enc(x)
                skips.append(x)
                x = nn.functional.max_pool3d(x, 2, ceil_mode=True)
            x = self.bottleneck(x)
            for i in reversed(range(DEPTH)):
                up = self.up[i](x)[..., : skips[i].shape[2], : skips[i].shape[3], : skips[i].shape[4]]
                x = self.dec[i](torch.cat([up, skips[i]], dim=1))
            return self.head(x)

    return UNet3D()


def monai_basicunet():
    """MONAI's classic U-Net (two conv blocks a level, max-pool, transposed conv; 4 downsamplings, fixed)."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=3, in_channels=1, out_channels=CLASSES, features=(16, 32, 64, 128, 256, 16),
                     norm=("group", {"num_groups": 8}), upsample="deconv")


def torch_contender(net):
    import torch
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss

    torch.set_num_threads(os.cpu_count() or 1)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((BATCH, 1, PATCH, PATCH, PATCH)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, CLASSES, (BATCH, 1, PATCH, PATCH, PATCH)).astype(np.int64))
    volume = torch.from_numpy(rng.standard_normal((1, 1, *VOLUME)).astype(np.float32))

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16)

    def train():
        net.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(net(x).float(), y)
        loss.backward()
        opt.step()

    def infer():
        net.eval()
        with torch.inference_mode(), autocast():
            sliding_window_inference(volume, (PATCH,) * 3, BATCH, net, overlap=0.5, mode="gaussian")

    return train, infer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per contender and round")
    parser.add_argument("--smoke", action="store_true", help="one round, one step: checks the script runs")
    parser.add_argument("--bf16", action="store_true", help="msunet mixed_bfloat16, PyTorch bf16 autocast")
    parser.add_argument("--out", default=str(HERE / "results" / "volumes" / "speed.json"))
    args = parser.parse_args(argv)
    global BF16
    BF16 = args.bf16
    rounds, steps = (1, 1) if args.smoke else (args.rounds, args.steps)
    contenders = {}
    train, infer, params, heads, keras, (model, run, _) = msunet_contender()
    contenders["msunet"] = (train, infer)
    skipped = {}
    if importlib.util.find_spec("tf2onnx") is not None and importlib.util.find_spec("onnxruntime") is not None:
        contenders.update(bundle_contenders(model, run))
    else:
        skipped["msunet_bundle_float32"] = skipped["msunet_bundle_int8"] = "tf2onnx / onnxruntime are not installed"
    if importlib.util.find_spec("monai") is not None and importlib.util.find_spec("torch") is not None:
        contenders["torch_unet3d"] = torch_contender(torch_unet3d())
        contenders["monai_basicunet"] = torch_contender(monai_basicunet())
    else:
        skipped["torch_unet3d"] = skipped["monai_basicunet"] = "torch / monai are not installed (make bench-env)"
    for train_fn, infer_fn in contenders.values():  # warm-up: tracing, allocator
        if train_fn:
            train_fn()
        infer_fn()
    times = {name: {"train": [], "infer": []} for name in contenders}
    for round_ in range(rounds):
        order = list(contenders)[round_ % len(contenders):] + list(contenders)[: round_ % len(contenders)]
        for name in order:
            train_fn, infer_fn = contenders[name]
            for _ in range(steps if train_fn else 0):
                start = time.perf_counter()
                train_fn()
                times[name]["train"].append(time.perf_counter() - start)
            start = time.perf_counter()
            infer_fn()
            times[name]["infer"].append(time.perf_counter() - start)
    voxels_step, voxels_volume = BATCH * PATCH**3, int(np.prod(VOLUME))
    result = {name: {"infer_s_per_volume": statistics.median(t["infer"]),
                     "infer_voxels_per_s": voxels_volume / statistics.median(t["infer"]),
                     **({"train_s_per_step": statistics.median(t["train"]),
                         "train_voxels_per_s": voxels_step / statistics.median(t["train"])} if t["train"] else {})}
              for name, t in times.items()}
    ratios = {}
    for peer in ("torch_unet3d", "monai_basicunet"):
        if peer in result:
            for kind in ("train", "infer"):
                ratios[f"{kind}: msunet / {peer} (voxels/s)"] = (result["msunet"][f"{kind}_voxels_per_s"]
                                                                 / result[peer][f"{kind}_voxels_per_s"])
            for bundle in ("msunet_bundle_float32", "msunet_bundle_int8"):
                if bundle in result:
                    ratios[f"infer: {bundle} / {peer} (voxels/s)"] = (result[bundle]["infer_voxels_per_s"]
                                                                      / result[peer]["infer_voxels_per_s"])
    record = {"date": datetime.date.today().isoformat(), "cpu": cpu_model_and_flags(), "cores": os.cpu_count(),
              "keras": keras.__version__, "backend": keras.backend.backend(), "bf16": BF16, "rounds": rounds, "steps": steps,
              "shape": {"patch": PATCH, "batch": BATCH, "classes": CLASSES, "filters": FILTERS, "depth": DEPTH,
                        "volume": VOLUME, "msunet_heads": heads, "msunet_params": params},
              "results": result, "ratios": ratios, "skipped": skipped, "samples": times}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(json.dumps({"results": result, "ratios": ratios, "skipped": skipped}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
