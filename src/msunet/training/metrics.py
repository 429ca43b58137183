"""Dice and IoU per class and per scale, accumulated over an epoch (pooled, as papers report).

`SegmentationScore` accumulates true/false positives and false negatives per class from a head's
logits and its target `(B, H, W, K + 1)` (see `msunet.training.losses`). Predictions are hard (threshold for
binary, argmax for multi-class); targets may be soft at coarse scales, where the counts are the
soft overlaps. Ignored pixels (weight 0) count nowhere. `keras.metrics.IoU` / `MeanIoU` need hard
integer labels and have no soft targets or per-pixel weights for coarse scales, hence this class.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from msunet.counts import overlap_from_counts
from msunet.training.losses import split_target


def hard_predictions(logits, threshold: float = 0.5):
    """One-hot hard predictions (B, H, W, K): threshold for binary, argmax for multi-class."""
    if logits.shape[-1] == 1:
        return ops.cast(ops.sigmoid(logits) >= threshold, logits.dtype)
    return ops.one_hot(ops.argmax(logits, axis=-1), logits.shape[-1], dtype=logits.dtype)


def confusion_counts(y_true, logits, threshold: float = 0.5):
    """Per-class (tp, fp, fn) sums over batch and pixels, weighted by the target's weight channel."""
    target, weight = split_target(y_true)
    pred = hard_predictions(logits, threshold)
    axes = tuple(range(len(pred.shape) - 1))  # batch and pixels (voxels): all but the classes
    tp = ops.sum(pred * target * weight, axis=axes)
    fp = ops.sum(pred * (1.0 - target) * weight, axis=axes)
    fn = ops.sum((1.0 - pred) * target * weight, axis=axes)
    return tp, fp, fn


def scores_from_counts(tp, fp, fn, kind: str = "dice") -> np.ndarray:
    """Per-class Dice or IoU from counts (NumPy); NaN where a class is absent from both."""
    return np.asarray(overlap_from_counts(tp, fp, fn, kind))


@keras.saving.register_keras_serializable(package="msunet")
class SegmentationScore(keras.metrics.Metric):
    """Epoch-pooled Dice or IoU of one head, averaged over the foreground classes.

    Example:
    ```python
    dice = SegmentationScore(num_classes=1, kind="dice", name="dice_s2")
    dice.update_state(target_s2, logits_s2)
    ```

    Args:
        num_classes: 1 for binary (the foreground is scored), K >= 2 for multi-class.
        kind: "dice" or "iou".
        threshold: probability threshold for binary masks.
        include_background: also average the background class (multi-class).
    """

    def __init__(self, num_classes: int = 1, kind: str = "dice", threshold: float = 0.5,
                 include_background: bool = False, name: str = "dice", **kwargs):
        super().__init__(name=name, **kwargs)
        if kind not in ("dice", "iou"):
            raise ValueError(f"SegmentationScore: kind must be 'dice' or 'iou', received kind={kind!r}.")
        self.num_classes, self.kind, self.threshold = num_classes, kind, threshold
        self.include_background = include_background
        self.tp = self.add_variable(shape=(num_classes,), initializer="zeros", name="tp")
        self.fp = self.add_variable(shape=(num_classes,), initializer="zeros", name="fp")
        self.fn = self.add_variable(shape=(num_classes,), initializer="zeros", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        tp, fp, fn = confusion_counts(y_true, ops.cast(y_pred, "float32"), self.threshold)
        self.tp.assign_add(tp)
        self.fp.assign_add(fp)
        self.fn.assign_add(fn)

    def per_class(self) -> np.ndarray:
        return scores_from_counts(
            keras.ops.convert_to_numpy(self.tp), keras.ops.convert_to_numpy(self.fp), keras.ops.convert_to_numpy(self.fn),
            self.kind,
        )

    def result(self):
        numer = 2 * self.tp if self.kind == "dice" else self.tp
        denom = (2 * self.tp + self.fp + self.fn) if self.kind == "dice" else (self.tp + self.fp + self.fn)
        present = ops.cast(denom > 0, "float32")
        score = numer / ops.maximum(denom, 1e-12)
        if self.num_classes > 1 and not self.include_background:
            score, present = score[1:], present[1:]
        return ops.sum(score * present) / ops.maximum(ops.sum(present), 1.0)

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            v.assign(ops.zeros(v.shape, v.dtype))  # zeros_like(Variable) fails on JAX

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "kind": self.kind,
                "threshold": self.threshold, "include_background": self.include_background}


from msunet.heads import metric_name  # noqa: E402,F401  (the names live in the output contract)
