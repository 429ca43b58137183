"""GeoTIFF inputs keep their georeference: every output scale is a GeoTIFF with the input's CRS and its
raster-to-map mapping scaled to that scale's pixel size."""

import numpy as np
import pytest
import tifffile

from msunet.config import RunConfig
from msunet.data.geo import KEY_DIRECTORY, PIXEL_SCALE, TIEPOINT, TRANSFORMATION, GeoReference, read_georeference
from msunet.data.preprocessing import Normalization
from msunet.inference.engines import predict
from msunet.models import build_model
from msunet.training.run_folder import LoadedRun

# UTM zone 33N (EPSG:32633), 0.5 m pixels, the upper-left corner at (500000, 4100000): PixelIsArea.
KEYS = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633, 3076, 0, 1, 9001)
TAGS = [(PIXEL_SCALE, "d", 3, (0.5, 0.5, 0.0), True), (TIEPOINT, "d", 6, (0, 0, 0, 500000.0, 4100000.0, 0), True),
        (KEY_DIRECTORY, "H", len(KEYS), KEYS, True), (34737, "s", 0, "WGS 84 / UTM zone 33N|", True)]


@pytest.fixture(scope="module")
def loaded_run():
    cfg = RunConfig().override(["model.depth=3", "model.filters=4", "data.patch_size=32"])
    return LoadedRun(build_model(cfg.model), cfg, Normalization("image"), None)


def test_a_geotiff_gives_geotiff_masks_at_every_scale_with_its_georeference(loaded_run, tmp_path):
    image = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "scene.tif", image, photometric="rgb", extratags=TAGS)
    summary = predict(loaded_run, tmp_path / "in", tmp_path / "out", probabilities=True)
    assert not summary.failed
    source = read_georeference(tmp_path / "in" / "scene.tif")
    for suffix, scale, shape in (("", 1, (70, 90)), ("_s2", 2, (35, 45)), ("_s4", 4, (18, 23))):
        mask_path = tmp_path / "out" / f"scene{suffix}.tif"
        assert tifffile.imread(mask_path).shape == shape
        geo = read_georeference(mask_path)
        assert geo.tags[KEY_DIRECTORY] == KEYS and geo.tags[34737] == "WGS 84 / UTM zone 33N|"  # the same CRS
        assert geo.tags[PIXEL_SCALE] == (0.5 * scale, 0.5 * scale, 0.0)
        assert geo.tags[TIEPOINT] == (0, 0, 0, 500000.0, 4100000.0, 0)  # the same upper-left corner
        assert read_georeference(tmp_path / "out" / f"scene{suffix}_prob.tif").tags == geo.tags
    assert source.scaled(2).tags == read_georeference(tmp_path / "out" / "scene_s2.tif").tags
    assert not (tmp_path / "out" / "scene.png").exists()

    rasterio = pytest.importorskip("rasterio", reason="the check with GDAL's reader needs rasterio (pip install rasterio)")
    with rasterio.open(tmp_path / "in" / "scene.tif") as src:
        for suffix, scale in (("", 1), ("_s2", 2), ("_s4", 4)):
            with rasterio.open(tmp_path / "out" / f"scene{suffix}.tif") as out:
                assert out.crs == src.crs and out.crs.to_epsg() == 32633
                assert out.transform.almost_equals(src.transform @ rasterio.Affine.scale(scale))
                # ceil-sized scales cover the input, by less than one of their pixels
                assert out.bounds.left == src.bounds.left and out.bounds.top == src.bounds.top
                assert 0 <= out.bounds.right - src.bounds.right < 0.5 * scale


def test_pixel_is_point_and_transformation_matrices_map_each_coarse_pixel_onto_its_fine_pixels():
    point_keys = (1, 1, 0, 2, 1024, 0, 1, 1, 1025, 0, 1, 2)  # PixelIsPoint: raster (0, 0) is a pixel centre
    geo = GeoReference({PIXEL_SCALE: (2.0, 2.0, 0.0), TIEPOINT: (0, 0, 0, 100.0, 200.0, 0), KEY_DIRECTORY: point_keys})
    assert geo.pixel_is_point
    coarse = geo.scaled(4)
    i, _, _, x, _, _ = coarse.tags[TIEPOINT]
    # the centre of coarse pixel 0 is the centre of fine pixels 0..3 (fine raster 1.5); coarse 3: fine 13.5
    fine_x = lambda u: 100.0 + 2.0 * u  # noqa: E731 - fine raster -> model
    coarse_x = lambda u: x + coarse.tags[PIXEL_SCALE][0] * (u - i)  # noqa: E731
    assert coarse_x(0) == pytest.approx(fine_x(1.5)) and coarse_x(3) == pytest.approx(fine_x(13.5))
    matrix = np.eye(4)
    matrix[0, :] = (0.3, 0.1, 0.0, 10.0)  # a rotated grid
    matrix[1, :] = (0.1, -0.3, 0.0, 20.0)
    area = GeoReference({TRANSFORMATION: tuple(matrix.ravel()), KEY_DIRECTORY: KEYS}).scaled(2)
    scaled = np.asarray(area.tags[TRANSFORMATION]).reshape(4, 4)
    for u, v in ((0, 0), (3, 5), (7.5, 1)):  # a coarse raster corner lands on the fine one twice as far
        np.testing.assert_allclose(scaled @ (u, v, 0, 1), matrix @ (2 * u, 2 * v, 0, 1))


def test_a_plain_tiff_still_gives_png_masks(loaded_run, tmp_path):
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "plain.tif", np.zeros((40, 50, 3), np.uint8), photometric="rgb")
    predict(loaded_run, tmp_path / "in", tmp_path / "out")
    assert (tmp_path / "out" / "plain.png").is_file() and read_georeference(tmp_path / "in" / "plain.tif") is None


def test_large_outputs_are_cloud_optimized_tiles_with_overviews_that_gdal_reads(loaded_run, tmp_path):
    """Outputs over one 256 px tile carry overviews (reduced-resolution images at 1/2, 1/4, ... down to one
    tile, OGC's COG layout); GDAL lists and reads them, georeferenced like the full resolution."""
    rasterio = pytest.importorskip("rasterio", reason="the check with GDAL's reader needs rasterio (pip install rasterio)")
    image = (np.random.default_rng(2).random((600, 300, 3)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "big.tif", image, photometric="rgb", extratags=TAGS)
    assert not predict(loaded_run, tmp_path / "in", tmp_path / "out", probabilities=True).failed
    for name, overviews in (("big.tif", [2, 4]), ("big_prob.tif", [2, 4]), ("big_s2.tif", [2]), ("big_s4.tif", [])):
        with rasterio.open(tmp_path / "out" / name) as out:
            assert out.overviews(1) == overviews and out.profile["tiled"] and out.profile["blockxsize"] == 256
            assert out.crs.to_epsg() == 32633
            full = out.read(1)
            for factor in overviews:  # GDAL reads the level itself: the nearest pixels of the full resolution
                shape = (-(-full.shape[0] // factor), -(-full.shape[1] // factor))
                level = out.read(1, out_shape=(1, *shape))
                rows = np.minimum(np.arange(shape[0]) * factor + factor // 2, full.shape[0] - 1)
                cols = np.minimum(np.arange(shape[1]) * factor + factor // 2, full.shape[1] - 1)
                np.testing.assert_array_equal(level, full[np.ix_(rows, cols)])
    with tifffile.TiffFile(tmp_path / "out" / "big.tif") as tif:  # one IFD chain, finest first
        assert [p.shape for p in tif.pages] == [(600, 300), (300, 150), (150, 75)]
        assert [int(p.subfiletype) for p in tif.pages] == [0, 1, 1]


def test_a_cloud_optimized_geotiff_is_predicted_window_by_window(loaded_run, tmp_path, monkeypatch):
    """A COG written by GDAL (LZW, 256 px tiles, overviews) is read tile row by tile row, never whole,
    and predicts what the same pixels predict from a PNG."""
    rasterio = pytest.importorskip("rasterio", reason="writing a COG with GDAL needs rasterio (pip install rasterio)")
    from msunet.data.imageio import TiledTiffReader, open_image_lazy, write_png
    from msunet.runtime import files

    image = (np.random.default_rng(3).random((700, 520, 3)) * 255).astype(np.uint8)
    (tmp_path / "cog").mkdir()
    pytest.importorskip("imagecodecs", reason="GDAL's COGs are LZW-compressed: decoding needs imagecodecs (msunet[geo])")
    profile = dict(driver="COG", width=520, height=700, count=3, dtype="uint8", blocksize=256,  # LZW, GDAL's default
                   crs="EPSG:32633", transform=rasterio.Affine(0.5, 0, 500000.0, 0, -0.5, 4100000.0))
    with rasterio.open(tmp_path / "cog" / "scene.tif", "w", **profile) as dst:
        dst.write(np.moveaxis(image, -1, 0))
    with rasterio.open(tmp_path / "cog" / "scene.tif") as src:
        assert src.overviews(1) and src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    reader = open_image_lazy(tmp_path / "cog" / "scene.tif")
    assert isinstance(reader, TiledTiffReader) and reader.shape == (700, 520, 3)
    np.testing.assert_array_equal(reader[300:420, 100:300], image[300:420, 100:300])
    monkeypatch.setattr(files, "STREAM_PIXELS", 10_000)  # as a huge scene is: tiles read, results in maps
    assert not predict(loaded_run, tmp_path / "cog", tmp_path / "out", probabilities=True).failed
    monkeypatch.undo()  # the PNG whole, in memory
    write_png(tmp_path / "png" / "scene.png", image)
    predict(loaded_run, tmp_path / "png", tmp_path / "out-png", probabilities=True)
    # the same pixels through the same model and tiles: equal within float32 accumulation (1e-5; the streamed
    # path sums tiles in a memory map, the other in memory)
    ours, png = (tifffile.imread(tmp_path / name / "scene_prob.tif") for name in ("out", "out-png"))
    np.testing.assert_allclose(ours.reshape(png.shape), png, atol=1e-5)
    with rasterio.open(tmp_path / "out" / "scene.tif") as out, rasterio.open(tmp_path / "cog" / "scene.tif") as src:
        assert out.crs == src.crs and out.transform == src.transform and out.overviews(1) == [2, 4]
