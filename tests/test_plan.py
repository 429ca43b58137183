"""The planner: what the data says fills every key the user did not set (msunet.plan.planner)."""

import json

import numpy as np
import pytest

from msunet.training.check import check_dataset, format_report
from msunet.config import RunConfig
from msunet.data.imageio import write_png
from msunet.config import user_keys_of
from msunet.plan.planner import plan_run
from msunet.plan.survey import survey
from msunet.training.run import train

COLOURS = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
TINY = ["model.depth=2", "model.filters=4", "data.patch_size=32", "train.batch_size=2", "train.steps_per_epoch=2",
        "train.workers=1", "train.epochs=1"]


def make_folder(root, count=6, size=(64, 64), channels=1, kind="binary", seed=0):
    """Images with a bright square on a dark ground; masks binary (0/255), index (0..3) or palette."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = size
        labels = np.zeros((h, w), np.uint8)
        for cls in range(1, 4 if kind != "binary" else 2):
            y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
            labels[y:y + 8, x:x + 8] = cls
        image = (rng.random((h, w, channels)) * 40 + labels[..., None] * 50).astype(np.uint8)
        write_png(root / "images" / f"im{i}.png", image[..., 0] if channels == 1 else image)
        if kind == "binary":
            mask = labels * 255
        elif kind == "index":
            mask = labels
        else:
            mask = np.asarray(COLOURS, np.uint8)[labels]
        write_png(root / "masks" / f"im{i}.png", mask)
    return root


def test_grayscale_index_masks_plan_channels_classes_patch_and_depth(tmp_path):
    plan = plan_run(survey(make_folder(tmp_path, kind="index")), RunConfig(), user_keys=set())
    cfg = plan.config
    assert (cfg.model.in_channels, cfg.model.num_classes, cfg.data.mask_encoding) == (1, 4, "index")
    assert (cfg.data.patch_size, cfg.model.depth) == (64, 2)  # small images shrink the patch, not the reverse
    assert plan.sources["model.in_channels"] == {"value": 1, "source": "data", "why": "6 of 6 images have 1 channel(s)"}
    # 50 passes over 5 small training images are 50 steps: training gets at least 300 (30 epochs of 10).
    assert (cfg.train.steps_per_epoch, cfg.train.epochs) == (10, 30) and plan.sources["train.epochs"]["source"] == "data"


def test_palette_masks_become_classes_black_first(tmp_path):
    plan = plan_run(survey(make_folder(tmp_path, channels=3, kind="palette")), RunConfig(), user_keys=set())
    cfg = plan.config
    assert cfg.data.mask_encoding == "palette" and cfg.model.num_classes == 4
    assert cfg.data.palette[0] == (0, 0, 0) and set(cfg.data.palette) == set(COLOURS)


def test_user_settings_win(tmp_path):
    folder = make_folder(tmp_path, kind="index")
    keys = user_keys_of({"model": {"num_classes": 6}}, ["patch_size=32", "model.depth=1"])
    assert keys == {"model.num_classes", "data.patch_size", "model.depth"}
    config = RunConfig().override(["model.num_classes=6", "data.patch_size=32", "model.depth=1"])
    cfg = plan_run(survey(folder), config, keys).config
    assert (cfg.model.num_classes, cfg.data.patch_size, cfg.model.depth, cfg.model.in_channels) == (6, 32, 1, 1)


def test_masks_that_disagree_are_reported_file_by_file(tmp_path):
    folder = make_folder(tmp_path, kind="index", count=5)
    write_png(folder / "masks" / "im3.png", (np.arange(64 * 64).reshape(64, 64) % 2 * 255).astype(np.uint8))
    report = check_dataset(folder)
    text = format_report(report)
    assert "disagrees with the plan" in text and "im3.png: binary mask, values 0, 255" in text
    assert "data.mask_encoding=index" in text and "model.num_classes=4" in text


def test_void_255_next_to_class_ids_is_ignored(tmp_path):
    folder = make_folder(tmp_path, kind="index", count=3)
    mask = np.zeros((64, 64), np.uint8)
    mask[:4] = 255
    mask[10:20, 10:20] = 2
    write_png(folder / "masks" / "im0.png", mask)
    cfg = plan_run(survey(folder), RunConfig(), set()).config
    assert cfg.data.ignore_label == 255 and cfg.model.num_classes == 4


def test_check_no_longer_refuses_what_it_counted(tmp_path):
    report = check_dataset(make_folder(tmp_path, kind="palette", channels=1))
    text = format_report(report)
    assert report.ok and not report.problems, report.problems
    assert "model.in_channels=1  [data]" in text and "data.mask_encoding=palette  [data]" in text


def test_train_plans_a_grayscale_palette_folder_and_records_the_sources(tmp_path):
    folder = make_folder(tmp_path / "data", kind="palette", channels=1)
    result = train(RunConfig().override(TINY), folder, tmp_path / "run", verbose=0)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["in_channels"] == 1 and saved["model"]["num_classes"] == 4
    assert saved["sources"]["model.num_classes"]["source"] == "data"
    assert saved["sources"]["model.depth"]["source"] == "user"
    assert RunConfig.from_json(tmp_path / "run" / "config.json").model.num_classes == 4  # still loads
    assert result.epochs_done == 1


def test_cli_train_with_no_settings_but_the_budget(tmp_path, capsys):
    from msunet.cli import main

    folder = make_folder(tmp_path / "data", kind="binary", channels=1, size=(32, 32), count=4)
    code = main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--set", "train.epochs=1",
                 "train.steps_per_epoch=2", "model.filters=4", "--verbose", "0"])
    assert code == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["patch_size"] == 32 and saved["model"]["in_channels"] == 1
    assert saved["sources"]["train.epochs"]["source"] == "user"
    assert saved["sources"]["data.patch_size"]["source"] == "data"


@pytest.mark.parametrize("name", ["dsb2018-nuclei"])
def test_a_shared_dataset_plans(name):
    from helpers import shared_dataset

    cfg = plan_run(survey(shared_dataset(name)), RunConfig(), set()).config
    assert cfg.model.num_classes == 1 and cfg.model.in_channels == 3 and cfg.data.mask_encoding == "binary"


def make_street_folder(root, count=4, size=(48, 64)):
    """Index masks with sky on top, buildings at the sides' middle and road at the bottom."""
    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = size
        labels = np.full((h, w), 1, np.uint8)  # building
        labels[: h // 4 + rng.integers(0, 4)] = 0  # sky
        labels[h * 2 // 3 + rng.integers(0, 4):] = 2  # road
        labels[h // 2: h // 2 + 4, rng.integers(0, w - 8):][:, :6] = 3  # a car
        image = (rng.random((h, w, 3)) * 40 + labels[..., None] * 50).astype(np.uint8)
        write_png(root / "images" / f"f{i}.png", image)
        write_png(root / "masks" / f"f{i}.png", labels)
    return root


def test_images_with_an_up_and_a_down_get_left_right_flips_only(tmp_path):
    found = survey(make_street_folder(tmp_path / "street"))
    rows, cols = found.skew()
    assert rows > 0.08 and cols < 0.05
    plan = plan_run(found, RunConfig(), user_keys=set())
    assert plan.config.data.flip == "horizontal" and plan.config.data.rot90 is False
    assert "an up and a down" in plan.sources["data.flip"]["why"]
    # Microscopy-like folders (objects anywhere) keep every flip and turn.
    other = plan_run(survey(make_folder(tmp_path / "cells", kind="index")), RunConfig(), user_keys=set()).config
    assert other.data.flip is True and other.data.rot90 is True
    # The user's setting wins.
    config = RunConfig().override(["data.flip=true"])
    assert plan_run(found, config, user_keys={"data.flip"}).config.data.flip is True


def test_index_masks_without_255_say_how_to_declare_a_void_label(tmp_path):
    report = check_dataset(make_folder(tmp_path, kind="index"))
    assert "set data.ignore_label=ID" in format_report(report)
