import math

import keras
import numpy as np
import pytest

from msunet.config import TrainConfig
from msunet.heads import deep_supervision_weights
from msunet.training.losses import (
    SegmentationLoss,
    cross_entropy_loss,
    focal_loss,
    segmentation_loss,
    soft_dice_loss,
    tversky_loss,
)


def f(x):
    return float(keras.ops.convert_to_numpy(x))


def binary_case():
    # 4x4 image, 4 foreground pixels in the top-left corner; the weight channel is all ones.
    target = np.zeros((1, 4, 4, 2), np.float32)
    target[..., 1] = 1
    target[0, :2, :2, 0] = 1
    return target


def test_dice_hand_values():
    t = binary_case()
    perfect = np.where(t[..., :1] > 0, 30.0, -30.0).astype(np.float32)
    assert f(soft_dice_loss(t, perfect, smooth=0)) == pytest.approx(0, abs=1e-6)
    half = np.zeros((1, 4, 4, 1), np.float32)  # p = 0.5 everywhere: Dice = 2*2 / (8 + 4)
    assert f(soft_dice_loss(t, half, smooth=0)) == pytest.approx(1 - 4 / 12)
    assert f(soft_dice_loss(t, half, smooth=1)) == pytest.approx(1 - 5 / 13)
    # background included: mean of foreground (1/3) and background Dice 2*6/(8+12) = 0.6
    assert f(soft_dice_loss(t, half, smooth=0, include_background=True)) == pytest.approx(1 - (1 / 3 + 0.6) / 2)


def test_ignored_pixels_do_not_count():
    t = binary_case()
    logits = np.where(t[..., :1] > 0, 30.0, -30.0).astype(np.float32)
    logits[0, 3, 3, 0] = 30.0  # a false positive...
    t[0, 3, 3, 1] = 0.0  # ...on an ignored pixel
    for loss in (soft_dice_loss, cross_entropy_loss, focal_loss, tversky_loss):
        assert f(loss(t, logits)) == pytest.approx(0, abs=1e-5), loss.__name__


def test_cross_entropy_and_focal_from_logits_are_stable():
    t = binary_case()
    assert f(cross_entropy_loss(t, np.zeros((1, 4, 4, 1), np.float32))) == pytest.approx(math.log(2))
    wrong = np.where(t[..., :1] > 0, -1000.0, 1000.0).astype(np.float32)  # extreme logits: finite
    assert np.isfinite(f(cross_entropy_loss(t, wrong))) and f(cross_entropy_loss(t, wrong)) == pytest.approx(1000, rel=1e-3)
    assert f(focal_loss(t, np.zeros((1, 4, 4, 1), np.float32), gamma=2)) == pytest.approx(0.25 * math.log(2))


def test_multiclass_soft_labels_and_class_weights():
    target = np.zeros((1, 2, 2, 4), np.float32)
    target[..., 3] = 1
    target[0, 0, 0, :3] = [1, 0, 0]
    target[0, 0, 1, :3] = [0, 1, 0]
    target[0, 1, :, :3] = [0, 0, 1]
    logits = np.zeros((1, 2, 2, 3), np.float32)
    assert f(cross_entropy_loss(target, logits)) == pytest.approx(math.log(3))
    good = np.log(np.clip(target[..., :3], 1e-6, 1)).astype(np.float32) * 10
    assert f(soft_dice_loss(target, good, smooth=0)) == pytest.approx(0, abs=1e-4)
    # Class weights: a perfect class 2 and a wrong class 1 -> weight decides the Dice loss.
    mixed = good.copy()
    mixed[0, 0, 1] = [0, -50, 50]
    only_2 = f(soft_dice_loss(target, mixed, smooth=0, class_weights=(0, 0, 1)))
    only_1 = f(soft_dice_loss(target, mixed, smooth=0, class_weights=(0, 1, 0)))
    assert only_1 == pytest.approx(1.0, abs=1e-4) and only_2 < only_1


def test_tversky_reduces_to_dice_at_half():
    t = binary_case()
    logits = np.random.default_rng(0).normal(size=(1, 4, 4, 1)).astype(np.float32)
    assert f(tversky_loss(t, logits, 0.5, 0.5, smooth=0)) == pytest.approx(f(soft_dice_loss(t, logits, smooth=0)), rel=1e-5)


@pytest.mark.parametrize("name", ["dice_ce", "dice", "ce", "focal", "tversky", "dice_focal"])
def test_every_named_loss_is_finite_and_differentiable(name):
    t = binary_case()
    logits = np.random.default_rng(1).normal(size=(1, 4, 4, 1)).astype(np.float32)
    assert np.isfinite(f(segmentation_loss(t, logits, TrainConfig(loss=name))))


def test_deep_supervision_weights():
    heads = ["mask", "mask_s2", "mask_s4", "mask_s8"]
    assert deep_supervision_weights(heads, "nnunet") == pytest.approx(
        {"mask": 4 / 7, "mask_s2": 2 / 7, "mask_s4": 1 / 7, "mask_s8": 0.0})
    assert deep_supervision_weights(heads, "halving")["mask_s8"] == pytest.approx(1 / 15)
    assert set(deep_supervision_weights(heads, "equal").values()) == {0.25}
    assert deep_supervision_weights(["mask", "mask_s2", "mask_fused"], (3, 1)) == pytest.approx(
        {"mask": 3 / 7, "mask_s2": 1 / 7, "mask_fused": 3 / 7})
    with pytest.raises(ValueError, match="2 weights but the model has 4 scale heads"):
        deep_supervision_weights(heads, (1, 1))


def test_segmentation_loss_class_round_trip():
    loss = SegmentationLoss(loss="tversky", class_weights=[1, 2])
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert clone.get_config() == loss.get_config()
