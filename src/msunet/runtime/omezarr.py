"""OME-Zarr (OME-NGFF 0.4) output: one store per image, the image and a label pyramid whose levels
are the masks at every scale, which napari, Fiji / MoBIE, QuPath and neuroglancer open lazily.

`NAME.ome.zarr/` holds the image at full resolution (`0`, axes c, y, x) and `labels/mask/` with one
level per written head, finest first: `0` the mask, `1` the mask at 1/2, ... each with its NGFF
`scale` (s, s) and `translation` ((s - 1) / 2: a coarse pixel's centre is the centre of the fine pixels
it covers), the `image-label` colours and `source`; `--probabilities` adds a `probabilities/`
multiscale group beside them (uint8, probability x 255, classes on a leading `c` axis: not a label
image, so viewers do not list it as one). Chunks of 1024 x 1024; everything is
written in row bands from the (memory-mapped) results, so a 20000 x 20000 image never lies in memory
whole, into a temporary store renamed into place when complete. Needs `zarr` (`pip install
'msunet[omezarr]'`); NumPy otherwise.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Sequence

import numpy as np

from msunet.atomic import replace_folder
from msunet.heads import head_scale
from msunet.runtime.writers import band_view, class_palette, probabilities_to_mask

NGFF_VERSION = "0.4"
CHUNK = 1024
BAND = 1024  # rows written at a time


def zarr_module():
    try:
        import zarr
    except ImportError as err:
        raise ValueError("OME-Zarr output needs zarr: `pip install 'msunet[omezarr]'` (or `pip install zarr`).") from err
    return zarr


def _array(group, name: str, shape: tuple[int, ...], dtype):
    chunks = tuple(min(CHUNK, n) if i >= len(shape) - 2 else 1 for i, n in enumerate(shape))
    return group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, overwrite=True,
                              chunk_key_encoding={"name": "v2", "separator": "/"})


def _copy_in_bands(target, source, transform) -> None:
    """target[..., rows, :] = transform(source rows), `BAND` rows at a time (source: (H, W[, C]))."""
    reader = band_view(source)
    height = reader.shape[0]
    for top in range(0, height, BAND):
        block = transform(np.asarray(reader[top : min(top + BAND, height)]))
        if target.ndim == 3:  # (c, y, x) from (y, x, c)
            target[:, top : top + block.shape[0], :] = np.moveaxis(block, -1, 0)
        else:
            target[top : top + block.shape[0], :] = block


def _multiscales(name: str, axes: Sequence[str], scales: Sequence[int], channel: bool) -> list[dict]:
    def transform(s):
        lead = [1.0] if channel else []
        return [{"type": "scale", "scale": [*lead, float(s), float(s)]},
                {"type": "translation", "translation": [*([0.0] if channel else []), (s - 1) / 2, (s - 1) / 2]}]

    return [{"version": NGFF_VERSION, "name": name,
             "axes": [{"name": a, "type": "channel" if a == "c" else "space"} for a in axes],
             "datasets": [{"path": str(i), "coordinateTransformations": transform(s)} for i, s in enumerate(scales)]}]


def write_ome_zarr(path: pathlib.Path, image, results: dict, heads: Sequence[str], threshold: float,
                   num_classes: int, probabilities: bool = False) -> pathlib.Path:
    """Writes `path` (`NAME.ome.zarr`): the (H, W, C) `image` (array or lazy reader), and the masks of
    `heads` (their probabilities in `results`, each at its scale) as one label pyramid. Atomic."""
    zarr = zarr_module()
    levels = sorted((h for h in heads if h != "mask_fused"), key=head_scale)
    scales = [head_scale(h) for h in levels]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        height, width, channels = image.shape
        _copy_in_bands(_array(root, "0", (channels, height, width), np.dtype(image.dtype)), image, lambda b: b)
        root.attrs["multiscales"] = _multiscales(path.name.removesuffix(".ome.zarr"), ("c", "y", "x"), [1], True)
        labels = root.create_group("labels")
        labels.attrs["labels"] = ["mask"]
        mask_group = labels.create_group("mask")
        for i, head in enumerate(levels):
            probs = results[head]
            _copy_in_bands(_array(mask_group, str(i), probs.shape[:2], np.uint8), probs,
                           lambda band: probabilities_to_mask(band, threshold))
        palette = class_palette(num_classes) if num_classes > 1 else np.array([[0, 0, 0], [255, 255, 255]])
        values = range(1, num_classes) if num_classes > 1 else (255,)
        mask_group.attrs["multiscales"] = _multiscales("mask", ("y", "x"), scales, False)
        mask_group.attrs["image-label"] = {
            "version": NGFF_VERSION, "source": {"image": "../../"},
            "colors": [{"label-value": int(v), "rgba": [*map(int, palette[min(int(v), len(palette) - 1)]), 255]}
                       for v in values]}
        if probabilities:
            prob_group = root.create_group("probabilities")
            for i, head in enumerate(levels):
                probs = results[head]
                _copy_in_bands(_array(prob_group, str(i), (probs.shape[-1], *probs.shape[:2]), np.uint8), probs,
                               lambda band: np.rint(np.clip(band, 0, 1) * 255).astype(np.uint8))
            prob_group.attrs["multiscales"] = _multiscales("probabilities", ("c", "y", "x"), scales, True)
            prob_group.attrs["msunet"] = {"encoding": "probability x 255, uint8", "heads": levels}
        replace_folder(tmp, path)  # overwrite: the old store goes only once the new one is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
