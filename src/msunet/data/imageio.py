"""Reading and writing images and masks: PNG, JPEG, TIFF (8 and 16 bit). NumPy only, no keras.

Every error names the file and what to do about it (`ImageReadError`, a `ValueError`), and every
write is atomic: a temporary file in the same folder, then `os.replace`.
"""

from __future__ import annotations

import io
import os
import pathlib
import warnings

import numpy as np
import tifffile
from PIL import Image

from msunet.atomic import write_bytes_atomic
from msunet.data import zarrio

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DEFAULT_MAX_PIXELS = 250_000_000  # about 15800 x 15800; raise it for larger images (predict streams)


class ImageReadError(ValueError):
    """An image or mask file cannot be used. The message names the file and the fix."""


def is_image_file(path: str | os.PathLike) -> bool:
    """An image by its name: a known suffix, or a Zarr store (a folder named `*.zarr`, `msunet.data.zarrio`)."""
    return pathlib.Path(path).suffix.lower() in IMAGE_SUFFIXES or zarrio.is_zarr_store(path)


def image_stem(path: str | os.PathLike) -> str:
    """The name an image's outputs and ground truth go by: "a.png" -> "a", "slide.ome.zarr" -> "slide"."""
    return zarrio.zarr_stem(path)


def _zarr_array(path: pathlib.Path, max_pixels: int, mask: bool) -> np.ndarray:
    """A store read whole: its image, or as a mask its label image's finest level (2-D)."""
    try:
        source = zarrio.label_levels(path)[0][1] if mask else zarrio.open_zarr_image(path)
        _check_pixels(path, *source.shape[:2], max_pixels)
        array = np.asarray(source[:, :])
    except zarrio.ZarrReadError as err:
        raise ImageReadError(str(err)) from err
    except ImageReadError:
        raise
    except Exception as err:  # noqa: BLE001 - a chunk that does not decode is the store's problem
        raise ImageReadError(f"{path}: cannot read the Zarr store ({decoder_reason(err, path)}); a chunk may be "
                             "missing or corrupt. Replace or remove it.") from err
    return array[..., 0] if mask else array


def _check_pixels(path, height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise ImageReadError(
            f"{path}: {width}x{height} = {height * width:,} pixels exceeds the limit of {max_pixels:,} "
            "(a guard against decompression bombs); raise max_pixels (data.max_pixels) if the image is genuine."
        )


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    path = pathlib.Path(path)
    if zarrio.is_zarr_store(path):
        try:
            return zarrio.open_zarr_image(path).shape[:2]
        except zarrio.ZarrReadError as err:
            raise ImageReadError(str(err)) from err
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
                axes = tif.series[0].axes
            return _tiff_hw(shape, axes)
        with Image.open(path) as img:
            return img.height, img.width
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's problem
        raise ImageReadError(f"{path}: cannot read the image header ({decoder_reason(err, path)}). Replace or remove the file.") from err


def _tiff_hw(shape: tuple, axes: str) -> tuple[int, int]:
    if "Y" in axes and "X" in axes:
        return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    return int(shape[0]), int(shape[1])


def decoder_reason(err: Exception, path: str | os.PathLike | None = None) -> str:
    """The decoder's first line, without the path it repeats (our message starts with it already)."""
    text = str(err).strip() or type(err).__name__
    if path is not None:
        for quoted in (f"'{os.fspath(path)}'", f'"{os.fspath(path)}"', os.fspath(path)):
            text = text.replace(f" {quoted}", "").replace(quoted, "")
    return text.splitlines()[0][:200] if text.strip() else type(err).__name__


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads an image as a (H, W, C) array of its own dtype (uint8, uint16 or float).

    Grayscale gives C = 1; RGBA and grayscale+alpha drop the alpha channel; palette images are
    converted to RGB.

    Args:
        path: PNG, JPEG, TIFF or BMP file.
        max_pixels: refuse images with more pixels (decompression-bomb guard).

    Raises:
        ImageReadError: unreadable, truncated, not an image, or too large; the message names the file.
    """
    if zarrio.is_zarr_store(path):  # channels named by the store: none of them is alpha
        return np.ascontiguousarray(_zarr_array(pathlib.Path(path), max_pixels, mask=False))
    array = _read_array(path, max_pixels, keep_palette=False)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] in (2, 4):  # gray+alpha, RGBA: alpha is not image content
        array = array[..., :-1]
    return np.ascontiguousarray(array)


def read_mask(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads a mask as a 2D array (class indices or 0/255) or (H, W, 3) for colour-coded masks.

    Indexed (palette) PNGs keep their indices, which is how class-id masks are usually stored.
    """
    array = _read_array(path, max_pixels, keep_palette=True)
    if array.ndim == 3:
        if array.shape[-1] in (2, 4):
            array = array[..., :-1]
        if array.shape[-1] == 1:
            array = array[..., 0]
        elif array.shape[-1] == 3 and np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(
            array[..., 0], array[..., 2]
        ):
            array = array[..., 0]  # grey saved as RGB
    return np.ascontiguousarray(array)


def _read_array(path: str | os.PathLike, max_pixels: int, keep_palette: bool) -> np.ndarray:
    path = pathlib.Path(path)
    if zarrio.is_zarr_store(path):
        return _zarr_array(path, max_pixels, mask=keep_palette)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file.")
    if not is_image_file(path):
        raise ImageReadError(
            f"{path}: not an image file (suffix {path.suffix or 'none'!r}); "
            f"use one of {', '.join(IMAGE_SUFFIXES)}, a .zarr store, or remove it from the folder."
        )
    height, width = image_size(path)
    _check_pixels(path, height, width, max_pixels)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                with tifffile.TiffFile(path) as tif:
                    axes = tif.series[0].axes
                    array = tif.asarray()
            except ValueError as err:
                if "imagecodecs" not in str(err):
                    raise
                # Compressed (LZW, deflate, ...) TIFF without the imagecodecs package: Pillow decodes these.
                try:
                    with Image.open(path) as img:
                        img.load()
                        return np.asarray(img)
                except Exception as pil_err:  # noqa: BLE001
                    raise ImageReadError(
                        f"{path}: this TIFF's compression needs the 'imagecodecs' package ({decoder_reason(err, path)}); "
                        f"Pillow could not read it either ({decoder_reason(pil_err)}). Run: pip install imagecodecs"
                    ) from err
            if axes.startswith(("S", "C")) and array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] > 4:
                array = np.moveaxis(array, 0, -1)  # planar (C, H, W) TIFF
            if array.ndim > 3:
                raise ImageReadError(f"{path}: a TIFF with {array.ndim} dimensions ({axes}); msunet reads 2D images.")
            return array
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                if img.mode == "P" and not keep_palette:
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    img = img.convert("RGB")
                elif img.mode == "1":
                    img = img.convert("L")
                array = np.asarray(img)
        if array.dtype == np.int32 and array.size and array.min() >= 0 and array.max() <= 65535:  # 16-bit PNG "I"
            array = array.astype(np.uint16)
        return array
    except ImageReadError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ImageReadError(
            f"{path}: cannot decode the image ({decoder_reason(err, path)}); the file may be truncated or corrupt. "
            "Replace or remove it."
        ) from err


def encode_png(array: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """PNG bytes of a (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8/uint16 array.

    With `palette` (an (N, 3) uint8 array) a 2D uint8 array is written as an indexed PNG whose
    pixel values stay class ids while viewers show the colours.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_png expects uint8 or uint16, got {array.dtype}.")
    if array.dtype == np.uint16 and array.ndim != 2:
        raise ValueError("16-bit PNGs are written for single-channel arrays only.")
    if palette is not None:
        if array.ndim != 2 or array.dtype != np.uint8:
            raise ValueError("An indexed PNG needs a 2D uint8 array of class ids.")
        flat = np.zeros((256, 3), np.uint8)
        flat[: len(palette)] = np.asarray(palette, np.uint8)[:256]
        img = Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array).tobytes())
        img.putpalette(flat.reshape(-1).tolist())
    else:
        img = Image.fromarray(array)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | os.PathLike, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Writes a PNG atomically (see `encode_png`)."""
    write_bytes_atomic(path, encode_png(array, palette))


def write_tiff(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a TIFF atomically (float32 probabilities, 16-bit images, ...)."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.asarray(array))
    write_bytes_atomic(path, buffer.getvalue())


def write_image(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes `array` atomically as PNG (uint8/uint16) or TIFF (anything else), by `path`'s suffix."""
    suffix = pathlib.Path(path).suffix.lower()
    if suffix in (".tif", ".tiff"):
        write_tiff(path, array)
    elif suffix == ".png":
        write_png(path, array)
    else:
        raise ValueError(f"{path}: write PNG (.png) or TIFF (.tif) files; {suffix!r} is not supported for output.")


class RowBandReader:
    """Array-like view of an uncompressed image file, read a band of rows at a time.

    `reader[y0:y1, x0:x1]` returns those pixels as (rows, cols, C); the band of rows last read
    stays cached, so tiles read left to right along a row of windows cost one file read. Nothing
    is memory-mapped, so the resident memory is the band, not the file.

    Args:
        path: the file; offset: byte offset of the first pixel; shape: (H, W, C); dtype: pixel type.
        band_rows: rows read at once (at least the requested rows).
    """

    def __init__(self, path, offset: int, shape: tuple[int, int, int], dtype, band_rows: int = 512):
        self.path, self.offset = str(path), int(offset)
        self.shape, self.dtype, self.ndim = tuple(int(v) for v in shape), np.dtype(dtype), 3
        self.band_rows = band_rows
        self._band_start, self._band = 0, np.empty((0, self.shape[1], self.shape[2]), self.dtype)
        self._row_bytes = self.shape[1] * self.shape[2] * self.dtype.itemsize

    def _read_rows(self, start: int, stop: int) -> tuple[int, np.ndarray]:
        """Reads at least rows [start, stop); returns (first row read, rows)."""
        count = stop - start
        with open(self.path, "rb") as fh:
            data = os.pread(fh.fileno(), count * self._row_bytes, self.offset + start * self._row_bytes)
        if len(data) != count * self._row_bytes:
            raise ImageReadError(f"{self.path}: file ends early (truncated); expected {count} more rows at row {start}.")
        return start, np.frombuffer(data, self.dtype).reshape(count, self.shape[1], self.shape[2])

    def _rows(self, start: int, stop: int) -> np.ndarray:
        if not (self._band_start <= start and stop <= self._band_start + len(self._band)):
            stop_read = min(self.shape[0], max(stop, start + self.band_rows))
            self._band_start, self._band = self._read_rows(start, stop_read)
        return self._band[start - self._band_start : stop - self._band_start]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if not isinstance(key[0], slice) or key[0].step not in (None, 1):
            raise IndexError("RowBandReader takes a contiguous row slice first, e.g. reader[y0:y1, x0:x1].")
        r0, r1, _ = key[0].indices(self.shape[0])
        return self._rows(r0, r1)[(slice(None), *key[1:])]


class TiledTiffReader(RowBandReader):
    """Array-like view of a tiled TIFF (any compression tifffile decodes): only the tile rows that a
    band of image rows needs are read and decoded.
    """

    def __init__(self, path, band_rows: int = 512):
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = page.shape if len(page.shape) == 3 else (*page.shape, 1)
            self.tile_h, self.tile_w = page.tilelength, page.tilewidth
            dtype = page.dtype
        super().__init__(path, 0, shape, dtype, band_rows)
        self.tiles_across = -(-self.shape[1] // self.tile_w)

    def _read_rows(self, start: int, stop: int) -> tuple[int, np.ndarray]:
        first, last = start // self.tile_h, -(-stop // self.tile_h)
        top = first * self.tile_h
        band = np.zeros((min(last * self.tile_h, self.shape[0]) - top, self.shape[1], self.shape[2]), self.dtype)
        with tifffile.TiffFile(self.path) as tif:
            page, fh = tif.pages[0], tif.filehandle
            for index in range(first * self.tiles_across, min(last * self.tiles_across, len(page.dataoffsets))):
                fh.seek(page.dataoffsets[index])
                segment, where, _ = page.decode(fh.read(page.databytecounts[index]), index,
                                                jpegtables=getattr(page, "jpegtables", None))
                if segment is None:
                    continue
                y, x = where[-3], where[-2]
                tile = segment.reshape(segment.shape[-3], segment.shape[-2], -1)
                rows = min(tile.shape[0], self.shape[0] - y)
                cols = min(tile.shape[1], self.shape[1] - x)
                band[y - top : y - top + rows, x : x + cols] = tile[:rows, :cols, : self.shape[2]]
        return top, band


def open_image_lazy(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Opens an image for tiled reading without loading it, where the format allows.

    Uncompressed, contiguous TIFF -> `RowBandReader`; tiled TIFF (a COG too) -> `TiledTiffReader`; a Zarr
    or OME-Zarr store -> `zarrio.ZarrImage` (chunks read where sliced); `.npy` -> read-only memory map
    (H, W[, C]); anything else (PNG, JPEG, compressed strip TIFF) is read whole
    with `read_image` (pixel limit applies).

    Returns:
        An (H, W, C) array-like with `.shape`, `.dtype` and NumPy slicing.
    """
    path = pathlib.Path(path)
    if zarrio.is_zarr_store(path):
        try:
            image = zarrio.open_zarr_image(path)
        except zarrio.ZarrReadError as err:
            raise ImageReadError(str(err)) from err
        _check_pixels(path, *image.shape[:2], max_pixels)  # a declared shape costs nothing to lie about
        return image
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = np.load(path, mmap_mode="r")
        return array[..., None] if array.ndim == 2 else array
    if suffix in (".tif", ".tiff"):
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                shape = page.shape if len(page.shape) == 3 else (*page.shape, 1)
                if page.is_tiled and page.planarconfig == 1 and len(shape) == 3 and shape[-1] not in (2, 4):
                    return TiledTiffReader(path)
                contiguous = page.is_contiguous and len(tif.pages) == 1 and page.planarconfig == 1
                if contiguous:
                    shape = page.shape if len(page.shape) == 3 else (*page.shape, 1)
                    if len(shape) == 3:
                        if shape[-1] in (2, 4):  # alpha: read whole, read_image drops it
                            contiguous = False
                        else:
                            return RowBandReader(path, page.dataoffsets[0], shape, page.dtype)
        except Exception as err:  # noqa: BLE001
            raise ImageReadError(f"{path}: cannot read the TIFF structure ({decoder_reason(err, path)}). Replace or remove it.") from err
    return read_image(path, max_pixels)
