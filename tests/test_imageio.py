import numpy as np
import pytest
import tifffile
from PIL import Image

from msunet.data.imageio import ImageReadError, read_image, read_mask, write_png, write_tiff


def test_formats_and_channels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(np.dstack([rgb, np.full((7, 9), 128, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    tifffile.imwrite(tmp_path / "g16.tif", (np.arange(63).reshape(7, 9) * 1000).astype(np.uint16))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)  # alpha dropped
    assert read_image(tmp_path / "a.jpg").shape == (7, 9, 3)
    g16 = read_image(tmp_path / "g16.tif")
    assert g16.shape == (7, 9, 1) and g16.dtype == np.uint16 and g16.max() == 62000


def test_lzw_tiff_without_imagecodecs(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(read_image(tmp_path / "lzw.tif"), rgb)


def test_indexed_mask_keeps_class_ids_and_16bit_png(tmp_path):
    ids = (np.arange(20).reshape(4, 5) % 4).astype(np.uint8)
    write_png(tmp_path / "m.png", ids, palette=np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), ids)
    deep = (np.arange(20).reshape(4, 5) * 3000).astype(np.uint16)
    write_png(tmp_path / "d.png", deep)
    np.testing.assert_array_equal(read_image(tmp_path / "d.png")[..., 0], deep)
    write_tiff(tmp_path / "p.tif", np.full((3, 3), 0.25, np.float32))
    assert read_image(tmp_path / "p.tif").dtype == np.float32


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(open(__file__, "rb").read()[:50]) or p.rename(p.with_suffix(".png")), "cannot"),
        (lambda p: p.with_suffix(".txt").write_text("hello"), "not an image file"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, make, message):
    target = tmp_path / "bad.png"
    make(target)
    path = next(tmp_path.iterdir())
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_truncated_png_and_pixel_limit(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png.*truncated or corrupt"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ImageReadError, match="ok.png.*exceeds the limit of 1,000.*max_pixels"):
        read_image(tmp_path / "ok.png", max_pixels=1000)


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    write_png(tmp_path / "sub" / "x.png", np.zeros((3, 3), np.uint8))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]


def test_atomic_writes_replace_whole_files_or_leave_them_untouched(tmp_path):
    """`msunet.atomic`, the one way msunet writes files: a failure mid-write keeps the old file and no temporary."""
    from msunet.atomic import atomic_path, write_bytes_atomic, write_text_atomic

    target = tmp_path / "sub" / "out.json"
    write_text_atomic(target, "old")
    try:
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.suffix == ".json"  # writers that pick a format by suffix
            tmp.write_text("half")
            raise OSError("disk full")
    except OSError:
        pass
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new" and len(list(target.parent.iterdir())) == 1
