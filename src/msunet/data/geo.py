"""GeoTIFF georeferencing: the tags that place a raster on the earth, read from an input image and
written, scaled, with every output scale, so masks lie on the map where their image does. NumPy and
tifffile only (no GDAL); `rasterio` reads what this writes.

The georeference of a GeoTIFF is its raster-to-model mapping (`ModelPixelScaleTag` + `ModelTiepointTag`,
or `ModelTransformationTag`) and its coordinate reference system (the `GeoKeyDirectoryTag` with its
double and ASCII parameters). A head at scale s has pixels s times larger: its mapping is the input's
composed with fine = s * coarse (`PixelIsArea`: pixel corners; `PixelIsPoint`: pixel centres, offset by
(s - 1) / 2), and the CRS is the same. GDAL's metadata and nodata tags are not copied: a mask's 0 is a
class, not missing data.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tifffile

PIXEL_SCALE, TIEPOINT, TRANSFORMATION = 33550, 33922, 34264
KEY_DIRECTORY, DOUBLE_PARAMS, ASCII_PARAMS = 34735, 34736, 34737
TAG_TYPES = {PIXEL_SCALE: "d", TIEPOINT: "d", TRANSFORMATION: "d", KEY_DIRECTORY: "H", DOUBLE_PARAMS: "d",
             ASCII_PARAMS: "s"}
RASTER_TYPE_KEY, PIXEL_IS_POINT = 1025, 2


@dataclasses.dataclass(frozen=True)
class GeoReference:
    """A GeoTIFF's georeferencing tags: code -> values (a tuple of numbers, or a str for ASCII)."""

    tags: dict

    @property
    def pixel_is_point(self) -> bool:
        """GTRasterTypeGeoKey: raster coordinates name pixel centres (2) rather than corners (1, the default)."""
        keys = self.tags.get(KEY_DIRECTORY, ())
        for i in range(4, len(keys) - 3, 4):
            key, location, _, value = keys[i : i + 4]
            if key == RASTER_TYPE_KEY and location == 0:
                return value == PIXEL_IS_POINT
        return False

    def scaled(self, factor: int) -> GeoReference:
        """The georeference of an output at 1/`factor` of the input's resolution (ceil-sized)."""
        if factor == 1:
            return self
        shift = (factor - 1) / 2 if self.pixel_is_point else 0.0  # fine raster = factor * coarse + shift
        tags = dict(self.tags)
        if PIXEL_SCALE in tags:
            sx, sy, *rest = tags[PIXEL_SCALE]
            tags[PIXEL_SCALE] = (sx * factor, sy * factor, *rest)
        if TIEPOINT in tags:
            points = np.asarray(tags[TIEPOINT], np.float64).reshape(-1, 6).copy()
            points[:, :2] = (points[:, :2] - shift) / factor
            tags[TIEPOINT] = tuple(points.ravel().tolist())
        if TRANSFORMATION in tags:
            matrix = np.asarray(tags[TRANSFORMATION], np.float64).reshape(4, 4)
            step = np.array([[factor, 0, 0, shift], [0, factor, 0, shift], [0, 0, 1, 0], [0, 0, 0, 1]], np.float64)
            tags[TRANSFORMATION] = tuple((matrix @ step).ravel().tolist())
        return GeoReference(tags)

    def extratags(self) -> list[tuple]:
        """The tags as tifffile's `imwrite(..., extratags=...)` takes them."""
        out = []
        for code, value in sorted(self.tags.items()):
            if TAG_TYPES[code] == "s":
                out.append((code, "s", 0, str(value), True))
            else:
                out.append((code, TAG_TYPES[code], len(value), tuple(value), True))
        return out


def read_georeference(path: str | os.PathLike) -> GeoReference | None:
    """The georeference of a TIFF's first page, or None (not a GeoTIFF, or not a TIFF at all)."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if KEY_DIRECTORY not in page.tags:
                return None
            tags = {}
            for code in TAG_TYPES:
                if code in page.tags:
                    value = page.tags[code].value
                    tags[code] = value if isinstance(value, str) else tuple(np.asarray(value).ravel().tolist())
            return GeoReference(tags)
    except (OSError, ValueError, tifffile.TiffFileError, IndexError):
        return None
