import keras
import numpy as np
import pytest

from msunet.models.layers import BilinearUpsampling2D, CropToMatch


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
def test_bilinear_matches_keras_image_resize(size):
    x = np.random.default_rng(1).random((2, 5, 7, 3), dtype=np.float32)
    ours = keras.ops.convert_to_numpy(BilinearUpsampling2D(size)(x))
    ref = keras.ops.convert_to_numpy(keras.ops.image.resize(x, (5 * size, 7 * size), interpolation="bilinear"))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_bilinear_on_a_single_pixel_and_bad_size():
    x = np.full((1, 1, 1, 2), 3.0, np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(BilinearUpsampling2D(4)(x)), np.full((1, 4, 4, 2), 3.0))
    with pytest.raises(ValueError, match="received size=0"):
        BilinearUpsampling2D(0)


def test_bilinear_traces_with_dynamic_sizes():
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, BilinearUpsampling2D(2)(inputs))
    for shape in [(1, 3, 5, 2), (2, 4, 4, 2), (1, 7, 1, 2)]:  # predict relaxes traced shapes to None
        assert model.predict(np.zeros(shape, np.float32), verbose=0).shape == (shape[0], 2 * shape[1], 2 * shape[2], 2)


def test_crop_to_match():
    x = np.arange(2 * 6 * 5 * 3, dtype=np.float32).reshape(2, 6, 5, 3)
    ref = np.zeros((2, 5, 4, 7), np.float32)
    out = keras.ops.convert_to_numpy(CropToMatch()([x, ref]))
    np.testing.assert_array_equal(out, x[:, :5, :4, :])
    assert CropToMatch().compute_output_shape([(None, 6, 5, 3), (None, None, 4, 7)]) == (None, None, 4, 3)


@pytest.mark.parametrize("layer", [CropToMatch(name="crop"), BilinearUpsampling2D(3, name="up")])
def test_config_round_trip(layer):
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"].startswith("msunet>")
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
