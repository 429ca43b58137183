"""Volumes in and out (msunet.data.volumes): NIfTI, TIFF stacks, .npy; spacing and affine kept; bad files named."""

import gzip

import nibabel
import numpy as np
import pytest
import tifffile

from helpers import shared_dataset
from msunet.data.volumes import (
    VolumeReadError,
    read_volume,
    scaled_affine,
    volume_stem,
    write_volume,
)

AFFINE = np.array([[-0.5, 0, 0, 90.0], [0, 1.0, 0, -126.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1]])  # x, y, z voxels


def nifti(path, data_xyz, affine=AFFINE, dtype=None):
    image = nibabel.Nifti1Image(data_xyz if dtype is None else data_xyz.astype(dtype), affine)
    nibabel.save(image, str(path))
    return path


def test_nifti_is_read_in_z_y_x_order_with_its_spacing(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)  # NIfTI order (x, y, z)
    volume = read_volume(nifti(tmp_path / "case_1.nii.gz", data))
    assert volume.array.shape == (3, 5, 4, 1) and volume.array.dtype == np.float32
    assert volume.array[2, 1, 3, 0] == data[3, 1, 2]  # voxel (x=3, y=1, z=2)
    assert volume.spacing == (2.0, 1.0, 0.5)  # (z, y, x) mm from the header
    np.testing.assert_array_equal(volume.affine, AFFINE)
    assert volume_stem(tmp_path / "case_1.nii.gz") == "case_1"


def test_masks_are_integer_labels_and_float_stored_labels_are_cast(tmp_path):
    labels = np.zeros((6, 7, 5), np.float32)
    labels[1:3, 2:4, 1:2] = 1.0
    labels[4, 5, 3] = 2.0
    mask = read_volume(nifti(tmp_path / "m.nii", labels), mask=True)
    assert mask.array.dtype == np.int16 and mask.array.shape == (5, 7, 6)
    assert set(np.unique(mask.array)) == {0, 1, 2} and mask.array[3, 5, 4] == 2
    labels[0, 0, 0] = 0.5
    with pytest.raises(VolumeReadError, match=r"p\.nii.*not whole labels"):
        read_volume(nifti(tmp_path / "p.nii", labels), mask=True)


def test_a_mask_written_for_a_volume_has_its_affine_at_every_scale(tmp_path):
    source = read_volume(nifti(tmp_path / "img.nii.gz", np.zeros((8, 6, 5), np.float32)))
    mask = np.zeros(source.shape, np.uint8)
    mask[1:3, 2:5, 1:7] = 1
    write_volume(tmp_path / "out" / "img.nii.gz", mask, like=source)
    back = nibabel.load(str(tmp_path / "out" / "img.nii.gz"))
    np.testing.assert_array_equal(back.affine, AFFINE)
    np.testing.assert_array_equal(np.transpose(np.asarray(back.dataobj), (2, 1, 0)), mask)
    # A coarse scale: a voxel of the (2, 2, 2) mask sits at the centre of the 8 fine voxels it covers.
    coarse = np.zeros((3, 3, 4), np.uint8)
    write_volume(tmp_path / "out" / "img_s2.nii.gz", coarse, like=source, factor=(2, 2, 2))
    affine = nibabel.load(str(tmp_path / "out" / "img_s2.nii.gz")).affine
    fine_centres = [AFFINE @ np.array([x, y, z, 1.0]) for x in (2, 3) for y in (0, 1) for z in (4, 5)]
    np.testing.assert_allclose(affine @ np.array([1, 0, 2, 1.0]), np.mean(fine_centres, axis=0))
    np.testing.assert_allclose(scaled_affine(AFFINE, (1, 1, 1)), AFFINE)
    assert not list((tmp_path / "out").glob(".*tmp*"))  # written atomically: no temporary file left


def test_tiff_stacks_and_npy_volumes(tmp_path):
    stack = np.random.default_rng(0).integers(0, 255, (4, 9, 7), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    volume = read_volume(tmp_path / "s.tif")
    assert volume.array.shape == (4, 9, 7, 1) and volume.spacing == pytest.approx((2.0, 0.25, 0.25))
    np.testing.assert_array_equal(volume.array[..., 0], stack)
    np.save(tmp_path / "v.npy", stack)
    assert read_volume(tmp_path / "v.npy").array.shape == (4, 9, 7, 1)
    write_volume(tmp_path / "w.npy", stack)
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), stack)


@pytest.mark.parametrize("case, message", [
    ("truncated", "truncated or its compression is damaged"),
    ("garbage", "cannot read the volume"),
    ("flat_nifti", "a 2-D image"),
    ("single_page_tiff", "a 2-D image"),
    ("missing", "no such file"),
    ("png", "not a volume file"),
])
def test_bad_volume_files_are_named_with_the_fix(tmp_path, case, message):
    if case == "truncated":
        nifti(tmp_path / "x.nii.gz", np.random.default_rng(0).random((16, 16, 16), dtype=np.float32))
        raw = (tmp_path / "x.nii.gz").read_bytes()
        path = tmp_path / "bad.nii.gz"
        path.write_bytes(raw[: len(raw) // 2])
    elif case == "garbage":
        path = tmp_path / "bad.nii"
        path.write_bytes(b"not a nifti file at all" * 30)
    elif case == "flat_nifti":
        path = nifti(tmp_path / "bad.nii.gz", np.zeros((16, 12, 1), np.float32))
    elif case == "single_page_tiff":
        path = tmp_path / "bad.tif"
        tifffile.imwrite(path, np.zeros((16, 12), np.uint8))
    elif case == "missing":
        path = tmp_path / "bad.nii.gz"
    else:
        path = tmp_path / "bad.png"
        path.write_bytes(b"\x89PNG")
    with pytest.raises(VolumeReadError, match=message) as err:
        read_volume(path)
    assert str(path) in str(err.value)


def test_gzip_without_nifti_inside(tmp_path):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(gzip.compress(b"\x00" * 400))
    with pytest.raises(VolumeReadError, match="bad.nii.gz"):
        read_volume(path)


def test_msd_hippocampus_reads_with_its_labels():
    root = shared_dataset("msd-hippocampus")
    image = read_volume(root / "images" / "hippocampus_001.nii.gz")
    mask = read_volume(root / "masks" / "hippocampus_001.nii.gz", mask=True)
    assert image.array.shape[:3] == mask.array.shape and image.array.shape[3] == 1
    assert image.spacing == (1.0, 1.0, 1.0) and set(np.unique(mask.array)) <= {0, 1, 2}
    assert 24 <= min(mask.shape) and max(mask.shape) <= 59


def test_resampling_keeps_a_linear_ramp_and_the_labels():
    from msunet.data.volumes import needs_resampling, resample_volume, resampled_shape

    assert resampled_shape((10, 40, 41), (3.0, 0.5, 0.5), (1.5, 1.0, 1.0)) == (20, 20, 20)  # round(41 / 2)
    assert not needs_resampling((1.0, 1.0, 1.0), (1.0, 1.0, 1.005)) and needs_resampling((3, 1, 1), (1.5, 1, 1))
    z = np.arange(10, dtype=np.float32)
    ramp = np.broadcast_to(z[:, None, None, None], (10, 4, 4, 1))
    fine = resample_volume(ramp, (20, 4, 4), order=1)
    # Voxel centres aligned: new voxel i lies at old (i + 0.5) / 2 - 0.5, clamped at the two ends.
    want = np.clip((np.arange(20) + 0.5) / 2 - 0.5, 0, 9)
    np.testing.assert_allclose(fine[:, 0, 0, 0], want, atol=1e-5)
    labels = np.zeros((10, 12, 12), np.int16)
    labels[3:7, 4:8, 4:8] = 2
    coarse = resample_volume(labels, (5, 6, 6), order=0)
    assert coarse.dtype == np.int16 and set(np.unique(coarse)) == {0, 2} and coarse.shape == (5, 6, 6)
    back = resample_volume(coarse, (10, 12, 12), order=0)
    assert (back == labels).mean() > 0.9  # nearest down and up: the box within a voxel of where it was
