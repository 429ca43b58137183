"""Registries, bad combinations, and what distinguishes each part."""

import keras
import numpy as np
import pytest

from msunet.config import ConfigError, ModelConfig, RunConfig
from msunet.models import DECODERS, ENCODERS, build_model, registered_parts
from msunet.models.decoders import get_decoder
from msunet.models.encoders import get_encoder


def test_unknown_names_list_the_valid_ones_and_the_closest():
    with pytest.raises(ConfigError, match=r"model.encoder='resnet' is not registered; valid: 'conv', 'convnext_base', .*"
                                          r"'resnet50v2'.*Did you mean 'resnet50v2'"):
        get_encoder("resnet")
    with pytest.raises(ConfigError, match=r"model.decoder='unet3' is not registered; valid: .*Did you mean"):
        get_decoder("unet3")
    with pytest.raises(ConfigError, match=r"no config field 'encodr'.*Did you mean 'encoder'"):
        RunConfig().override(["encodr=resconv"])
    assert registered_parts() == {"encoders": sorted(ENCODERS), "decoders": sorted(DECODERS)}


@pytest.mark.parametrize("overrides, message", [
    (dict(decoder="unet3p", depth=1), r"unet3p.*depth=1.*model.depth=2 or more"),
    (dict(decoder="unetpp", attention=True), r"attention=true gates the skips of the 'unet' decoder.*model.attention=false"),
    (dict(encoder="conv", res_blocks=2), r"res_blocks / preactivation configure the 'resconv' encoder"),
    (dict(encoder="conv", preactivation=True), r"model.encoder=resconv"),
    (dict(attention="yes"), r"attention='yes' must be true or false"),
])
def test_combinations_that_cannot_work_say_why(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**overrides)


def test_cli_style_overrides_pick_parts():
    run = RunConfig().override(["model.encoder=resconv", "model.decoder=unetpp", "model.res_blocks=2",
                                "model.preactivation=true"])
    assert (run.model.encoder, run.model.decoder, run.model.res_blocks, run.model.preactivation) == (
        "resconv", "unetpp", 2, True)
    assert RunConfig.from_json(run.to_json()).model == run.model


def _layer_types(model):
    return {type(layer).__name__ for layer in model.layers}


def test_parts_differ_where_they_should():
    small = dict(depth=3, filters=4)
    conv, res = build_model(ModelConfig(**small)), build_model(ModelConfig(encoder="resconv", **small))
    assert "Add" not in _layer_types(conv) and "Add" in _layer_types(res)
    assert res.get_layer("enc1_res0_shortcut_conv")  # 4 -> 8 channels: projected shortcut
    strided = build_model(ModelConfig(encoder="resconv", downsample="strided_conv", **small))
    assert strided.get_layer("enc1_res0_shortcut_pool") and strided.get_layer("enc1_res0_conv1").strides == (2, 2)
    gated = build_model(ModelConfig(attention=True, **small))
    assert {f"dec{i}_up_gate_psi" for i in range(3)} <= {layer.name for layer in gated.layers}
    nested = build_model(ModelConfig(decoder="unetpp", **small))
    assert {f"dec{i}_{j}_conv1" for j in range(1, 4) for i in range(4 - j)} <= {layer.name for layer in nested.layers}
    full = build_model(ModelConfig(decoder="unet3p", **small))
    # stage 2 fuses enc0 (pooled by 4), enc1 (pooled by 2), enc2 and the bottleneck (upsampled by 2)
    parts = [layer.name for layer in full.layers if layer.name.startswith("dec2_from_") and layer.name.endswith("_conv")]
    assert sorted(parts) == ["dec2_from_dec3_conv", "dec2_from_enc0_conv", "dec2_from_enc1_conv", "dec2_from_enc2_conv"]
    assert full.get_layer("dec2_from_enc0_maxpool").pool_size == (4, 4)
    # stage 0 fuses enc0 and every deeper decoder stage (the bottleneck upsampled by 8)
    parts = [layer.name for layer in full.layers if layer.name.startswith("dec0_from_") and layer.name.endswith("_conv")]
    assert sorted(parts) == ["dec0_from_dec1_conv", "dec0_from_dec2_conv", "dec0_from_dec3_conv", "dec0_from_enc0_conv"]
    assert full.get_layer("dec0_conv").filters == 4 * 4  # cat channels x (depth + 1)


def test_attention_gate_scales_the_skip_by_a_map_in_0_1():
    model = build_model(ModelConfig(depth=2, filters=4, attention=True))
    probe = keras.Model(model.input, [model.get_layer("dec0_up_gate_psi").output,
                                      model.get_layer("dec0_up_gate_scale").output,
                                      model.get_layer("enc0_conv2_act").output])
    alpha, gated, skip = (keras.ops.convert_to_numpy(t) for t in probe(np.random.default_rng(0).random((1, 9, 7, 3), "float32")))
    assert alpha.shape == (1, 9, 7, 1) and 0 <= alpha.min() and alpha.max() <= 1
    np.testing.assert_allclose(gated, skip * alpha, rtol=1e-6)


def test_summary_list_names_every_part(capsys):
    from msunet.cli import main

    assert main(["summary", "--list"]) == 0
    out = capsys.readouterr().out
    for name in [*ENCODERS, *DECODERS]:
        assert f"  {name} " in out
    assert "model.encoder=NAME" in out and "model.decoder=NAME" in out and "UNet 3+" in out


def test_summary_builds_any_combination(capsys):
    from msunet.cli import main

    assert main(["summary", "--set", "model.encoder=resconv", "--set", "model.decoder=unet3p",
                 "--set", "model.depth=2", "--set", "model.filters=4", "--size", "37x101"]) == 0
    out = capsys.readouterr().out
    assert "mask_s2      (1, 19, 51, 1)" in out and "resconv_unet3p_d2" in out
