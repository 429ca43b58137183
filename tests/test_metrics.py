import keras
import numpy as np
import pytest

from msunet.training.metrics import SegmentationScore, metric_name, scores_from_counts


def test_binary_dice_and_iou_match_an_independent_count():
    rng = np.random.default_rng(0)
    truth = rng.random((3, 16, 16)) > 0.6
    logits = rng.normal(size=(3, 16, 16, 1)).astype(np.float32)
    target = np.stack([truth, np.ones_like(truth)], -1).astype(np.float32)
    pred = logits[..., 0] >= 0
    tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
    dice, iou = SegmentationScore(1, "dice"), SegmentationScore(1, "iou")
    for m in (dice, iou):  # accumulated over two batches = pooled over the set
        m.update_state(target[:2], logits[:2])
        m.update_state(target[2:], logits[2:])
    assert float(dice.result()) == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-6)
    assert float(iou.result()) == pytest.approx(tp / (tp + fp + fn), rel=1e-6)
    dice.reset_state()
    assert float(dice.result()) == 0.0


def test_multiclass_excludes_background_and_absent_classes():
    target = np.zeros((1, 2, 2, 4), np.float32)
    target[..., 3] = 1
    target[0, 0, :, 0] = 1  # background row
    target[0, 1, :, 1] = 1  # class 1 row; class 2 absent
    logits = np.zeros((1, 2, 2, 3), np.float32)
    logits[0, 0, :, 0] = 5
    logits[0, 1, 0, 1] = 5  # one of two class-1 pixels right
    logits[0, 1, 1, 0] = 5
    m = SegmentationScore(3, "dice")
    m.update_state(target, logits)
    assert float(m.result()) == pytest.approx(2 / 3)  # class 1 only: 2*1/(2*1+0+1)
    assert np.isnan(m.per_class()[2])


def test_scores_from_counts_and_names():
    np.testing.assert_allclose(scores_from_counts([1, 0], [1, 0], [0, 0]), [2 / 3, np.nan])
    assert metric_name("dice", "mask") == "dice" and metric_name("iou", "mask_s4") == "iou_s4"
    assert metric_name("dice", "mask_fused") == "dice_fused"


def test_config_round_trip():
    m = SegmentationScore(3, "iou", threshold=0.3, name="iou_s2")
    clone = keras.metrics.deserialize(keras.metrics.serialize(m))
    assert clone.get_config() == m.get_config()
