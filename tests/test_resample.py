"""Reduced-resolution training and prediction (data.resample), planned for large objects."""

import json

import numpy as np
import pytest

from msunet.config import ConfigError, DataConfig, RunConfig
from msunet.data.pairs import IGNORE
from msunet.data.preprocessing import downscale_image, resize_probabilities
from msunet.data.samples import downscale_labels
from msunet.data.imageio import read_mask, write_png
from msunet.plan.survey import object_depth, survey
from msunet.plan.planner import plan_run


def test_downscale_is_the_block_mean_on_the_ceil_grid():
    image = np.arange(5 * 7, dtype=np.float64).reshape(5, 7, 1)
    small = downscale_image(image.astype(np.float32), 2)
    assert small.shape == (3, 4, 1)
    assert small[0, 0, 0] == pytest.approx(image[:2, :2].mean())
    assert small[2, 3, 0] == pytest.approx(image[4, 6, 0])  # the corner block holds one real pixel
    assert downscale_image(np.full((3, 3, 3), 200, np.uint8), 4).dtype == np.uint8


def test_downscaled_labels_take_the_majority_and_keep_ignore():
    mask = np.zeros((4, 6), np.int16)
    mask[:2, :2] = 2
    mask[0, 2:4] = 1  # 2 of 4 pixels: not a majority over class 0 (ties go to the lower id)
    mask[2:, 4:] = IGNORE
    small = downscale_labels(mask, 2, 3)
    assert small.tolist() == [[2, 0, 0], [0, 0, IGNORE]]
    binary = downscale_labels((np.arange(16).reshape(4, 4) % 4 < 3).astype(np.int16), 2, 1)
    assert binary.tolist() == [[1, 1], [1, 1]]


def test_resized_probabilities_have_the_asked_size_and_keep_constants():
    probs = np.full((3, 4, 2), 0.25, np.float32)
    out = resize_probabilities(probs, (5, 7))
    assert out.shape == (5, 7, 2) and np.allclose(out, 0.25)
    ramp = np.linspace(0, 1, 8, dtype=np.float32).reshape(1, 8, 1).repeat(2, 0)
    up = resize_probabilities(ramp, (2, 16))[0, :, 0]
    assert np.all(np.diff(up) >= -1e-6) and up[0] == pytest.approx(0.0) and up[-1] == pytest.approx(1.0)


def test_only_powers_of_a_half_are_valid():
    assert DataConfig(resample=0.25).resample_step == 4
    with pytest.raises(ConfigError, match="resample=0.3 is not valid"):
        DataConfig(resample=0.3)


def _folder(root, count, size, thickness):
    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = size
        mask = np.zeros((h, w), np.uint8)
        top, left = rng.integers(0, h // 4), rng.integers(0, w // 4)
        mask[top:top + thickness, left:left + w // 2] = 255  # a band `thickness` px thick
        image = (rng.random((h, w, 3)) * 60 + (mask[..., None] > 0) * 120).astype(np.uint8)
        write_png(root / "images" / f"im{i}.png", image)
        write_png(root / "masks" / f"im{i}.png", mask)
    return root


def test_large_objects_are_planned_at_a_lower_resolution_thin_ones_are_not(tmp_path):
    large = plan_run(survey(_folder(tmp_path / "large", 4, (600, 640), 240)), RunConfig(), set(), memory=2**34)
    assert large.config.data.resample == 0.5 and large.sources["data.resample"]["source"] == "data"
    assert "objects are large" in large.sources["data.resample"]["why"]
    assert large.config.data.patch_size == 256  # 300 px short side at half resolution
    thin = plan_run(survey(_folder(tmp_path / "thin", 4, (600, 640), 3)), RunConfig(), set(), memory=2**34)
    assert thin.config.data.resample == 1.0 and "objects are thin" in thin.sources["data.resample"]["why"]
    small = plan_run(survey(_folder(tmp_path / "small", 4, (200, 240), 120)), RunConfig(), set(), memory=2**34)
    assert small.config.data.resample == 1.0  # the patch sees the whole image already
    assert object_depth(np.zeros((5, 5), np.uint8)) != object_depth(np.zeros((5, 5), np.uint8))  # NaN: no object


def test_train_and_predict_at_half_resolution_give_masks_at_the_original_size(tmp_path):
    from msunet.evaluation.evaluate import evaluate_run
    from msunet.inference.engines import predict
    from msunet.training.run import train

    data = _folder(tmp_path / "data", 6, (70, 90), 40)
    (data / "split.csv").write_text("name,split\n" + "".join(
        f"im{i},{'test' if i >= 4 else 'train'}\n" for i in range(6)))
    run = RunConfig().override(["data.resample=0.5", "model.depth=2", "model.filters=4", "data.patch_size=32",
                                "train.batch_size=2", "train.steps_per_epoch=3", "train.epochs=1", "train.workers=1"])
    train(run, data, tmp_path / "run", verbose=0, plan=False)
    summary = predict(tmp_path / "run", data / "images" / "im5.png", tmp_path / "pred", tta=True, engine="keras")
    assert not summary.failed
    assert read_mask(tmp_path / "pred" / "im5.png").shape == (70, 90)
    assert read_mask(tmp_path / "pred" / "im5_s2.png").shape == (35, 45)
    result = evaluate_run(tmp_path / "run", data, tmp_path / "eval", distances=False)
    assert result.summary["split"] == "test" and result.summary["images"] == 2 and not result.problems
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["resample"] == 0.5


def test_large_objects_get_the_whole_low_resolution_image_in_a_patch_and_a_deeper_net(tmp_path):
    """A lesion-like band as thick as a fifth of the image: at 1/4 resolution the 120 px short side is
    trained whole in a 128 px patch at depth 4 (an 8 px bottleneck), not as 64 px corners at depth 2
    (busi-subset, 5 min: test Dice 0.61 against 0.43, benchmarks/results/time-to-accuracy/)."""
    large = plan_run(survey(_folder(tmp_path / "large", 4, (480, 560), 100)), RunConfig(), set(), memory=2**34)
    cfg = large.config
    assert (cfg.data.resample, cfg.data.patch_size, cfg.model.depth) == (0.25, 128, 4)
    assert "the whole image in one patch" in large.sources["data.patch_size"]["why"]
    assert "~8 px" in large.sources["model.depth"]["why"]
    # objects as thin for the image as isbi2012's cells: patches and depth as before
    thin = plan_run(survey(_folder(tmp_path / "thin", 4, (480, 560), 8)), RunConfig(), set(), memory=2**34)
    assert (thin.config.data.resample, thin.config.data.patch_size, thin.config.model.depth) == (1.0, 256, 4)
