"""`pip install 'msunet[runtime]'` in a fresh virtual environment predicts from a bundle: no TensorFlow,
Keras or SciPy installed at all (stronger than not importing them). Runs in `make test`, so CI
exercises it on every change; it needs the package registry (skipped with the reason without it)."""

import os
import pathlib
import shutil
import subprocess
import sys
import venv

import numpy as np
import pytest

pytest.importorskip("tf2onnx", reason="exporting the bundle needs tf2onnx (pip install 'msunet[export]')")

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = r"""
import importlib.util, sys
missing = [m for m in ("tensorflow", "keras", "scipy") if importlib.util.find_spec(m) is None]
assert missing == ["tensorflow", "keras", "scipy"], f"installed in the runtime environment: {missing}"
import numpy as np
from msunet.runtime import Predictor
probs = Predictor(sys.argv[1]).predict(np.full((37, 101, 3), 90, np.uint8))
assert sorted(probs) == ["mask", "mask_s2"], sorted(probs)
print("ok", probs["mask"].shape, probs["mask_s2"].shape)
"""


def test_runtime_extra_installs_and_predicts_without_tensorflow(tmp_path):
    from msunet.config import RunConfig
    from msunet.data.preprocessing import Normalization
    from msunet.exporting.bundle import export
    from msunet.models import build_model
    from msunet.training.run_folder import LoadedRun

    cfg = RunConfig().override(["model.depth=2", "model.filters=4", "data.patch_size=32"])
    bundle = export(LoadedRun(build_model(cfg.model), cfg, Normalization("image"), None), tmp_path / "bundle")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    source = tmp_path / "src"  # a copy without the developer's build artefacts
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv*", ".git", "benchmarks", "tests", "*.egg-info",
                                                                 "build", "__pycache__", "demo_out"))
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{source}[runtime]"],
                             capture_output=True, text=True, timeout=600)
    if install.returncode != 0 and ("Could not find a version" in install.stderr or "NewConnectionError" in install.stderr
                                    or "No matching distribution" in install.stderr):
        pytest.skip(f"the package registry is not reachable: {install.stderr.strip().splitlines()[-1]}")
    assert install.returncode == 0, install.stdout + install.stderr
    result = subprocess.run([str(python), "-c", SCRIPT, str(bundle)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0 and "ok (37, 101, 1) (19, 51, 1)" in result.stdout, result.stdout + result.stderr
    size = sum(f.stat().st_size for f in (env_dir / "lib").rglob("*") if f.is_file())
    print(f"runtime environment: {size / 1e6:.0f} MB installed")
