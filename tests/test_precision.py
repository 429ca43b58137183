"""Mixed precision: "auto" resolution, float32 heads, training and saving in mixed_bfloat16."""

import keras
import numpy as np
import pytest

from msunet.config import ConfigError, ModelConfig, RunConfig
from msunet.models import build_model, resolve_precision
from msunet.data.synthetic import make_dataset
from msunet.training.run import train


def test_explicit_precision_wins_and_env_replaces_auto(monkeypatch):
    assert resolve_precision("float32") == "float32"
    assert resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    monkeypatch.setenv("MSUNET_PRECISION", "mixed_bfloat16")
    assert resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setenv("MSUNET_PRECISION", "half")
    with pytest.raises(ConfigError, match="MSUNET_PRECISION='half'"):
        resolve_precision("auto")
    monkeypatch.delenv("MSUNET_PRECISION")
    assert resolve_precision("auto") in ("float32", "mixed_bfloat16")
    with pytest.raises(ConfigError, match="precision"):
        ModelConfig(precision="int4")


def test_bf16_model_computes_in_bf16_and_returns_float32_and_restores_the_policy():
    before = keras.config.dtype_policy().name
    model = build_model(ModelConfig(depth=2, filters=4, upsample="bilinear", precision="mixed_bfloat16"))
    assert keras.config.dtype_policy().name == before
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs[0].compute_dtype == "bfloat16" and convs[0].variable_dtype == "float32"
    assert model.get_layer("mask_logits").compute_dtype == "float32"
    out = model(np.random.default_rng(0).random((1, 37, 29, 3), dtype=np.float32))
    assert {str(keras.backend.standardize_dtype(v.dtype)) for v in out.values()} == {"float32"}
    assert out["mask"].shape == (1, 37, 29, 1) and out["mask_s2"].shape == (1, 19, 15, 1)


def test_bf16_training_runs_saves_and_reloads(tmp_path):
    data = make_dataset(tmp_path / "data", count=8, size=(40, 40), seed=1)
    run = RunConfig().override(["model.depth=2", "model.filters=4", "model.precision=mixed_bfloat16",
                                "data.patch_size=32", "train.batch_size=4", "train.steps_per_epoch=3",
                                "train.epochs=2", "train.workers=1"])
    result = train(run, data, tmp_path / "run", verbose=0)
    assert result.epochs_done == 2 and np.isfinite(result.best_dice)
    loaded = keras.saving.load_model(tmp_path / "run" / "best.keras")
    assert loaded.layers[1].compute_dtype == "bfloat16"
    out = loaded(np.zeros((1, 32, 32, 3), np.float32))
    assert str(keras.backend.standardize_dtype(out["mask"].dtype)) == "float32"


def test_auto_on_a_gpu_is_mixed_precision_by_compute_capability(monkeypatch):
    """A forced device list: bfloat16 from Ampere (8.0) on, float16 with loss scaling before."""
    from msunet.models import build as models
    from msunet.training import probe

    monkeypatch.delenv("MSUNET_PRECISION", raising=False)
    monkeypatch.setattr(models, "accelerators", lambda: ["gpu:0"])
    for capability, expected in (((9, 0), "mixed_bfloat16"), ((8, 0), "mixed_bfloat16"), ((7, 5), "mixed_float16"),
                                 (None, "mixed_bfloat16")):
        monkeypatch.setattr(models, "gpu_compute_capability", lambda c=capability: c)
        assert resolve_precision("auto") == expected
        assert probe.precision_candidates() == ["float32", expected]
    monkeypatch.setattr(models, "accelerators", lambda: [])
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto") == "float32" and probe.precision_candidates() == ["float32"]


def test_float16_training_scales_the_loss(tmp_path):
    from msunet.training.trainer import make_optimizer

    run = RunConfig().override(["model.precision=mixed_float16", "train.time_budget_min=1"])
    optimizer = make_optimizer(run, 100)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    optimizer.learning_rate = 0.5  # TimeBudget drives the rate through the wrapper
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.5)
    assert not isinstance(make_optimizer(RunConfig().override(["model.precision=float32"]), 100),
                          keras.optimizers.LossScaleOptimizer)
    data = make_dataset(tmp_path / "data", count=6, size=(32, 32), seed=1)
    result = train(run.override(["model.depth=2", "model.filters=4", "data.patch_size=32", "train.batch_size=2",
                                 "train.steps_per_epoch=2", "train.epochs=1", "train.workers=1"]),
                   data, tmp_path / "run", verbose=0, plan=False)
    assert result.epochs_done == 1 and np.isfinite(result.best_dice)
