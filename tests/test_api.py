"""The public API: functions named like the CLI commands, a cheap `import msunet` (README and docs blocks: test_docs.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import ROOT


def _python(code: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def test_import_help_and_the_numpy_modules_start_no_keras_or_tensorflow():
    code = (
        "import sys, contextlib, io, msunet\n"
        "assert 'keras' not in sys.modules, 'import msunet imported keras'\n"
        "from msunet.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    main(['train', '--help'])\n"
        "assert 'evaluate' in out.getvalue() and '--data' in out.getvalue()\n"
        "heavy = sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "import msunet.plan.planner, msunet.config, msunet.heads, msunet.runtime, msunet.runtime.tiling, msunet.data.pairs, msunet.data.samples\n"
        "import msunet.training.check, msunet.evaluation.evaluate, msunet.inference.engines, msunet.models.encoders, msunet.models.decoders\n"
        "assert 'keras' not in sys.modules, 'a NumPy module imported keras'\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr[-3000:]


def test_public_functions_are_functions_and_no_module_shares_their_names():
    code = (
        "import inspect, importlib, pkgutil, msunet\n"
        "import msunet.training.run, msunet.inference.engines, msunet.evaluation.evaluate, msunet.training.check, msunet.exporting.bundle\n"
        "from msunet.training.run_folder import load_run\n"
        "modules = {m.name for m in pkgutil.iter_modules(msunet.__path__)}\n"
        "assert not modules & set(msunet.__all__), modules & set(msunet.__all__)\n"
        "assert type(msunet) is type(inspect)  # a plain module: no class swapped in\n"
        "for name in ('train', 'predict', 'evaluate', 'check', 'export'):\n"
        "    assert inspect.isfunction(getattr(msunet, name)), (name, getattr(msunet, name))\n"
        "assert msunet.check is msunet.check_dataset\n"
        "assert list(inspect.signature(msunet.train).parameters)[:4] == ['config', 'data_dir', 'out_dir', 'overrides']\n"
        "assert list(inspect.signature(msunet.check).parameters)[:3] == ['data_dir', 'config', 'overrides']\n"
        "assert list(inspect.signature(msunet.predict).parameters)[:3] == ['model', 'inputs', 'out_dir']\n"
        "assert list(inspect.signature(msunet.evaluate).parameters)[:3] == ['model', 'data_dir', 'out_dir']\n"
        "assert set(msunet.__all__) <= set(dir(msunet))\n"
        "for name in msunet.__all__: getattr(msunet, name)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr[-3000:]


def test_layers_registered_when_keras_is_imported_after_msunet(tmp_path):
    """`import msunet` imports no keras, yet a model saved by msunet reloads with plain keras."""
    save = "import msunet\nmsunet.build_model(msunet.ModelConfig(depth=1, filters=2, upsample='bilinear')).save(__import__('sys').argv[1])\n"
    assert _python(save, str(tmp_path / "m.keras")).returncode == 0
    load = (
        "import sys, msunet\n"
        "assert 'keras' not in sys.modules\n"
        "import keras\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "assert m.get_layer(index=-1) is not None\n"
    )
    result = _python(load, str(tmp_path / "m.keras"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "oneDNN" not in result.stderr  # the keras import went through msunet's quiet hook


def test_evaluate_refuses_a_mix_of_modes(tmp_path):
    import msunet

    with pytest.raises(ValueError, match="not a mix"):
        msunet.evaluate("run", "data", tmp_path, pred_dir="p", gt_dir="g")
    with pytest.raises(ValueError, match="model and data_dir, or pred_dir and gt_dir"):
        msunet.evaluate(out_dir=tmp_path)


def test_config_forms_are_equivalent(tmp_path):
    import json

    from msunet.config import RunConfig, resolve_run_config

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"depth": 2}, "train": {"epochs": 3}}))
    as_file, keys_file = resolve_run_config(path, ["data.patch_size=32"])
    as_dict, keys_dict = resolve_run_config({"model": {"depth": 2}, "train": {"epochs": 3}}, ["data.patch_size=32"])
    as_obj, keys_obj = resolve_run_config(RunConfig().override(["depth=2", "epochs=3"]), ["data.patch_size=32"])
    assert as_file == as_dict == as_obj
    assert keys_file == keys_dict == keys_obj == {"model.depth", "train.epochs", "data.patch_size"}
    assert resolve_run_config(None) == (RunConfig(), set())
    # A run's config.json as --config: only what that run's user set counts as set; the rest is planned anew.
    run_json = {**RunConfig().override(["in_channels=1", "epochs=3"]).to_dict(),
                "sources": {"model.in_channels": {"value": 1, "source": "data"},
                            "train.epochs": {"value": 3, "source": "user"}}}
    assert resolve_run_config(run_json)[1] == {"train.epochs"}
