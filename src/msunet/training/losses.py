"""Segmentation losses: pure `keras.ops` functions on logits, plus thin classes.

Targets have shape `(B, H, W, K + 1)` (`(B, D, H, W, K + 1)` for volumes): K class probabilities (K = 1 foreground channel for binary
masks; soft values at coarse scales) and a last channel with each pixel's weight (0 where ignored,
the valid fraction of a coarse block). Predictions are logits `(B, H, W, K)`: the losses apply the
sigmoid / softmax themselves, in a numerically stable form. The per-pixel cross-entropies come from
`keras.losses`; Dice and Tversky are written here because `keras.losses.Dice` / `Tversky` have no
smoothing, class weights or ignore mask.
"""

from __future__ import annotations

import keras
from keras import ops

from msunet.config import TrainConfig

def spatial_axes(x) -> tuple[int, ...]:
    """The batch and spatial axes of `x` (all but the channels): batch Dice sums over the batch and the
    pixels (voxels, for volumes), per class."""
    return tuple(range(len(x.shape) - 1))


def split_target(y_true):
    """(probabilities, weight) of a `(..., K + 1)` target (a tensor: on the PyTorch backend the trainer
    hands the batch's NumPy arrays over as they are)."""
    y_true = ops.convert_to_tensor(y_true)
    return y_true[..., :-1], y_true[..., -1:]


def probabilities(logits):
    """Sigmoid for one channel, softmax for several."""
    return ops.sigmoid(logits) if logits.shape[-1] == 1 else ops.softmax(logits, axis=-1)


def _select_classes(values, include_background: bool):
    """Per-class channels to score: multi-class drops background (channel 0) unless included."""
    if values.shape[-1] > 1 and not include_background:
        return values[..., 1:]
    return values


def _class_mean(per_class, class_weights, num_channels: int, include_background: bool):
    """Mean over the scored classes, weighted by `class_weights` (one per class, background first)."""
    if class_weights is None:
        return ops.mean(per_class)
    weights = list(class_weights)
    if num_channels == 1:  # binary: weights are (background, foreground)
        weights = weights[-2:] if include_background else weights[-1:]
    elif not include_background:
        weights = weights[1:]
    w = ops.convert_to_tensor(weights, dtype=per_class.dtype)
    return ops.sum(per_class * w) / ops.maximum(ops.sum(w), 1e-12)


def _scored(target, probs, include_background: bool):
    # Binary with background counted: score the complementary channel too.
    if target.shape[-1] == 1 and include_background:
        return ops.concatenate([1.0 - target, target], axis=-1), ops.concatenate([1.0 - probs, probs], axis=-1)
    return _select_classes(target, include_background), _select_classes(probs, include_background)


def soft_dice_loss(y_true, logits, smooth: float = 1.0, class_weights=None, include_background: bool = False):
    """1 - soft Dice, per class over the batch, (weighted) mean over classes; ignored pixels excluded.

    For binary masks the foreground Dice is used (with `include_background`, the mean of both).
    """
    target, weight = split_target(y_true)
    target, probs = _scored(target, probabilities(logits), include_background)
    target, probs = target * weight, probs * weight
    axes = spatial_axes(target)
    intersection = ops.sum(target * probs, axis=axes)
    denominator = ops.sum(target, axis=axes) + ops.sum(probs, axis=axes)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - _class_mean(dice, class_weights, logits.shape[-1], include_background)


def tversky_loss(y_true, logits, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0, class_weights=None,
                 include_background: bool = False):
    """1 - Tversky index TP / (TP + alpha FP + beta FN); alpha = beta = 0.5 is the Dice loss."""
    target, weight = split_target(y_true)
    target, probs = _scored(target, probabilities(logits), include_background)
    axes = spatial_axes(target)
    tp = ops.sum(probs * target * weight, axis=axes)
    fp = ops.sum(probs * (1.0 - target) * weight, axis=axes)
    fn = ops.sum((1.0 - probs) * target * weight, axis=axes)
    index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return 1.0 - _class_mean(index, class_weights, logits.shape[-1], include_background)


def _pixel_weights(target, weight, class_weights):
    w = weight[..., 0]
    if class_weights is not None:
        cw = ops.convert_to_tensor(list(class_weights), dtype=target.dtype)
        if target.shape[-1] == 1:  # binary: weights for (background, foreground)
            w = w * (cw[0] * (1.0 - target[..., 0]) + cw[-1] * target[..., 0])
        else:
            w = w * ops.sum(target * cw, axis=-1)
    return w


def _masked_mean(values, w):
    return ops.sum(values * w) / ops.maximum(ops.sum(w), 1.0)


def cross_entropy_loss(y_true, logits, class_weights=None):
    """Pixel-wise cross-entropy from logits (binary or soft-label categorical), ignored pixels excluded."""
    target, weight = split_target(y_true)
    if logits.shape[-1] == 1:
        ce = keras.losses.binary_crossentropy(target, logits, from_logits=True)
    else:
        ce = keras.losses.categorical_crossentropy(target, logits, from_logits=True)
    return _masked_mean(ce, _pixel_weights(target, weight, class_weights))


def focal_loss(y_true, logits, gamma: float = 2.0, class_weights=None):
    """Focal loss (Lin et al.) from logits: cross-entropy scaled by (1 - p_t)^gamma."""
    target, weight = split_target(y_true)
    if logits.shape[-1] == 1:
        fl = keras.losses.binary_focal_crossentropy(target, logits, gamma=gamma, from_logits=True)
    else:
        fl = keras.losses.categorical_focal_crossentropy(target, logits, alpha=1.0, gamma=gamma, from_logits=True)
    return _masked_mean(fl, _pixel_weights(target, weight, class_weights))


def segmentation_loss(y_true, logits, cfg: TrainConfig):
    """The loss named by `cfg.loss` for one head."""
    kw = dict(class_weights=cfg.class_weights)
    dice = lambda: soft_dice_loss(y_true, logits, cfg.dice_smooth, cfg.class_weights, cfg.include_background)  # noqa: E731
    if cfg.loss == "dice_ce":
        return dice() + cross_entropy_loss(y_true, logits, **kw)
    if cfg.loss == "dice":
        return dice()
    if cfg.loss == "ce":
        return cross_entropy_loss(y_true, logits, **kw)
    if cfg.loss == "focal":
        return focal_loss(y_true, logits, cfg.focal_gamma, **kw)
    if cfg.loss == "dice_focal":
        return dice() + focal_loss(y_true, logits, cfg.focal_gamma, **kw)
    if cfg.loss == "tversky":
        return tversky_loss(
            y_true, logits, cfg.tversky_alpha, cfg.tversky_beta, cfg.dice_smooth, cfg.class_weights, cfg.include_background
        )
    raise ValueError(f"Unknown loss {cfg.loss!r}.")


@keras.saving.register_keras_serializable(package="msunet")
class SegmentationLoss(keras.losses.Loss):
    """`segmentation_loss` as a Keras loss for a single-output model compiled the usual way.

    Example:
    ```python
    model.compile(optimizer="adam", loss=SegmentationLoss(loss="dice_ce"))
    ```
    """

    def __init__(self, loss: str = "dice_ce", dice_smooth: float = 1.0, include_background: bool = False,
                 class_weights=None, name: str = "segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.cfg = TrainConfig(loss=loss, dice_smooth=dice_smooth, include_background=include_background,
                               class_weights=None if class_weights is None else tuple(class_weights))

    def call(self, y_true, y_pred):
        return segmentation_loss(y_true, y_pred, self.cfg)

    def get_config(self):
        return {
            **super().get_config(),
            "loss": self.cfg.loss,
            "dice_smooth": self.cfg.dice_smooth,
            "include_background": self.cfg.include_background,
            "class_weights": None if self.cfg.class_weights is None else list(self.cfg.class_weights),
        }
