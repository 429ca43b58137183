"""The planner: data statistics (+ the device) -> every config value the user did not set.

nnU-Net's idea for folders of 2-D images. `survey(data_dir, data_cfg)` reads each pair once and
records what the files say (channels, sizes, the kind of every mask and its values or colours);
`plan_run(survey, config, user_keys, accelerator)` derives, for each key the user did not set,
a value with its source and reason:

| key                        | derived from                                                    |
|----------------------------|-----------------------------------------------------------------|
| model.in_channels          | the images' channel count (the most common one)                 |
| data.mask_encoding         | the masks: two values -> binary, class ids -> index, RGB -> palette |
| data.palette               | the colours found (black, else the most frequent, is class 0)   |
| model.num_classes          | 1 (binary), the largest class id + 1 (index), the colours (palette) |
| data.ignore_label          | 255 next to small class ids (the VOC \"void\" convention)         |
| data.resample              | 1, or 1/2, 1/4 ... while a patch sees < 25% of the median image and the objects stay thick |
| data.patch_size            | the median image's short side (a power of two, at most 256 on a CPU, 512 on a GPU); small images shrink it; large objects: 128 px holding the whole (low-resolution) image when its short side is 90-127 px |
| model.depth                | a bottleneck of about 16 px on the patch (8 px with the whole image in a patch) |
| train.batch_size           | memory for the activations (at most 8 on a CPU); on a CPU, cut until a measured step takes ~1-2 s |
| model.precision            | measured (device): a few training steps of the planned model per precision, the faster |
| train.compiler             | measured (device, TensorFlow): the planned step (precision, width, batch) as a graph and with XLA, XLA if >= 5% faster |
| model.filters              | measured (device): on a CPU, 16 when a step at 32 takes over 1.5 s (before the batch is cut); 8 when one takes over 2 s at batch 2 |
| train.steps_per_epoch      | one pass over the training pixels, 10..250 steps, ~10 s to ~2 min where measured |
| train.epochs               | 50 (the default) passes over the training pixels (at least 300 steps in all), in fewer, longer epochs where an epoch would last < 10 s; with train.time_budget_min, enough that the budget ends training |
| train.val_batches          | about 15% of an epoch's steps                                   |
| model.dims (volumes)       | 3 for NIfTI / TIFF-stack / .npy volumes; their patch cube, depth, in-plane pooling, batch: `msunet.plan.volumes` |
| data.flip, data.rot90      | the labels' layout: where classes sit high or low in the image (sky over road), \"horizontal\" flips only and no 90-degree turns |

`msunet check` prints the plan, `msunet train` trains with it and writes it to the run's
`config.json` under `\"sources\"`: `{\"model.in_channels\": {\"value\": 1, \"source\": \"data\", \"why\": ...}}`.
Sources are \"user\" (a `--set` or a config file), \"data\" (planned from the files), \"device\"
(measured on this machine: `msunet.training.probe`, cached; the precision entry keeps the seconds per step
of each precision tried) or \"default\". This module never
imports keras."""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from msunet.config import ENCODERS, SECTIONS, RunConfig, jsonable, non_default_keys
from msunet.plan.device import DEVICE_KEYS, Measure, apply_values, plan_device
from msunet.plan.survey import Survey, preview
from msunet.plan.timing import expected_step_seconds
from msunet.plan.volumes import plan_volumes, slice_survey

CPU_BATCH_CAP, CPU_PATCH_CAP, GPU_PATCH_CAP = 8, 256, 512
STEPS_PER_EPOCH = (10, 250)  # one pass over the training pixels, within these (nnU-Net: 250)
EPOCH_S = 120.0  # at most ~2 minutes per epoch where measured: checkpoints, curves and resume stay frequent
EPOCH_MIN_S = 10.0  # at least ~10 s per epoch where measured: an epoch end (validation, 3 checkpoint files) costs
#                    ~0.5 s, a third of a 64 px folder's 1.5 s epochs; its steps are regrouped into fewer epochs
VAL_FRACTION_OF_EPOCH = 0.15
MIN_TOTAL_STEPS = 300  # where 50 passes over a small folder take fewer steps, training still gets this many: the
#                        64 px newcomer folder ran 500 (77 s, held-out Dice 0.969); 250: 47 s, 0.912; 300: 56 s, 0.943
MIN_PATCH_SHARE = 0.25  # a patch that sees less of the median image than this asks for a lower resolution...
MIN_OBJECT_DEPTH = 4.0  # ...unless the objects would get thinner than this (object_depth, px)
RESAMPLE_MIN = 0.125  # derived from measurements, not from the files
BOTTLENECK = 16  # px at the bottleneck of the planned patch...
LARGE_OBJECT_SHARE = 0.025  # ...and where objects are this thick for the image (object_depth / short side)
LARGE_OBJECT_BOTTLENECK = 8  # one level deeper, with the whole image in a patch:
WHOLE_IMAGE_SHARE = 0.7  # the patch is rounded up when the image's short side fills this much of it,
WHOLE_IMAGE_PATCH = 128  # to this side. busi-subset, 5 min on 2 cores (benchmarks/results/time-to-accuracy/): 64 px at
#                          depth 2, test Dice 0.43; the whole image in 128 px at depth 4, 0.61; 1/2 res. in 256 px, 0.41
UPRIGHT_SKEW = 0.08  # labels this far (pixel-weighted) from the middle rows, and 1.5 times as far as from the middle
#                      columns, mean the images have an up and a down: no vertical flips or 90-degree turns


@dataclasses.dataclass
class Plan:
    """The resolved config and, per key ("section.field"), its value, source and reason."""

    config: RunConfig
    sources: dict[str, dict[str, Any]]
    notes: list[str]
    disagreeing: list[tuple[str, str]]  # (mask file, what it is against the plan)

    def to_json_dict(self) -> dict[str, Any]:
        return {key: dict(entry) for key, entry in sorted(self.sources.items())}

    def format(self) -> str:
        """The plan as lines for the terminal (what `msunet check` and `msunet train` print)."""
        lines = ["plan (source: data = derived from the files, user = --set / --config, default):"]
        for key, entry in sorted(self.sources.items()):
            if entry["source"] == "default":
                continue
            why = f"  ({entry['why']})" if entry.get("why") else ""
            lines.append(f"  {key}={_short(entry['value'])}  [{entry['source']}]{why}")
        for path, what in self.disagreeing[:50]:
            lines.append(f"  disagrees with the plan: {path}: {what}")
        if len(self.disagreeing) > 50:
            lines.append(f"  ... and {len(self.disagreeing) - 50} more masks that disagree")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _short(value: Any) -> str:
    text = str(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def _pow2_patch(short_side: float, cap: int, whole: bool = False) -> int:
    """The patch for a short side: the power of two at or below it, within 16..cap; with `whole`
    (large objects), the one above it when the short side fills WHOLE_IMAGE_SHARE of it, so that a
    patch holds the whole (low-resolution) image instead of a corner of it."""
    patch = 2 ** int(math.floor(math.log2(max(min(short_side, cap), 16))))
    if whole and 2 * patch == WHOLE_IMAGE_PATCH <= cap and short_side >= WHOLE_IMAGE_SHARE * 2 * patch:
        patch *= 2
    return patch


def large_objects(object_depth: float, short_side: float) -> bool:
    """Objects this thick for the image (`object_depth` / the median short side, at any resolution)
    are large: a lesion or a polyp that fills a good part of the image wants context, not pixels.
    busi-subset: 17.1 px of 470 (3.6%); isbi2012 cells 8.3 of 512 (1.6%); DSB nuclei 3.3 of 256 (1.3%)."""
    return short_side > 0 and object_depth / short_side >= LARGE_OBJECT_SHARE


def _plan_resample(found: Survey, accelerator: bool) -> tuple[float, str]:
    """Halves the resolution while the affordable patch sees less than a quarter of the median
    image and the objects stay thick (`object_depth` >= MIN_OBJECT_DEPTH px after halving): large
    objects get their context, thin ones (vessels, membranes) keep their pixels."""
    cap = GPU_PATCH_CAP if accelerator else CPU_PATCH_CAP
    area = float(np.median([h * w for h, w in found.sizes]))
    short = float(np.median([min(h, w) for h, w in found.sizes]))
    depth = float(np.median(found.object_depths)) if found.object_depths else 0.0
    factor = 1.0
    while factor > RESAMPLE_MIN:
        patch = _pow2_patch(short * factor, cap)
        if patch * patch >= MIN_PATCH_SHARE * area * factor * factor or depth * factor / 2 < MIN_OBJECT_DEPTH:
            break
        factor /= 2
    share = min(1.0, _pow2_patch(short, cap) ** 2 / area)
    if factor == 1.0:
        return 1.0, (f"full resolution: a patch sees {share:.0%} of the median image" if share >= MIN_PATCH_SHARE
                     else f"full resolution: objects are thin (depth {depth:.1f} px) though a patch sees "
                          f"{share:.0%} of the median image")
    return factor, (f"objects are large (depth {depth:.1f} px) and a {cap} px patch would see {share:.0%} of the "
                    f"median image; at {factor} it sees a quarter or more (nnU-Net's low-resolution idea)")


def _patch_and_depth(sizes: list[tuple[int, int]], accelerator: bool, object_depth: float = 0.0
                     ) -> tuple[int, int, int, str]:
    """(patch, depth, bottleneck px, why): the patch from the median short side, the depth to a
    bottleneck of ~16 px, or of ~8 px and the whole image in a patch where objects are large (a
    lesion that fills a third of the image needs a receptive field as large as the image)."""
    short = int(np.median([min(h, w) for h, w in sizes]))
    cap = GPU_PATCH_CAP if accelerator else CPU_PATCH_CAP
    large = large_objects(object_depth, short)
    patch = _pow2_patch(short, cap, whole=large)
    whole = large and patch >= short  # the whole image in a patch: one level deeper sees all of it
    bottleneck = LARGE_OBJECT_BOTTLENECK if whole else BOTTLENECK
    depth = int(min(7, max(1, round(math.log2(patch / bottleneck)))))
    why = (f"median short side {short} px" + (f", capped at {cap} on a {'GPU' if accelerator else 'CPU'}"
                                              if short > cap else ""))
    if whole:
        why += f"; objects are large ({object_depth:.0f} px deep): the whole image in one patch"
    return patch, depth, patch // 2**depth, why


def _activation_bytes(patch: int, filters: int, depth: int, convs: int = 2) -> float:
    """Rough float32 activation memory of one training sample (kept for the backward pass)."""
    total = 0.0
    for level in range(depth + 1):
        pixels, channels = (patch / 2**level) ** 2, filters * 2**level
        total += pixels * (convs * 3 * channels * (2 if level < depth else 1) + (2 * channels if level < depth else 0))
    return total * 4.0


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3


def plan_run(found: Survey, config: RunConfig | None = None, user_keys: Iterable[str] | None = None,
             accelerator: bool = False, memory: int | None = None, measure: Measure | None = None,
             precisions: Sequence[str] = ("float32",), compilers: Sequence[str] = ()) -> Plan:
    """Fills every key of `config` that is not in `user_keys` from the survey of the data.

    Args:
        found: `survey(data_dir)`.
        config: the user's config (its user-set keys are kept as they are); defaults when None.
        user_keys: "section.field" keys the user set; None: those that differ from the defaults.
        accelerator: plan for a GPU (larger patch cap) instead of a CPU.
        memory: bytes available for activations (default: this machine's available memory).
        measure: `measure(run_config, precisions) -> {precision: seconds per training step}` (the
            device probe, `msunet.training.probe.measure_steps`); None: no measurement, the estimates stay.
        precisions: the precisions worth measuring on this device (`model.precision=auto`).
        compilers: the ways of running a step to choose from (`train.compiler=auto`; TensorFlow: graph, xla).

    Returns:
        A `Plan`; `plan.config` validates (it is a `RunConfig`).
    """
    config = config or RunConfig()
    user = set(non_default_keys(config) if user_keys is None else user_keys)
    values: dict[str, Any] = {}
    why: dict[str, str] = {}
    notes: list[str] = []
    disagreeing: list[tuple[str, str]] = []

    def derive(key: str, value: Any, reason: str) -> None:
        if key not in user:
            values[key], why[key] = value, reason

    if found.channels:
        channels, count = found.channels.most_common(1)[0]
        derive("model.in_channels", channels,
               f"{count} of {sum(found.channels.values())} images have {channels} channel(s)")
        if len(found.channels) > 1:
            notes.append(f"images have different channel counts {dict(found.channels)}: those with another count "
                         "are skipped in training; convert them")
    _plan_masks(found, config, user, derive, notes, disagreeing)
    slices = found.dims == 3 and plan_volumes(found, config, user, values, derive, notes, accelerator,
                                              memory or available_memory_bytes())
    if slices:  # a 2-D model on the slices: planned as a folder of images from here on
        found = slice_survey(found, config, values)
    rows, cols = found.skew()
    if rows > UPRIGHT_SKEW and rows > 1.5 * cols:
        reason = (f"the labels sit {rows:.2f} from the middle rows (columns {cols:.2f}): the images have an up and a "
                  "down")
        derive("data.flip", "horizontal", reason + "; left-right flips only")
        derive("data.rot90", False, reason)
    elif cols > UPRIGHT_SKEW and cols > 1.5 * rows:
        reason = f"the labels sit {cols:.2f} from the middle columns (rows {rows:.2f}): the images have a left and a right"
        derive("data.flip", "vertical", reason + "; up-down flips only")
        derive("data.rot90", False, reason)
    model = values.get("model.encoder", config.model.encoder)
    if model in ENCODERS.names() and ENCODERS[model].pretrained:
        derive("data.normalization", "unit", f"the {model} backbone scales its input as its ImageNet weights expect, "
               "inside the model")
    resample = config.data.resample
    if found.sizes and found.dims == 2 and "data.resample" not in user and not slices:
        resample, reason = _plan_resample(found, accelerator)
        derive("data.resample", resample, reason)
    if found.sizes and found.dims == 2:
        scaled = [(max(1, round(h * resample)), max(1, round(w * resample))) for h, w in found.sizes]
        object_depth = float(np.median(found.object_depths)) * resample if found.object_depths else 0.0
        patch, depth, bottleneck, reason = _patch_and_depth(scaled, accelerator, object_depth)
        if resample < 1:
            reason += f" at data.resample={resample}"
        derive("data.patch_size", patch, reason)
        derive("model.depth", depth, f"a bottleneck of ~{bottleneck} px on a {patch} px patch"
               + (" (large objects)" if patch // 2**depth < BOTTLENECK else ""))
        patch = values.get("data.patch_size", config.data.patch_size)
        depth = values.get("model.depth", config.model.depth)
        budget = min((memory or available_memory_bytes()) * 0.5, 16 * 1024**3)
        batch = int(max(1, min(16, budget // max(_activation_bytes(patch, config.model.filters, depth), 1))))
        if not accelerator:
            batch = min(batch, CPU_BATCH_CAP)
        derive("train.batch_size", batch, "activation memory" + ("" if accelerator else f", at most {CPU_BATCH_CAP} on a CPU"))
        if min(min(s) for s in scaled) < patch:
            notes.append(f"some images are smaller than the {patch} px patch: they are padded (ignored pixels)")
    measured, step = plan_device(config, user, values, why, derive, notes, measure, precisions, compilers,
                                  accelerator)
    _plan_epoch(found, config, user, values, derive, step)

    resolved = apply_values(config, values)
    sources = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            source = ("user" if key in user and not (key == "model.precision" and measured)
                      else ("device" if key in DEVICE_KEYS else "data") if key in values else "default")
            entry = {"value": jsonable(getattr(getattr(resolved, section), f.name)), "source": source}
            if key in why:
                entry["why"] = why[key]
            if key == "model.precision" and measured:
                entry["seconds_per_step"] = {p: round(t, 6) for p, t in measured.items()}
            if key == "train.steps_per_epoch" and step:
                # what the epochs and the budget were planned with (`msunet.plan.timing`)
                entry["expected_s_per_step"] = round(
                    expected_step_seconds(step, resolved.train.steps_per_epoch, resolved.train.val_batches), 4)
                entry["probe_s_per_step"] = round(step, 4)
            sources[key] = entry
    return Plan(resolved, sources, notes, disagreeing)


def _plan_epoch(found: Survey, config: RunConfig, user: set[str], values: dict, derive, step: float | None) -> None:
    """Steps per epoch (one pass over the training pixels) and the validation batches (~15% of them).

    Where a measured epoch would last under `EPOCH_MIN_S`, the same number of steps in all
    (`train.epochs` x one pass) is regrouped into fewer, longer epochs.
    """
    batch = values.get("train.batch_size", config.train.batch_size)
    patch = values.get("data.patch_size", config.data.patch_size)
    if found.train_pixels:
        low, high = STEPS_PER_EPOCH
        resample = values.get("data.resample", config.data.resample)
        one_pass = math.ceil(found.train_pixels * resample**found.dims / (patch**found.dims * batch))
        steps = min(max(one_pass, low), high)
        reason = (f"one pass over the training {'voxels' if found.dims == 3 else 'pixels'} ({one_pass} steps of "
                  f"{batch} x {patch}{'^3 voxel' if found.dims == 3 else ' px'} patches)")
        if one_pass < low or one_pass > high:
            reason += f", within {low}..{high}"
        if step and steps * step > EPOCH_S and steps > low:
            steps = max(low, int(EPOCH_S / step))
            reason += f", at most ~{EPOCH_S / 60:.0f} min per epoch at {step:.2f} s per step"
        elif step and steps * step < EPOCH_MIN_S and not {"train.steps_per_epoch", "train.epochs"} & user:
            total = _total_steps(one_pass, steps, config.train.epochs)
            longer = min(high, math.ceil(EPOCH_MIN_S / step))
            epochs = max(1, round(total / longer))
            longer = min(high, math.ceil(total / epochs))  # the total, in whole epochs of about that length
            reason += (f"; {longer} steps, ~{EPOCH_MIN_S:.0f} s at {step:.2f} s per step, so that epoch ends (validation, "
                       "checkpoints) stay a small share")
            derive("train.epochs", epochs, f"the {total} steps of {_total_why(one_pass, steps, config.train.epochs)}, "
                   f"regrouped in epochs of {longer}")
            steps = longer
        elif one_pass < low and not {"train.steps_per_epoch", "train.epochs"} & user:
            total = _total_steps(one_pass, steps, config.train.epochs)
            derive("train.epochs", max(1, math.ceil(total / steps)),
                   f"the {total} steps of {_total_why(one_pass, steps, config.train.epochs)}")
        derive("train.steps_per_epoch", steps, reason)
    steps = values.get("train.steps_per_epoch", config.train.steps_per_epoch)
    derive("train.val_batches", max(1, math.ceil(VAL_FRACTION_OF_EPOCH * steps)),
           f"validation at about {VAL_FRACTION_OF_EPOCH:.0%} of an epoch's {steps} steps")
    budget_s = 60 * values.get("train.time_budget_min", config.train.time_budget_min)
    if budget_s and "train.epochs" not in user:
        # A budget alone means "train for this long": the epochs must not end training first (a DRIVE newcomer
        # with 15 minutes stopped after 10, its 50 default epochs done). Twice the epochs the budget holds.
        run_step = expected_step_seconds(step, steps, values.get("train.val_batches", config.train.val_batches)
                                         ) if step else None
        fits = math.ceil(budget_s / (steps * run_step)) if run_step else None
        epochs = max(config.train.epochs, 2 * fits) if fits else 10_000
        derive("train.epochs", epochs, f"train.time_budget_min={budget_s / 60:g} ends training"
               + (f" (about {fits} epochs of {steps} steps at {run_step:.2f} s per step, validation and epoch "
                  "ends included)" if fits else ""))


def _total_steps(one_pass: int, steps: int, epochs: int) -> int:
    """All the steps of `epochs` passes over the training pixels, and at least `MIN_TOTAL_STEPS`."""
    return max(one_pass * epochs, MIN_TOTAL_STEPS) if one_pass < steps else steps * epochs


def _total_why(one_pass: int, steps: int, epochs: int) -> str:
    if one_pass >= steps:
        return f"{epochs} epochs of {steps} steps"
    return f"{epochs} passes over the training pixels ({one_pass} steps each), at least {MIN_TOTAL_STEPS}"


def _plan_masks(found: Survey, config: RunConfig, user: set[str], derive, notes: list[str],
                disagreeing: list[tuple[str, str]]) -> None:
    if not found.masks:
        return
    kinds = collections.Counter(m.kind for m in found.masks)
    if "data.mask_encoding" in user and config.data.mask_encoding != "auto":
        kind = config.data.mask_encoding
    else:
        # Index masks that only hold 0/1 are binary too: a folder of index masks stays index.
        kind = "index" if kinds.get("index") and kinds.get("binary") and _binary_are_01(found) else kinds.most_common(1)[0][0]
    if kind == "float":
        notes.append("masks hold non-integer values: save them as integer class ids (or 0/255)")
        return
    compatible = {"binary": {"binary"}, "index": {"index", "binary"}, "palette": {"palette"}}[kind]
    for m in found.masks:
        if m.kind not in compatible or (kind == "index" and m.kind == "binary" and set(m.values) - {0, 1}):
            disagreeing.append((m.path, f"{m.describe()}; the plan reads masks as {kind}"))
    if disagreeing:
        notes.append(f"{len(disagreeing)} of {len(found.masks)} masks disagree with the plan ({kind}, the majority): "
                     "training skips them; convert them or set data.mask_encoding")
    derive("data.mask_encoding", kind, f"{kinds[kind]} of {len(found.masks)} masks are {kind}")
    if kind == "binary":
        derive("model.num_classes", 1, "binary masks: one sigmoid channel")
    elif kind == "index":
        odd = {path for path, _ in disagreeing}
        ids = sorted({v for m in found.masks if m.kind in compatible and m.path not in odd for v in m.values})
        ignore = config.data.ignore_label
        if "data.ignore_label" not in user and 255 in ids and len(ids) > 2 and max(v for v in ids if v != 255) < 64:
            derive("data.ignore_label", 255, "255 next to class ids 0.."
                   f"{max(v for v in ids if v != 255)}: the 'void' convention (VOC); set data.ignore_label to change")
            ignore = 255
        classes = max(v for v in ids if v != ignore) + 1 if ids else 2
        if ignore is None and classes > 2:
            notes.append(f"class ids 0..{classes - 1}: 0 is the background (left out of the Dice loss); if one id marks "
                         f"unlabelled pixels (CamVid's void is {classes - 1}), set data.ignore_label=ID so that "
                         "training and scoring leave those pixels out")
        derive("model.num_classes", classes, f"class ids {preview([v for v in ids if v != ignore])} found")
    else:
        colours = [c for c, _ in found.colour_pixels.most_common()]
        first = 0 if 0 in colours else colours[0]
        ordered = [first] + sorted(c for c in colours if c != first)
        if "data.palette" in user and config.data.palette:
            ordered = [(r << 16) | (g << 8) | b for r, g, b in config.data.palette]
        else:
            derive("data.palette", tuple((c >> 16, (c >> 8) & 255, c & 255) for c in ordered),
                   f"{len(ordered)} colours found; class 0 is {'black' if first == 0 else 'the most frequent colour'}")
        derive("model.num_classes", max(len(ordered), 2), f"{len(ordered)} colours")


def _binary_are_01(found: Survey) -> bool:
    return all(set(m.values) <= {0, 1} for m in found.masks if m.kind == "binary")
