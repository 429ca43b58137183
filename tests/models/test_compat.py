"""Runs and configs written before the encoder/decoder split still load and give the same outputs
(tests/data/compat_v0, made by the version before it)."""

import keras
import numpy as np
import pytest

from helpers import ROOT
from msunet.config import ConfigError, ModelConfig, RunConfig
from msunet.models import build_model, load_model

FIXTURE = ROOT / "tests" / "data" / "compat_v0"


@pytest.fixture(scope="module")
def outputs():
    return np.load(FIXTURE / "outputs.npz")


@pytest.mark.parametrize("number", [1, 2, 3])
def test_seed_examples_build_the_same_model(number, outputs):
    cfg = RunConfig.from_json(ROOT / "examples" / f"seed{number}.json").model
    assert (cfg.encoder, cfg.decoder, cfg.decoder_options.attention) == ("conv", "unet", False)
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    x = outputs["input"][..., : cfg.in_channels]
    got = model(x, training=False)
    names = [k.split("/")[1] for k in outputs.files if k.startswith(f"seed{number}/")]
    assert sorted(got) == sorted(names)
    for name in names:  # batch norm now runs TensorFlow's fused kernel: same weights, float32 rounding only
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got[name]), outputs[f"seed{number}/{name}"],
                                   rtol=1e-5, atol=1e-6)


def test_saved_run_config_and_model_load(outputs):
    run = RunConfig.from_json(FIXTURE / "config.json")  # has "architecture": "unet"
    assert run.model.encoder == "conv" and run.model.decoder == "unet"
    assert "architecture" not in run.to_dict()["model"]
    model = load_model(FIXTURE / "tiny.keras")
    got = model(outputs["input"], training=False)
    for name in run.model.head_names:  # stored on another CPU: its kernels round float32 differently (6e-8 seen
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got[name]), outputs[f"tiny/{name}"],  # on AVX2)
                                   rtol=1e-5, atol=1e-6)
    keras.utils.set_random_seed(0)  # and rebuilding it from its config gives the same weights
    rebuilt = build_model(run.model)
    for a, b in zip(rebuilt.weights, model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_a_legacy_architecture_other_than_unet_is_refused():
    with pytest.raises(ConfigError, match="architecture='fpn'.*model.encoder.*model.decoder"):
        ModelConfig.from_dict({"architecture": "fpn"})
