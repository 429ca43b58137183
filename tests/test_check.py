import numpy as np
from PIL import Image

from helpers import shared_dataset
from msunet.training.check import check_dataset, format_report
from msunet.config import RunConfig
from msunet.data.synthetic import make_dataset


def test_good_folder(tmp_path):
    make_dataset(tmp_path, count=6, size=(64, 48), seed=0)
    report = check_dataset(tmp_path)
    text = format_report(report)
    assert report.ok and report.usable == 6 and not report.problems
    assert "48x64 (6)" in text and "data.patch_size=32  [data]" in text and "OK: ready to train" in text


def test_broken_folder_lists_every_problem(tmp_path):
    make_dataset(tmp_path, count=8, size=(32, 32), seed=0)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "synth_000.png")  # size mismatch
    (tmp_path / "images" / "synth_001.png").write_bytes(b"not a png")  # corrupt
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "lonely.png")  # no mask
    report = check_dataset(tmp_path)
    text = format_report(report)
    assert report.usable == 6 and report.ok and len(report.problems) == 3
    assert "synth_000.png" in text and "must match" in text
    assert "synth_001.png" in text and "cannot" in text
    assert "lonely.png" in text and "no mask" in text


def test_untrainable_folder(tmp_path):
    make_dataset(tmp_path, count=2, size=(16, 16), seed=0)
    report = check_dataset(tmp_path, RunConfig().override(["model.in_channels=1"]))
    assert not report.ok and "NOT TRAINABLE" in format_report(report)


def test_drive_report():
    root = shared_dataset("drive")
    report = check_dataset(root)
    assert report.usable == 40 and report.splits == {"train": 16, "val": 4, "test": 20}
    assert 0.08 < report.class_fraction[1] < 0.09
