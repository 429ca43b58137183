"""The benchmark harnesses must not rot: tiny smoke runs of the speed and accuracy harnesses in every
`make test`, and the accuracy metrics (pooled AUC, object F1) checked against direct computations."""

import json
import subprocess
import sys

import pytest
from helpers import ROOT


def _smoke(script: str, tmp_path) -> dict:
    """Runs benchmarks/SCRIPT --smoke and returns its JSON output."""
    out = tmp_path / f"{script}.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_speed_harness_smoke(tmp_path):
    data = _smoke("speed.py", tmp_path)
    assert data["smoke"] and data["throughput"]["train"]["msunet"]["median"] > 0
    assert data["throughput"]["tiled_mpx_per_s"]["msunet_predict_tiled"]["median"] > 0
    assert data["conv_ceiling_gflops"] > 0
    for engine in ("msunet_onnxruntime", "msunet_onnxruntime_int8", "msunet_litert"):  # make venv installs them
        assert data["throughput"]["infer_b1"][engine]["median"] > 0, data["skipped"]


def test_volume_speed_harness_smoke(tmp_path):
    """The 3-D speed harness runs msunet's side (MONAI's where `make bench-env` installed it)."""
    data = _smoke("volume_speed.py", tmp_path)
    assert data["results"]["msunet"]["train_voxels_per_s"] > 0 and data["results"]["msunet"]["infer_voxels_per_s"] > 0
    assert data["shape"]["msunet_heads"] == ["mask", "mask_s2", "mask_s4"]
    assert "monai_basicunet" in data["results"] or "monai_basicunet" in data["skipped"]
    for bundle in ("msunet_bundle_float32", "msunet_bundle_int8"):  # make venv installs the exporter
        assert data["results"][bundle]["infer_voxels_per_s"] > 0 and "train_voxels_per_s" not in data["results"][bundle]


def test_train_profile_harness_puts_the_op_time_in_families(tmp_path):
    data = _smoke("train_profile.py", tmp_path)
    for label in ("msunet float32, keras BN", "msunet float32, fused BN"):
        r = data["results"][label]
        fam = r["families_s"]
        for family in ("conv forward", "conv backward data", "conv backward filter", "batch norm forward",
                       "batch norm backward", "heads: losses + metrics", "optimizer update"):
            assert fam[family] > 0, (label, family, fam)
        assert fam["other"] <= 0.05 * r["op_sum_s"], fam  # every op found its family
        assert 0 < r["graph_s"] and r["wall_s"] > 0
    assert any("FusedBatchNorm" in op for op in data["results"]["msunet float32, fused BN"]["top_ops_s"])
    assert not any("FusedBatchNorm" in op for op in data["results"]["msunet float32, keras BN"]["top_ops_s"])


def test_parts_harness_smoke(tmp_path):
    data = _smoke("parts.py", tmp_path)
    assert set(data["combos"]) >= {"conv + unet", "conv + unetpp", "conv + unet3p"}
    for row in data["combos"].values():
        assert row["parameters"] > 0 and row["gflop_per_image"] > 0 and row["train_img_s"]["median"] > 0


# --------------------------------------------------------------------------------------------------
# Accuracy harness: its metrics, and a tiny end-to-end run on DRIVE when ../shared is there
# --------------------------------------------------------------------------------------------------
def _accuracy_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("accuracy_run", ROOT / "benchmarks" / "accuracy" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pooled_auc_matches_the_rank_statistic(tmp_path):
    import numpy as np

    from msunet.data.imageio import write_image

    acc = _accuracy_module()
    rng = np.random.default_rng(0)
    truth = rng.random((2, 40, 30)) > 0.7
    prob = np.clip(0.3 * truth + 0.7 * rng.random(truth.shape), 0, 1).astype(np.float32)
    roi = np.ones(truth.shape, bool)
    roi[:, :5] = False
    paths = []
    for i in range(2):
        write_image(tmp_path / f"{i}_prob.tif", prob[i])
        write_image(tmp_path / f"{i}.png", (truth[i] * 255).astype(np.uint8))
        write_image(tmp_path / f"{i}_roi.png", (roi[i] * 255).astype(np.uint8))
        paths.append((tmp_path / f"{i}_prob.tif", tmp_path / f"{i}.png", tmp_path / f"{i}_roi.png"))
    got = acc.pooled_auc(*zip(*paths))
    p, t = prob[roi], truth[roi]
    pos, neg = p[t], p[~t]
    exact = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert got == pytest.approx(exact, abs=2e-4)


def test_object_f1_matches_instances_at_iou_half(tmp_path):
    import numpy as np

    from msunet.data.imageio import write_image

    acc = _accuracy_module()
    inst = np.zeros((30, 30), np.uint16)
    inst[2:8, 2:8] = 1      # found exactly
    inst[12:20, 12:20] = 2  # found at IoU 0.75
    inst[25:28, 25:28] = 3  # missed
    pred = np.zeros((30, 30), np.uint8)
    pred[2:8, 2:8] = 255
    pred[12:20, 12:18] = 255
    pred[0:2, 20:30] = 255  # a false positive
    write_image(tmp_path / "p.png", pred)
    write_image(tmp_path / "i.png", inst)
    got = acc.object_f1([tmp_path / "p.png"], [tmp_path / "i.png"])
    assert (got["object_precision"], got["object_recall"]) == pytest.approx((2 / 3, 2 / 3))
    assert got["objects_true"] == 3 and got["objects_predicted"] == 3


def test_accuracy_harness_smoke_on_drive(tmp_path):
    if not (ROOT.parent / "shared" / "data" / "drive").is_dir():
        pytest.skip("../shared/data/drive is absent (the shared datasets sit beside the project in CI only)")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "accuracy" / "run.py"), "drive", "--budget", "0.1",
           "--set", "model.depth=2", "--set", "model.filters=4", "--set", "train.steps_per_epoch=5",
           "--test-images", "4", "--quiet", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "results" / "drive.json").read_text())
    for tag in ("plain", "tta"):
        scores = data["summary"][tag]
        assert scores["images"] == 4 and 0 <= scores["f1_pooled"] <= 1 and 0 <= scores["auc_pooled"] <= 1
    assert data["folds"][0]["stopped_by_time_budget"] and data["folds"][0]["train_images"] == 20
    assert data["machine"]["cpu"] and "flags" in json.dumps(data["machine"])  # the CPU goes with every result
    assert (tmp_path / "work" / "drive" / "eval-plain" / "report.html").is_file()


def test_time_to_accuracy_keeps_the_model_at_each_point_and_draws_the_curves(tmp_path, monkeypatch):
    """The curve's parts without a training run (that is the benchmark): snapshots at the first epoch end
    after each point, and the plot of every result file of a dataset."""
    import importlib.util
    import time

    spec = importlib.util.spec_from_file_location("time_to_accuracy", ROOT / "benchmarks" / "time_to_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    start = time.perf_counter() - 100  # 100 s ago
    callback = module.snapshot_callback(run_dir, start, [30.0, 90.0, 1e9])
    (run_dir / "last.keras").write_text("epoch 3")
    callback.on_epoch_end(2)
    assert [(s["point_s"], s["epoch"]) for s in callback.taken] == [(30.0, 3), (90.0, 3)]
    assert (run_dir / "snapshots" / "t00030.keras").read_text() == "epoch 3" and callback.pending == [1e9]
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    (tmp_path / "results").mkdir()
    for variant, dice in (("before", [0.3, 0.5]), ("after", [0.5, 0.7])):
        curve = [{"at_s": 60.0 * (i + 1), "scores": {"f1_pooled": d}} for i, d in enumerate(dice)]
        (tmp_path / "results" / f"busi-subset-{variant}.json").write_text(json.dumps({"curve": curve}))
    assert module.main(["busi-subset", "--plot"]) == 0 and (tmp_path / "results" / "busi-subset.png").stat().st_size > 0


@pytest.mark.slow  # four child processes that each load TensorFlow: ~1 min, so outside `make test`
def test_tf_kernels_harness_runs_each_mode_in_its_own_process(tmp_path):
    data = _smoke("tf_kernels.py", tmp_path)
    kernels = {(run["shape"], run["mode"]): run["tensorflow_kernels"] for run in data["runs"]}
    assert kernels[("2d", "eigen")] == "eigen" and kernels[("2d", "onednn")] == "onednn"
    assert data["summary"]["3d onednn"]["msunet_train"] > 0
