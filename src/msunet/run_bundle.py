"""The int8 bundle a run keeps for `msunet predict`: its fastest measured path, made once.

`msunet predict --model RUN` (engine "auto", the default) predicts with `RUN/bundle-int8/`, the
run's `msunet export --int8` bundle on ONNX Runtime: in `benchmarks/speed.py` the fastest of
msunet's paths and faster than PyTorch under bfloat16 autocast (README, Performance; its accuracy
cost in README, Export). The bundle is exported the first time (seconds: the graph conversion and
calibration on the patches the run kept) and again whenever the run's model file changed (its
SHA-256 is in `bundle.json`); later calls load it without importing TensorFlow. It is the default
only while int8 stays close to the float32 model on the run's calibration patches (below). Where it
cannot be made (ONNX Runtime / tf2onnx not installed, no calibration patches), `run_bundle` says why and
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
# The int8 bundle is predict's default only while it stays close to the float32 model on the run's
# calibration patches (measured at export, `bundle.json` "quantization"): mean probability change at
# most MAX_MEAN_CHANGE and at least MIN_MASK_AGREEMENT of the mask's pixels unchanged. Measured:
# barely trained test models 0.001-0.008 and 96.8-99.3% (their probabilities sit near 0.5), a
# group-norm U-Net with random weights 0.045 (int8 does not suit it); the DRIVE and DSB newcomer
# runs 0.0036 / 99.75% and 0.0022 / 99.88% (their test sets: 99.83% and 99.87% of pixels kept).
MAX_MEAN_CHANGE = 0.02
MIN_MASK_AGREEMENT = 0.95
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


def run_bundle(run_dir: str | os.PathLike, which: str = "best", log: Callable[[str], None] = print,
               faithful_only: bool = True) -> tuple[pathlib.Path | None, str]:
    """(the run's int8 bundle, how it was found) or (None, why prediction stays on Keras).

    Exports it (atomically, replacing an outdated one) when it is missing or older than the model.
    `faithful_only=False` returns it even when it strays from float32 (to evaluate it).
    """
    check = _if_faithful if faithful_only else (lambda bundle, how: (bundle, how))
    run_dir = pathlib.Path(run_dir)
    if not (run_dir.is_dir() and (run_dir / f"{which}.keras").is_file() and (run_dir / "config.json").is_file()):
        return None, "not a run folder"
    if importlib.util.find_spec("onnxruntime") is None:
        return None, "ONNX Runtime is not installed (pip install 'msunet[export]' for the int8 path)"
    bundle = current_bundle(run_dir, which)
    if bundle is not None:
        return check(bundle, "made earlier from this model")
    missing = [m for m in EXPORT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return None, f"exporting the int8 bundle needs {', '.join(missing)} (pip install 'msunet[export]')"
    from msunet.export import export

    bundle = run_bundle_path(run_dir, which)
    log(f"exporting the run's int8 bundle once, to {bundle} (`--engine keras` predicts with the Keras model) ...")
    started = time.perf_counter()
    try:
        export(run_dir, bundle, which=which, int8=True, overwrite=True)
    except Exception as err:  # noqa: BLE001 - the bundle is a speed-up: any failure leaves prediction on Keras
        return None, f"the int8 export failed ({type(err).__name__}: {str(err).strip().splitlines()[0][:300]})"
    return check(bundle, f"exported in {time.perf_counter() - started:.1f} s")


def _if_faithful(bundle: pathlib.Path, how: str) -> tuple[pathlib.Path | None, str]:
    quantization = read_bundle(bundle, verify=False).get("quantization") or {}
    change = quantization.get("calibration_mean_abs_difference", 0.0)
    agreement = quantization.get("calibration_mask_agreement", 1.0)
    if change > MAX_MEAN_CHANGE or agreement < MIN_MASK_AGREEMENT:
        return None, (f"its int8 bundle {bundle} moves probabilities by {change:.3f} on average and changes "
                      f"{100 * (1 - agreement):.1f}% of the mask's pixels on the run's calibration patches (limits "
                      f"{MAX_MEAN_CHANGE}, {100 * (1 - MIN_MASK_AGREEMENT):.0f}%); `--model {bundle}` uses it anyway")
    return bundle, how
