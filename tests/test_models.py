import itertools
import json
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from helpers import ROOT, expected_shapes, random_image, tiny_config
from msunet.config import ConfigError, ModelConfig
from msunet.models import (
    build_model,
    logits_model,
    output_names,
    output_shapes,
    seed_example,
    select_outputs,
)

ODD_SIZES = [(1, 1), (5, 3), (37, 101), (64, 64)]


def run(model, x):
    """Eager call (no tracing per shape), outputs as NumPy."""
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(x, training=False).items()}


# --- Shape matrix ---------------------------------------------------------------------------------
MATRIX = list(itertools.product([1, 2, 3], ["nearest", "bilinear", "transpose"], ["concat", "add"], [1, 3]))


@pytest.mark.parametrize("depth, upsample, fusion, classes", MATRIX)
def test_shape_matrix(depth, upsample, fusion, classes):
    cfg = tiny_config(depth=depth, upsample=upsample, fusion=fusion, num_classes=classes, fused_head=True)
    model = build_model(cfg)
    for height, width in ODD_SIZES:
        out = run(model, random_image(height, width))
        assert {k: v.shape for k, v in out.items()} == expected_shapes(cfg, height, width), (height, width)


@pytest.mark.parametrize("downsample", ["maxpool", "avgpool", "strided_conv"])
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_downsampling_and_norm_options(downsample, norm):
    cfg = tiny_config(depth=3, downsample=downsample, norm=norm, convs_per_block=1, kernel_size=5, dropout=0.2)
    model = build_model(cfg)
    out = run(model, random_image(255, 257, batch=2))
    assert {k: v.shape for k, v in out.items()} == expected_shapes(cfg, 255, 257, batch=2)


def test_deepest_model_on_tiny_and_odd_sizes():
    cfg = ModelConfig(depth=7, filters=2, filter_growth=1.0)
    model = build_model(cfg)
    assert len(cfg.head_names) == 7
    for height, width in [(1, 1), (129, 3)]:
        out = run(model, random_image(height, width))
        assert {k: v.shape for k, v in out.items()} == expected_shapes(cfg, height, width)


def test_symbolic_output_shapes_match_runtime():
    cfg = tiny_config(depth=3, fused_head=True)
    assert output_shapes(build_model(cfg), (37, 101)) == expected_shapes(cfg, 37, 101)


def test_head_switches():
    assert output_names(build_model(tiny_config(depth=3, deep_supervision=False))) == ["mask"]
    assert output_names(build_model(tiny_config(depth=3, ds_heads=1))) == ["mask", "mask_s2"]
    assert output_names(build_model(tiny_config(depth=3, ds_heads=0, fused_head=True))) == ["mask", "mask_fused"]


def test_probabilities_are_valid_and_logits_view_shares_weights():
    model = build_model(tiny_config(num_classes=4))
    x = random_image(20, 24)
    probs = run(model, x)
    np.testing.assert_allclose(probs["mask"].sum(-1), 1.0, atol=1e-5)  # softmax
    logits = run(logits_model(model), x)
    for name in probs:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(logits[name])), probs[name], atol=1e-6)
    binary = build_model(tiny_config(output_activation="linear"))
    assert run(binary, x)["mask"].min() < 0  # raw logits


def test_select_outputs_prunes_coarse_heads():
    model = build_model(tiny_config(depth=3, fused_head=True))
    only = select_outputs(model, ["mask"])
    assert output_names(only) == ["mask"]
    names = {layer.name for layer in only.layers}
    assert "mask_s2_logits" not in names and "mask_fused_logits" not in names
    x = random_image(16, 16)
    np.testing.assert_array_equal(run(only, x)["mask"], run(model, x)["mask"])
    with pytest.raises(ValueError, match="no output 'mask_s3'.*Did you mean"):
        select_outputs(model, ["mask_s3"])


def test_no_lambda_layers_and_no_crop_when_size_is_fixed_and_divisible():
    dynamic = build_model(tiny_config(depth=3, upsample="bilinear", fused_head=True))
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in dynamic.layers)
    assert any(type(layer).__name__ == "CropToMatch" for layer in dynamic.layers)
    fixed = build_model(tiny_config(depth=3, upsample="bilinear", fused_head=True, input_size=(64, 64)))
    assert not any(type(layer).__name__ == "CropToMatch" for layer in fixed.layers)
    odd_fixed = build_model(tiny_config(depth=3, input_size=(37, 101)))
    out = run(odd_fixed, random_image(37, 101))
    assert out["mask_s4"].shape == (1, 10, 26, 1)


def test_layer_names_are_hierarchical_and_unique():
    model = build_model(tiny_config(depth=3, fused_head=True))
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert {"enc0_conv1", "enc2_down_maxpool", "bottleneck_conv2", "dec0_up_transpose", "mask_s4_logits"} <= set(names)


# --- Registry ---------------------------------------------------------------------------------------
def test_registry_error_lists_valid_names():
    with pytest.raises(ConfigError, match=r"encoder='resconf' is not registered; valid: 'conv', .*'resconv'.*Did you mean 'resconv'"):
        ModelConfig(encoder="resconf")
    with pytest.raises(ConfigError, match=r"decoder='unet_pp' is not registered.*'unetpp'.*Did you mean 'unetpp'"):
        ModelConfig(decoder="unet_pp")
    assert ModelConfig(decoder="UNet++").decoder == "unetpp" and ModelConfig(decoder="unet3+").decoder == "unet3p"


# --- Seed snippets, fixed -----------------------------------------------------------------------------
def test_seed_1_returns_input_size_not_twice_it():
    model = build_model(seed_example(1))
    assert output_shapes(model, (256, 256)) == {"mask": (1, 256, 256, 1), "mask_s2": (1, 128, 128, 1)}
    # every encoder level, the bottleneck included, reaches the full-resolution head
    assert model.get_layer("bottleneck_conv2").output.shape[-1] == 256


def test_seed_2_works_on_sizes_not_divisible_by_8():
    model = build_model(seed_example(2))
    out = run(model, random_image(250, 190, channels=1))
    assert {k: v.shape for k, v in out.items()} == expected_shapes(seed_example(2), 250, 190)


def test_seed_3_transposed_decoder_with_fused_head():
    cfg = seed_example(3)
    model = build_model(cfg)
    assert output_names(model) == ["mask", "mask_s2", "mask_s4", "mask_fused"]
    assert output_shapes(model, (100, 60)) == expected_shapes(cfg, 100, 60)
    assert any(isinstance(layer, keras.layers.Conv2DTranspose) for layer in model.layers)


def test_seed_2_parameter_count_by_hand():
    # Seed 2: grayscale in, filters 16-32-64 + bottleneck 128, two 3x3 convs per block with bias
    # (no normalisation), nearest upsampling (no weights), concatenation, 1x1 heads at 1, 1/2, 1/4.
    def conv(k, cin, cout):  # weights + biases
        return k * k * cin * cout + cout

    encoder = (
        conv(3, 1, 16) + conv(3, 16, 16)  # enc0:       160 + 2320
        + conv(3, 16, 32) + conv(3, 32, 32)  # enc1:    4640 + 9248
        + conv(3, 32, 64) + conv(3, 64, 64)  # enc2:   18496 + 36928
        + conv(3, 64, 128) + conv(3, 128, 128)  # bottleneck: 73856 + 147584
    )
    decoder = (
        conv(3, 128 + 64, 64) + conv(3, 64, 64)  # dec2: 110656 + 36928
        + conv(3, 64 + 32, 32) + conv(3, 32, 32)  # dec1: 27680 + 9248
        + conv(3, 32 + 16, 16) + conv(3, 16, 16)  # dec0:  6928 + 2320
    )
    heads = conv(1, 16, 1) + conv(1, 32, 1) + conv(1, 64, 1)  # 17 + 33 + 65
    assert (encoder, decoder, heads) == (293232, 193760, 115)
    assert build_model(seed_example(2)).count_params() == encoder + decoder + heads == 487107


def test_examples_json_are_the_seed_configs():
    for number in (1, 2, 3):
        path = ROOT / "examples" / f"seed{number}.json"
        assert ModelConfig.from_json(path) == seed_example(number), path


def test_default_model_is_the_classic_7_8m_unet():
    # depth 4, 32 base filters, transposed-conv decoder: the U-Net the benchmarks compare against.
    assert build_model(ModelConfig(deep_supervision=False)).count_params() == pytest.approx(7.77e6, rel=0.01)


# --- Gradients ------------------------------------------------------------------------------------------
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="uses tf.GradientTape (default backend)")
def test_each_head_is_trainable_on_its_own():
    import tensorflow as tf

    cfg = tiny_config(depth=3, fused_head=True)
    model = build_model(cfg)
    x = tf.constant(random_image(24, 20, batch=2))
    heads = cfg.head_names
    for name in heads:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x, training=True)[name])
        own = model.get_layer(f"{name}_logits").trainable_weights
        others = [w for other in heads if other != name for w in model.get_layer(f"{other}_logits").trainable_weights]
        grads = tape.gradient(loss, own + others + model.get_layer("enc0_conv1").trainable_weights)
        own_grads, other_grads, first_conv = grads[: len(own)], grads[len(own) : -1], grads[-1]
        assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in own_grads), name
        assert all(g is None for g in other_grads), name  # a head's loss never trains another head
        assert first_conv is not None and float(tf.reduce_max(tf.abs(first_conv))) > 0, name


# --- Saving --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
def test_save_and_plain_reload_give_identical_outputs(tmp_path, upsample):
    cfg = tiny_config(depth=3, upsample=upsample, fused_head=True, norm="group")
    model = build_model(cfg)
    x = random_image(37, 41)
    before = run(model, x)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)  # no custom_objects
    after = run(loaded, x)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    with zipfile.ZipFile(path) as archive:
        assert "Lambda" not in archive.read("config.json").decode()


def test_reload_in_a_fresh_process(tmp_path):
    model = build_model(tiny_config(upsample="bilinear"))
    x = random_image(9, 13)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", run(model, x)["mask"])
    model.save(tmp_path / "m.keras")
    code = (
        "import sys, numpy as np, keras, msunet\n"
        "d = sys.argv[1]\n"
        "m = keras.saving.load_model(d + '/m.keras')\n"
        "y = keras.ops.convert_to_numpy(m(np.load(d + '/x.npy'), training=False)['mask'])\n"
        "assert np.allclose(y, np.load(d + '/y.npy'), rtol=1e-5, atol=1e-6), 'outputs differ'\n"  # float32 rounding
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)


def test_model_json_contains_the_config_layers_only():
    config = json.loads(build_model(tiny_config(fused_head=True)).to_json())
    classes = {layer["class_name"] for layer in config["config"]["layers"]}
    assert classes <= {
        "InputLayer", "Conv2D", "BatchNormalization", "Activation", "MaxPooling2D", "Conv2DTranspose",
        "CropToMatch", "Concatenate", "BilinearUpsampling2D",
    }
