"""Every encoder x decoder that builds volumes (`model.dims=3`) through the same harness as the images
(tests/models/harness.py): exact sizes at odd shapes, save/reload, gradients to every weight, learning."""

import numpy as np
import pytest

from harness import (
    check_fit_lowers_loss,
    check_gradients,
    check_output_sizes,
    check_save_reload,
    combo_id,
    small_config,
    volume_architectures,
)
from msunet.config import ConfigError, ModelConfig

COMBOS = volume_architectures()


def test_every_built_in_part_builds_volumes():
    ids = {combo_id(c) for c in COMBOS}
    assert {"conv-unet-3d", "conv-unetpp-3d", "conv-unet3p-3d", "resconv-unet-3d", "conv-unet-attention-3d",
            "conv-unet-inplane1-3d"} <= ids


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_volume_contract(combo, tmp_path):
    cfg = small_config(combo)
    model = check_output_sizes(cfg)
    assert len(model.inputs[0].shape) == 5 and any(type(layer).__name__ == "Conv3D" for layer in model.layers)
    check_save_reload(model, tmp_path)


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_volume_training(combo):
    cfg = small_config(combo, depth=2)
    check_gradients(cfg)
    check_fit_lowers_loss(cfg)


def test_in_plane_levels_keep_the_slices():
    """nnU-Net's anisotropic pooling: with inplane_levels=2 the first two downsamplings keep every slice."""
    cfg = ModelConfig(dims=3, depth=3, filters=2, inplane_levels=2, in_channels=1)
    assert cfg.level_strides == ((1, 2, 2), (1, 2, 2), (2, 2, 2))
    assert cfg.scale_factor(4) == (1, 4, 4) and cfg.scale_factor(8) == (2, 8, 8)
    from msunet.models import build_model

    out = build_model(cfg).predict(np.zeros((1, 5, 9, 10, 1), "float32"), verbose=0)
    assert {k: v.shape[1:4] for k, v in out.items()} == {"mask": (5, 9, 10), "mask_s2": (5, 5, 5), "mask_s4": (5, 3, 3)}


@pytest.mark.parametrize("overrides, message", [
    (dict(dims=3, encoder="resnet50v2"), "2-D only"),
    (dict(dims=2, inplane_levels=1), "needs model.dims=3"),
    (dict(dims=3, input_size=(64, 64)), "[depth, height, width]"),
    (dict(dims=4), "dims"),
])
def test_volume_configs_that_cannot_work_say_why(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelConfig(**overrides)


def test_summary_of_a_volume_model(capsys):
    """`msunet summary --size DxHxW` builds the 3-D model and prints each head's exact shape."""
    from msunet.cli import main

    assert main(["summary", "--set", "model.depth=2", "--set", "model.filters=4", "--set", "model.in_channels=1",
                 "--size", "7x37x30"]) == 0
    out = capsys.readouterr().out
    assert "Outputs for a 7x37x30 input:" in out and "mask_s2      (1, 4, 19, 15, 1)" in out
