import ast
import itertools

import numpy as np
import pytest
import tifffile

from helpers import ROOT
from msunet.data.imageio import RowBandReader, open_image_lazy
from msunet.runtime.tiling import gaussian_importance, predict_tiled, window_starts

SIZES = [(20, 30), (64, 64), (65, 63), (129, 200), (255, 257)]  # smaller, equal, larger, odd


def identity(batch):
    return batch


@pytest.mark.parametrize("size, overlap, out_of_core", list(itertools.product(SIZES, [0.0, 0.25, 0.5], [False, True])))
def test_identity_predictor_returns_the_input_exactly(size, overlap, out_of_core):
    image = np.random.default_rng(sum(size)).random((*size, 3), dtype=np.float32)
    out = predict_tiled(identity, image, tile_size=64, overlap=overlap, batch_size=3, out_of_core=out_of_core)["output"]
    assert out.shape == image.shape
    np.testing.assert_allclose(np.asarray(out), image, atol=1e-6)  # edges and corners included


def test_windows_are_evenly_spread_and_flush_with_the_border():
    assert window_starts(100, 40, 0.5) == [0, 20, 40, 60]
    assert window_starts(40, 40, 0.5) == [0] and window_starts(10, 40, 0.5) == [0]
    starts = window_starts(1000, 256, 0.25)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert max(np.diff(starts)) <= 256 * 0.75 + 1
    assert all(s % 8 == 0 for s in window_starts(1000, 256, 0.25, align=8))


def test_gaussian_importance_has_no_zeros_and_is_cached():
    w = gaussian_importance(64, 32)
    assert w.shape == (64, 32) and w.min() > 0 and w.max() == 1.0
    assert gaussian_importance(64, 32) is w and not w.flags.writeable


def local_ramp_predictor(batch):
    """Output depends on the position inside the tile: the worst case for seams."""
    ramp = np.linspace(0, 1, batch.shape[1], dtype=np.float32)[None, :, None, None]
    return batch[..., :1] + 0.2 * ramp


def test_gaussian_blending_shows_no_seams():
    yy, xx = np.mgrid[0:320, 0:320].astype(np.float32)
    image = (yy + xx)[..., None] / 640  # a smooth global ramp; 320 = 5 tiles, so overlap 0 leaves hard borders
    smooth = predict_tiled(local_ramp_predictor, image, 64, overlap=0.5, blend="gaussian")["output"][..., 0]
    seams = predict_tiled(local_ramp_predictor, image, 64, overlap=0.0, blend="constant")["output"][..., 0]
    step = np.abs(np.diff(smooth, axis=0)).max()
    assert np.abs(np.diff(seams, axis=0)).max() > 0.15  # the predictor really does jump at tile borders
    # With Gaussian blending the largest row-to-row change is the predictor's own slope plus the global
    # ramp's, nowhere a jump: below a small epsilon.
    assert step < 0.02


def test_multi_scale_outputs_are_stitched_at_their_own_resolution():
    def heads(batch):
        return {"mask": batch[..., :1], "mask_s2": batch[:, ::2, ::2, :1], "mask_s8": batch[:, ::8, ::8, :2]}

    image = np.random.default_rng(0).random((101, 77, 3), dtype=np.float32)
    out = predict_tiled(heads, image, 32, overlap=0.5, batch_size=5, scales={"mask": 1, "mask_s2": 2, "mask_s8": 8})
    assert {k: v.shape for k, v in out.items()} == {"mask": (101, 77, 1), "mask_s2": (51, 39, 1), "mask_s8": (13, 10, 2)}
    np.testing.assert_allclose(out["mask_s2"][..., 0], image[::2, ::2, 0], atol=1e-6)
    np.testing.assert_allclose(out["mask_s8"], image[::8, ::8, :2], atol=1e-6)
    with pytest.raises(ValueError, match="multiple of the coarsest scale 8"):
        predict_tiled(heads, image, 36, scales={"mask": 1, "mask_s8": 8})


def test_out_of_core_matches_in_memory_on_a_medium_image(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (700, 530, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image)
    lazy = open_image_lazy(tmp_path / "big.tif")
    assert isinstance(lazy, RowBandReader)

    def fn(batch):
        return {"mask": batch.mean(-1, keepdims=True), "mask_s4": batch[:, ::4, ::4, :1] * 2}

    prep = lambda tile: np.asarray(tile, np.float32) / 255  # noqa: E731
    a = predict_tiled(fn, image, 128, 0.25, 4, preprocess=prep, scales={"mask": 1, "mask_s4": 4}, out_of_core=False)
    b = predict_tiled(fn, lazy, 128, 0.25, 4, preprocess=prep, scales={"mask": 1, "mask_s4": 4}, out_of_core=True,
                      workdir=tmp_path)
    assert isinstance(b["mask"], np.memmap)
    for name in a:
        np.testing.assert_allclose(np.asarray(b[name]), a[name], atol=1e-6)


def test_tiling_module_is_numpy_only():
    tree = ast.parse((ROOT / "src" / "msunet" / "runtime" / "tiling.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not names & {"keras", "tensorflow", "jax", "torch", "msunet"}


def test_tiled_compressed_tiff_is_read_lazily_and_exactly(tmp_path):
    from msunet.data.imageio import TiledTiffReader

    image = np.random.default_rng(3).integers(0, 255, (300, 210, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "slide.tif", image, tile=(64, 64), compression="zlib")
    lazy = open_image_lazy(tmp_path / "slide.tif")
    assert isinstance(lazy, TiledTiffReader)
    np.testing.assert_array_equal(lazy[37:250, 11:209], image[37:250, 11:209])
    out = predict_tiled(identity, lazy, 64, 0.25, preprocess=lambda t: np.asarray(t, np.float32), out_of_core=True,
                        workdir=tmp_path)["output"]
    np.testing.assert_allclose(np.asarray(out), image.astype(np.float32), atol=1e-3)  # blending rounds in float32


VOLUME_SIZES = [(5, 9, 7), (16, 16, 16), (19, 23, 17), (40, 18, 33)]  # smaller, equal, larger, odd


@pytest.mark.parametrize("size, overlap, out_of_core",
                         list(itertools.product(VOLUME_SIZES, [0.0, 0.5], [False, True])))
def test_volumes_are_tiled_in_3d_and_stitched_exactly(size, overlap, out_of_core):
    """3-D windows and a 3-D Gaussian: an identity predictor returns the volume; a head that keeps every
    second voxel (scale 2) or every second in-plane voxel (scale (1, 2, 2)) returns the volume's own
    subsampling, so each output is stitched on its own grid."""
    volume = np.random.default_rng(sum(size)).random((*size, 2), dtype=np.float32)

    def heads(batch):
        return {"mask": batch, "mask_s2": batch[:, ::2, ::2, ::2], "mask_inplane": batch[:, :, ::2, ::2]}

    out = predict_tiled(heads, volume, tile_size=16, overlap=overlap, batch_size=3, out_of_core=out_of_core,
                        scales={"mask": 1, "mask_s2": 2, "mask_inplane": (1, 2, 2)})
    np.testing.assert_allclose(np.asarray(out["mask"]), volume, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["mask_s2"]), volume[::2, ::2, ::2], atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["mask_inplane"]), volume[:, ::2, ::2], atol=1e-6)


def test_a_volume_is_held_in_slabs(monkeypatch):
    """Out of core, the accumulators hold about a tile's slices, not the volume: a (64, 16, 16) volume in
    16^3 windows keeps at most 16 + 16 slices open."""
    from msunet.runtime import tiling

    volume = np.ones((64, 16, 16, 1), np.float32)
    seen = []
    original = tiling._RollingCanvas.add

    def spy(self, corner, values, weights):
        original(self, corner, values, weights)
        seen.append(len(self.sum))

    monkeypatch.setattr(tiling._RollingCanvas, "add", spy)
    predict_tiled(identity, volume, tile_size=16, overlap=0.5, batch_size=1, out_of_core=True)
    assert max(seen) <= 32
