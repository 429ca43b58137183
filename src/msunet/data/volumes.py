"""Reading and writing volumes: NIfTI (`.nii`, `.nii.gz`, with nibabel), multi-page TIFF stacks and
`.npy`. NumPy only, no keras.

A volume is a `Volume`: `array` in (depth, height, width, channels) order, i.e. (z, y, x, c), for
images (masks: (z, y, x) integer labels), the voxel `spacing` (z, y, x) in millimetres where the file
says it (else None, and `data.spacing` or 1 mm stands in), and the NIfTI `affine` (voxel -> world,
in NIfTI's (x, y, z) voxel order) and header, which masks written for it keep. NIfTI stores (x, y, z):
the arrays are transposed on reading and back on writing, so the file a user opens in a viewer has
the input's orientation.

Every error names the file and the fix (`VolumeReadError`, an `ImageReadError`); every write is
atomic (the bytes are made in memory, then `write_bytes_atomic`).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import zlib

import numpy as np
import tifffile

from msunet.atomic import write_bytes_atomic
from msunet.data.imageio import ImageReadError, decoder_reason, image_stem
from msunet.data.preprocessing import channel_moments

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy", ".tif", ".tiff")
DEFAULT_MAX_VOXELS = 2_000_000_000  # 1260^3; a guard against corrupt headers, raise it for genuine volumes


class VolumeReadError(ImageReadError):
    """A volume file cannot be used. The message names the file and the fix."""


@dataclasses.dataclass
class Volume:
    """A volume as msunet uses it.

    Args:
        array: (D, H, W, C) image values (C = 1 for a single channel) or (D, H, W) mask labels.
        spacing: (z, y, x) voxel size in millimetres from the file, or None where it has none.
        affine: NIfTI's 4x4 voxel-to-world matrix (voxel order x, y, z), or None (TIFF, .npy).
        header: the NIfTI header the file had (written back with masks), or None.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] | None = None
    affine: np.ndarray | None = None
    header: object | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape[:3])


def volume_suffix(path: str | os.PathLike) -> str:
    """The volume suffix of `path` (".nii.gz", ".nii", ".npy", ".tif", ".tiff"), or ""."""
    name = pathlib.Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), "")


def volume_stem(path: str | os.PathLike) -> str:
    """The file name without its volume suffix ("case_001.nii.gz" -> "case_001")."""
    name = pathlib.Path(path).name
    suffix = volume_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else image_stem(name)


def is_volume_only(path: str | os.PathLike) -> bool:
    """A file that can only be a volume (NIfTI, .npy); TIFF stacks are told from images by their pages."""
    return volume_suffix(path) in (".nii", ".nii.gz", ".npy")


def is_nifti(path: str | os.PathLike) -> bool:
    return volume_suffix(path) in (".nii", ".nii.gz")


def read_volume(path: str | os.PathLike, *, mask: bool = False, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Reads a volume: an image as float32 (D, H, W, C), a mask (`mask=True`) as int16 (D, H, W) labels.

    Raises:
        VolumeReadError: missing, unreadable, truncated, 2-D, of another dimensionality, too large, or
            (masks) holding values that are not whole labels; the message names the file and the fix.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise VolumeReadError(f"{path}: no such file.")
    suffix = volume_suffix(path)
    if not suffix:
        raise VolumeReadError(f"{path}: not a volume file; use one of {', '.join(VOLUME_SUFFIXES)} or remove it.")
    spacing = affine = header = None
    try:
        if suffix in (".nii", ".nii.gz"):
            array, spacing, affine, header = _read_nifti(path, max_voxels)
        elif suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            _check_size(path, array.shape, max_voxels)
            array = np.asarray(array)
        else:
            array, spacing = _read_tiff_stack(path, max_voxels)
    except VolumeReadError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise VolumeReadError(f"{path}: the file is truncated or its compression is damaged ({decoder_reason(err, path)}); "
                              "copy it again or remove it from the folder.") from err
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's problem
        raise VolumeReadError(f"{path}: cannot read the volume ({decoder_reason(err, path)}). Replace or remove the file.") from err
    array = _as_volume(path, array, mask)
    return Volume(array, spacing, affine, header)


class LazyVolume:
    """A volume file read slab by slab, for volumes too large to hold (`msunet predict` streams them):
    `shape` (D, H, W, C) and NumPy slicing in msunet's (z, y, x) order, float32 out. The slab last read
    (whole slices) is kept, so the windows at one depth read the file once (a `.nii.gz` reads forward
    only). Read errors are `VolumeReadError`s naming the file."""

    ndim = 4

    def __init__(self, path: pathlib.Path, shape: tuple[int, ...], read_slab):
        self.path, self.shape, self._read = path, tuple(int(n) for n in shape), read_slab
        self._slab: tuple[int, int, np.ndarray | None] = (0, 0, None)

    def slab(self, start: int, stop: int) -> np.ndarray:
        low, high, data = self._slab
        if data is None or start < low or stop > high:
            try:
                data = np.asarray(self._read(start, stop), np.float32)
            except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as err:
                raise VolumeReadError(f"{self.path}: the file is truncated or damaged at slices {start}..{stop} "
                                      f"({decoder_reason(err, self.path)}); copy it again.") from err
            low, high = start, stop
            self._slab = (low, high, data)
        return data[start - low : stop - low]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        first = key[0]
        if isinstance(first, (int, np.integer)):
            return self.slab(int(first), int(first) + 1)[(0, *key[1:])]
        start, stop, step = first.indices(self.shape[0])
        return self.slab(start, stop)[(slice(None, None, step), *key[1:])]


def open_volume_lazy(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_VOXELS
                     ) -> tuple[LazyVolume, Volume] | None:
    """(a `LazyVolume` over the file, its `Volume` without voxels: spacing, affine, header) for NIfTI and
    `.npy`, reading only the header now; None for TIFF stacks (read whole) and what cannot be opened so
    (`read_volume` then reports it)."""
    path = pathlib.Path(path)
    suffix = volume_suffix(path)
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.ndim not in (3, 4):
                return None
            _check_size(path, array.shape, max_voxels)
            shape = (*array.shape, 1) if array.ndim == 3 else array.shape
            read = (lambda a, b: array[a:b, ..., None]) if array.ndim == 3 else (lambda a, b: array[a:b])
            return LazyVolume(path, shape, read), Volume(np.zeros((0,), np.float32))
        if suffix not in (".nii", ".nii.gz"):
            return None
        import nibabel

        image = nibabel.load(str(path))
        if len(image.shape) not in (3, 4):
            return None
        _check_size(path, image.shape, max_voxels)
        proxy = image.dataobj
        x, y, z = image.shape[:3]
        channels = image.shape[3] if len(image.shape) == 4 else 1
        order = (2, 1, 0, 3) if len(image.shape) == 4 else (2, 1, 0)

        def read(start, stop):
            data = np.transpose(np.asanyarray(proxy[:, :, start:stop]), order)
            return data if data.ndim == 4 else data[..., None]

        zooms = tuple(float(v) for v in image.header.get_zooms()[:3])
        spacing = tuple(reversed(zooms)) if all(v > 0 for v in zooms) else None
        meta = Volume(np.zeros((0,), np.float32), spacing, np.asarray(image.affine, np.float64), image.header.copy())
        return LazyVolume(path, (z, y, x, channels), read), meta
    except VolumeReadError:
        raise
    except Exception:  # noqa: BLE001 - read_volume gives the reason
        return None


def volume_moments(volume, slab: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over every voxel of a (D, H, W, C) float array or
    `LazyVolume`, read `slab` slices at a time (float64 sums, `channel_moments`): `standardize_volume`'s
    statistics out of core."""
    total, squares, count = channel_moments(volume, rows=slab)
    mean = total / count
    return mean.astype(np.float32), np.sqrt(np.maximum(squares / count - mean * mean, 0.0)).astype(np.float32)


def _check_size(path: pathlib.Path, shape, max_voxels: int) -> None:
    voxels = int(np.prod(shape[:3])) if len(shape) >= 3 else 0
    if voxels > max_voxels:
        raise VolumeReadError(f"{path}: {'x'.join(map(str, shape))} = {voxels:,} voxels exceeds the limit of "
                              f"{max_voxels:,} (a guard against corrupt headers); raise data.max_pixels if it is genuine.")


def _read_nifti(path: pathlib.Path, max_voxels: int):
    import nibabel

    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip: decompressed here, so a truncated file says so (not "unknown type")
        raw = gzip.decompress(raw)
    try:
        image = nibabel.Nifti1Image.from_bytes(raw)
    except Exception:  # noqa: BLE001 - a NIfTI-2 file, else the error of the generic loader
        image = nibabel.Nifti2Image.from_bytes(raw)
    shape = image.shape
    _check_size(path, shape, max_voxels)
    data = np.asanyarray(image.dataobj)  # the stored values, scaled by the header's slope where it has one
    if data.ndim == 4 and data.shape[3] >= 1:
        array = np.transpose(data, (2, 1, 0, 3))  # (x, y, z, c) -> (z, y, x, c)
    elif data.ndim == 3:
        array = np.transpose(data, (2, 1, 0))
    else:
        array = data  # its dimensionality is reported by _as_volume
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    spacing = tuple(reversed(zooms)) if len(zooms) == 3 and all(z > 0 for z in zooms) else None
    return array, spacing, np.asarray(image.affine, np.float64), image.header.copy()


def _read_tiff_stack(path: pathlib.Path, max_voxels: int):
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        _check_size(path, series.shape, max_voxels)
        axes = series.axes
        if not set(axes) & set("ZQIT"):  # YX, YXS: one page, an image
            raise VolumeReadError(f"{path}: a 2-D image ({'x'.join(map(str, series.shape))}, axes {axes}) in a "
                                  "folder of volumes; move it to a folder of images or save a stack of slices.")
        array = series.asarray()
        spacing = None
        meta = tif.imagej_metadata or {}
        if "spacing" in meta:  # ImageJ hyperstacks: z spacing in the metadata, y/x in the resolution tags
            page = tif.pages[0]
            y_res = page.tags.get("YResolution")
            x_res = page.tags.get("XResolution")
            yx = [r.value[1] / r.value[0] if r and r.value[0] else 1.0 for r in (y_res, x_res)]
            spacing = (float(meta["spacing"]), float(yx[0]), float(yx[1]))
    if "C" in axes and axes.index("C") != len(axes) - 1 and array.ndim == 4:  # ImageJ ZCYX -> ZYXC
        array = np.moveaxis(array, axes.index("C"), -1)
    return array, spacing


def _as_volume(path: pathlib.Path, array: np.ndarray, mask: bool) -> np.ndarray:
    """(D, H, W, C) float32 for images, (D, H, W) int16 labels for masks; a clear error for anything else."""
    if array.ndim == 4 and array.shape[-1] == 1 and mask:
        array = array[..., 0]
    if array.ndim == 2 or (array.ndim in (3, 4) and array.shape[0] == 1):
        raise VolumeReadError(f"{path}: a 2-D image ({'x'.join(map(str, array.shape))}) in a folder of volumes; "
                              "move it to a folder of images (2-D) or save it as a stack of slices.")
    if mask:
        if array.ndim != 3:
            raise VolumeReadError(f"{path}: a mask volume must be 3-D labels, not {'x'.join(map(str, array.shape))}; "
                                  "save one integer label per voxel.")
        if not np.issubdtype(array.dtype, np.integer):
            rounded = np.rint(array)
            if not np.allclose(array, rounded, atol=1e-3):
                raise VolumeReadError(f"{path}: a mask with values that are not whole labels (e.g. "
                                      f"{float(array[np.abs(array - rounded) > 1e-3].flat[0]):g}); save integer labels "
                                      "(0 background, 1, 2, ...), not probabilities.")
            array = rounded
        if array.min() < 0 or array.max() > 32767:
            raise VolumeReadError(f"{path}: mask labels must lie in 0..32767 (found {array.min():g}..{array.max():g}).")
        return np.ascontiguousarray(array.astype(np.int16))
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise VolumeReadError(f"{path}: a volume must be (depth, height, width[, channels]), not "
                              f"{'x'.join(map(str, array.shape))}.")
    return np.ascontiguousarray(array.astype(np.float32))


def resampled_shape(shape, spacing, target_spacing) -> tuple[int, int, int]:
    """(D, H, W) of a volume of `shape` at `spacing` once resampled to `target_spacing` (z, y, x mm)."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape[:3], spacing, target_spacing))


def in_plane_target(spacing, target_spacing):
    """The target of a 2-D model on slices: the target's in-plane spacing, each volume's own slices."""
    return None if target_spacing is None else (spacing[0], *target_spacing[1:])


def needs_resampling(spacing, target_spacing, tolerance: float = 0.01) -> bool:
    """Whether a volume at `spacing` differs from `target_spacing` by more than 1% along an axis."""
    return target_spacing is not None and spacing is not None and any(
        abs(s / t - 1.0) > tolerance for s, t in zip(spacing, target_spacing))


def resample_volume(array: np.ndarray, shape, order: int = 1) -> np.ndarray:
    """`array` ((D, H, W) or (D, H, W, C)) on a grid of `shape` (D', H', W') covering the same extent:
    voxel centres aligned (new voxel i sits at old coordinate (i + 0.5) * n / n' - 0.5, clamped to the
    volume), `order` 1 linear (images, probabilities), 0 nearest (labels). NumPy only, one axis at a
    time: the export runtime resamples with it too."""
    out = np.asarray(array)
    for axis, size in enumerate(shape):
        n = out.shape[axis]
        if n == size:
            continue
        x = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0.0, n - 1.0)
        if order == 0:
            out = np.take(out, np.clip(np.floor(x + 0.5).astype(np.intp), 0, n - 1), axis=axis)
            continue
        low = np.floor(x).astype(np.intp)
        high = np.minimum(low + 1, n - 1)
        weight = (x - low).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, low, axis=axis).astype(np.float32) * (1 - weight) + np.take(out, high, axis=axis) * weight
    return np.ascontiguousarray(out)


def standardize_volume(array: np.ndarray) -> np.ndarray:
    """Z-scores a (D, H, W, C) volume per channel over all its voxels (`data.normalization=volume`:
    MRI intensities have no fixed scale, so each volume is its own reference, as nnU-Net does)."""
    x = np.asarray(array, np.float32)
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x.std(axis=axes, keepdims=True, dtype=np.float64)
    return ((x - mean) / np.maximum(std, 1e-6)).astype(np.float32)


def scaled_affine(affine: np.ndarray, factor: tuple[int, int, int]) -> np.ndarray:
    """The affine of a coarse scale whose voxel (k, j, i) covers fine voxels [f*k, f*k + f) per axis.

    `factor` is (z, y, x); the affine is NIfTI's (voxel order x, y, z). A coarse voxel's centre lies at
    fine voxel f*i + (f - 1) / 2, so the world position of every coarse voxel centre is exact.
    """
    fz, fy, fx = factor
    step = np.diag([fx, fy, fz, 1.0]).astype(np.float64)
    step[:3, 3] = [(fx - 1) / 2, (fy - 1) / 2, (fz - 1) / 2]
    return np.asarray(affine, np.float64) @ step


def nifti_bytes(array: np.ndarray, like: Volume | None = None, factor: tuple[int, int, int] = (1, 1, 1),
                compress: bool = True) -> bytes:
    """A NIfTI-1 file's bytes for the (D, H, W) or (D, H, W, C) `array`, with `like`'s affine and header
    (scaled by `factor` for a coarse scale), else a `spacing`-sized (or 1 mm) diagonal affine."""
    import nibabel

    data = np.transpose(array, (2, 1, 0) if array.ndim == 3 else (2, 1, 0, 3))
    if like is not None and like.affine is not None:
        affine = scaled_affine(like.affine, factor)
        header = like.header.copy() if like.header is not None else None
    else:
        spacing = (like.spacing if like is not None and like.spacing else (1.0, 1.0, 1.0))
        affine = np.diag([spacing[2] * factor[2], spacing[1] * factor[1], spacing[0] * factor[0], 1.0])
        header = None
    image = nibabel.Nifti1Image(data, affine, header=header)
    image.header.set_data_dtype(data.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    raw = image.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def write_volume(path: str | os.PathLike, array: np.ndarray, like: Volume | None = None,
                 factor: tuple[int, int, int] = (1, 1, 1)) -> None:
    """Writes `array` ((D, H, W) or (D, H, W, C)) atomically: NIfTI (`.nii` / `.nii.gz`, with `like`'s
    affine and header) or `.npy`."""
    suffix = volume_suffix(path)
    if suffix in (".nii", ".nii.gz"):
        write_bytes_atomic(path, nifti_bytes(array, like, factor, compress=suffix == ".nii.gz"))
    elif suffix == ".npy":
        import io

        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        write_bytes_atomic(path, buffer.getvalue())
    else:
        raise ValueError(f"{path}: volumes are written as .nii.gz, .nii or .npy.")
