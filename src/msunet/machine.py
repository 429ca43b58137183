"""This machine's CPU as the numeric kernels see it, and msunet's per-machine cache folder (no TensorFlow).

Which kernels ONNX Runtime, OpenVINO and oneDNN pick depends on the CPU's instruction sets: int8
convolutions on AVX2 (and AVX-512 without VNNI) use `VPMADDUBSW`, whose 16-bit sums saturate for
8-bit weights, where VNNI machines accumulate in 32 bits; bfloat16 runs natively only with
AVX512-BF16 or AMX. `features()` names the flags that matter, recorded in bundles and benchmark
results; `fingerprint()` keys the caches of measurements that hold for one machine only (the
bundle self-check, the engine timing, the training-step probe).

TensorFlow picks its CPU kernels (oneDNN or Eigen) from the CPU too, once, at import: `prefer_onednn`
(called by `import msunet`) asks for oneDNN on every x86-64 CPU, `tensorflow_onednn` says which it gets.

`python -m msunet.machine` prints the CPU model and those flags (the first lines of CI's log).
"""

from __future__ import annotations

import functools
import os
import pathlib
import platform
import sys

# The instruction sets numeric kernels choose by, in /proc/cpuinfo's names (grouped as printed).
FLAGS = {
    "avx2": ("avx2",), "fma": ("fma",), "avx512": ("avx512f", "avx512bw", "avx512vl"),
    "vnni": ("avx512_vnni", "avx_vnni"), "bf16": ("avx512_bf16", "amx_bf16"), "amx": ("amx_tile", "amx_int8"),
}


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = None, frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
    except OSError:  # not Linux: the model from platform, flags unknown
        pass
    return model or platform.processor() or platform.machine(), flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """The CPU's flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    return _cpuinfo()[1]


def features() -> dict[str, bool | None]:
    """{group: present} for the instruction sets in FLAGS; None for each when the flags are unknown."""
    flags = cpu_flags()
    return {group: (any(f in flags for f in names) if flags else None) for group, names in FLAGS.items()}


def flags_that_matter() -> list[str]:
    """The flags of FLAGS this CPU has, sorted."""
    flags = cpu_flags()
    return sorted(f for names in FLAGS.values() for f in names if f in flags)


def describe() -> dict:
    """CPU model, cores, the flags that matter and the detailed flag names present: what a result
    measured here is recorded with."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": cores, "features": features(), "flags": flags_that_matter(),
            "machine": platform.machine()}


X86_64 = ("x86_64", "amd64", "x64")
# TensorFlow turns its oneDNN kernels on by itself only on CPUs with one of these (its DefaultOneDnnPolicy, Linux).
ONEDNN_BY_DEFAULT = ("vnni", "bf16", "amx")


def onednn_requested() -> bool | None:
    """What `TF_ENABLE_ONEDNN_OPTS` asks TensorFlow for: True / False; None where unset or unreadable."""
    value = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower()
    return True if value in ("1", "true") else False if value in ("0", "false") else None


def prefer_onednn() -> None:
    """`TF_ENABLE_ONEDNN_OPTS=1` unless set, on x86-64, before TensorFlow loads (it reads it once); `import
    msunet` calls it. TensorFlow turns oneDNN on by itself only with ONEDNN_BY_DEFAULT's features and runs
    Eigen's kernels elsewhere: a 3-D training step ~4x and a 2-D one ~1.15x slower with oneDNN held to AVX2
    (docs/performance.md)."""
    if platform.machine().lower() in X86_64 and "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def tensorflow_onednn() -> bool:
    """Whether TensorFlow runs (or will run) its oneDNN CPU kernels here, read from the environment and the
    CPU (no TensorFlow): `TF_ENABLE_ONEDNN_OPTS` where set (`prefer_onednn`), else TensorFlow's default,
    on x86-64 only with VNNI, BF16 or AMX."""
    if platform.machine().lower() not in X86_64:
        return False
    requested = onednn_requested()
    if requested is not None:
        return requested
    found = features()
    return any(found.get(group) for group in ONEDNN_BY_DEFAULT)


def fingerprint() -> str:
    """What kernel choice depends on: CPU model and the flags in FLAGS (not the core count)."""
    return f"{cpu_model()} | {platform.machine()} | {' '.join(flags_that_matter()) or 'flags unknown'}"


def cache_dir() -> pathlib.Path:
    """`$MSUNET_CACHE_DIR`, else `$XDG_CACHE_HOME/msunet`, else `~/.cache/msunet`."""
    root = os.environ.get("MSUNET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "msunet")
    return pathlib.Path(root)


def summary_line() -> str:
    info = describe()
    marks = ", ".join(f"{k} {'yes' if v else 'no' if v is not None else '?'}" for k, v in info["features"].items())
    return f"CPU: {info['cpu']} ({info['cores']} cores, {info['machine']}); {marks}"


if __name__ == "__main__":
    print(summary_line())
    print("flags that matter:", " ".join(describe()["flags"]) or "(none found)")
