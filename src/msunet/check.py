"""`msunet check DATA`: validate a dataset folder before training, and plan the training for it.

It reads every pair once (as training would), lists what cannot be used and why, describes the
data (image sizes, class frequencies, object sizes) and suggests a patch size, depth and batch size
that fit the data and this machine's memory, in the spirit of nnU-Net's planner for a plain folder.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import pathlib

import numpy as np
from scipy import ndimage

from msunet.config import RunConfig
from msunet.data import IGNORE, DataError, find_pairs, load_samples, split_pairs


@dataclasses.dataclass
class CheckReport:
    data_dir: pathlib.Path
    pairs_found: int
    usable: int
    splits: dict[str, int]
    problems: list[tuple[str, str]]
    sizes: collections.Counter
    channels: collections.Counter
    class_fraction: dict[int, float]
    ignored_fraction: float
    object_sizes: dict[str, float]
    suggestion: dict[str, int]
    notes: list[str]

    @property
    def ok(self) -> bool:
        """True when training can start: at least one usable training pair."""
        return self.usable > 0 and self.splits.get("train", 0) > 0


def _available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3


def training_bytes_per_sample(patch: int, filters: int, depth: int, convs: int = 2) -> float:
    """Rough activation memory of one training sample: float32 tensors kept for the backward pass.

    Per level l (H/2^l squared pixels, filters*2^l channels), each conv keeps ~3 tensors (conv,
    norm, activation) in the encoder and the decoder, plus the skip concatenation.
    """
    total = 0.0
    for level in range(depth + 1):
        pixels = (patch / 2**level) ** 2
        channels = filters * 2**level
        per_block = convs * 3 * channels
        total += pixels * (per_block * (2 if level < depth else 1) + (2 * channels if level < depth else 0))
    return total * 4.0


def has_accelerator() -> bool:
    """True when Keras sees a GPU/TPU (backends without a device list count as CPU-only)."""
    try:
        import keras

        return any(not d.lower().startswith("cpu") for d in keras.distribution.list_devices())
    except Exception:  # noqa: BLE001 - torch backend has no keras.distribution
        return False


def plan(median_hw: tuple[int, int], thickness_p95: float, filters: int, memory: int,
         accelerator: bool = False) -> tuple[dict[str, int], list[str]]:
    """Suggested patch size, depth and batch size.

    The patch is the largest power of two within the median image's short side, capped at 512 on
    a GPU and 256 on a CPU (where a 256x256 batch of 8 already takes seconds per step), and doubled
    once if the thick objects (95th percentile) would not fit in half a patch; the depth leaves a bottleneck of ~16 px.
    """
    notes = []
    short = min(median_hw)
    cap = 512 if accelerator else 256
    patch = 2 ** int(math.floor(math.log2(max(min(short, cap), 32))))
    if thickness_p95 > patch / 2 and 2 * patch <= min(short, 2 * cap):
        patch *= 2
        notes.append("large objects: patch doubled so that most objects fit in a patch")
    depth = int(min(7, max(1, math.log2(patch / 16))))
    budget = min(memory * 0.5, 16 * 1024**3)
    per_sample = training_bytes_per_sample(patch, filters, depth)
    batch = int(max(1, min(16, budget // max(per_sample, 1))))
    if batch < 2:
        notes.append("memory allows fewer than 2 patches per batch: lower model.filters or data.patch_size")
    return {"patch_size": patch, "depth": depth, "batch_size": batch, "memory_gib_per_sample": round(per_sample / 1024**3, 3)}, notes


def check_dataset(data_dir: str | os.PathLike, config: RunConfig | None = None) -> CheckReport:
    """Validates and describes a dataset folder; never raises for per-file problems (they are listed).

    Raises:
        DataError: the folder itself is unusable (missing, no images/, no masks/).
    """
    config = config or RunConfig()
    index = find_pairs(data_dir, config.data)
    problems = list(index.problems)
    splits = split_pairs(index, config.data)
    samples = load_samples(index.pairs, config.data, config.model, problems)
    usable = {s.name for s in samples}
    split_counts = {k: sum(p.name in usable for p in v) for k, v in splits.items()}
    sizes = collections.Counter(s.mask.shape for s in samples)
    channels = collections.Counter(int(s.image.shape[-1]) for s in samples)
    classes = max(config.model.num_classes, 2)
    counts = np.zeros(classes, np.int64)
    ignored = total = 0
    object_sizes, thickness = [], []
    for s in samples:
        valid = s.mask != IGNORE
        counts += np.bincount(s.mask[valid].ravel(), minlength=classes)[:classes]
        ignored += int((~valid).sum())
        total += s.mask.size
        for cls in range(1, classes):
            labels, n = ndimage.label(s.mask == cls, structure=np.ones((3, 3)))  # 8-connected: vessel trees
            if n:
                # Extent: the larger side of the bounding box; thickness: twice the largest inscribed
                # radius (a vessel tree is wide in extent but a few pixels thick).
                for sl in ndimage.find_objects(labels):
                    object_sizes.append(max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start))
                edt = ndimage.distance_transform_edt(labels > 0)
                thickness.extend((2 * np.asarray(ndimage.maximum(edt, labels, np.arange(1, n + 1)))).tolist())
    fractions = {c: float(counts[c] / max(counts.sum(), 1)) for c in range(classes)}
    obj = {}
    if object_sizes:
        arr = np.asarray(object_sizes)
        thick = np.asarray(thickness)
        obj = {"count": int(arr.size), "min_px": int(arr.min()), "median_px": float(np.median(arr)),
               "p95_px": float(np.percentile(arr, 95)), "max_px": int(arr.max()),
               "thickness_median_px": float(np.median(thick)), "thickness_p95_px": float(np.percentile(thick, 95))}
    notes = []
    if samples:
        heights = np.array([s.mask.shape[0] for s in samples])
        widths = np.array([s.mask.shape[1] for s in samples])
        median = (int(np.median(heights)), int(np.median(widths)))
        suggestion, notes = plan(median, obj.get("thickness_p95_px", 0.0), config.model.filters, _available_memory_bytes(),
                                 has_accelerator())
        if min(heights.min(), widths.min()) < suggestion["patch_size"]:
            notes.append("some images are smaller than the patch: they are padded (ignored pixels), not rejected")
    else:
        suggestion = {}
    if samples and fractions.get(0, 0) > 0.97:
        notes.append("foreground is rare (<3% of pixels): keep data.foreground_oversample > 0")
    if len(channels) > 1:
        notes.append(f"images have different channel counts {dict(channels)}; model.in_channels must match all")
    return CheckReport(pathlib.Path(data_dir), len(index.pairs), len(samples), split_counts, problems, sizes, channels,
                       fractions, ignored / max(total, 1), obj, suggestion, notes)


def format_report(report: CheckReport, config: RunConfig | None = None) -> str:
    """The report as text for the terminal."""
    lines = [f"dataset {report.data_dir}"]
    lines.append(f"  pairs: {report.pairs_found} found, {report.usable} usable "
                 f"(train {report.splits.get('train', 0)}, val {report.splits.get('val', 0)}, "
                 f"test {report.splits.get('test', 0)})")
    if report.problems:
        lines.append(f"  problems ({len(report.problems)}; those files are skipped):")
        for path, message in report.problems[:50]:
            lines.append(f"    {path}: {message.split(': ', 1)[-1] if message.startswith(path) else message}")
        if len(report.problems) > 50:
            lines.append(f"    ... and {len(report.problems) - 50} more")
    if report.sizes:
        common = ", ".join(f"{w}x{h} ({n})" for (h, w), n in report.sizes.most_common(8))
        more = f" and {len(report.sizes) - 8} more sizes" if len(report.sizes) > 8 else ""
        lines.append(f"  image sizes (WxH): {common}{more}")
        lines.append(f"  channels: {', '.join(f'{c} ({n})' for c, n in sorted(report.channels.items()))}")
        lines.append("  class pixel fractions: " + ", ".join(f"{c}: {f:.3%}" for c, f in report.class_fraction.items())
                     + (f"; ignored {report.ignored_fraction:.2%}" if report.ignored_fraction else ""))
    if report.object_sizes:
        o = report.object_sizes
        lines.append(f"  objects: {o['count']} (8-connected); extent (bounding-box side) min {o['min_px']} px, "
                     f"median {o['median_px']:.0f}, 95th percentile {o['p95_px']:.0f}, max {o['max_px']}; "
                     f"thickness median {o['thickness_median_px']:.0f} px, 95th percentile {o['thickness_p95_px']:.0f}")
    if report.suggestion:
        s = report.suggestion
        lines.append(f"  suggested: data.patch_size={s['patch_size']} model.depth={s['depth']} "
                     f"train.batch_size={s['batch_size']} (~{s['memory_gib_per_sample']} GiB of activations per patch "
                     "with the model's filters)")
    for note in report.notes:
        lines.append(f"  note: {note}")
    lines.append("  OK: ready to train" if report.ok else "  NOT TRAINABLE: no usable training pairs (see problems)")
    return "\n".join(lines)


__all__ = ["CheckReport", "DataError", "check_dataset", "format_report", "plan"]
