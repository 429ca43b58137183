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
    assert registered_parts() == {"encoders": ENCODERS.names(), "decoders": DECODERS.names()}


@pytest.mark.parametrize("overrides, message", [
    (dict(decoder="unet3p", depth=1), r"unet3p.*depth=1.*model.depth=2 or more"),
    (dict(decoder="unetpp", attention=True), r"attention configures the 'unet' decoder; decoder='unetpp' has no such "
                                               r"option.*model.decoder=unet"),
    (dict(encoder="conv", res_blocks=2), r"res_blocks configures the 'resconv' encoder.*model.encoder=resconv"),
    (dict(encoder="conv", preactivation=True), r"model.encoder=resconv"),
    (dict(attention="yes"), r"attention='yes' must be true or false"),
    (dict(encoder="resconv", encoder_options={"res_block": 2}), r"no field 'res_block'.*Did you mean 'res_blocks'"),
    (dict(encoder="resnet50v2", depth=6), r"ends at stride 32.*model.depth to 5 or less"),
    (dict(encoder_weights="imagenet"), r"encoder='conv' is built here from scratch"),
])
def test_combinations_that_cannot_work_say_why(overrides, message):
    """A part's option by its own name (the flat keys of older configs and --set) is routed to its part."""
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(overrides)


def test_cli_style_overrides_pick_parts():
    run = RunConfig().override(["model.encoder=resconv", "model.decoder=unetpp", "model.res_blocks=2",
                                "model.encoder_options.preactivation=true"])
    options = run.model.encoder_options
    assert (run.model.encoder, run.model.decoder, options.res_blocks, options.preactivation) == (
        "resconv", "unetpp", 2, True)
    assert RunConfig.from_json(run.to_json()).model == run.model
    assert run.to_dict()["model"]["encoder_options"] == {"res_blocks": 2, "preactivation": True}


def _layer_types(model):
    return {type(layer).__name__ for layer in model.layers}


def test_parts_differ_where_they_should():
    small = dict(depth=3, filters=4)
    conv, res = build_model(ModelConfig(**small)), build_model(ModelConfig(encoder="resconv", **small))
    assert "Add" not in _layer_types(conv) and "Add" in _layer_types(res)
    assert res.get_layer("enc1_res0_shortcut_conv")  # 4 -> 8 channels: projected shortcut
    strided = build_model(ModelConfig(encoder="resconv", downsample="strided_conv", **small))
    assert strided.get_layer("enc1_res0_shortcut_pool") and strided.get_layer("enc1_res0_conv1").strides == (2, 2)
    gated = build_model(ModelConfig(decoder_options={"attention": True}, **small))
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
    model = build_model(ModelConfig(depth=2, filters=4, decoder_options={"attention": True}))
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
