"""Measuring the device: seconds per training step of the actual model, per precision, cached.

The planner (`msunet.plan.planner`, keras-free) asks `measure_steps(run, precisions)` how long one training
step of the planned model takes on this machine (`msunet.train`'s trainer and optimizer, the
planned patch and batch, synthetic data): the median of a few steps after the first (tracing),
the precisions alternating so that a change in the machine's load hits both. It keeps the faster
precision ("auto": a CPU flag is not a measurement; on a 2-core Xeon that reports AVX512-BF16,
bfloat16 ran at 0.6x of float32) and sizes the width and batch to the step time it aims for; then, on
TensorFlow, it times the planned step compiled with XLA (`train.compiler=auto`: 0.76-0.87x the graph's
time on a 2-core AVX2 EPYC, 1.17x on the 2-core CPU of 2026-11-23). A model XLA cannot compile keeps
the graph.

Results are cached per machine (CPU model and count, accelerators), backend (and TensorFlow's CPU
kernels: oneDNN or Eigen), Keras version and model shape in `$MSUNET_CACHE_DIR` (default
`~/.cache/msunet`)/probe.json, so `msunet check` pays for
the probe once and `msunet train` on the same data reuses it. `MSUNET_PROBE=0` turns measuring
off (the planner then keeps its estimates; the tests run that way).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import statistics
import time
from collections.abc import Sequence

import keras
import numpy as np

from msunet import machine
from msunet.atomic import write_text_atomic
from msunet.config import RunConfig

log = logging.getLogger(__name__)
ROUNDS = 5  # timed steps per precision (the median); 3 where they already took LONG_S: on a shared 2-core machine
#            a median of 3 moved by 1.5x between two runs of the same step (9.1 s and 14.0 s)
LONG_S = 15.0


def probing_enabled() -> bool:
    return os.environ.get("MSUNET_PROBE", "1").lower() not in ("0", "false", "no", "off")


def cache_path() -> pathlib.Path:
    return machine.cache_dir() / "probe.json"


def machine_id() -> str:
    """CPU model, its flags that kernels choose by (a VM may show one model name for CPUs with and
    without AVX-512), usable cores, accelerators, backend and Keras version: what step times depend on."""
    cpu = machine.fingerprint()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from msunet.models.build import accelerators

    devices = accelerators()
    backend = keras.backend.backend() + tensorflow_kernels()
    return (f"{cpu} x{cores} | {','.join(devices) or 'no accelerator'} | {backend}"
            f" | keras {keras.__version__}")


def tensorflow_kernels() -> str:
    """" onednn" / " eigen": which CPU kernels TensorFlow runs in this process (`machine.prefer_onednn`);
    "" on other backends or where TensorFlow does not say."""
    if keras.backend.backend() != "tensorflow":
        return ""
    try:
        from tensorflow.python.util import _pywrap_util_port  # private: hence the fallback
    except ImportError:
        return ""
    return " onednn" if _pywrap_util_port.IsMklEnabled() else " eigen"


def _key(run: RunConfig, precision: str) -> str:
    model = {k: v for k, v in run.model.to_dict().items() if k != "precision"}
    shape = {"model": model, "patch": run.data.patch_size, "batch": run.train.batch_size,
             "loss": run.train.loss, "optimizer": run.train.optimizer, "precision": precision}
    if run.train.compiler == "xla":  # graph steps keep the keys they were cached under
        shape["compiler"] = "xla"
    # the method is in the key: figures of another number of rounds are measured again
    text = machine_id() + f"|rounds {ROUNDS}|" + json.dumps(shape, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _synthetic_batch(run: RunConfig, seed: int = 0):
    """A batch of the planned shape: (batch, patch, patch, C) images, or patch^3 cubes for volumes."""
    rng = np.random.default_rng(seed)
    patch, batch, classes = run.data.patch_size, run.train.batch_size, run.model.num_classes
    dims = run.model.dims
    x = rng.standard_normal((batch, *(patch,) * dims, run.model.in_channels)).astype(np.float32)
    y = {}
    for head in run.model.heads:
        sides = tuple(-(-patch // f) for f in run.model.scale_factor(head.scale))
        if classes == 1:
            target = (rng.random((batch, *sides, 1)) > 0.5).astype(np.float32)
        else:
            target = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, (batch, *sides))]
        y[head.name] = np.concatenate([target, np.ones((batch, *sides, 1), np.float32)], axis=-1)
    return x, y


def _trainer(run: RunConfig, precision: str):
    from msunet.models import build_model
    from msunet.training.trainer import MultiScaleTrainer, jit_compile, make_optimizer

    run = RunConfig(run.model.replace(precision=precision), run.data, run.train)
    trainer = MultiScaleTrainer(build_model(run.model), run)
    trainer.compile(optimizer=make_optimizer(run, 1000), jit_compile=jit_compile(run))  # training's (loss scaling)
    return trainer


def cached_steps(run: RunConfig, precisions: Sequence[str]) -> dict[str, float]:
    """{precision: seconds per step} of those `measure_steps` would read from the cache (None: the
    step failed to compile, which is cached too)."""
    cache = _read_cache()
    keys = {p: _key(run, p) for p in precisions}
    return {p: cache[k]["seconds"] for p, k in keys.items() if k in cache}


def measure_steps(run: RunConfig, precisions: Sequence[str], rounds: int = ROUNDS) -> dict[str, float]:
    """Seconds per training step of `run`'s model at its patch and batch, for each precision.

    Cached results are returned without measuring; the others are measured together (one traced
    step each, then `rounds` timed steps, alternating) and added to the cache. With
    `train.compiler=xla`, a precision whose step XLA fails to compile is left out of the result.
    """
    found = cached_steps(run, precisions)
    todo = [p for p in precisions if p not in found]
    measured = _measure(run, todo, rounds) if todo else {}
    return {p: s for p, s in {**found, **measured}.items() if s is not None}


def _measure(run: RunConfig, todo: Sequence[str], rounds: int) -> dict[str, float | None]:
    """Times the precisions `todo` (None: XLA could not compile the step) and adds them to the cache."""
    x, y = _synthetic_batch(run)
    trainers, failed = {}, set()
    for precision in todo:
        try:
            trainers[precision] = _trainer(run, precision)
            trainers[precision].train_on_batch(x, y)  # traces; not timed
        except Exception as err:  # XLA lacks a kernel for some op: the graph step stays
            if run.train.compiler != "xla":
                raise
            log.info("XLA could not compile the training step (%s): %s", precision, str(err).splitlines()[0][:200])
            trainers.pop(precision, None)
            failed.add(precision)
    todo = [p for p in todo if p in trainers]
    times: dict[str, list[float]] = {p: [] for p in todo}
    for round_ in range(rounds if todo else 0):
        if round_ >= 3 and max(sum(t) for t in times.values()) > LONG_S:
            break
        for precision in todo:
            start = time.perf_counter()
            trainers[precision].train_on_batch(x, y)
            times[precision].append(time.perf_counter() - start)
    measured = {p: statistics.median(t) for p, t in times.items()} | dict.fromkeys(failed)
    keras.backend.clear_session()
    cache = _read_cache()  # another process may have written meanwhile
    for precision, seconds in measured.items():
        cache[_key(run, precision)] = {"seconds": None if seconds is None else round(seconds, 6),
                                  "machine": machine_id(),
                                  "patch": run.data.patch_size, "batch": run.train.batch_size,
                                  "model": f"{run.model.encoder}+{run.model.decoder} d{run.model.depth} "
                                           f"f{run.model.filters}", "precision": precision,
                                  "compiler": "xla" if run.train.compiler == "xla" else "graph",
                                  "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache_path(), json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError as err:  # a read-only home: measure again next time, never fail a run for it
        log.info("could not write the probe cache %s: %s", cache_path(), err)
    return measured


def compiler_candidates() -> list[str]:
    """The ways of running a training step worth timing here: the graph and XLA on TensorFlow (which
    is faster depends on the CPU); nothing to choose on other backends."""
    return ["graph", "xla"] if keras.backend.backend() == "tensorflow" else []


def precision_candidates() -> list[str]:
    """The precisions worth measuring here: float32 and the device's mixed precision (bfloat16 on
    a CPU with bfloat16 instructions or a GPU from Ampere on, float16 on older GPUs), else float32."""
    from msunet.models.build import accelerators, cpu_has_bf16, mixed_precision_for_gpu

    if any(d.lower().startswith("gpu") for d in accelerators()):
        return ["float32", mixed_precision_for_gpu()]
    if accelerators() or cpu_has_bf16():
        return ["float32", "mixed_bfloat16"]
    return ["float32"]
