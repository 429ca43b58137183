"""Bundles: an exported model file plus `bundle.json`, and the TensorFlow-free `Predictor` over them.

`bundle.json` holds everything prediction needs besides the network: input channels and scaling,
the normalisation statistics, head names and scales, activation and threshold, class colours, the
reduced-resolution step, tile and overlap defaults, the msunet version and the SHA-256 of the model
file (checked on load: a missing or altered model file is refused). Written by `msunet.export`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from msunet.data.preprocessing import Normalization
from msunet.heads import head_scale
from msunet.runtime import selfcheck
from msunet.runtime.engine import Engine, batch_function
from msunet.runtime.files import PredictSummary, predict_files, predict_image
from msunet.runtime.options import PredictOptions, tta_mode
from msunet.runtime.sessions import BundleError, LiteRTSession, OpenVINOSession, onnx_session
from msunet.runtime.volumes import predict_volume
from msunet.runtime.writers import probabilities_to_mask

BUNDLE_FILE = "bundle.json"
FORMAT = "msunet-bundle"
BUNDLE_VERSION = 1
RUNNABLE = ("onnx", "openvino", "litert")  # formats this runtime executes; saved_model is for TensorFlow Serving
ENGINES = ("onnxruntime", "openvino", "litert")


def is_bundle(path: str | os.PathLike) -> bool:
    """True for a folder holding a `bundle.json`."""
    return (pathlib.Path(path) / BUNDLE_FILE).is_file()


def meta_checksum(meta: dict) -> str:
    """SHA-256 of a bundle.json's content without its own `bundle_sha256` (canonical JSON): an edit of
    the file (normalisation, threshold, heads, checksums) is found as an edit of a model file is."""
    body = {k: v for k, v in meta.items() if k != "bundle_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def write_meta(folder: str | os.PathLike, meta: dict) -> None:
    """Writes `folder`/bundle.json with its `bundle_sha256` (atomically)."""
    from msunet.atomic import write_text_atomic

    signed = {**{k: v for k, v in meta.items() if k != "bundle_sha256"}, "bundle_sha256": meta_checksum(meta)}
    write_text_atomic(pathlib.Path(folder) / BUNDLE_FILE, json.dumps(signed, indent=2) + "\n")


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    path = pathlib.Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_bundle(path: str | os.PathLike, verify: bool = True) -> dict:
    """The bundle's `bundle.json`, checked: format, version, and (with `verify`) the model file's checksum.

    Raises:
        BundleError: naming the bundle, what is wrong and how to get a good one.
    """
    root = pathlib.Path(path)
    meta_path = root / BUNDLE_FILE
    if not meta_path.is_file():
        raise BundleError(f"{root}: no {BUNDLE_FILE} here; pass a folder written by `msunet export RUN --out BUNDLE`.")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"{meta_path}: unreadable ({err}); export the bundle again.") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: not an msunet bundle (format {meta.get('format') if isinstance(meta, dict) else None!r}).")
    if meta.get("bundle_version", 0) > BUNDLE_VERSION:
        raise BundleError(f"{meta_path}: bundle version {meta.get('bundle_version')} is newer than this msunet reads "
                          f"({BUNDLE_VERSION}); upgrade msunet.")
    if verify:
        if "bundle_sha256" in meta and meta["bundle_sha256"] != meta_checksum(meta):
            raise BundleError(f"{meta_path}: edited after export (its content does not match its bundle_sha256); "
                              "export the bundle again.")
        files = [("model file", meta["model_file"], meta["sha256"])]
        if meta.get("float32_model"):
            files.append(("float32 model file", meta["float32_model"]["file"], meta["float32_model"]["sha256"]))
        if meta.get("reference"):
            files.append(("reference file", meta["reference"]["file"], meta["reference"]["sha256"]))
        for what, name, checksum in files:
            path = root / name
            if not path.exists():
                raise BundleError(f"{path}: the bundle's {what} is missing; copy the whole bundle folder or "
                                  "export it again.")
            if sha256_of(path) != checksum:
                raise BundleError(f"{path}: the {what} does not match the checksum in {BUNDLE_FILE} (altered or "
                                  "truncated); export the bundle again.")
    return meta


def default_engine(meta: dict) -> str:
    """The engine a bundle runs on when none is asked for and it cannot be timed here (a bundle
    exported before bundles carried a reference): its own for OpenVINO and LiteRT bundles; for a
    float32 ONNX bundle OpenVINO when it is installed, else ONNX Runtime; ONNX Runtime for int8.
    Bundles with a reference run on the engine that ran it faster on this machine (`selfcheck`)."""
    if meta["engine"] in ("openvino", "litert"):
        return meta["engine"]
    if meta.get("precision", "float32") == "float32" and importlib.util.find_spec("openvino") is not None:
        return "openvino"
    return "onnxruntime"


ENGINE_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "litert": "LiteRT"}


class Predictor:
    """Predicts every head of an exported model for images of any size, without TensorFlow or Keras.

    Example:
    ```python
    from msunet.runtime import Predictor
    predictor = Predictor("bundle/")
    probs = predictor.predict(image)          # {"mask": (H, W, K), "mask_s2": (ceil(H/2), ceil(W/2), K), ...}
    mask = predictor.mask(probs["mask"])      # uint8: 0/255 (binary) or class ids
    print(predictor.choice)                   # which graph on which engine, and why
    ```

    On the first load on a machine the bundle checks itself (`msunet.runtime.selfcheck`): its
    reference inputs must give the float32 reference outputs within the guard; an int8 graph that
    strays here is replaced by the bundle's float32 graph, OpenVINO's bfloat16 by its float32.

    Args:
        bundle: a folder written by `msunet export`.
        threads: the engine's threads (default: all cores).
        engine: "onnxruntime", "openvino" or "litert"; default: the bundle's own for OpenVINO and
            LiteRT bundles, ONNX Runtime for an int8 graph, and for a float32 ONNX graph the engine
            that ran the bundle's reference faster on this machine (measured once, cached).
        precision: OpenVINO's inference precision: None (its choice: bfloat16 on CPUs with bfloat16
            instructions) or "f32" (float32, what parity with Keras is checked in).
        check: run the self-check (default; `MSUNET_BUNDLE_CHECK=0` turns it off everywhere).
            False runs the bundle's main graph as exported, as `msunet evaluate --engine int8` does.
    """

    def __init__(self, bundle: str | os.PathLike, threads: int | None = None, engine: str | None = None,
                 precision: str | None = None, check: bool = True):
        self.root = pathlib.Path(bundle)
        self.meta = meta = read_bundle(self.root)
        if meta["engine"] not in RUNNABLE:
            raise BundleError(f"{self.root}: a {meta['engine']!r} bundle; this runtime runs {', '.join(RUNNABLE)} "
                              "bundles (export with --format onnx, openvino or litert).")
        if engine is not None and engine not in ENGINES:
            raise BundleError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}.")
        wanted = engine or default_engine(meta)
        if (wanted == "litert") != (meta["engine"] == "litert") or (wanted == "onnxruntime" and meta["engine"] != "onnx"):
            fix = (f"use engine={meta['engine']!r}" if meta["engine"] in ("litert", "openvino")
                   else "export it with --format litert")
            raise BundleError(f"{self.root}: a {meta['engine']} bundle does not run with engine={wanted!r}; {fix}.")
        if engine == "openvino" and meta.get("precision") == "int8":
            raise BundleError(f"{self.root}: an int8 bundle runs with ONNX Runtime (engine='onnxruntime'): OpenVINO "
                              "computed wrong masks from its QDQ graph (F1 0.04 instead of 0.81 on DRIVE, "
                              "benchmarks/int8.py); for OpenVINO, export without --int8 (it runs in bfloat16).")
        self.threads = threads
        self.heads = [h["name"] for h in meta["heads"]]
        self.threshold = float(meta["threshold"])
        self.check: dict | None = None  # the self-check's result on this machine (None: not checked)
        reference = (selfcheck.read_reference(self.root, meta) if check and selfcheck.checks_enabled() else None)
        self.session, self.engine_name, self.graph, self.choice = self._choose(engine, precision, reference)
        self.input_name = self.session.get_inputs()[0].name
        self.default_heads = list(meta["default_heads"])
        self.in_channels = int(meta["input"]["channels"])
        self.num_classes = int(meta["num_classes"])
        self.normalization = Normalization.from_dict(meta["input"]["normalization"])
        self.resample_step = int(meta["input"].get("resample_step", 1))
        self.flip = meta["input"].get("flip", True)  # training's flips: the ones test-time augmentation uses
        self.tile, self.overlap = int(meta["tiling"]["tile"]), float(meta["tiling"]["overlap"])
        self.dims = int(meta["input"].get("dims", 2))  # 3: a volume model, (B, D, H, W, C) batches
        self.scale_factors = {h["name"]: tuple(int(f) for f in h["factors"]) for h in meta["heads"] if "factors" in h}
        self.target_spacing, self.spacing = (tuple(meta["input"][k]) if meta["input"].get(k) else None
                                             for k in ("target_spacing", "spacing"))
        self.slices = bool(meta["input"].get("slices", False))  # a 2-D model of volume slices

    def _open(self, engine: str, model_file: str, precision: str | None = None):
        path = self.root / model_file
        if engine == "openvino":
            return OpenVINOSession(path, self.threads, precision)
        if engine == "litert":
            return LiteRTSession(path, self.threads, self.meta["heads"])
        return onnx_session(path, self.threads)

    def _verdict(self, session, kind: str, checksum: str, engine: str, precision: str | None,
                 reference) -> tuple[dict, bool]:
        inputs, outputs = reference
        names = [h for h in self.heads if h in outputs]
        key = selfcheck.cache_key(kind, checksum + self.meta["reference"]["sha256"], engine, precision)
        return selfcheck.checked(key, lambda: selfcheck.compare(
            {h: outputs[h] for h in names},
            selfcheck.run_reference(session, inputs, names), self.threshold))

    def _choose(self, engine: str | None, precision: str | None, reference):
        """(session, engine, "int8" | "float32", why): the bundle's main graph where it is faithful on
        this machine, else its float32 graph on the faster engine (int8 bundles) or OpenVINO in
        float32 (bfloat16 that strays)."""
        meta = self.meta
        graph = "int8" if meta.get("precision") == "int8" else "float32"
        name = engine or default_engine(meta)
        if reference is None:  # not checked: an older bundle, or the check turned off
            why = ("the check is off" if meta.get("reference") else "a bundle without a reference (exported before "
                   "msunet checked bundles where they run): not checked on this CPU")
            return self._open(name, meta["model_file"], precision), name, graph, \
                f"{graph} graph on {ENGINE_NAMES[name]} ({why})"
        float_file = (meta.get("float32_model") or {}).get("file") if graph == "int8" else meta["model_file"]
        float_sha = (meta.get("float32_model") or {}).get("sha256") if graph == "int8" else meta["sha256"]
        note, session = "", None
        if graph == "int8":
            session = self._open("onnxruntime", meta["model_file"])
            stats, cached = self._verdict(session, "int8", meta["sha256"], "onnxruntime", None, reference)
            self.check = stats
            if stats["faithful"] or float_file is None:
                state = "checked" if stats["faithful"] else "STRAYS from float32 and the bundle has no float32 graph"
                return session, "onnxruntime", "int8", (
                    f"int8 graph on ONNX Runtime ({state} on this CPU{' (cached)' if cached else ''}: mean change "
                    f"{stats['mean_abs_difference']:.4f}, {100 * stats['mask_agreement']:.2f}% of mask pixels kept)")
            note, session = f"its int8 graph {selfcheck.describe_stray(stats)}; ", None
        if engine is None and meta["engine"] == "onnx" and importlib.util.find_spec("openvino") is not None:
            inputs, outputs = reference
            names = [h for h in self.heads if h in outputs]
            key = selfcheck.cache_key("fastest", float_sha, "onnxruntime", None) + " | " + selfcheck.engine_version(
                "openvino") + f" | threads {self.threads or 'all'}"
            openers = {e: (lambda e=e: self._open(e, float_file, precision)) for e in ("onnxruntime", "openvino")}
            name, seconds, session = selfcheck.fastest(key, openers, inputs, names)
            if len(seconds) > 1:
                other = next(e for e in seconds if e != name)
                note += (f"{ENGINE_NAMES[name]} ran the reference {seconds[other] / max(seconds[name], 1e-9):.2f}x "
                         f"as fast as {ENGINE_NAMES[other]} here; ")
        if session is None:  # not opened by the timing above (no timing, or its result was cached)
            session = self._open(name, float_file, precision)
        stats, cached = self._verdict(session, "float32", float_sha, name, precision, reference)
        if not stats["faithful"] and name == "openvino" and precision != "f32":
            note += f"OpenVINO in its default precision {selfcheck.describe_stray(stats)}, so float32; "
            precision = "f32"
            session = self._open(name, float_file, precision)
            stats, cached = self._verdict(session, "float32", float_sha, name, precision, reference)
        self.check = stats
        state = "checked" if stats["faithful"] else f"STRAYS: it {selfcheck.describe_stray(stats)}"
        return session, name, "float32", (
            f"float32 graph on {ENGINE_NAMES[name]} ({note}{state} on this CPU{' (cached)' if cached else ''}: "
            f"mean change {stats['mean_abs_difference']:.2g}, {100 * stats['mask_agreement']:.2f}% of mask pixels kept)")

    def predict_batch(self, batch: np.ndarray, heads: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The network alone: a preprocessed float32 (B, h, w, C) batch -> {head: (B, h/s, w/s, K)}
        (volumes: (B, d, h, w, C) -> (B, d/f_z, h/f_y, w/f_x, K))."""
        names = list(heads or self.heads)
        outputs = self.session.run(names, {self.input_name: np.ascontiguousarray(batch, np.float32)})
        return dict(zip(names, outputs))

    def engine(self) -> Engine:
        """This bundle as the `Engine` that `msunet.runtime.files.predict_files` drives."""
        def make_fn(heads: Sequence[str], batch_size: int, tta: bool) -> Callable:
            return batch_function(lambda b: self.predict_batch(b, heads), batch_size, tta)

        return Engine(heads=self.heads, default_heads=self.default_heads, in_channels=self.in_channels,
                      num_classes=self.num_classes, normalization=self.normalization, make_fn=make_fn,
                      resample_step=self.resample_step, default_tile=self.tile,
                      max_pixels=int(self.meta.get("max_pixels", 250_000_000)), flip=self.flip,
                      threshold=self.threshold, description=self.choice, dims=self.dims,
                      scale_factors=self.scale_factors, target_spacing=self.target_spacing, spacing=self.spacing,
                      slices=self.slices)

    def predict(self, image: np.ndarray, heads: Sequence[str] | None = None, tta: bool | str | None = None,
                tile_size: int | None = None, overlap: float | None = None, batch_size: int = 4,
                spacing: Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """Probabilities of every head (default: the trained ones) for one (H, W) or (H, W, C) image,
        or for a volume model one (D, H, W) or (D, H, W, C) volume.

        The image is scaled by its dtype (uint8 / 255, uint16 / 65535) and normalised as in training
        (a volume z-scored as a whole where it trained so), tiled with Gaussian blending; `mask_s{s}`
        comes back at ceil(H/s) x ceil(W/s) (volumes: ceil(D/f_z) x ceil(H/f_y) x ceil(W/f_x)).
        `spacing`: a volume's (z, y, x) voxel size in mm, where the model resamples to its own grid; `tta`:
        `PredictOptions.tta` (None: the mirrorings for volumes, none for images).
        """
        image = np.asarray(image)
        dims = 3 if self.slices else self.dims
        if image.ndim == dims:
            image = image[..., None]
        if image.ndim != dims + 1 or image.shape[-1] != self.in_channels:
            kind, shape = ("volume", "D, H, W") if dims == 3 else ("image", "H, W")
            raise ValueError(f"{kind} of shape {image.shape}: the bundle {self.root} takes ({shape}, {self.in_channels}) "
                             f"{kind}s ({self.in_channels} channel(s)); convert the {kind} first.")
        names = list(heads or self.default_heads)
        unknown = [h for h in names if h not in self.heads]
        if unknown:
            raise ValueError(f"the bundle has no output {unknown[0]!r}; valid: {', '.join(self.heads)}.")
        coarsest = max(head_scale(h) for h in names)
        tile = -(-int(tile_size or self.tile) // coarsest) * coarsest
        fn = batch_function(lambda b: self.predict_batch(b, names), batch_size,
                            tta_mode(tta, self.flip, self.dims == 3 or self.slices))
        if self.dims == 3 or self.slices:
            return predict_volume(self.engine(), fn, image, names, tile, self.overlap if overlap is None else overlap,
                                  batch_size, spacing=spacing)
        return predict_image(self.engine(), fn, image, names, tile, self.overlap if overlap is None else overlap,
                             batch_size)

    def mask(self, probs: np.ndarray) -> np.ndarray:
        """uint8 mask of one head's probabilities: 0/255 at the bundle's threshold, or class ids."""
        return probabilities_to_mask(np.asarray(probs), self.threshold)


def predict(bundle: str | os.PathLike | Predictor, inputs: str | os.PathLike, out_dir: str | os.PathLike,
            options: PredictOptions | None = None, *, threads: int | None = None, engine: str | None = None,
            precision: str | None = None, check: bool = True, progress: Callable[[str, int, int], None] | None = None,
            **values) -> PredictSummary:
    """`msunet predict` for a bundle (a folder, or a `Predictor` already open), without TensorFlow:
    the same outputs, from the same `PredictOptions` (or its fields as keyword `values`).
    `threads`, `engine`, `precision`, `check`: as `Predictor` takes them."""
    options = PredictOptions.of(options, **values)  # validated before the bundle is loaded
    predictor = bundle if isinstance(bundle, Predictor) else Predictor(bundle, threads, engine, precision, check)
    return predict_files(predictor.engine(), inputs, out_dir, options, progress)
