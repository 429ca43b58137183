"""Backbones from keras.applications: weights files, channel adaptation, offline errors, scaling."""

import numpy as np
import pytest

import keras
from msunet.config import ConfigError, ModelConfig, RunConfig
from msunet.models import build_model
from msunet.models.encoders import backbones
from msunet.models.encoders.backbones import adapt_first_kernel, construct_backbone
from msunet.models.encoders.backbone_table import BACKBONE_SPECS


def _extractor(model, name):
    return model.get_layer(f"{name}_backbone")


def _legacy_h5(backbone, path):
    """A weights file in the legacy HDF5 layout keras.applications ships."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, backbone)
    return path


@pytest.mark.parametrize("fmt", ["legacy_h5", "keras3"])
def test_a_weights_file_becomes_the_encoders_weights(tmp_path, fmt):
    name = "mobilenetv3small"
    source = construct_backbone(name, 3, None)
    for variable in source.trainable_variables:  # not the initial values: the file must be what is loaded
        variable.assign(np.random.default_rng(0).normal(size=variable.shape).astype("float32"))
    path = _legacy_h5(source, tmp_path / "w.h5") if fmt == "legacy_h5" else tmp_path / "w.weights.h5"
    if fmt == "keras3":
        source.save_weights(path)
    model = build_model(ModelConfig(encoder=name, encoder_weights=str(path), depth=3, filters=4))
    extractor = _extractor(model, name)
    by_name = {layer.name: layer for layer in source.layers}
    compared = 0
    for layer in (layer for layer in extractor.layers if layer.weights):
        for mine, theirs in zip(layer.get_weights(), by_name[layer.name].get_weights()):
            np.testing.assert_array_equal(mine, theirs, err_msg=layer.name)
            compared += 1
    assert compared > 20


def test_one_channel_sums_the_first_kernel_and_more_channels_rescale_it(tmp_path):
    kernel = np.random.default_rng(1).normal(size=(3, 3, 3, 5)).astype("float32")
    np.testing.assert_allclose(adapt_first_kernel(kernel, 1), kernel.sum(axis=2, keepdims=True), rtol=1e-6)
    five = adapt_first_kernel(kernel, 5)
    assert five.shape == (3, 3, 5, 5)
    np.testing.assert_allclose(five[:, :, 3], kernel[:, :, 0] * 3 / 5, rtol=1e-6)
    name = "resnet50v2"
    source = construct_backbone(name, 3, None)
    path = _legacy_h5(source, tmp_path / "w.h5")
    model = build_model(ModelConfig(encoder=name, encoder_weights=str(path), in_channels=1, depth=2, filters=4))
    first = _extractor(model, name).get_layer("conv1_conv").get_weights()[0]
    np.testing.assert_allclose(first, source.get_layer("conv1_conv").get_weights()[0].sum(axis=2, keepdims=True),
                               rtol=1e-6)


def test_a_file_for_another_backbone_names_the_first_layer_that_differs(tmp_path):
    path = _legacy_h5(construct_backbone("mobilenetv3small", 3, None), tmp_path / "other.h5")
    with pytest.raises(ConfigError, match="layer 'conv1_conv' of resnet50v2 has weights"):
        build_model(ModelConfig(encoder="resnet50v2", encoder_weights=str(path), depth=2, filters=4))
    with pytest.raises(ConfigError, match="no such file"):
        build_model(ModelConfig(encoder="resnet50v2", encoder_weights=str(tmp_path / "missing.h5"), depth=2))


def test_imagenet_without_network_says_which_file_to_download(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: no network")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ConfigError) as info:
        build_model(ModelConfig(encoder="efficientnetv2b0", encoder_weights="imagenet", depth=2, filters=4))
    message = str(info.value)
    assert BACKBONE_SPECS["efficientnetv2b0"].url in message and "model.encoder_weights=PATH" in message


def test_bad_combinations_and_names():
    with pytest.raises(ConfigError, match="ends at stride 32"):
        ModelConfig(encoder="resnet50v2", depth=6)
    with pytest.raises(ConfigError, match="built here from scratch"):
        ModelConfig(encoder="conv", encoder_weights="imagenet")
    with pytest.raises(ConfigError, match="resnet50v2"):  # an unknown name lists the valid ones
        ModelConfig(encoder="resnet50")


def test_the_model_takes_unit_images_and_scales_them_as_imagenet_expects(tmp_path):
    from msunet.plan.planner import plan_run
    from msunet.plan.survey import survey
    from test_plan import make_folder

    model = build_model(ModelConfig(encoder="convnext_tiny", depth=2, filters=4))
    scaling = model.get_layer("backbone_scaling")
    x = np.full((1, 8, 8, 3), 0.485, np.float32)
    assert np.allclose(keras.ops.convert_to_numpy(scaling(x))[..., 0], 0.0, atol=1e-5)
    run = RunConfig().override(["model.encoder=resnet50v2"])
    plan = plan_run(survey(make_folder(tmp_path)), run, {"model.encoder"})
    assert plan.config.data.normalization == "unit" and plan.sources["data.normalization"]["source"] == "data"
    assert backbones.FAMILIES["resnet_v2"].scaling == "tf"


def test_a_frozen_backbone_keeps_its_weights_then_trains_at_a_lower_rate(tmp_path):
    from msunet.data.synthetic import make_dataset
    from msunet.training.run import train
    from msunet.training.trainer import ScaledSchedule

    name = "mobilenetv3small"
    path = _legacy_h5(construct_backbone(name, 3, None), tmp_path / "w.h5")
    data = make_dataset(tmp_path / "data", count=6, size=(40, 40), seed=3)
    snapshots, rates = {}, {}

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            extractor = self.model.net.get_layer(f"{name}_backbone")
            snapshots[epoch] = [w.copy() for w in extractor.get_weights()]  # moving statistics included
            rates[epoch] = self.model.optimizer._learning_rate

    run = RunConfig().override([f"model.encoder={name}", f"model.encoder_weights={path}", "model.encoder_freeze_epochs=1",
                                "model.depth=2", "model.filters=4", "data.patch_size=32", "data.normalization=unit",
                                "train.batch_size=2", "train.steps_per_epoch=3", "train.epochs=2", "train.workers=1"])
    train(run, data, tmp_path / "run", verbose=0, plan=False, callbacks=[Watch()])
    initial = build_model(run.model).get_layer(f"{name}_backbone").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(snapshots[0], initial))  # frozen: nothing moved
    assert not all(np.array_equal(a, b) for a, b in zip(snapshots[1], initial))  # then it trains
    assert not isinstance(rates[0], ScaledSchedule) and isinstance(rates[1], ScaledSchedule)
    assert rates[1].factor == 0.1
    with pytest.raises(ConfigError, match="random weights would stay random"):
        ModelConfig(encoder=name, encoder_freeze_epochs=2)


def test_backbone_batch_norms_forget_their_initial_statistics_within_a_short_training():
    # MobileNetV3's own momentum (0.999) left its moving statistics half at their initial values
    # after 600 steps: DSB validation Dice 0.0003 against 0.85 in training.
    model = build_model(ModelConfig(encoder="mobilenetv3large", depth=2, filters=4))
    momenta = {layer.momentum for layer in _extractor(model, "mobilenetv3large").layers
               if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta and max(momenta) <= backbones.BN_MOMENTUM == 0.99
    assert 0.99 ** 600 < 0.01  # what is left of the initial statistics after the shortest newcomer run
