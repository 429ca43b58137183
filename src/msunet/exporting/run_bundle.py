"""The int8 bundle a run keeps for `msunet predict`: its fastest measured path, made once.

`msunet predict --model RUN` (engine "auto", the default) predicts with `RUN/bundle-int8/`, the
run's `msunet export --int8` bundle: in `benchmarks/speed.py` the fastest of msunet's paths. The
bundle is exported the first time (seconds: the graph conversion and calibration on the patches
the run kept) and again whenever the run's model file changed (its SHA-256 is in `bundle.json`);
later calls load it without importing TensorFlow. It carries its float32 graph and a reference:
where it is loaded, `msunet.runtime.Predictor` checks the int8 graph against the reference on that
machine and runs the float32 graph (on ONNX Runtime or OpenVINO, the faster there) when int8 strays
(`msunet.runtime.selfcheck`). Where the int8 export fails, a float32 bundle is exported in its place;
where no bundle can be made (ONNX Runtime / tf2onnx not installed), `run_bundle` says why and
prediction stays on Keras; `--engine keras` asks for the Keras model itself.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import time
from collections.abc import Callable

from msunet.runtime.bundle import BundleError, is_bundle, read_bundle, sha256_of

RUN_BUNDLE = "bundle-int8"
EXPORT_MODULES = ("onnxruntime", "onnx", "tf2onnx")


def run_bundle_path(run_dir: str | os.PathLike, which: str = "best") -> pathlib.Path:
    return pathlib.Path(run_dir) / (RUN_BUNDLE if which == "best" else f"{RUN_BUNDLE}-{which}")


def current_bundle(run_dir: str | os.PathLike, which: str = "best") -> pathlib.Path | None:
    """The run's int8 bundle if it exists, is intact and was made from the run's present model file."""
    bundle, model_file = run_bundle_path(run_dir, which), pathlib.Path(run_dir) / f"{which}.keras"
    if not (is_bundle(bundle) and model_file.is_file()):
        return None
    try:
        meta = read_bundle(bundle)
    except BundleError:  # altered or half-copied: made again
        return None
    return bundle if meta.get("source", {}).get("model_sha256") == sha256_of(model_file) else None


def run_bundle(run_dir: str | os.PathLike, which: str = "best", log: Callable[[str], None] = print
               ) -> tuple[pathlib.Path | None, str]:
    """(the run's int8 bundle, how it was found) or (None, why prediction stays on Keras).

    Exports it (atomically, replacing an outdated one) when it is missing or older than the model.
    Whether its int8 graph or its float32 graph runs is decided where it is loaded
    (`msunet.runtime.Predictor`, the bundle's self-check on that machine).
    """
    run_dir = pathlib.Path(run_dir)
    if not (run_dir.is_dir() and (run_dir / f"{which}.keras").is_file() and (run_dir / "config.json").is_file()):
        return None, "not a run folder"
    if importlib.util.find_spec("onnxruntime") is None:
        return None, "ONNX Runtime is not installed (pip install 'msunet[export]' for the int8 path)"
    bundle = current_bundle(run_dir, which)
    if bundle is not None:
        return bundle, "made earlier from this model"
    missing = [m for m in EXPORT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return None, f"exporting the int8 bundle needs {', '.join(missing)} (pip install 'msunet[export]')"
    from msunet.exporting.bundle import export

    bundle = run_bundle_path(run_dir, which)
    log(f"exporting the run's int8 bundle once, to {bundle} (`--engine keras` predicts with the Keras model) ...")
    started = time.perf_counter()
    try:
        export(run_dir, bundle, which=which, int8=True, overwrite=True)
    except Exception as err:  # noqa: BLE001 - the bundle is a speed-up: a float32 bundle, else Keras
        why = f"the int8 export failed ({type(err).__name__}: {str(err).strip().splitlines()[0][:300]})"
        try:
            export(run_dir, bundle, which=which, overwrite=True)
        except Exception as again:  # noqa: BLE001
            return None, f"{why}; the float32 export too ({type(again).__name__}: {str(again).strip()[:200]})"
        return bundle, f"{why}; a float32 bundle exported instead in {time.perf_counter() - started:.1f} s"
    return bundle, f"exported in {time.perf_counter() - started:.1f} s"
