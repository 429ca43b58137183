"""Export a trained run as a bundle: the network in float32 plus everything prediction needs.

`export(RUN, BUNDLE, format=\"onnx\")` writes BUNDLE/ with the model file and `bundle.json` (see
`msunet.runtime.bundle`): input channels and scaling, normalisation statistics, head names and
scales, activation and threshold, class colours, the reduced-resolution step, tile and overlap
defaults, the msunet version and the model file's SHA-256. The network is rebuilt in float32 with
the run's weights even when it trained in mixed precision, and exported through Keras'
`Model.export` with dynamic batch, height and width. The bundle is written to a temporary folder
beside BUNDLE and renamed into place, so a half-written bundle is never left behind.

Formats: \"onnx\" (run by `msunet.runtime` without TensorFlow, with ONNX Runtime or OpenVINO; needs
`tf2onnx` to export), \"openvino\" (OpenVINO IR, `openvino/model.xml` + `.bin`; needs `openvino`) and
\"saved_model\" (TensorFlow Serving / `tf.saved_model.load`) and \"litert\" (LiteRT, formerly TensorFlow
Lite: `model.tflite` for phones and small devices, run by `msunet.runtime` with `ai-edge-litert`).

`int8=True` (ONNX only) quantizes the exported graph with ONNX Runtime's static quantization (QDQ:
per-channel int8 weights, uint8 activations, ranges calibrated by MinMax on the training patches
the run keeps in `calibration.npz`, or on patches of a data folder for runs trained before it
existed), after rewriting the transposed convolutions as 1x1 convolutions + pixel shuffles that
quantize (`msunet.exporting.onnx_rewrite`). Its accuracy cost is measured by `benchmarks/int8.py`. A run's
int8 bundle is also what `msunet predict --model RUN` uses by default (`msunet.exporting.run_bundle`)."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import time
import warnings

import numpy as np

from msunet import __version__
from msunet.atomic import replace_folder, sweep_leftovers
from msunet.exporting.quantize import WEIGHTS, quantize_int8
from msunet.heads import head_scale
from msunet.runtime import selfcheck
from msunet.runtime.bundle import BUNDLE_VERSION, FORMAT, sha256_of, write_meta
from msunet.runtime.writers import class_palette

FORMATS = {"onnx": ("model.onnx", "onnx"), "saved_model": ("saved_model", "tf_saved_model"),
           "openvino": ("openvino", "openvino"), "litert": ("model.tflite", "litert")}
FLOAT32_MODEL = "model.float32.onnx"
CONVERSION_ATTEMPTS = 3  # ONNX conversions whose output shapes are checked (`onnx_shape_errors`)
REFERENCE_SIDE = 256  # reference inputs are cropped to at most this side: the self-check stays well under 1 s
REFERENCE_SIDE_3D = 48  # ... and volumes to this cube
def export(run, out: str | os.PathLike, format: str = "onnx", which: str = "best", overwrite: bool = False,
           tile_size: int | None = None, overlap: float = 0.25, int8: bool = False,
           calibration: str | os.PathLike | None = None, weights: str = "int7") -> pathlib.Path:
    """Writes the bundle of a run; returns its folder.

    Example:
    ```python
    bundle = msunet.export("runs/first", "bundles/first")      # ONNX
    from msunet.runtime import Predictor
    Predictor(bundle).predict(image)["mask"]
    ```

    Args:
        run: a run folder, a .keras file, or a `msunet.training.run_folder.LoadedRun`.
        out: the bundle folder to write (refused if it exists, unless `overwrite`).
        format: "onnx", "openvino", "saved_model" or "litert".
        which: "best" or "last" model of a run folder.
        tile_size, overlap: the bundle's tiling defaults (default tile: twice the training patch, at most 512).
        int8: quantize the ONNX graph to int8 (static QDQ, calibrated on the run's training patches).
        calibration: a data folder to calibrate on when the run has no `calibration.npz`
            (default: the run's data folder from run.json).
        weights: the int8 graph's weights (`WEIGHTS`): "int7" (default: int8 with a 7-bit range, which
            no x86 kernel can saturate), "int8" (the full range: saturates on AVX2 / AVX-512 without
            VNNI) or "uint8" (U8U8 kernels).

    Raises:
        ValueError: an unknown format, an existing bundle, a missing exporter (named with its pip package).
    """
    import keras

    from msunet.models import build_model, output_names
    from msunet.training.run_folder import LoadedRun, load_run, trained_heads

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}.")
    if int8 and format != "onnx":
        raise ValueError(f"--int8 quantizes ONNX graphs (ONNX Runtime static quantization); use --format onnx, "
                         f"not {format}.")
    out = pathlib.Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; choose another --out or pass --overwrite to replace it.")
    if format == "onnx":
        try:
            import tf2onnx  # noqa: F401 - Keras' ONNX export of the TensorFlow backend goes through it
        except ImportError as err:
            raise ValueError("exporting ONNX needs tf2onnx: `pip install 'msunet[export]'` (or `pip install tf2onnx "
                             "onnx`).") from err
    if format == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError as err:
            raise ValueError("exporting OpenVINO needs openvino: `pip install 'msunet[openvino]'`.") from err
    model_file = None if isinstance(run, LoadedRun) else pathlib.Path(run)
    if model_file is not None and model_file.is_dir():
        model_file = model_file / f"{which}.keras"
    model_sha256 = sha256_of(model_file) if model_file is not None and model_file.is_file() else None  # before loading
    loaded = run if isinstance(run, LoadedRun) else load_run(run, which)
    config = loaded.config
    if weights not in WEIGHTS:
        raise ValueError(f"unknown int8 weights {weights!r}; valid: {', '.join(WEIGHTS)}.")
    patches = calibration_inputs(loaded, calibration) if int8 else None
    # float32 graph, random-free rebuild (no backbone weights fetched), then the run's weights.
    model = build_model(config.model.replace(precision="float32", encoder_weights="none"))
    model.set_weights([np.asarray(w, np.float32) for w in loaded.model.get_weights()])
    dims = config.model.dims
    factors = {h: config.model.scale_factor(head_scale(h)) for h in output_names(model)}  # per axis, (z,) y, x
    coarsest = max(head_scale(h) for h in output_names(model))
    model.predict_on_batch(np.zeros((1, *(coarsest,) * dims, config.model.in_channels), np.float32))  # builds
    # Volumes: the training cube (3-D windows cost the cube of their side); images: twice the patch.
    tile = tile_size or (config.data.patch_size if dims == 3 else min(512, 2 * config.data.patch_size))
    tile = -(-int(tile) // coarsest) * coarsest
    filename, keras_format = FORMATS[format]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    sweep_leftovers(out.parent)  # a bundle half-written by a killed export: removed, never taken for one
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        target = tmp / filename / "model.xml" if format == "openvino" else tmp / filename  # Keras wants NAME.xml
        target.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, CONVERSION_ATTEMPTS + 1):
            with warnings.catch_warnings(), _traced_for_onnx(format == "onnx"):
                warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)  # Keras' tf2onnx shim
                model.export(str(target), format=keras_format, verbose=False)
            wrong = onnx_shape_errors(target, model, factors) if format == "onnx" else []
            if not wrong:
                break
            if attempt == CONVERSION_ATTEMPTS:
                raise ValueError(f"the ONNX conversion gave outputs of the wrong shape {CONVERSION_ATTEMPTS} times "
                                 f"({'; '.join(wrong)}); export again, or use --format openvino or litert.")
        float32_model = None
        if int8:  # the int8 bundle keeps its float32 graph: what runs where int8 strays (runtime.selfcheck)
            shutil.copyfile(target, tmp / FLOAT32_MODEL)
            float32_model = {"file": FLOAT32_MODEL, "sha256": sha256_of(tmp / FLOAT32_MODEL)}
        quantization = quantize_int8(target, patches, weights) if int8 else None
        reference = _reference(tmp, model, loaded, patches, calibration, coarsest, dims)
        litert_outputs = litert_output_names(target, model, coarsest) if format == "litert" else None
        num_classes = config.model.num_classes
        meta = {
            "format": FORMAT, "bundle_version": BUNDLE_VERSION, "msunet_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "engine": format, "model_file": filename,
            "sha256": sha256_of(tmp / filename), "precision": "int8" if int8 else "float32",
            "quantization": quantization, "float32_model": float32_model, "reference": reference,
            "input": {
                "name": model.inputs[0].name, "channels": config.model.in_channels,
                "layout": "NDHWC" if dims == 3 else "NHWC", "dims": dims,
                **({"target_spacing": config.data.target_spacing, "spacing": config.data.spacing,
                    "slices": dims == 2} if dims == 3 or config.data.slices else {}),
                "dtype": "float32",
                "scaling": "integers / their dtype's maximum (uint8 / 255, uint16 / 65535), floats unchanged; "
                           "then the normalisation; images smaller than a tile padded with normalised black",
                "normalization": loaded.normalization.to_dict(), "resample_step": config.data.resample_step,
                "flip": config.data.flip,
            },
            "heads": [{"name": name, "scale": head_scale(name),
                       **({"factors": list(factors[name])} if dims == 3 else {}),
                       **({"litert_output": litert_outputs[name]} if litert_outputs else {})}
                      for name in output_names(model)],
            "default_heads": trained_heads(loaded),
            "num_classes": num_classes, "activation": "sigmoid" if num_classes == 1 else "softmax",
            "threshold": config.train.threshold,
            "class_colours": [list(map(int, c)) for c in class_palette(num_classes)] if num_classes > 1 else None,
            "mask_palette": [list(c) for c in config.data.palette] if config.data.palette else None,
            "ignore_label": config.data.ignore_label,
            "tiling": {"tile": tile, "overlap": overlap, "blend": "gaussian", "multiple_of": coarsest},
            "max_pixels": config.data.max_pixels,
            "source": {"run": str(loaded.run_dir) if loaded.run_dir else None, "which": which,
                       "model_sha256": model_sha256,
                       "trained_precision": config.model.precision, "keras": keras.__version__,
                       "backend": keras.backend.backend()},
        }
        write_meta(tmp, meta)
        replace_folder(tmp, out)  # overwrite: the old bundle goes only once the new one is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def _traced_for_onnx(active: bool):
    """While exporting ONNX from the TensorFlow backend, two Keras ops are traced in forms tf2onnx
    converts (the graph is converted, never run by TensorFlow), as keras.applications' ConvNeXt
    needs: grouped convolutions (its depthwise 7x7) as `tf.nn.convolution` instead of inside the
    nested XLA function Keras wraps them in (TensorFlow's CPU kernels lack grouped convs; ONNX's Conv
    has groups), and the exact GELU as 0.5 x (1 + erf(x / sqrt 2)) instead of TensorFlow's erfc
    form (ONNX has Erf, not Erfc; the same function)."""
    import keras

    if not active or keras.backend.backend() != "tensorflow":
        yield
        return
    import tensorflow as tf

    try:  # Keras' private module: where a Keras release moves it, only ConvNeXt's export is affected
        from keras.src.backend.tensorflow import nn as tf_nn

        conv, gelu, convert_data_format = tf_nn.conv, tf_nn.gelu, tf_nn._convert_data_format
    except (ImportError, AttributeError):
        yield
        return

    def plain_conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        data_format = data_format or keras.config.image_data_format()
        channels = inputs.shape[-1] if data_format == "channels_last" else inputs.shape[1]
        if channels == kernel.shape[-2]:
            return conv(inputs, kernel, strides, padding, data_format, dilation_rate)
        return tf.nn.convolution(inputs, kernel, strides, padding.upper(), dilations=dilation_rate,
                                 data_format=convert_data_format(data_format, len(inputs.shape)))

    def erf_gelu(x, approximate=True):
        if approximate:
            return gelu(x, approximate)
        x = tf.convert_to_tensor(x)
        return 0.5 * x * (1.0 + tf.math.erf(x * np.float32(1 / np.sqrt(2))))

    tf_nn.conv, tf_nn.gelu = plain_conv, erf_gelu
    try:
        yield
    finally:
        tf_nn.conv, tf_nn.gelu = conv, gelu


def calibration_inputs(loaded, data_dir: str | os.PathLike | None = None, count: int = 32) -> np.ndarray:
    """Normalised float32 training patches (N, p, p, C) to calibrate int8 ranges on: the run's
    `calibration.npz`, else patches of `data_dir` (default: the run's data folder)."""
    from msunet.data.pairs import find_pairs, split_pairs
    from msunet.data.samples import CALIBRATION_FILE, calibration_patches, load_samples

    stored = loaded.run_dir / CALIBRATION_FILE if loaded.run_dir else None
    if stored is not None and stored.is_file() and data_dir is None:
        with np.load(stored) as data:
            unit = data["patches"].astype(np.float32)
    else:
        if data_dir is None and loaded.run_dir and (loaded.run_dir / "run.json").is_file():
            data_dir = json.loads((loaded.run_dir / "run.json").read_text()).get("data_dir")
        if data_dir is None or not pathlib.Path(data_dir).is_dir():
            where = loaded.run_dir or "the model"
            raise ValueError(f"{where} has no {CALIBRATION_FILE} (runs keep one since msunet 0.1) and its data folder "
                             f"{data_dir or '(unknown)'} is not there: pass --calibration DATA_FOLDER (training "
                             "images of the same kind) to calibrate the int8 ranges on.")
        config = loaded.config
        index = find_pairs(data_dir, config.data)
        split = split_pairs(index, config.data)
        samples = load_samples(split["train"] or index.pairs, config.data, config.model, problems=[])
        if not samples:
            raise ValueError(f"{data_dir}: no readable image/mask pair to calibrate the int8 ranges on.")
        unit = calibration_patches(samples, config.data.patch_size, count, config.data.seed).astype(np.float32)
    return np.stack([loaded.normalization.apply(x) for x in unit]).astype(np.float32)


def onnx_shape_errors(path: pathlib.Path, model, factors: dict[str, tuple[int, ...]]) -> list[str]:
    """The outputs of an exported ONNX graph whose shapes break the contract on a batch of 3 at an
    odd, non-square size (`mask_s{s}`: (3, ceil(H/s), ceil(W/s), K); volumes (3, ceil(D/f_z), ...) with
    the head's `factors` per axis), as "name: got, want".

    tf2onnx's graph optimiser now and then drops a Squeeze after a one-channel head's 1x1
    convolution, which leaves a (1, B, h, w, 1) output: it depends on the order in which Python
    iterates sets of node names (PYTHONHASHSEED 2 reproduces it for a ConvNeXt U-Net's `mask_s2`;
    a second conversion, with other node names, was right). `export` converts again when this
    finds anything."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    coarsest = max(max(f) for f in factors.values())
    dims = len(next(iter(factors.values())))
    sizes = (2 * coarsest + 5, 3 * coarsest + 3, coarsest + 1)[:dims]
    x = np.zeros((3, *sizes, model.inputs[0].shape[-1]), np.float32)
    names = [o.name for o in session.get_outputs()]
    errors = []
    for name, value in zip(names, session.run(None, {session.get_inputs()[0].name: x})):
        factor = factors.get(name, (head_scale(name),) * dims)
        want = (3, *(-(-n // f) for n, f in zip(sizes, factor)), int(model.outputs[0].shape[-1]))
        if tuple(value.shape) != want:
            errors.append(f"{name}: {tuple(value.shape)}, want {want}")
    return errors


def _reference(folder: pathlib.Path, model, loaded, patches, calibration, coarsest: int, dims: int = 2) -> dict:
    """The bundle's self-check reference (`msunet.runtime.selfcheck`): a few calibration patches
    (or, where a run has none, seeded noise) and the float32 Keras outputs of every head for them."""
    source = "the run's calibration patches"
    if patches is None:
        try:
            patches = calibration_inputs(loaded, calibration, count=selfcheck.REFERENCE_COUNT)
        except (ValueError, OSError):
            patches = None
    if patches is None or not len(patches):
        side = (2 if dims == 3 else 4) * coarsest
        patches = np.random.default_rng(0).normal(0, 1, (selfcheck.REFERENCE_COUNT, *(side,) * dims,
                                                         loaded.config.model.in_channels)).astype(np.float32)
        source = "seeded noise (no calibration patches or data folder for this run)"
    longest = REFERENCE_SIDE if dims == 2 else REFERENCE_SIDE_3D
    side = max(coarsest, min(longest, *patches.shape[1:-1]) // coarsest * coarsest)
    inputs = np.ascontiguousarray(patches[(slice(0, selfcheck.REFERENCE_COUNT),) + (slice(0, side),) * dims], np.float32)
    outputs = model.predict_on_batch(inputs)
    outputs = outputs if isinstance(outputs, dict) else dict(zip(model.output_names, outputs))
    entry = selfcheck.write_reference(folder, inputs, {k: np.asarray(v, np.float32) for k, v in outputs.items()})
    return {**entry, "sha256": sha256_of(folder / entry["file"]), "source": source}


def litert_output_names(path: pathlib.Path, model, coarsest: int) -> dict[str, str]:
    """{head: the .tflite output tensor's name}: the converter names outputs after its own graph, so
    each is matched to the Keras output it equals on a probe input (full-size heads such as `mask`
    and `mask_fused` share a shape; their values tell them apart)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise ValueError("exporting LiteRT needs ai-edge-litert to check the file: `pip install 'msunet[litert]'`.") from err
    size = 3 * coarsest
    x = np.random.default_rng(0).normal(0, 1, (1, size, size, model.inputs[0].shape[-1])).astype(np.float32)
    expected = model.predict_on_batch(x)
    expected = expected if isinstance(expected, dict) else dict(zip(model.output_names, expected))
    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(x.shape), strict=False)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    found = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    names = {}
    for head, want in expected.items():
        want = np.asarray(want, np.float32)
        close = [n for n, got in found.items() if got.shape == want.shape and np.abs(got - want).max() < 1e-3
                 and n not in names.values()]
        if not close:
            raise ValueError(f"the LiteRT file has no output equal to the model's {head!r}; export with --format onnx.")
        names[head] = close[0]
    return names
