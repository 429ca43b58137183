"""Training on a folder of volumes: the plan (3-D, patch cube, depth, in-plane pooling), the run, bad files."""

import json
import pathlib
import shutil

import nibabel
import numpy as np
import pytest
from helpers import shared_dataset

import msunet
from msunet.data.synthetic import make_volume_dataset
from msunet.data.volumes import Volume, scaled_affine, write_volume
from msunet.models import load_model
from msunet.training.check import check_dataset, format_report

TINY = ["model.filters=4", "model.depth=2", "data.patch_size=16", "train.batch_size=2", "train.steps_per_epoch=4",
        "train.epochs=2", "train.val_batches=1"]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    return make_volume_dataset(tmp_path_factory.mktemp("volumes") / "data", count=8, shape=(12, 20, 18),
                               spacing=(3.0, 1.0, 1.0))


def test_a_folder_of_volumes_is_planned_as_3d(volumes):
    plan = check_dataset(volumes).plan
    config, sources = plan.config, plan.sources
    assert config.model.dims == 3 and config.model.in_channels == 1 and config.model.num_classes == 3
    assert config.data.normalization == "volume" and config.data.mask_encoding == "index"
    assert config.data.patch_size == 24  # the median's middle side (18) rounded up to a multiple of 8
    assert config.model.depth == 2  # 24 / 2**2 = 6 voxels at the bottleneck (>= 4)
    assert config.model.inplane_levels == 1 and "3.0x thicker" in sources["model.inplane_levels"]["why"]
    assert config.data.rotate == 0 and "20 CPU minutes" in sources["data.rotate"]["why"]
    assert (config.model.filters, config.train.batch_size) == (16, 2)  # a CPU: where the probe starts
    assert config.model.norm == "group" and "moving statistics" in sources["model.norm"]["why"]
    # The PyTorch-backend hint of stop 36 is gone: TensorFlow's 3-D step was slow without oneDNN, now on everywhere
    assert not any("KERAS_BACKEND=torch" in note for note in plan.notes)
    text = format_report(check_dataset(volumes))
    assert "volume sizes (WxHxD, voxels): 18x20x12 (8)" in text and "OK: ready to train" in text


def test_train_on_volumes_writes_a_3d_run(volumes, tmp_path):
    result = msunet.train(None, volumes, tmp_path / "run", overrides=TINY, verbose=0)
    assert result.epochs_done == 2 and 0.0 <= result.best_dice <= 1.0
    model = load_model(tmp_path / "run" / "best.keras")
    assert len(model.inputs[0].shape) == 5
    out = model.predict(np.zeros((1, 12, 20, 18, 1), np.float32), verbose=0)
    # inplane_levels=1 (3 mm slices, 1 mm pixels): the first pooling keeps the 12 slices
    assert out["mask"].shape == (1, 12, 20, 18, 3) and out["mask_s2"].shape == (1, 12, 10, 9, 3)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["dims"] == 3 and config["sources"]["model.dims"]["source"] == "data"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"mask", "mask_s2"} <= set(metrics["heads"])
    assert json.loads((tmp_path / "run" / "normalization.json").read_text())["mode"] == "volume"


def test_bad_volumes_are_reported_and_skipped(volumes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(volumes, data)
    (data / "images" / "vol_000.nii.gz").write_bytes((data / "images" / "vol_000.nii.gz").read_bytes()[:300])
    image = nibabel.load(str(data / "images" / "vol_001.nii.gz"))  # a mask for another grid
    shifted = image.affine.copy()
    shifted[0, 3] += 40.0
    labels = np.asarray(nibabel.load(str(data / "masks" / "vol_001.nii.gz")).dataobj)
    nibabel.save(nibabel.Nifti1Image(labels, shifted), str(data / "masks" / "vol_001.nii.gz"))
    write_volume(data / "images" / "flat.nii.gz", np.zeros((1, 20, 18), np.float32), like=Volume(np.zeros(0)))
    write_volume(data / "masks" / "flat.nii.gz", np.zeros((1, 20, 18), np.uint8), like=Volume(np.zeros(0)))
    report = check_dataset(data, overrides=TINY)
    text = "\n".join(f"{path}: {message}" for path, message in report.problems)
    assert "vol_000.nii.gz" in text and "truncated" in text
    assert "vol_001.nii.gz" in text and "affine" in text
    assert "flat.nii.gz" in text and "2-D image" in text
    assert report.usable == 6 and report.ok


def test_msd_hippocampus_plan():
    root = shared_dataset("msd-hippocampus")
    plan = check_dataset(root).plan
    config = plan.config
    assert (config.model.dims, config.model.num_classes, config.model.in_channels) == (3, 3, 1)
    assert config.model.inplane_levels == 0 and config.data.normalization == "volume"
    assert config.data.patch_size == 40 and config.model.depth == 3  # median ~35x50x36: a 40^3 cube, 5 voxels deep


def test_predict_volumes_writes_nifti_masks_on_the_input_grid_at_every_scale(volumes, tmp_path):
    msunet.train(None, volumes, tmp_path / "run", overrides=TINY, verbose=0)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("vol_006.nii.gz", "vol_007.nii.gz"):
        shutil.copy(volumes / "images" / name, inputs / name)
    (inputs / "photo.png").write_bytes((volumes / "images" / "vol_006.nii.gz").read_bytes()[:10])
    summary = msunet.predict(tmp_path / "run", inputs, tmp_path / "out", probabilities=True, tta=True)
    assert [pathlib.Path(p).name for p, _ in summary.failed] == ["photo.png"]
    assert "2-D image" in summary.failed[0][1]
    source = nibabel.load(str(inputs / "vol_006.nii.gz"))
    mask = nibabel.load(str(tmp_path / "out" / "vol_006.nii.gz"))
    coarse = nibabel.load(str(tmp_path / "out" / "vol_006_s2.nii.gz"))
    assert mask.shape == source.shape == (18, 20, 12) and coarse.shape == (9, 10, 12)  # (x, y, z); z kept (3 mm)
    np.testing.assert_allclose(mask.affine, source.affine)
    np.testing.assert_allclose(coarse.affine, scaled_affine(source.affine, (1, 2, 2)))
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    probs = nibabel.load(str(tmp_path / "out" / "vol_006_prob.nii.gz"))
    assert probs.shape == (18, 20, 12, 3)
    np.testing.assert_allclose(np.asarray(probs.dataobj).sum(-1), 1.0, atol=1e-4)
    assert (tmp_path / "out" / "vol_006_overlay.png").is_file()
    again = msunet.predict(tmp_path / "run", inputs, tmp_path / "out", probabilities=True)
    assert not again.written and len(again.existing) == 2  # nothing overwritten without overwrite=True
    # the default for volumes is the mirroring TTA (nnU-Net's): the same probabilities as tta=True, not as tta=False
    for tta, folder in ((None, "default"), (False, "plain")):
        msunet.predict(tmp_path / "run", inputs / "vol_006.nii.gz", tmp_path / folder, probabilities=True, tta=tta)
    default, plain = (np.asarray(nibabel.load(str(tmp_path / f / "vol_006_prob.nii.gz")).dataobj) for f in ("default", "plain"))
    np.testing.assert_allclose(default, np.asarray(probs.dataobj), atol=1e-6)  # the same computation, the same engine
    assert np.abs(default - plain).max() > 1e-4

    # Evaluation: per volume, class and scale; distances in mm from the spacing (3 x 1 x 1 mm).
    result = msunet.evaluate(tmp_path / "run", volumes, tmp_path / "eval")
    assert result.summary["distance_unit"] == "mm" and result.summary["split"] == "val"
    scales = {(r["image"], r["class"], r["scale"]) for r in result.rows}
    val = {r["image"] for r in result.rows}
    assert {(v, c, s) for v in val for c in (1, 2) for s in (1, 2)} == scales
    report = (tmp_path / "eval" / "report.html").read_text()
    assert "axial: ground truth" in report and "sagittal: prediction 1/2" in report and " mm.</p>" in report
    # The same scores from the folders (msunet evaluate --pred --gt), distances included.
    again = msunet.evaluate(pred_dir=tmp_path / "eval" / "predictions", gt_dir=volumes / "masks",
                            out_dir=tmp_path / "eval2", num_classes=3, names=sorted(val))
    assert again.summary["overall"]["dice_mean"] == pytest.approx(result.summary["overall"]["dice_mean"])


def test_augmented_patches_of_a_z_scored_volume_keep_their_negative_values():
    """Gamma acts through the patch's range on z-scored volumes: the augmented patch keeps its order
    and both signs (clipping at 0 erased half of every training patch, a train / inference mismatch)."""
    from msunet.config import DataConfig
    from msunet.data.samples import Sample, sample_patch
    from msunet.data.volumes import standardize_volume

    rng = np.random.default_rng(0)
    image = standardize_volume(rng.normal(100.0, 20.0, (16, 16, 16, 1)).astype(np.float32))
    sample = Sample("v", image, np.zeros((16, 16, 16), np.int16), np.zeros((0, 3)))
    cfg = DataConfig(normalization="volume", gamma=0.5, brightness=0.0, contrast=0.0, flip=False, rot90=False,
                     rotate=0, scale=0, foreground_oversample=0.0)
    for seed in range(5):
        patch, _ = sample_patch(sample, 16, cfg, np.random.default_rng(seed))
        assert 0.35 < (patch < 0).mean() < 0.65  # z-scored: about half below the mean, as at inference
        order = np.argsort(image.ravel())
        assert np.all(np.diff(patch.ravel()[order]) >= -1e-5)  # gamma is monotone: voxel order kept


def test_a_volume_shorter_than_the_patch_lands_anywhere_inside_it():
    """Sliding windows meet a small volume at their start; training crops must not always centre it."""
    from msunet.config import DataConfig
    from msunet.data.samples import IGNORE, Sample, sample_patch

    sample = Sample("v", np.zeros((10, 10, 10, 1), np.float32), np.zeros((10, 10, 10), np.int16), np.zeros((0, 3)))
    cfg = DataConfig(normalization="volume", foreground_oversample=0.0)
    starts = set()
    for seed in range(40):
        _, mask = sample_patch(sample, 16, cfg, np.random.default_rng(seed), augment=False)
        inside = np.argwhere(mask != IGNORE)
        assert len(inside) == 1000  # the whole volume is in the patch
        starts.add(tuple(inside.min(0)))
    offsets = np.array(sorted(starts))
    assert offsets.min() == 0 and offsets.max() == 6 and len(starts) > 20  # corner to corner, not one place


def test_volumes_of_different_spacings_are_resampled_to_the_median_and_predicted_on_their_own_grid(tmp_path):
    data = tmp_path / "data"
    for prefix, spacing, shape in (("a", (2.0, 1.0, 1.0), (10, 20, 18)), ("b", (1.0, 1.0, 1.0), (20, 20, 18)),
                                   ("c", (1.0, 1.0, 1.0), (20, 20, 18))):
        part = make_volume_dataset(tmp_path / prefix, count=3, shape=shape, spacing=spacing, seed=len(prefix + str(spacing)))
        for kind in ("images", "masks"):
            (data / kind).mkdir(parents=True, exist_ok=True)
            for path in (part / kind).iterdir():
                shutil.move(path, data / kind / f"{prefix}{path.name}")
    plan = check_dataset(data).plan
    assert plan.config.data.target_spacing == (1.0, 1.0, 1.0)
    assert "resampled to the median" in plan.sources["data.target_spacing"]["why"]
    assert plan.config.data.patch_size == 24  # the resampled median 20x20x18: middle side 20 -> 24
    assert plan.config.model.inplane_levels == 0  # the target grid is isotropic
    run = tmp_path / "run"
    msunet.train(None, data, run, overrides=[*TINY, "train.epochs=1"], verbose=0)
    thick = data / "images" / "avol_000.nii.gz"
    summary = msunet.predict(run, thick, tmp_path / "out", engine="keras")
    assert summary.written
    source, mask = nibabel.load(str(thick)), nibabel.load(str(tmp_path / "out" / "avol_000.nii.gz"))
    coarse = nibabel.load(str(tmp_path / "out" / "avol_000_s2.nii.gz"))
    assert mask.shape == source.shape == (18, 20, 10) and coarse.shape == (9, 10, 5)  # the input's own grid
    np.testing.assert_allclose(mask.affine, source.affine)


def test_thick_slices_are_planned_as_a_2d_model_on_slices_trained_predicted_and_scored(tmp_path):
    data = make_volume_dataset(tmp_path / "data", count=6, shape=(8, 24, 20), spacing=(5.0, 1.0, 1.0))
    plan = check_dataset(data).plan
    config, sources = plan.config, plan.sources
    assert config.model.dims == 2 and config.data.slices and config.data.normalization == "volume"
    assert "5.0x thicker" in sources["model.dims"]["why"] and "nnU-Net" in sources["model.dims"]["why"]
    assert config.data.patch_size <= 32 and config.data.resample == 1.0  # planned from the 24x20 slices
    forced = check_dataset(data, overrides=["model.dims=3"]).plan.config
    assert forced.model.dims == 3 and not forced.data.slices and forced.model.inplane_levels >= 1

    run = tmp_path / "run"
    msunet.train(None, data, run, overrides=[*TINY, "train.epochs=1"], verbose=0)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(data / "images" / "vol_005.nii.gz", inputs / "vol_005.nii.gz")
    from msunet.data.imageio import write_png
    write_png(inputs / "photo.png", np.zeros((24, 20), np.uint8))
    summary = msunet.predict(run, inputs, tmp_path / "out", engine="keras")
    assert [pathlib.Path(p).name for p, _ in summary.failed] == ["photo.png"] and "2-D image" in summary.failed[0][1]
    source = nibabel.load(str(inputs / "vol_005.nii.gz"))
    mask, coarse = (nibabel.load(str(tmp_path / "out" / n)) for n in ("vol_005.nii.gz", "vol_005_s2.nii.gz"))
    assert mask.shape == source.shape == (20, 24, 8) and coarse.shape == (10, 12, 8)  # every slice kept
    np.testing.assert_allclose(coarse.affine, scaled_affine(source.affine, (1, 2, 2)))
    result = msunet.evaluate(run, data, tmp_path / "eval", engine="keras")
    assert result.summary["distance_unit"] == "mm" and {r["scale"] for r in result.rows} == {1, 2}


@pytest.mark.parametrize("seed", range(3))
def test_rotated_zoomed_volume_patches_keep_image_and_labels_aligned(seed):
    from scipy import ndimage

    from msunet.config import DataConfig
    from msunet.data.samples import IGNORE, Sample, sample_patch

    zz, yy, xx = np.mgrid[0:24, 0:30, 0:28]
    labels = ((zz // 6 + yy // 5 + xx // 5) % 2).astype(np.int16)  # a 3-D checkerboard shows misalignment
    image = (labels * 0.8 + 0.1).astype(np.float32)[..., None]
    sample = Sample("v", image, labels, np.argwhere(labels > 0).astype(np.int32))
    cfg = DataConfig(normalization="unit", rotate=30, scale=0.3, brightness=0, contrast=0, gamma=0,
                     flip=False, rot90=False)
    patch, mask = sample_patch(sample, 16, cfg, np.random.default_rng(seed))
    assert patch.shape == (16, 16, 16, 1) and mask.shape == (16, 16, 16)
    assert set(np.unique(mask).tolist()) <= {IGNORE, 0, 1}
    interior = ndimage.binary_erosion(mask == 1) | ndimage.binary_erosion(mask == 0)
    assert interior.sum() > 100
    assert ((patch[..., 0] > 0.5) == (mask == 1))[interior].mean() > 0.99
    unwarped, _ = sample_patch(sample, 16, cfg.replace(rotate=0, scale=0), np.random.default_rng(seed))
    assert not np.allclose(patch, unwarped)  # the warp did something


def test_a_large_volume_is_streamed_from_its_file_with_the_same_outputs(volumes, tmp_path, monkeypatch):
    """Volumes over STREAM_VOXELS are read slab by slab (NIfTI, .npy) and normalised window by window
    with the whole volume's statistics: the masks equal those of the in-memory path (probabilities
    within 1e-4: the same float32 network on the same windows, statistics summed in another order)."""
    from msunet.data.volumes import read_volume
    from msunet.runtime import volumes as runtime_volumes

    run = tmp_path / "run"
    msunet.train(None, volumes, run, overrides=[*TINY, "train.epochs=1"], verbose=0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(volumes / "images" / "vol_003.nii.gz", inputs / "vol_003.nii.gz")
    np.save(inputs / "vol_004.npy", read_volume(volumes / "images" / "vol_004.nii.gz").array[..., 0])
    whole = msunet.predict(run, inputs, tmp_path / "whole", engine="keras", probabilities=True)
    calls = []
    real = runtime_volumes.LazyVolume.slab
    monkeypatch.setattr(runtime_volumes, "STREAM_VOXELS", 1000)
    monkeypatch.setattr(runtime_volumes.LazyVolume, "slab", lambda self, a, b: calls.append((a, b)) or real(self, a, b))
    streamed = msunet.predict(run, inputs, tmp_path / "streamed", engine="keras", probabilities=True)
    assert len(whole.written) == len(streamed.written) and not streamed.failed and calls
    assert max(b - a for a, b in calls) <= 16  # never more than a window's slices (or a statistics slab) at once
    for name in ("vol_003.nii.gz", "vol_003_s2.nii.gz", "vol_004.nii.gz", "vol_004_s2.nii.gz"):
        a, b = (np.asarray(nibabel.load(str(tmp_path / d / name)).dataobj) for d in ("whole", "streamed"))
        assert a.shape == b.shape and (a == b).mean() > 0.999, name
    for name in ("vol_003_prob.nii.gz",):
        a, b = (np.asarray(nibabel.load(str(tmp_path / d / name)).dataobj) for d in ("whole", "streamed"))
        np.testing.assert_allclose(a, b, atol=1e-4)
    # A .nii.gz cut short is found when its slabs are read: reported with the file, nothing half-written.
    broken = tmp_path / "broken"
    broken.mkdir()
    raw = (volumes / "images" / "vol_005.nii.gz").read_bytes()
    (broken / "cut.nii.gz").write_bytes(raw[: len(raw) * 2 // 3])
    summary = msunet.predict(run, broken, tmp_path / "out-broken", engine="keras")
    assert len(summary.failed) == 1 and "truncated" in summary.failed[0][1]
    assert not any((tmp_path / "out-broken").glob("cut*"))
