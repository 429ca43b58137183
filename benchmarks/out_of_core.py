"""Peak memory of `msunet predict` on a 20000x20000 RGB image (target: under 2 GiB).

Writes the image (in bands, never whole in memory) as an uncompressed TIFF (`--input tiff`, 1.2 GB), a
tiled, deflate-compressed GeoTIFF (`--input geotiff`: the outputs are Cloud-Optimized GeoTIFFs with
overviews and the georeference) or an OME-Zarr store (`--input ome-zarr`, predicted with
`--format ome-zarr`), saves a small U-Net (depth 2, 4 filters: the point is memory, not accuracy), then
runs `msunet predict` in a child process and reads its peak resident memory (ru_maxrss of the child).
Needs ~3 GB of free disk. Run: `.venv/bin/python benchmarks/out_of_core.py [--size 20000] [--input
tiff|geotiff|ome-zarr] [--keep]`
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import tifffile

from msunet import machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--input", choices=("tiff", "geotiff", "ome-zarr"), default="tiff")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="msunet-ooc-"))
    try:
        size = args.size
        rng = np.random.default_rng(0)
        if args.input == "ome-zarr":
            import zarr

            image = work / "huge.ome.zarr"
            root = zarr.open_group(str(image), mode="w", zarr_format=2)
            array = root.create_array("0", shape=(3, size, size), dtype=np.uint8, chunks=(3, 1024, 1024),
                                      chunk_key_encoding={"name": "v2", "separator": "/"})
            for top, band in zip(range(0, size, 1024), _bands(rng, size, 1024)):
                array[:, top : top + band.shape[0]] = np.moveaxis(band, -1, 0)
            root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "c", "type": "channel"},
                                          {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                                          "datasets": [{"path": "0", "coordinateTransformations": [
                                              {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]
            described = f"{size}x{size}x3 uint8 OME-Zarr (chunks 1024, {_size(image) / 1e9:.2f} GB)"
        else:
            image = work / "huge.tif"
            if args.input == "geotiff":
                from msunet.data.geo import KEY_DIRECTORY, PIXEL_SCALE, TIEPOINT

                keys = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633, 3076, 0, 1, 9001)  # UTM 33N
                tags = [(PIXEL_SCALE, "d", 3, (0.5, 0.5, 0.0), True),
                        (TIEPOINT, "d", 6, (0, 0, 0, 500000.0, 4100000.0, 0), True),
                        (KEY_DIRECTORY, "H", len(keys), keys, True)]
                tifffile.imwrite(image, _tiles(rng, size), shape=(size, size, 3), dtype=np.uint8, tile=(512, 512),
                                 compression="zlib", photometric="rgb", extratags=tags)
                described = f"{size}x{size}x3 uint8 GeoTIFF, 512 px tiles, deflate ({image.stat().st_size / 1e9:.2f} GB)"
            else:
                tifffile.imwrite(image, _bands(rng, size, 256), shape=(size, size, 3), dtype=np.uint8,
                                 rowsperstrip=256)
                described = f"{size}x{size}x3 uint8 uncompressed TIFF ({image.stat().st_size / 1e9:.2f} GB)"
        code = (
            "import msunet, keras; from msunet.config import RunConfig; "
            "from msunet.models import build_model; import pathlib, json; d = pathlib.Path(r'%s'); "
            "cfg = RunConfig().override(['model.depth=2', 'model.filters=4']); "
            "build_model(cfg.model).save(d / 'm.keras'); cfg.to_json(d / 'config.json')" % work
        )
        subprocess.run([sys.executable, "-c", code], check=True)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "msunet", "predict", "--model", str(work / "m.keras"), "--input", str(image),
             "--out", str(work / "out"), "--tile", str(args.tile), "--batch", "4", "--quiet",
             *(["--format", "ome-zarr"] if args.input == "ome-zarr" else [])],
            capture_output=True, text=True,
        )
        seconds = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child: predict
        result = {
            "date": datetime.date.today().isoformat(),
            "machine": machine.describe(),
            "image": described,
            "returncode": proc.returncode,
            "peak_rss_gib": peak_kib / 1024**2,
            "seconds": seconds,
            "megapixels_per_s": size * size / 1e6 / seconds,
            "outputs": sorted(p.name for p in (work / "out").iterdir()) if (work / "out").is_dir() else [],
            "stdout": proc.stdout[-500:],
            "stderr": proc.stderr[-1500:],
        }
        if (work / "out").is_dir():
            result["output_bytes"] = {p.name: _size(p) for p in sorted((work / "out").iterdir())}
            result.update(_check_outputs(work / "out", image, args.input))
        suffix = "" if args.input == "tiff" else f"-{args.input}"
        out = pathlib.Path(__file__).parent / "results" / f"out-of-core-{result['date']}{suffix}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _bands(rng, size: int, rows: int):
    for top in range(0, size, rows):
        yield rng.integers(0, 255, (min(rows, size - top), size, 3), dtype=np.uint8)


def _tiles(rng, size: int, tile: int = 512):
    for _ in range(0, size, tile):
        band = rng.integers(0, 255, (tile, size, 3), dtype=np.uint8)
        for left in range(0, size, tile):
            block = np.zeros((tile, tile, 3), np.uint8)
            part = band[:, left : left + tile]
            block[:, : part.shape[1]] = part
            yield block


def _size(path: pathlib.Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check_outputs(out: pathlib.Path, image: pathlib.Path, kind: str) -> dict:
    """What the field's readers see in the outputs (rasterio for GeoTIFF, ome-zarr-py for OME-Zarr)."""
    if kind == "geotiff":
        import rasterio

        seen = {}
        with rasterio.open(image) as src:
            for path in sorted(out.glob("huge*.tif")):
                with rasterio.open(path) as dst:
                    seen[path.name] = {"crs_equal": dst.crs == src.crs, "overviews": dst.overviews(1),
                                       "bounds_left_top_equal": (dst.bounds.left, dst.bounds.top) == (src.bounds.left, src.bounds.top),
                                       "size": [dst.height, dst.width]}
        return {"rasterio": seen}
    if kind == "ome-zarr":
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Label, Reader

        nodes = list(Reader(parse_url(str(out / "huge.ome.zarr")))())
        labels = [n for n in nodes if n.load(Label)]
        return {"ome_zarr_label_levels": [list(level.shape) for level in labels[0].data] if labels else []}
    return {}


if __name__ == "__main__":
    main()
