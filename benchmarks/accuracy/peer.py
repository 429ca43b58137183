"""The PyTorch peer of the accuracy benchmark: the same U-Net in native PyTorch (or MONAI BasicUNet),
trained for the same CPU time on the same split, fed by the same patch sampler, scored by the same code.

`.venv-bench/bin/python benchmarks/accuracy/peer.py DATASET [--arch torch_unet|monai] [--budget MIN]`
(or `make bench-accuracy-peer DATASET=drive`). Needs `make bench-env` (CPU torch 2.13.0 + MONAI).

What is shared with msunet (so that the comparison is about the model and its training, not the
data): the protocol split (run.py's view folder), the patches and their augmentation
(`msunet.data.feeding.PatchDataset`, two threads ahead of the model), the dataset normalisation, the
validation tiles and best-on-validation checkpoint choice, the time-driven cosine schedule, AdamW
(lr 1e-3, weight decay 1e-4), and the scoring (`run.score`). The peer trains one full-resolution
head with soft Dice + BCE (CE for multi-class), the usual PyTorch recipe, in float32, and predicts
with MONAI's `sliding_window_inference` (tile 2x the patch, overlap 0.25, Gaussian blending), like
`msunet predict`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import datetime
import json
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import run as accuracy  # noqa: E402
from speed import monai_unet, torch_unet  # noqa: E402  (the same networks as the speed benchmark)

import torch  # noqa: E402


def peer_loss(logits, target):
    """Soft Dice + cross-entropy on the valid pixels; target = (B, K+1, H, W) class shares + valid weight."""
    weight = target[:, -1:]
    target = target[:, :-1]
    if logits.shape[1] == 1:
        probs = torch.sigmoid(logits)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    else:
        probs = torch.softmax(logits, 1)
        ce = -(target * torch.log_softmax(logits, 1)).sum(1, keepdim=True)
    ce = (ce * weight).sum() / weight.sum().clamp(min=1)
    dims = (0, 2, 3)
    inter = (probs * target * weight).sum(dims)
    denom = ((probs + target) * weight).sum(dims)
    dice = 1 - (2 * inter + 1) / (denom + 1)
    if logits.shape[1] > 1:
        dice = dice[1:]  # background left out, as msunet's default
    return dice.mean() + ce


def dice_counts(logits, target):
    weight = target[:, -1:] > 0
    truth = target[:, :-1]
    if logits.shape[1] == 1:
        pred = (logits > 0).float()
        truth = (truth >= 0.5).float()
    else:
        k = logits.shape[1]
        pred = torch.nn.functional.one_hot(logits.argmax(1), k).permute(0, 3, 1, 2).float()
        truth = torch.nn.functional.one_hot(truth.argmax(1), k).permute(0, 3, 1, 2).float()
        pred, truth = pred[:, 1:], truth[:, 1:]
    pred, truth = pred * weight, truth * weight
    tp = (pred * truth).sum((0, 2, 3))
    return tp, pred.sum((0, 2, 3)) - tp, truth.sum((0, 2, 3)) - tp


def to_torch(x, y):
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).contiguous(memory_format=torch.channels_last)
    yt = torch.from_numpy(np.ascontiguousarray(y.transpose(0, 3, 1, 2)))
    return xt, yt


def build_net(arch: str, cfg):
    if arch == "monai":
        from monai.networks.nets import BasicUNet

        f = [cfg.filters * 2**i for i in range(5)]
        return BasicUNet(spatial_dims=2, in_channels=cfg.in_channels, out_channels=cfg.num_classes,
                         features=(*f, cfg.filters)).to(memory_format=torch.channels_last)
    net = torch_unet(cfg.depth, cfg.filters)
    if cfg.in_channels != 3:
        net.enc[0][0] = torch.nn.Conv2d(cfg.in_channels, cfg.filters, 3, padding=1, bias=False)
    if cfg.num_classes != 1:
        net.head = torch.nn.Conv2d(cfg.filters, cfg.num_classes, 1)
    return net.to(memory_format=torch.channels_last)


def train_peer(config, view: pathlib.Path, budget_s: float, arch: str) -> tuple:
    from msunet.data.preprocessing import compute_normalization
    from msunet.data.pairs import find_pairs, split_pairs
    from msunet.data.samples import fixed_patches, load_samples
    from msunet.data.feeding import FixedPatchDataset, PatchDataset
    from msunet.training.trainer import schedule_factor

    torch.manual_seed(config.train.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    index = find_pairs(view, config.data)
    splits = split_pairs(index, config.data)
    train_samples = load_samples(splits["train"], config.data, config.model)
    val_samples = load_samples(splits["val"], config.data, config.model)
    norm = compute_normalization([s.image for s in train_samples], config.data.normalization)
    cfg = config.train
    one_head = config.model.replace(deep_supervision=False)
    data = PatchDataset(train_samples, one_head, config.data, norm, cfg.batch_size, cfg.steps_per_epoch, seed=cfg.seed)
    images, masks = fixed_patches(val_samples, config.data.patch_size, limit=cfg.val_batches * cfg.batch_size,
                                  seed=cfg.seed)
    val = FixedPatchDataset(images, masks, one_head, config.data, norm, cfg.batch_size)
    net = build_net(arch, config.model)
    opt = torch.optim.AdamW(net.parameters(), cfg.learning_rate, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    pool = concurrent.futures.ThreadPoolExecutor(max(cfg.workers, 1))
    start, step, epoch, best, best_state, history = time.monotonic(), 0, 0, -1.0, None, []
    done = False
    while not done and epoch < cfg.epochs:
        net.train()
        ahead = 2 * max(cfg.workers, 1)
        futures = {i: pool.submit(data.__getitem__, i) for i in range(min(ahead, len(data)))}
        losses = []
        for i in range(len(data)):
            x, y = futures.pop(i).result()
            if i + ahead < len(data):
                futures[i + ahead] = pool.submit(data.__getitem__, i + ahead)
            progress = max((time.monotonic() - start) / budget_s, step / total_steps)
            for group in opt.param_groups:  # msunet's own time-driven schedule
                group["lr"] = cfg.learning_rate * schedule_factor(cfg.schedule, progress)
            xt, yt = to_torch(x, y["mask"])
            opt.zero_grad(set_to_none=True)
            loss = peer_loss(net(xt), yt)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if time.monotonic() - start >= budget_s:
                done = True
                for f in futures.values():
                    f.cancel()
                break
        data.on_epoch_end()
        net.eval()
        tp = fp = fn = 0
        with torch.inference_mode():
            for j in range(len(val)):
                x, y = val[j]
                xt, yt = to_torch(x, y["mask"])
                a, b, c = dice_counts(net(xt), yt)
                tp, fp, fn = tp + a, fp + b, fn + c
        dice = float((2 * tp / (2 * tp + fp + fn).clamp(min=1)).mean())
        history.append({"epoch": epoch, "steps": step, "loss": float(np.mean(losses)), "val_dice": dice,
                        "time_s": time.monotonic() - start})
        if dice > best:
            best, best_state = dice, copy.deepcopy(net.state_dict())
        epoch += 1
    pool.shutdown(cancel_futures=True)
    net.load_state_dict(best_state)
    return net.eval(), norm, {"epochs_done": epoch, "steps_done": step, "best_val_dice": best,
                              "train_s": time.monotonic() - start, "history": history}


def predict_peer(net, norm, view: pathlib.Path, names: list[str], out: pathlib.Path, config) -> float:
    from monai.inferers import sliding_window_inference

    from msunet.data.imageio import read_image, write_image
    from msunet.inference.keras_engine import preprocess

    out.mkdir(parents=True, exist_ok=True)
    tile = min(2 * config.data.patch_size, 512)
    start = time.perf_counter()
    for name in names:
        image = read_image(next((view / "images").glob(f"{name}.*")))
        x = torch.from_numpy(preprocess(image, norm).transpose(2, 0, 1)[None].copy())
        with torch.inference_mode():
            logits = sliding_window_inference(x, (tile, tile), 4, net, overlap=0.25, mode="gaussian",
                                              sigma_scale=0.125, padding_mode="reflect")
        logits = logits[0].numpy()
        if logits.shape[0] == 1:
            prob = 1 / (1 + np.exp(-logits[0]))
            write_image(out / f"{name}.png", np.where(prob >= 0.5, 255, 0).astype(np.uint8))
            write_image(out / f"{name}_prob.tif", prob.astype(np.float32))
        else:
            write_image(out / f"{name}.png", logits.argmax(0).astype(np.uint8))
    return (time.perf_counter() - start) / len(names)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=(*accuracy.DATASETS, "all"), help="all: drive and dsb2018-nuclei")
    parser.add_argument("--arch", choices=("torch_unet", "monai"), default="torch_unet")
    parser.add_argument("--budget", type=float, help="training minutes (default: the msunet config's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.dataset == "all":
        rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "all"]
        return max(main([name, *rest]) for name in ("drive", "dsb2018-nuclei"))
    from msunet.config import RunConfig

    config = RunConfig.from_json(accuracy.HERE / "configs" / f"{args.dataset}.json").override(args.set)
    folds = accuracy.protocol(args.dataset)
    budget = args.budget if args.budget is not None else config.train.time_budget_min * len(folds)
    results = []
    for fold, labels in folds:
        name = f"{args.dataset}-peer-{args.arch}" + (f"-{fold}" if fold else "")
        print(f"[{datetime.datetime.now():%H:%M:%S}] {name}: training {budget / len(folds):.1f} min", flush=True)
        view = accuracy.make_view(args.dataset, labels, name)
        net, norm, info = train_peer(config, view, budget / len(folds) * 60, args.arch)
        test = sorted(s for s, split in labels.items() if split == "test")
        pred_dir = accuracy.WORK / name / "pred-plain"
        per_image = predict_peer(net, norm, view, test, pred_dir, config)
        scores = accuracy.score(args.dataset, view, pred_dir, accuracy.WORK / name / "eval-plain", test,
                                config.model.num_classes, config.data, config.train.include_background)
        scores["predict_s_per_image"] = per_image
        results.append({"fold": name, **info, "parameters": sum(p.numel() for p in net.parameters()),
                        "scores": {"plain": scores}})
        print(json.dumps(scores, indent=1), flush=True)
    record = {"dataset": args.dataset, "variant": f"peer-{args.arch}", "date": datetime.date.today().isoformat(),
              "machine": f"{os.cpu_count()} CPU cores", "budget_min_total": budget, "torch": torch.__version__,
              "config": config.to_dict(), "folds": results,
              "summary": accuracy.aggregate(results) if len(results) > 1 else results[0]["scores"]}
    accuracy.RESULTS.mkdir(parents=True, exist_ok=True)
    out = accuracy.RESULTS / f"{args.dataset}-peer-{args.arch}.json"
    out.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
