import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import directed_hausdorff

from msunet.cli import main
from msunet.config import DataConfig
from msunet.evaluation.scores import class_metrics, surface_distances
from msunet.evaluation.evaluate import evaluate_folders


def test_hand_built_values():
    truth = np.zeros((10, 10), bool)
    truth[2:6, 2:6] = True  # 16 px
    pred = np.zeros((10, 10), bool)
    pred[2:6, 2:8] = True  # 24 px, 16 overlap
    valid = np.ones((10, 10), bool)
    m = class_metrics(pred, truth, valid)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (16, 8, 0, 76)
    assert m["dice"] == pytest.approx(32 / 40) and m["iou"] == pytest.approx(16 / 24)
    assert m["precision"] == pytest.approx(16 / 24) and m["recall"] == 1.0 and m["accuracy"] == pytest.approx(0.92)
    assert m["hd95"] == pytest.approx(2.0)  # the right edge moved by 2 px


def test_empty_conventions():
    empty, valid = np.zeros((5, 5), bool), np.ones((5, 5), bool)
    some = empty.copy()
    some[1, 1] = True
    both = class_metrics(empty, empty, valid)
    assert both["dice"] == 1.0 and both["iou"] == 1.0 and both["hd95"] == 0.0
    missed = class_metrics(empty, some, valid)
    assert missed["dice"] == 0.0 and math.isnan(missed["hd95"])
    spurious = class_metrics(some, empty, valid)
    assert spurious["dice"] == 0.0 and spurious["precision"] == 0.0 and math.isnan(spurious["msd"])


def test_ignore_and_roi_are_excluded():
    truth = np.zeros((6, 6), bool)
    pred = np.zeros((6, 6), bool)
    pred[0, 0] = True  # a false positive...
    valid = np.ones((6, 6), bool)
    valid[0, 0] = False  # ...outside the region of interest
    truth[3, 3] = pred[3, 3] = True
    assert class_metrics(pred, truth, valid)["dice"] == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_agreement_with_independent_computations(seed):
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    truth = ndimage.binary_opening(rng.random((40, 50)) > 0.55)
    pred = ndimage.binary_opening(rng.random((40, 50)) > 0.55)
    m = class_metrics(pred, truth, np.ones_like(truth))
    # F1 on flattened pixels, counted independently.
    tp = np.sum(pred.ravel() & truth.ravel())
    f1 = 2 * tp / (pred.sum() + truth.sum())
    assert m["dice"] == pytest.approx(f1)
    # Hausdorff (100th percentile) against scipy's directed Hausdorff between boundary point sets.
    bp = np.argwhere(pred & ~ndimage.binary_erosion(pred))
    bt = np.argwhere(truth & ~ndimage.binary_erosion(truth))
    hd = max(directed_hausdorff(bp, bt)[0], directed_hausdorff(bt, bp)[0])
    assert surface_distances(pred, truth, percentile=100)[0] == pytest.approx(hd)


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_folders_multiclass_with_ignore_and_scales(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        truth = rng.integers(0, 3, (20, 18))
        truth[0] = 11  # void row
        pred = np.where(rng.random((20, 18)) < 0.8, truth % 11, rng.integers(0, 3, (20, 18)))
        write(tmp_path / "gt" / f"im{i}.png", truth)
        write(tmp_path / "pred" / f"im{i}.png", pred)
        write(tmp_path / "pred" / f"im{i}_s2.png", pred[::2, ::2])
    (tmp_path / "pred" / "im3.png").write_bytes(b"x")  # no ground truth: listed, not scored
    result = evaluate_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", num_classes=3,
                              data_cfg=DataConfig(ignore_label=11))
    with open(tmp_path / "out" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["class"], r["scale"]) for r in rows} == {("1", "1"), ("2", "1"), ("1", "2"), ("2", "2")}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["images"] == 3 and "scale2/class1" in summary["per_class_and_scale"]
    assert 0.6 < summary["overall"]["dice_mean"] < 1
    page = (tmp_path / "out" / "report.html").read_text()
    assert "id='summary'" in page and "id='bars'" in page and "id='cases'" in page and "data:image/png;base64" in page
    assert result.problems == [("im3", "a prediction with no ground truth (not scored)")]
    # Class 0 as a real class (CamVid's sky): scored and averaged when asked.
    with_bg = evaluate_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "out0", num_classes=3,
                               data_cfg=DataConfig(ignore_label=11), include_background=True)
    per = with_bg.summary["per_class_and_scale"]
    assert with_bg.summary["classes"] == [0, 1, 2] and "scale1/class0" in per
    expected = np.mean([per[f"scale1/class{c}"]["iou_pooled"] for c in range(3)])
    assert with_bg.summary["overall"]["iou_pooled"] == pytest.approx(expected)
    assert per["scale1/class1"] == result.summary["per_class_and_scale"]["scale1/class1"]


def test_evaluate_cli_on_a_trained_run(tmp_path, capsys):
    from msunet.config import RunConfig
    from msunet.data.synthetic import make_dataset
    from msunet.training.run import train

    data = make_dataset(tmp_path / "d", count=6, size=(40, 40))
    (data / "split.csv").write_text("name,split\nsynth_000,test\nsynth_001,test\n")
    train(RunConfig().override(["model.depth=2", "model.filters=2", "data.patch_size=32", "epochs=1",
                                "steps_per_epoch=1", "batch_size=2"]), data, tmp_path / "run", verbose=0)
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--data", str(data), "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "scored 2 image(s)" in out and "scale2/class1" in out
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["split"] == "test"
    assert "id='curves'" in (tmp_path / "ev" / "report.html").read_text()
    assert main(["evaluate", "--pred", str(tmp_path / "ev" / "predictions"), "--gt", str(data / "masks"),
                 "--out", str(tmp_path / "ev2")]) == 0
    assert main(["evaluate", "--out", str(tmp_path / "x")]) == 2


def test_roi_folder_excludes_pixels_outside_the_field_of_view(tmp_path):
    truth = np.zeros((20, 20), np.uint8)
    truth[5:15, 5:15] = 255
    pred = truth.copy()
    pred[0:3, 0:20] = 255  # false positives in the top rows...
    fov = np.full((20, 20), 255, np.uint8)
    fov[0:4] = 0  # ...which lie outside the field of view
    write(tmp_path / "gt" / "a.png", truth)
    write(tmp_path / "pred" / "a.png", pred)
    write(tmp_path / "fov" / "a.png", fov)
    without = evaluate_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "o1")
    with_roi = evaluate_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "o2", roi_dir=tmp_path / "fov")
    assert without.summary["overall"]["dice_mean"] < 0.8
    assert with_roi.summary["overall"]["dice_mean"] == pytest.approx(1.0)
    assert with_roi.summary["roi"] == str(tmp_path / "fov")
    write(tmp_path / "gt" / "b.png", truth)
    write(tmp_path / "pred" / "b.png", pred)
    partial = evaluate_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "o3", roi_dir=tmp_path / "fov")
    assert [s for s, _ in partial.problems] == ["b"]  # no field-of-view mask: reported, not scored silently


@pytest.mark.parametrize("sigma", [1.5, 6.0])
def test_surface_distances_k_d_tree_and_distance_transform_agree(monkeypatch, sigma):
    """Two exact paths (nearest boundary pixel by k-d tree, or by distance transforms over the
    boundaries' bounding box) give the same HD95 and MSD."""
    from scipy import ndimage

    from msunet.evaluation import scores as ev

    rng = np.random.default_rng(int(sigma))
    pred = ndimage.gaussian_filter(rng.random((90, 120)), sigma) > 0.5
    truth = ndimage.gaussian_filter(rng.random((90, 120)), sigma) > 0.5
    truth[:10] = False  # boundaries with different bounding boxes
    monkeypatch.setattr(ev, "KDTREE_MAX_POINTS", 10**9)
    by_tree = ev.surface_distances(pred, truth)
    monkeypatch.setattr(ev, "KDTREE_MAX_POINTS", 0)
    by_edt = ev.surface_distances(pred, truth)
    assert by_tree == pytest.approx(by_edt, rel=1e-12)


def test_surface_distances_of_volumes_are_in_mm_from_the_spacing(monkeypatch):
    """Two 6^3 cubes, one shifted by 2 voxels along z (3 mm slices) or along x (1 mm): the faces that
    moved are 6 mm / 2 mm apart, which is HD95's value; the same in voxels without a spacing."""
    truth = np.zeros((16, 16, 16), bool)
    truth[5:11, 5:11, 5:11] = True
    along_z, along_x = np.roll(truth, 2, axis=0), np.roll(truth, 2, axis=2)
    assert surface_distances(along_z, truth, spacing=(3.0, 1.0, 1.0))[0] == pytest.approx(6.0)
    assert surface_distances(along_x, truth, spacing=(3.0, 1.0, 1.0))[0] == pytest.approx(2.0)
    assert surface_distances(along_z, truth)[0] == pytest.approx(2.0)
    # The distance-transform branch (many boundary points) agrees with the k-d tree's.
    from msunet.evaluation import scores

    kd = surface_distances(along_z, truth, spacing=(3.0, 1.0, 1.0))
    monkeypatch.setattr(scores, "KDTREE_MAX_POINTS", 10)
    assert surface_distances(along_z, truth, spacing=(3.0, 1.0, 1.0)) == pytest.approx(kd)
