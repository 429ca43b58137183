"""`msunet check DATA`: validate a dataset folder before training, and plan the training for it.

It reads every pair once (as training would), lists what cannot be used and why, describes the
data (image sizes, class frequencies, object sizes) and prints the plan `msunet train` would use
(`msunet.plan.planner`: every value the user did not set, derived from the data, with its source).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pathlib
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import ndimage

from msunet.config import RunConfig, resolve_run_config
from msunet.data.pairs import IGNORE, find_pairs, split_pairs
from msunet.data.preprocessing import DataError
from msunet.data.samples import load_samples
from msunet.plan.planner import Plan, plan_run
from msunet.plan.survey import survey

log = logging.getLogger(__name__)


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
    plan: Plan | None = None

    @property
    def ok(self) -> bool:
        """True when training can start: at least one usable training pair."""
        return self.usable > 0 and self.splits.get("train", 0) > 0


def has_accelerator() -> bool:
    """True when Keras sees a GPU/TPU (backends without a device list count as CPU-only)."""
    from msunet.models import accelerators

    return bool(accelerators())


def plan_dataset(data_dir: str | os.PathLike, config: RunConfig, user_keys: Iterable[str] | None) -> Plan:
    """The plan for a dataset on this machine: `msunet.plan.planner` over the files, with the device probe
    (`msunet.training.probe`: seconds per training step, cached) unless MSUNET_PROBE=0."""
    from msunet.training import probe

    measure = None
    if probe.probing_enabled():
        def measure(run: RunConfig, precisions):
            what = (f"{' and '.join(precisions)}, batch {run.train.batch_size}, {run.data.patch_size} px, "
                    f"{run.model.filters} filters" + (", XLA" if run.train.compiler == "xla" else ""))
            if set(probe.cached_steps(run, precisions)) == set(precisions):
                log.info("training step times (%s) from the cache %s, measured on this machine earlier", what,
                         probe.cache_path())
            else:
                log.info("measuring a few training steps (%s); cached in %s", what, probe.cache_path())
            return probe.measure_steps(run, precisions)
    return plan_run(survey(data_dir, config.data), config, user_keys, has_accelerator(), measure=measure,
                    precisions=probe.precision_candidates() if measure else ("float32",),
                    compilers=probe.compiler_candidates() if measure else ())


def check_dataset(data_dir: str | os.PathLike, config: RunConfig | Mapping | str | os.PathLike | None = None,
                  overrides: Iterable[str] = (), user_keys: Iterable[str] | None = None) -> CheckReport:
    """Validates, describes and plans a dataset folder; never raises for per-file problems (they are listed).

    `msunet.check(data_dir, config=None, overrides=())` is this function (the CLI's `msunet check`).

    Args:
        data_dir: the dataset folder.
        config: the user's config (a `RunConfig`, a dict, a JSON file or None); keys the user did not
            set are planned from the data (`msunet.plan.planner`), as `msunet.train` plans them.
        overrides: `key=value` strings, as `--set`.
        user_keys: the "section.field" keys the user set; None: those written in `config` and
            `overrides` (for a `RunConfig`, the ones that differ from the defaults).

    Raises:
        DataError: the folder itself is unusable (missing, no images/, no masks/).
    """
    config, written = resolve_run_config(config, overrides)
    user_keys = written if user_keys is None else user_keys
    the_plan = plan_dataset(data_dir, config, user_keys)
    config = the_plan.config
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
            # 8-connected (26 in a volume): vessel trees
            labels, n = ndimage.label(s.mask == cls, structure=np.ones((3,) * s.mask.ndim))
            if n:
                # Extent: the larger side of the bounding box; thickness: twice the largest inscribed
                # radius (a vessel tree is wide in extent but a few pixels thick).
                for sl in ndimage.find_objects(labels):
                    object_sizes.append(max(axis.stop - axis.start for axis in sl))
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
    suggestion = {"patch_size": config.data.patch_size, "depth": config.model.depth,
                  "batch_size": config.train.batch_size} if samples else {}
    if samples and fractions.get(0, 0) > 0.97:
        notes.append("foreground is rare (<3% of pixels): keep data.foreground_oversample > 0")
    return CheckReport(pathlib.Path(data_dir), len(index.pairs), len(samples), split_counts, problems, sizes, channels,
                       fractions, ignored / max(total, 1), obj, suggestion, notes, the_plan)


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
        common = ", ".join(f"{'x'.join(map(str, shape[::-1]))} ({n})" for shape, n in report.sizes.most_common(8))
        more = f" and {len(report.sizes) - 8} more sizes" if len(report.sizes) > 8 else ""
        volumes = len(next(iter(report.sizes))) == 3
        lines.append(f"  {'volume sizes (WxHxD, voxels)' if volumes else 'image sizes (WxH)'}: {common}{more}")
        lines.append(f"  channels: {', '.join(f'{c} ({n})' for c, n in sorted(report.channels.items()))}")
        lines.append("  class pixel fractions: " + ", ".join(f"{c}: {f:.3%}" for c, f in report.class_fraction.items())
                     + (f"; ignored {report.ignored_fraction:.2%}" if report.ignored_fraction else ""))
    if report.object_sizes:
        o = report.object_sizes
        lines.append(f"  objects: {o['count']} (8-connected); extent (bounding-box side) min {o['min_px']} px, "
                     f"median {o['median_px']:.0f}, 95th percentile {o['p95_px']:.0f}, max {o['max_px']}; "
                     f"thickness median {o['thickness_median_px']:.0f} px, 95th percentile {o['thickness_p95_px']:.0f}")
    if report.plan is not None:
        lines += ["  " + line for line in report.plan.format().splitlines()]
    for note in report.notes:
        lines.append(f"  note: {note}")
    lines.append("  OK: ready to train" if report.ok else "  NOT TRAINABLE: no usable training pairs (see problems)")
    return "\n".join(lines)


__all__ = ["CheckReport", "DataError", "check_dataset", "format_report"]
