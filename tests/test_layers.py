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


# --------------------------------------------------------------------------------------------------
# msunet.models.layers.BatchNormalization: TensorFlow's fused kernel, the same numbers as Keras' layer
# --------------------------------------------------------------------------------------------------
def _bn_pair(policy, channels=6, seed=0, rank=4):
    from msunet.models.layers import BatchNormalization as FusedBatchNormalization

    rng = np.random.default_rng(seed)
    ours = FusedBatchNormalization(momentum=0.9, dtype=policy)
    ref = keras.layers.BatchNormalization(momentum=0.9, dtype=policy)
    weights = [rng.normal(size=channels).astype("float32"), rng.normal(size=channels).astype("float32"),
               rng.normal(size=channels).astype("float32"), rng.uniform(0.5, 2, channels).astype("float32")]
    for layer in (ours, ref):
        layer.build((None,) * (rank - 1) + (channels,))
        layer.set_weights(weights)
    return ours, ref


@pytest.mark.parametrize("policy,atol", [("float32", 1e-4), ("mixed_bfloat16", 2e-2)])
def test_fused_batch_norm_matches_keras_forward_backward_and_statistics(policy, atol):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the fused kernel is TensorFlow's; other backends use Keras' layer itself")
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, (4, 9, 7, 6)).astype("float32"))
    probe = tf.constant(np.linspace(-1, 1, x.shape.num_elements()).reshape(x.shape).astype("float32"))
    results = []
    for layer in _bn_pair(policy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * probe)
        grads = tape.gradient(loss, [x] + layer.trainable_weights)
        stats = [v.numpy() for v in layer.non_trainable_weights]
        results.append((y, grads, stats, layer(x, training=False)))
    (y1, g1, s1, i1), (y2, g2, s2, i2) = results
    assert y1.dtype == y2.dtype  # bfloat16 out under mixed precision, like Keras
    as_np = lambda t: np.asarray(tf.cast(t, tf.float32))  # noqa: E731
    np.testing.assert_allclose(as_np(y1), as_np(y2), atol=atol)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(as_np(a), as_np(b), atol=atol * 10, rtol=atol)
    for a, b in zip(s1, s2):  # moving mean / variance (biased batch variance, momentum 0.9)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(as_np(i1), as_np(i2), atol=atol)


def test_fused_batch_norm_falls_back_to_keras_where_the_kernel_does_not_apply():
    ours, ref = _bn_pair("float32", rank=3)
    x = np.random.default_rng(2).normal(size=(3, 5, 6)).astype("float32")  # 3-D: not the 4-D kernel
    mask = np.random.default_rng(3).random((3, 5)) > 0.3
    for kwargs in ({}, {"mask": mask}):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x, training=True, **kwargs)),
                                   keras.ops.convert_to_numpy(ref(x, training=True, **kwargs)), atol=1e-5)
    np.testing.assert_allclose(ours.get_weights()[2], ref.get_weights()[2], rtol=1e-6)


def test_models_use_the_fused_layer_and_load_keras_batch_norm_weights(tmp_path):
    from msunet.config import ModelConfig
    from msunet.models import build_model
    from msunet.models.layers import BatchNormalization as FusedBatchNormalization

    model = build_model(ModelConfig(depth=2, filters=4))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(isinstance(layer, FusedBatchNormalization) for layer in norms)
    x = np.random.default_rng(4).random((2, 24, 24, 3), dtype=np.float32)
    model.save(tmp_path / "m.keras")  # registered: reloads without custom_objects
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(x)["mask"]),
                               keras.ops.convert_to_numpy(model(x)["mask"]), atol=1e-6)
    # Weights saved from a model built with Keras' own BatchNormalization (earlier msunet versions) load as they are.
    from msunet.models import blocks

    saved, blocks.BatchNormalization = blocks.BatchNormalization, keras.layers.BatchNormalization
    try:
        old = build_model(ModelConfig(depth=2, filters=4))
    finally:
        blocks.BatchNormalization = saved
    old.set_weights([w + 0.01 for w in model.get_weights()])
    old.save_weights(tmp_path / "old.weights.h5")
    model.load_weights(tmp_path / "old.weights.h5")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)["mask"]),
                               keras.ops.convert_to_numpy(old(x)["mask"]), atol=1e-5)
