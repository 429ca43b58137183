"""A bundle checks itself on the machine it runs on, and the fastest faithful graph and engine are chosen.

Why: the numbers a graph gives depend on the CPU's kernels. An int8 graph that matched float32 on
the machine that exported it (a VNNI CPU, where int8 products accumulate in 32 bits) can stray on
another (AVX2 without VNNI: ONNX Runtime's U8S8 kernels sum pairs in 16 bits with saturation), and
OpenVINO computes in bfloat16 where the CPU has it. A bundle is copied to where it runs, so the
check that matters is made there.

How: `msunet export` writes `reference.npz` into every bundle: a few of the run's calibration
patches (normalised, as the network takes them) and the float32 outputs of every head for them,
computed by the Keras model at export. The first time a bundle is loaded on a machine (keyed by the
graph's SHA-256, the engine and its version, the precision asked for, and the CPU model and flags:
`msunet.machine.fingerprint`), `Predictor` runs those inputs and compares every head with
the reference: the mean probability change must stay at most MAX_MEAN_CHANGE and at least
MIN_MASK_AGREEMENT of the mask's pixels (threshold or arg-max) unchanged. The result is cached in
`$MSUNET_CACHE_DIR/bundle-checks.json` (like the training-step probe), so later loads read it.

An int8 bundle also carries its float32 graph (`model.float32.onnx`). When the int8 graph strays,
the float32 graph runs instead, on ONNX Runtime or OpenVINO, whichever ran the reference faster on
this machine (timed once, alternated, cached); the first output line of `msunet predict` says
which and why. OpenVINO's own bfloat16 that strays is replaced by its float32 precision.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import statistics
import time
from collections.abc import Callable, Mapping

import numpy as np

from msunet import machine

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.npz"
CACHE_FILE = "bundle-checks.json"
# A bundle is faithful while, on the reference inputs, every head's probabilities move by at most
# MAX_MEAN_CHANGE on average and at least MIN_MASK_AGREEMENT of its mask pixels stay the same (the
# limits `msunet export --int8` has measured its graphs against since msunet 0.1).
MAX_MEAN_CHANGE = 0.02
MIN_MASK_AGREEMENT = 0.95
REFERENCE_COUNT = 4


def write_reference(folder: pathlib.Path, inputs: np.ndarray, outputs: Mapping[str, np.ndarray]) -> dict:
    """Saves the reference (inputs, {head: float32 outputs}) into a bundle folder; returns its bundle.json entry."""
    arrays = {"inputs": np.asarray(inputs, np.float32)}
    arrays.update({f"head/{name}": np.asarray(value, np.float32) for name, value in outputs.items()})
    path = folder / REFERENCE_FILE
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return {"file": REFERENCE_FILE, "inputs": int(len(inputs)), "shape": list(map(int, inputs.shape[1:])),
            "heads": sorted(outputs), "computed_by": "the Keras model in float32, at export",
            "limits": {"max_mean_change": MAX_MEAN_CHANGE, "min_mask_agreement": MIN_MASK_AGREEMENT}}


def read_reference(root: pathlib.Path, meta: dict) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    entry = meta.get("reference") or {}
    path = root / entry.get("file", REFERENCE_FILE)
    if not entry or not path.is_file():
        return None
    with np.load(path) as data:
        return data["inputs"], {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("head/")}


def compare(reference: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], threshold: float) -> dict:
    """Every head's mean |probability change| and fraction of mask pixels unchanged; the worst decide."""
    heads = {}
    for name, want in reference.items():
        have = np.asarray(got[name], np.float32)
        masks = [p.argmax(-1) if p.shape[-1] > 1 else p[..., 0] > threshold for p in (want, have)]
        heads[name] = {"mean_abs_difference": float(np.abs(want - have).mean()),
                       "mask_agreement": float(np.mean(masks[0] == masks[1]))}
    change = max(h["mean_abs_difference"] for h in heads.values())
    agreement = min(h["mask_agreement"] for h in heads.values())
    return {"mean_abs_difference": change, "mask_agreement": agreement,
            "faithful": bool(change <= MAX_MEAN_CHANGE and agreement >= MIN_MASK_AGREEMENT), "heads": heads}


def describe_stray(stats: dict) -> str:
    return (f"moves probabilities by {stats['mean_abs_difference']:.3f} on average and changes "
            f"{100 * (1 - stats['mask_agreement']):.1f}% of mask pixels on the bundle's reference inputs on this CPU "
            f"(limits {MAX_MEAN_CHANGE}, {100 * (1 - MIN_MASK_AGREEMENT):.0f}%)")


def engine_version(engine: str) -> str:
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai_edge_litert"}[engine]
    try:
        from importlib.metadata import version

        return f"{engine} {version(module.replace('_', '-'))}"
    except Exception:  # noqa: BLE001 - an unknown version keys the cache all the same
        return f"{engine} (version unknown)"


def cache_path() -> pathlib.Path:
    return machine.cache_dir() / CACHE_FILE


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, value: dict) -> None:
    from msunet.atomic import write_text_atomic

    cache = _read_cache()  # another process may have written meanwhile
    cache[key] = value
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache_path(), json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError as err:  # a read-only home: check again next time, never fail a prediction for it
        log.info("could not write the bundle check cache %s: %s", cache_path(), err)


def cache_key(kind: str, checksums: str, engine: str, precision: str | None) -> str:
    """`checksums`: the graph's SHA-256 (and the reference's, for a check): another graph or
    reference is another entry."""
    return " | ".join((kind, checksums[:16] + (f"+{checksums[64:76]}" if len(checksums) > 64 else ""),
                       engine_version(engine), f"precision {precision or 'default'}", machine.fingerprint()))


def checked(key: str, run: Callable[[], dict]) -> tuple[dict, bool]:
    """(the check's result, whether it came from the cache): `run()` measured once per key."""
    cache = _read_cache()
    if key in cache and "faithful" in cache[key]:
        return cache[key], True
    started = time.perf_counter()
    result = run()
    result = {**result, "seconds": round(time.perf_counter() - started, 4), "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "machine": machine.describe()}
    _write_cache(key, result)
    return result, False


def run_reference(session, inputs: np.ndarray, heads: list[str], batch: int = 4) -> dict:
    """{head: outputs} of a session (`run(names, {input: batch})`, `get_inputs()`) for the reference inputs."""
    input_name = session.get_inputs()[0].name
    out: dict[str, list[np.ndarray]] = {h: [] for h in heads}
    for start in range(0, len(inputs), batch):
        chunk = np.ascontiguousarray(inputs[start:start + batch], np.float32)
        for name, value in zip(heads, session.run(heads, {input_name: chunk})):
            out[name].append(np.asarray(value, np.float32))
    return {h: np.concatenate(v) for h, v in out.items()}


def fastest(key: str, sessions: Mapping[str, Callable[[], object]], inputs: np.ndarray, heads: list[str],
            rounds: int = 3) -> tuple[str, dict, object | None]:
    """(the engine that ran the reference fastest, seconds per batch by engine, its open session, or
    None when the cache answered).

    `sessions`: {engine: a function opening it}. Each runs the reference once (warm-up), then
    `rounds` times alternating; the medians decide."""
    cache = _read_cache()
    if key in cache and cache[key].get("fastest") in sessions:
        return cache[key]["fastest"], cache[key]["seconds_per_batch"], None
    opened = {}
    for name, opener in sessions.items():
        try:
            opened[name] = opener()
            run_reference(opened[name], inputs, heads)
        except Exception as err:  # noqa: BLE001 - an engine that cannot run this graph is not a candidate
            log.info("engine %s cannot run the float32 graph here: %s", name, err)
            opened.pop(name, None)
    times: dict[str, list[float]] = {name: [] for name in opened}
    for _ in range(rounds):
        for name, session in opened.items():
            start = time.perf_counter()
            run_reference(session, inputs, heads)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    if not medians:
        raise RuntimeError("no engine could run the bundle's float32 graph")
    best = min(medians, key=medians.get)
    seconds = {k: round(v, 5) for k, v in medians.items()}
    _write_cache(key, {"fastest": best, "seconds_per_batch": seconds, "batch": int(len(inputs)),
                       "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine.describe()})
    return best, seconds, opened[best]


def checks_enabled() -> bool:
    """`MSUNET_BUNDLE_CHECK=0` skips the check (the bundle's main graph runs as exported)."""
    return os.environ.get("MSUNET_BUNDLE_CHECK", "1").lower() not in ("0", "false", "no", "off")
