"""Registered layers used inside msunet graphs (never `Lambda`, so models reload safely)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="msunet")
class CropToMatch(keras.layers.Layer):
    """Crops the spatial size of `x` to that of `reference` (top-left anchored), in 2-D or 3-D.

    Stride-2 "same" downsampling rounds sizes up (ceil(H/2)), so upsampling by 2 can overshoot the
    skip connection by one pixel on odd sizes; this layer removes that pixel. The builder only
    inserts it where the two sizes are not known to be equal, so fixed, divisible input sizes pay
    nothing.

    Example:
    ```python
    y = CropToMatch()([upsampled, skip])  # y has skip's height and width (and depth, for volumes)
    ```

    Input shape:
        A list `[x, reference]` of 4D (images) or 5D (volumes) channels-last tensors; `x` at least
        as large as `reference`.
    Output shape:
        `(batch, *reference_spatial_shape, x_channels)`.
    """

    def call(self, inputs):
        x, reference = inputs
        x_shape = ops.shape(x)
        ref_shape = ops.shape(reference)
        rank = len(x.shape)
        return ops.slice(x, (0,) * rank, (x_shape[0], *(ref_shape[1:rank - 1]), x_shape[rank - 1]))

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        return (x_shape[0], *ref_shape[1:-1], x_shape[-1])


@keras.saving.register_keras_serializable(package="msunet")
class BilinearUpsampling2D(keras.layers.Layer):
    """Bilinear upsampling by an integer factor that works on inputs of unknown size.

    It gives the same values as `keras.ops.image.resize(x, (H*f, W*f), "bilinear")` (half-pixel
    centres, edges clamped), but is written with slices and weighted sums so that it traces with
    dynamic height and width on every backend; `UpSampling2D(interpolation="bilinear")` passes a
    dynamic size to `image.resize`, which the TensorFlow backend rejects once Keras relaxes the
    traced shapes.

    Example:
    ```python
    y = BilinearUpsampling2D(2)(x)  # (b, 2h, 2w, c)
    ```

    Args:
        size: integer upsampling factor (same for height and width), >= 1.

    Input shape:
        4D channels-last tensor `(batch, height, width, channels)`.
    Output shape:
        `(batch, height * size, width * size, channels)`.
    """

    def __init__(self, size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"BilinearUpsampling2D: size must be an integer >= 1, received size={size!r}.")
        self.size = size
        # Offsets of each output phase from its source pixel centre, in input pixels: in (-0.5, 0.5).
        self._offsets = [(k + 0.5) / size - 0.5 for k in range(size)]

    def _upsample_axis(self, x, axis: int):
        first = x[:, :1] if axis == 1 else x[:, :, :1]
        last = x[:, -1:] if axis == 1 else x[:, :, -1:]
        padded = ops.concatenate([first, x, last], axis=axis)
        if axis == 1:
            prev, nxt = padded[:, :-2], padded[:, 2:]
        else:
            prev, nxt = padded[:, :, :-2], padded[:, :, 2:]
        phases = []
        for offset in self._offsets:
            if offset < 0:
                phases.append(x * (1.0 + offset) + prev * (-offset))
            else:
                phases.append(x * (1.0 - offset) + nxt * offset)
        stacked = ops.stack(phases, axis=axis + 1)
        shape = ops.shape(x)
        channels = x.shape[-1] if x.shape[-1] is not None else shape[3]
        if axis == 1:
            return ops.reshape(stacked, (shape[0], shape[1] * self.size, shape[2], channels))
        return ops.reshape(stacked, (shape[0], shape[1], shape[2] * self.size, channels))

    def call(self, inputs):
        if self.size == 1:
            return inputs
        return self._upsample_axis(self._upsample_axis(inputs, 1), 2)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else h * self.size, None if w is None else w * self.size, c)

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def _linear_upsample_axis(x, axis: int, size: int):
    """Linear upsampling of `x` by `size` along `axis` (half-pixel centres, edges clamped)."""
    if size == 1:
        return x
    rank = len(x.shape)

    def cut(start, stop):
        index = [slice(None)] * rank
        index[axis] = slice(start, stop)
        return x[tuple(index)]

    padded = ops.concatenate([cut(0, 1), x, cut(-1, None)], axis=axis)
    index = [slice(None)] * rank
    index[axis] = slice(None, -2)
    prev = padded[tuple(index)]
    index[axis] = slice(2, None)
    nxt = padded[tuple(index)]
    phases = []
    for k in range(size):
        offset = (k + 0.5) / size - 0.5
        phases.append(x * (1.0 + offset) + prev * (-offset) if offset < 0 else x * (1.0 - offset) + nxt * offset)
    stacked = ops.stack(phases, axis=axis + 1)
    shape = ops.shape(x)
    dims = [x.shape[i] if x.shape[i] is not None else shape[i] for i in range(rank)]
    dims[axis] = dims[axis] * size
    return ops.reshape(stacked, tuple(dims))


@keras.saving.register_keras_serializable(package="msunet")
class LinearUpsampling3D(keras.layers.Layer):
    """Trilinear upsampling of a volume by an integer factor per axis, for inputs of unknown size.

    The 3-D counterpart of `BilinearUpsampling2D` (the same half-pixel centres and clamped edges,
    one axis after the other), with a factor per axis so that anisotropic models (no pooling along
    z at the first levels) upsample (1, 2, 2).

    Example:
    ```python
    y = LinearUpsampling3D((1, 2, 2))(x)  # (b, d, 2h, 2w, c)
    ```

    Args:
        size: an integer >= 1 or a (depth, height, width) triple of them.
    """

    def __init__(self, size=2, **kwargs):
        super().__init__(**kwargs)
        size = (size,) * 3 if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
        if len(size) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
            raise ValueError(f"LinearUpsampling3D: size must be an integer >= 1 or three of them, received {size!r}.")
        self.size = size

    def call(self, inputs):
        x = inputs
        for axis, factor in zip((1, 2, 3), self.size):
            x = _linear_upsample_axis(x, axis, factor)
        return x

    def compute_output_shape(self, input_shape):
        b, *spatial, c = input_shape
        return (b, *(None if n is None else n * f for n, f in zip(spatial, self.size)), c)

    def get_config(self):
        return {**super().get_config(), "size": list(self.size)}


@keras.saving.register_keras_serializable(package="msunet")
class PadToMultiple(keras.layers.Layer):
    """Pads height and width up to the next multiple of `multiple` by repeating the last row and
    column (bottom/right, so top-left anchored crops recover every scale exactly).

    Backbones from `keras.applications` downsample with valid padding or by 4 in their stem; fed a
    multiple of their total stride, each of their features at stride s covers ceil(H/s) x ceil(W/s)
    and `CropToMatch` cuts it to that size.

    Example:
    ```python
    y = PadToMultiple(32)(x)  # (b, 32 * ceil(h / 32), 32 * ceil(w / 32), c)
    ```

    Args:
        multiple: integer >= 1.
    """

    def __init__(self, multiple: int = 32, **kwargs):
        super().__init__(**kwargs)
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise ValueError(f"PadToMultiple: multiple must be an integer >= 1, received multiple={multiple!r}.")
        self.multiple = multiple

    def _pad_axis(self, x, axis: int):
        size = ops.shape(x)[axis]
        padded = ((size + self.multiple - 1) // self.multiple) * self.multiple
        index = ops.minimum(ops.arange(padded), size - 1)
        return ops.take(x, index, axis=axis)

    def call(self, inputs):
        if self.multiple == 1:
            return inputs
        return self._pad_axis(self._pad_axis(inputs, 1), 2)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        up = lambda n: None if n is None else -(-n // self.multiple) * self.multiple  # noqa: E731
        return (b, up(h), up(w), c)

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="msunet")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that runs TensorFlow's fused kernel where it can.

    Keras 3 writes batch normalisation as separate ops (a float32 copy of the input, two reductions
    for the moments, an elementwise transform), and differentiates each of them; tf.keras used the
    fused `FusedBatchNormV3` kernel, one pass forward and one backward, which takes bfloat16 and
    float16 inputs directly (statistics in float32). On the TensorFlow backend, for 4-D
    channels-last inputs without mask, renorm or synchronisation, this layer calls that kernel;
    everywhere else it is Keras' layer unchanged. Weights, config and the moving-statistics update
    (biased batch variance, `momentum`) are Keras' own, and so is the class name, which Keras uses
    for the paths in `.weights.h5` files: checkpoints and resume states written with Keras' layer
    (msunet before the fused kernel) load into this one and back.

    Example:
    ```python
    x = BatchNormalization(momentum=0.9)(x)  # msunet.models.layers.BatchNormalization
    ```
    """

    def _fused_ok(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and not self.synchronized and len(inputs.shape) == 4 and self.axis in (-1, 3))

    def call(self, inputs, training=None, mask=None):
        if not self._fused_ok(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # TensorFlow backend only (checked above)

        x = inputs
        if x.dtype not in (tf.float32, tf.bfloat16, tf.float16):
            x = tf.cast(x, tf.float32)
        channels = x.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones((channels,), tf.float32)
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros((channels,), tf.float32)
        if training and self.trainable:
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=scale, offset=offset, mean=tf.constant([], tf.float32),
                variance=tf.constant([], tf.float32), epsilon=self.epsilon, data_format="NHWC", is_training=True)
            # The kernel returns the unbiased (n - 1) variance; Keras' moving variance uses the biased one.
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        else:
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=scale, offset=offset, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon, data_format="NHWC",
                is_training=False)
        return tf.cast(y, self.compute_dtype)
