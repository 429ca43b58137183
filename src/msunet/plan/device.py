"""The device's part of the plan: precision, compiler, width and batch, by measuring training steps.

`plan_device` asks `measure(run, precisions) -> {precision: seconds per step}` (the device probe,
`msunet.training.probe.measure_steps`, handed in by `msunet.training.check`: this module never imports keras)
for the planned model, keeps the faster precision, on a CPU narrows the model and cuts the batch until
a step takes ~1-2 s, measuring again after each change, and last, on TensorFlow, keeps the faster of a
graph and XLA at that shape (which is faster depends on the CPU).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

from msunet import machine
from msunet.config import SECTIONS, RunConfig

CPU_STEP_S = (1.0, 2.0)  # a training step on a CPU: long enough to use it, short enough to learn often
DEVICE_KEYS = {"model.precision", "model.filters", "train.compiler"}
WIDTH_STEP_S = 1.5  # the first width cut: a margin below CPU_STEP_S's 2 s, because a threshold at 2 s sat inside the
#                    noise of busi-subset's 32-filter step (1.99-2.15 s in four fresh probes): the plan flipped
#                    between 16 and 32 filters; at 16 it reached 0.615 / 0.740 Dice at 5 / 20 min, at 32 0.566 / 0.690
BUDGET_STEPS = 3000  # under a time budget the width also halves (to 16) while the budget affords fewer steps than
#                      this: busi-subset's 32-filter step (0.6 s in bfloat16 on an AVX-512 CPU, under WIDTH_STEP_S)
#                      made 2,012 steps and 0.731 test Dice in 20 min, 16 filters 5,968 steps and 0.762 (0.740 / 0.690
#                      for 16 / 32 on an AVX2 CPU); DSB and DRIVE plan 16 filters by the step rule either way
XLA_GAIN = 0.95  # XLA where its step takes under this share of the graph's: it compiles ~10 s longer at the start.
#                  busi-subset / DSB plans, steps alternated in one process, 2-core AVX2 EPYC: 0.76x / 0.87x
Measure = Callable[[RunConfig, Sequence[str]], dict]


def keras_backend() -> str:
    """The Keras backend a run here would use, without importing keras: the imported one, else
    KERAS_BACKEND, else ~/.keras/keras.json, else TensorFlow."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    try:
        path = os.path.join(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "keras.json")
        with open(path, encoding="utf-8") as fh:
            return json.load(fh).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def kernel_note() -> str | None:
    """A note where TensorFlow would train with its Eigen CPU kernels instead of oneDNN's (None elsewhere)."""
    x86 = platform.machine().lower() in machine.X86_64
    if keras_backend() != "tensorflow" or not x86 or machine.tensorflow_onednn():
        return None
    why = ("TF_ENABLE_ONEDNN_OPTS=0 is set" if machine.onednn_requested() is False else
           "TensorFlow was imported before msunet, and keeps them off on a CPU without VNNI / BF16 / AMX")
    return (f"TensorFlow's oneDNN CPU kernels are off ({why}): its Eigen kernels trained ~4x slower in 3-D and "
            "~1.15x in 2-D (oneDNN held to AVX2, docs/performance.md); run with TF_ENABLE_ONEDNN_OPTS=1 (msunet "
            "sets it when it is imported before TensorFlow)")


def plan_device(config: RunConfig, user: set[str], values: dict, why: dict, derive, notes: list[str],
                 measure: Measure | None, precisions: Sequence[str], compilers: Sequence[str], accelerator: bool
                 ) -> tuple[dict[str, float], float | None]:
    """Precision by measurement, then (on a CPU) the batch and width that keep a step at ~1-2 s, then the compiler.

    Returns the measured seconds per step at the planned batch, per precision ({} unmeasured), and
    the expected seconds per step of the plan (None unmeasured).
    """
    note = None if accelerator else kernel_note()
    if note:
        notes.append(note)
    env = os.environ.get("MSUNET_PRECISION")
    if "model.precision" not in user and env and env != "auto":
        values["model.precision"], why["model.precision"] = env, "MSUNET_PRECISION in the environment"
        user.add("model.precision")  # the user's choice, through the environment
    if measure is None:
        return {}, None
    chosen = values.get("model.precision", config.model.precision)
    fixed = None if chosen == "auto" else chosen  # "auto", planned or set: measure and keep the faster
    candidates = [fixed] if fixed else list(precisions)
    planned = apply_values(config, values)
    seconds = measure(planned, candidates)
    precision = min(seconds, key=seconds.get)
    batch, patch = planned.train.batch_size, planned.data.patch_size
    timing = ", ".join(f"{t:.3f} s in {p}" for p, t in sorted(seconds.items(), key=lambda kv: kv[1]))
    if not fixed:
        values["model.precision"] = precision
        why["model.precision"] = (f"measured a training step (batch {batch}, {patch} px): {timing}"
                                  + ("; the faster" if len(seconds) > 1 else ""))
    step = seconds[precision]
    if accelerator:
        return seconds, _plan_compiler(config, values, why, measure, compilers, step)
    low, high = CPU_STEP_S
    filters = values.get("model.filters", config.model.filters)  # the data part may have planned it (volumes)
    budget_s = planned.train.time_budget_min * 60
    few_steps = bool(budget_s) and budget_s / step < BUDGET_STEPS
    if (step > WIDTH_STEP_S or few_steps) and "model.filters" not in user and filters > 16:
        # Width before batch: the tuned CPU configs (16 filters, batch 8) see ~4x the patches of 32 filters in a
        # budget, and a batch kept at 8 keeps batch-norm statistics and gradients steady.
        narrower = apply_values(config, {**values, "model.precision": precision, "model.filters": filters // 2})
        slow = measure(narrower, [precision])[precision]
        if step > WIDTH_STEP_S:
            reason = (f"a step at {filters} filters took {step:.1f} s on this CPU at batch {batch}, {slow:.1f} s at "
                      f"{filters // 2} (the width goes before the batch)")
        else:
            reason = (f"a step at {filters} filters took {step:.2f} s on this CPU at batch {batch}: "
                      f"{budget_s / step:,.0f} steps in the {budget_s / 60:g}-minute budget, fewer than "
                      f"{BUDGET_STEPS:,}; {slow:.2f} s at {filters // 2} ({budget_s / slow:,.0f} steps: more "
                      "examples seen beats width under a short budget)")
        derive("model.filters", filters // 2, reason)
        step, filters = slow, filters // 2
    if step > high and "train.batch_size" not in user and batch > 2:
        smaller = max(2, int(batch * (low + high) / 2 / step))
        # measured again: a step does not shrink in proportion (DSB, 256 px: 2.96 s at batch 8, 1.87 s at 4, not 1.48)
        cut = apply_values(config, {**values, "model.precision": precision, "model.filters": filters,
                              "train.batch_size": smaller})
        measured_step, step = step, measure(cut, [precision])[precision]
        derive("train.batch_size", smaller, f"a training step of ~{step:.1f} s on this CPU "
               f"(measured {measured_step:.2f} s at batch {batch}, {step:.2f} s at {smaller}, {filters} filters)")
        batch = smaller
    if step > high and "model.filters" not in user and filters > 8:
        narrower = apply_values(config, {**values, "model.precision": precision, "model.filters": filters // 2})
        slow = measure(narrower, [precision])[precision]
        derive("model.filters", filters // 2, f"a step at {filters} filters took {step:.1f} s on this CPU, "
               f"{slow:.1f} s at {filters // 2}")
        step = slow
    step = _plan_compiler(config, values, why, measure, compilers, step)
    if step > high:
        notes.append(f"a training step takes ~{step:.1f} s on this CPU; a GPU, a smaller data.patch_size or "
                     "train.time_budget_min keeps training short")
    return seconds, step


def _plan_compiler(config: RunConfig, values: dict, why: dict, measure: Measure, compilers: Sequence[str],
                   step: float) -> float:
    """XLA or the graph (`train.compiler=auto`), timed at the planned shape; returns the kept one's step.

    Last, so that the width and batch cuts are timed as graphs (cached, cheap) and XLA compiles once: DRIVE's
    probe with XLA timed at every cut took 4 compilations (f32 b8, f16 b8, f16 b5) of ~20-30 s each.
    """
    if len(compilers) < 2 or values.get("train.compiler", config.train.compiler) != "auto":
        return step
    planned = apply_values(config, {**values, "train.compiler": "xla"})
    precision = planned.model.precision
    xla = measure(planned, [precision]).get(precision)
    values["train.compiler"] = "xla" if xla is not None and xla < XLA_GAIN * step else "graph"
    why["train.compiler"] = (f"measured a training step (batch {planned.train.batch_size}, {planned.model.filters} "
                             f"filters): {step:.3f} s as a graph, "
                             + (f"{xla:.3f} s with XLA" if xla is not None else "XLA could not compile it"))
    return xla if values["train.compiler"] == "xla" else step


def apply_values(config: RunConfig, values: dict[str, Any]) -> RunConfig:
    """`config` with `values` ({"section.field": value}) set."""
    changes: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in values.items():
        section, _, field = key.partition(".")
        changes[section][field] = value
    return RunConfig(**{name: getattr(config, name).replace(**changes[name]) for name in SECTIONS})
