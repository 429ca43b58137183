"""Export bundles and the TensorFlow-free runtime: parity with Keras, bad bundles, no TensorFlow imported."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tf2onnx", reason="ONNX export needs tf2onnx (pip install 'msunet[export]'; `make venv` has it)")
pytest.importorskip("onnxruntime", reason="the runtime needs onnxruntime (pip install 'msunet[runtime]')")

from msunet.config import RunConfig  # noqa: E402
from msunet.data.preprocessing import Normalization
from msunet.exporting.bundle import export
from msunet.models import build_model  # noqa: E402
from msunet.training.run_folder import LoadedRun
from msunet.inference.keras_engine import make_predict_fn, run_engine
from msunet.runtime import BundleError, Predictor, read_bundle  # noqa: E402
from msunet.runtime.files import predict_image
from helpers import BLOCK_HEAVY_IMPORTS, make_int8_graph_stray  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(num_classes=1, precision="float32", depth=3, extra=()):
    cfg = RunConfig().override([f"model.depth={depth}", "model.filters=4", "data.patch_size=32",
                                f"model.num_classes={num_classes}", f"model.precision={precision}", *extra])
    model = build_model(cfg.model)
    rng = np.random.default_rng(0)  # weights away from their initial values, so parity is not trivial
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    return LoadedRun(model, cfg, Normalization("dataset", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)), None)


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    run = _run()
    return run, export(run, tmp_path_factory.mktemp("b") / "bundle")


@pytest.mark.parametrize("size", [(1, 1), (37, 101), (255, 257)])
def test_bundle_matches_keras_on_every_head_at_odd_sizes_and_through_tiling(binary, size):
    run, bundle = binary
    predictor = Predictor(bundle, engine="onnxruntime")  # (OpenVINO, the default when installed: its own test)
    image = (np.random.default_rng(sum(size)).random((*size, 3)) * 255).astype(np.uint8)
    heads = run.model.output_names
    keras_probs = predict_image(run_engine(run), make_predict_fn(run.model, heads, 4), image, heads, 64)
    probs = predictor.predict(image, heads=heads, tile_size=64)  # 255x257 in 64 px tiles: 30+ windows blended
    assert set(probs) == set(heads) == {"mask", "mask_s2", "mask_s4"}
    for head in heads:
        s = int(head.rpartition("_s")[2]) if "_s" in head else 1
        assert probs[head].shape == (-(-size[0] // s), -(-size[1] // s), 1)
        np.testing.assert_allclose(probs[head], keras_probs[head], atol=1e-4, rtol=0)
        near = np.abs(keras_probs[head] - 0.5) < 1e-4
        assert np.array_equal(predictor.mask(probs[head])[~near[..., 0]],
                              predictor.mask(keras_probs[head])[~near[..., 0]])


def test_multiclass_bf16_run_exports_a_float32_graph_with_its_metadata(tmp_path):
    import onnx

    run = _run(num_classes=4, precision="mixed_bfloat16", depth=2)
    bundle = export(run, tmp_path / "mc")
    graph = onnx.load(str(bundle / "model.onnx")).graph
    types = {t.type.tensor_type.elem_type for t in [*graph.input, *graph.output, *graph.value_info]}
    assert onnx.TensorProto.BFLOAT16 not in types and onnx.TensorProto.FLOAT16 not in types
    meta = read_bundle(bundle)
    assert meta["engine"] == "onnx" and meta["num_classes"] == 4 and meta["activation"] == "softmax"
    assert meta["input"]["channels"] == 3 and meta["input"]["normalization"]["mean"] == [0.4, 0.5, 0.6]
    assert [h["scale"] for h in meta["heads"]] == [1, 2] and meta["source"]["trained_precision"] == "mixed_bfloat16"
    assert meta["tiling"]["tile"] == 64 and len(meta["class_colours"]) == 4
    image = (np.random.default_rng(1).random((20, 30, 3)) * 255).astype(np.uint8)
    probs = Predictor(bundle, engine="onnxruntime").predict(image)
    np.testing.assert_allclose(probs["mask"].sum(-1), 1.0, atol=1e-5)  # softmax over 4 classes
    float32 = LoadedRun(build_model(run.config.model.replace(precision="float32")), run.config, run.normalization, None)
    float32.model.set_weights(run.model.get_weights())
    expected = predict_image(run_engine(float32), make_predict_fn(float32.model, ["mask"], 4), image, ["mask"], 64)
    np.testing.assert_allclose(probs["mask"], expected["mask"], atol=1e-4, rtol=0)


def test_bad_bundles_and_inputs_are_refused_with_the_fix(binary, tmp_path, monkeypatch):
    run, bundle = binary
    with pytest.raises(ValueError, match="exists; choose another --out or pass --overwrite"):
        export(run, bundle)
    with pytest.raises(ValueError, match="unknown export format 'tflite'; valid: onnx, saved_model"):
        export(run, tmp_path / "x", format="tflite")
    with pytest.raises(BundleError, match="no bundle.json here"):
        Predictor(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "bundle.json").write_bytes((bundle / "bundle.json").read_bytes())
    with pytest.raises(BundleError, match="model file is missing"):
        Predictor(copy)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the checksum"):
        Predictor(copy)
    whole = shutil.copytree(bundle, tmp_path / "whole")
    meta = json.loads((whole / "bundle.json").read_text())
    assert meta["bundle_sha256"] and Predictor(whole)
    meta["threshold"] = 0.01  # an edit of bundle.json itself (what a model file's checksum cannot see)
    (whole / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="edited after export"):
        Predictor(whole)
    with pytest.raises(ValueError, match=r"takes \(H, W, 3\) images"):
        Predictor(bundle).predict(np.zeros((8, 8), np.uint8))
    # An export that fails half-way leaves nothing behind: no bundle, no temporary folder.
    import keras

    def broken(self, *args, **kwargs):
        (pathlib.Path(args[0])).write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(keras.Model, "export", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export(run, tmp_path / "half")
    assert not [p.name for p in tmp_path.iterdir() if "half" in p.name]


def test_cli_export_then_predict_with_the_bundle_writes_what_keras_writes(tmp_path):
    from msunet.cli import main
    from msunet.data.imageio import read_mask, write_png
    from msunet.data.synthetic import make_dataset
    from msunet.training.run import train

    data = make_dataset(tmp_path / "d", count=4, size=(40, 44))
    train(RunConfig().override(["model.depth=2", "model.filters=4", "data.patch_size=32", "epochs=1",
                                "steps_per_epoch=2", "batch_size=2"]), data, tmp_path / "run", verbose=0)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "bundle")]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "bundle")]) == 2  # exists
    write_png(tmp_path / "in" / "odd.png", (np.random.default_rng(0).random((37, 101, 3)) * 255).astype(np.uint8))
    for source, out, engine in (("run", "k", ["--engine", "keras"]), ("bundle", "b", ["--engine", "onnxruntime"]),
                                ("bundle", "d", [])):
        assert main(["predict", "--model", str(tmp_path / source), "--input", str(tmp_path / "in"), "--out",
                     str(tmp_path / out), "--quiet", "--tta", *engine]) == 0
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "k").iterdir()) == ["odd.png", "odd_overlay.png", "odd_s2.png"]
    for name in ("odd.png", "odd_s2.png"):
        keras_mask, bundle_mask = read_mask(tmp_path / "k" / name), read_mask(tmp_path / "b" / name)
        assert (keras_mask != bundle_mask).mean() < 0.001  # only probabilities at the threshold may flip
        default = read_mask(tmp_path / "d" / name)  # the default engine (OpenVINO in bfloat16 when installed)
        assert (keras_mask != default).mean() < 0.01  # this barely trained model's probabilities sit near 0.5


NO_TENSORFLOW = BLOCK_HEAVY_IMPORTS + r"""
import numpy as np
from msunet.runtime import Predictor
from msunet.cli import main
bundle, images, out = sys.argv[1:4]
probs = Predictor(bundle).predict(np.zeros((37, 101, 3), np.uint8), tta=True)
assert probs["mask_s4"].shape == (10, 26, 1), probs["mask_s4"].shape
assert main(["predict", "--model", bundle, "--input", images, "--out", out, "--quiet", "--probabilities"]) == 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not heavy, heavy
print("ok")
"""


def test_the_runtime_never_imports_tensorflow_keras_or_scipy(binary, tmp_path):
    _, bundle = binary
    from msunet.data.imageio import write_png

    write_png(tmp_path / "in" / "a.png", (np.random.default_rng(0).random((50, 60, 3)) * 255).astype(np.uint8))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(bundle), str(tmp_path / "in"), str(tmp_path / "o")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
    assert {"a.png", "a_s2.png", "a_s4.png", "a_prob.tif", "a_overlay.png"} <= {p.name for p in (tmp_path / "o").iterdir()}


def test_saved_model_bundle_is_written_with_its_checksum(binary, tmp_path):
    run, _ = binary
    bundle = export(run, tmp_path / "sm", format="saved_model")
    meta = read_bundle(bundle)
    assert meta["engine"] == "saved_model" and (bundle / "saved_model" / "saved_model.pb").is_file()
    with pytest.raises(BundleError, match="this runtime runs onnx, openvino, litert bundles"):
        Predictor(bundle)
    import tensorflow as tf

    served = tf.saved_model.load(str(bundle / "saved_model"))
    x = np.random.default_rng(0).random((1, 37, 101, 3)).astype(np.float32)
    out = served.serve(x)
    keras_out = run.model.predict_on_batch(x)
    np.testing.assert_allclose(np.asarray(out["mask"]), keras_out["mask"], atol=1e-4)


def test_openvino_runs_onnx_and_its_own_bundles_as_keras_does(binary, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is an optional engine (pip install 'msunet[openvino]')")
    run, onnx_bundle = binary
    ir_bundle = export(run, tmp_path / "ov", format="openvino")
    assert (ir_bundle / "openvino" / "model.xml").is_file() and read_bundle(ir_bundle)["engine"] == "openvino"
    image = (np.random.default_rng(5).random((37, 101, 3)) * 255).astype(np.uint8)
    heads = run.model.output_names
    expected = predict_image(run_engine(run), make_predict_fn(run.model, heads, 4), image, heads, 64)
    for bundle in (ir_bundle, onnx_bundle):
        predictor = Predictor(bundle, engine="openvino", precision="f32")
        assert predictor.engine_name == "openvino"
        probs = predictor.predict(image, heads=heads, tile_size=64)
        for head in heads:
            np.testing.assert_allclose(probs[head], expected[head], atol=1e-4, rtol=0)
    with pytest.raises(BundleError, match="does not run with engine='onnxruntime'; use engine='openvino'"):
        Predictor(ir_bundle, engine="onnxruntime")
    # An OpenVINO bundle runs on OpenVINO; a float32 ONNX bundle on the engine that ran its reference
    # faster on this machine (timed once, cached; which one depends on the CPU and the model).
    assert Predictor(ir_bundle).engine_name == "openvino"
    from msunet.runtime import selfcheck

    chosen = Predictor(onnx_bundle)
    timing = next(v for k, v in json.loads(selfcheck.cache_path().read_text()).items()
                  if k.startswith("fastest | " + read_bundle(onnx_bundle)["sha256"][:16]))
    assert chosen.engine_name == timing["fastest"] == min(timing["seconds_per_batch"], key=timing["seconds_per_batch"].get)
    assert "as fast as" in chosen.choice
    with pytest.raises(BundleError, match="unknown engine 'tensorrt'"):
        Predictor(onnx_bundle, engine="tensorrt")


def test_int8_bundle_is_quantized_on_the_runs_patches_and_stays_close(tmp_path):
    """`export --int8`: a QDQ graph calibrated on the training patches the run kept; masks close to float32."""
    import onnx

    from msunet.cli import main
    from msunet.data.synthetic import make_dataset
    from msunet.training.run import train

    data = make_dataset(tmp_path / "d", count=6, size=(48, 48))
    train(RunConfig().override(["model.depth=2", "model.filters=8", "data.patch_size=32", "epochs=4",
                                "steps_per_epoch=8", "batch_size=4"]), data, tmp_path / "run", verbose=0)
    with np.load(tmp_path / "run" / "calibration.npz") as stored:
        count = len(stored["patches"])  # one per training image (the validation split keeps its own)
        assert 4 <= count <= 6 and stored["patches"].shape[1:] == (32, 32, 3) and stored["patches"].dtype == np.float16
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "f32")]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "i8"), "--int8"]) == 0
    meta = read_bundle(tmp_path / "i8")
    assert meta["precision"] == "int8" and meta["quantization"]["calibration_patches"] == count
    # 7-bit weights (no x86 kernel saturates), and the machine it was checked on, recorded
    assert meta["quantization"]["weights"] == "int7" and meta["quantization"]["reduce_range"] is True
    assert set(meta["quantization"]["checked_on"]["features"]) >= {"avx2", "avx512", "vnni", "bf16", "amx"}
    # it carries its float32 graph and a reference (calibration patches and every head's float32 outputs)
    assert (tmp_path / "i8" / meta["float32_model"]["file"]).is_file()
    assert meta["reference"]["heads"] == sorted(meta["default_heads"]) and meta["reference"]["inputs"] == 4
    graph = onnx.load(str(tmp_path / "i8" / "model.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the two up-convolutions as 1x1 convs + pixel shuffles (ONNX Runtime has no int8 ConvTranspose) ...
    assert "ConvTranspose" not in ops and meta["quantization"]["graph_rewrites"]["transposed_convs_as_pixel_shuffle"] == 2
    producer = {out: node for node in graph.node for out in node.output}  # ... and no dequantize only for a Shape
    assert not [n.name for n in graph.node if n.op_type == "Shape" and n.input[0] in producer
                and producer[n.input[0]].op_type == "DequantizeLinear"]
    from msunet.data.imageio import read_image

    image = read_image(sorted((data / "images").iterdir())[-1])  # an image like those calibrated on
    reference = Predictor(tmp_path / "f32", engine="onnxruntime").predict(image)["mask"]
    int8 = Predictor(tmp_path / "i8", check=False)  # the int8 graph as exported, on ONNX Runtime
    assert int8.engine_name == "onnxruntime" and int8.graph == "int8"
    quantized = int8.predict(image)["mask"]
    assert not np.array_equal(reference, quantized)  # it is another graph...
    print("int8 vs float32: mean |diff|", np.abs(reference - quantized).mean(), "max", np.abs(reference - quantized).max())
    # ...that predicts nearly the same on any x86 CPU: with 7-bit weights no kernel saturates, so the
    # integer products are exact everywhere and only the float rescaling rounds (8-bit weights moved
    # this model's probabilities by 0.055 on AVX2 and kept 89.6% of a mask; within 0.01 on VNNI).
    assert np.abs(reference - quantized).mean() < 0.03
    assert (int8.mask(quantized) == int8.mask(reference)).mean() > 0.95
    # the default: checked on this machine, the int8 graph where it stays within the guard
    checked = Predictor(tmp_path / "i8")
    assert checked.check is not None and "on this CPU" in checked.choice
    assert checked.graph == ("int8" if checked.check["faithful"] else "float32")
    # A run without calibration.npz calibrates on its data folder (run.json), or on --calibration.
    (tmp_path / "run" / "calibration.npz").unlink()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "i8b"), "--int8"]) == 0
    moved = tmp_path / "moved"
    os.replace(data, moved)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "i8c"), "--int8"]) == 2  # says --calibration
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "i8c"), "--int8", "--calibration",
                 str(moved)]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "ov"), "--int8", "--format",
                 "openvino"]) == 2
    with pytest.raises(BundleError, match="int8 bundle runs with ONNX Runtime"):
        Predictor(tmp_path / "i8", engine="openvino")


def test_int8_refusals_name_the_fix(binary, tmp_path):
    run, _ = binary  # a LoadedRun without a folder: nothing to calibrate on
    with pytest.raises(ValueError, match="--calibration"):
        export(run, tmp_path / "b", int8=True)
    with pytest.raises(ValueError, match="--format onnx"):
        export(run, tmp_path / "b", format="saved_model", int8=True)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("encoder", [
    "mobilenetv3small",  # a 1-pixel max-pool with stride 8 (the scale references) made ONNX Runtime refuse these
    "efficientnetv2b0",  # Keras' Normalization (ImageNet scaling) became two extra ONNX inputs
    "convnext_tiny",     # grouped convs inside a nested XLA function, and GELU's erfc, which tf2onnx cannot convert
    pytest.param("resnet50v2", marks=pytest.mark.slow),
])
def test_backbone_runs_export_bundles_that_match_keras_in_float32_and_int8(encoder, tmp_path):
    # (Before the LiteRT tests: after a LiteRT export in the same process, a backbone's int8 graph once
    # came out with wrong output shapes; the export now checks them and refuses such a graph.)
    from msunet.data.synthetic import make_dataset

    run = _run(depth=3, extra=[f"model.encoder={encoder}", "model.encoder_weights=none"])
    heads = run.model.output_names
    image = (np.random.default_rng(3).random((37, 101, 3)) * 255).astype(np.uint8)
    expected = predict_image(run_engine(run), make_predict_fn(run.model, heads, 4), image, heads, 64)
    probs = Predictor(export(run, tmp_path / "f32"), engine="onnxruntime").predict(image, heads=heads, tile_size=64)
    for head in heads:
        np.testing.assert_allclose(probs[head], expected[head], atol=1e-4, rtol=0)
    data = make_dataset(tmp_path / "d", count=3, size=(40, 44))
    # A backbone with random weights is no trained model: how far int8 moves it depends on the model and
    # the CPU (0.059 for EfficientNetV2B0 with 8-bit weights on AVX2). What msunet promises is that the
    # bundle checks itself here and runs the int8 graph only within the guard, else its float32 graph.
    predictor = Predictor(export(run, tmp_path / "i8", int8=True, calibration=data))
    quantized = predictor.predict(image, heads=heads, tile_size=64)
    print(encoder, predictor.choice)
    if predictor.graph == "float32":
        for head in heads:
            np.testing.assert_allclose(quantized[head], expected[head], atol=1e-4, rtol=0)
    else:  # within the guard on the reference patches (0.02); this image is noise, unlike them: 0.05
        assert predictor.check["faithful"] and np.abs(quantized["mask"] - expected["mask"]).mean() < 0.05


def test_litert_bundle_runs_every_head_as_keras_does(binary, tmp_path):
    """`--format litert`: a .tflite file, run by `ai-edge-litert` (no TensorFlow), resized to each shape."""
    pytest.importorskip("ai_edge_litert", reason="LiteRT is an optional engine (pip install 'msunet[litert]')")
    run, onnx_bundle = binary
    bundle = export(run, tmp_path / "lite", format="litert")
    meta = read_bundle(bundle)
    assert (bundle / "model.tflite").is_file() and meta["engine"] == "litert"
    assert all(h["litert_output"] for h in meta["heads"])  # which .tflite output is which head
    heads = run.model.output_names
    for size, tile in (((37, 101), 64), ((20, 24), 32)):  # two tile shapes: the interpreter is resized
        image = (np.random.default_rng(size[0]).random((*size, 3)) * 255).astype(np.uint8)
        expected = predict_image(run_engine(run), make_predict_fn(run.model, heads, 4), image, heads, tile)
        probs = Predictor(bundle).predict(image, heads=heads, tile_size=tile)
        for head in heads:
            np.testing.assert_allclose(probs[head], expected[head], atol=1e-4, rtol=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    from msunet.data.imageio import write_png

    write_png(tmp_path / "in" / "a.png", (np.random.default_rng(0).random((50, 60, 3)) * 255).astype(np.uint8))
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(bundle), str(tmp_path / "in"), str(tmp_path / "o")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
    with pytest.raises(BundleError, match="use engine='litert'"):
        Predictor(bundle, engine="onnxruntime")
    with pytest.raises(BundleError, match="--format litert"):
        Predictor(onnx_bundle, engine="litert")


def test_litert_tells_full_size_heads_apart(tmp_path):
    """`mask` and `mask_fused` have the same shape: the export matches each .tflite output by value."""
    pytest.importorskip("ai_edge_litert", reason="LiteRT is an optional engine (pip install 'msunet[litert]')")
    run = _run(depth=2, extra=["model.fused_head=true"])
    heads = run.model.output_names
    assert "mask_fused" in heads
    bundle = export(run, tmp_path / "lite", format="litert")
    image = (np.random.default_rng(7).random((40, 44, 3)) * 255).astype(np.uint8)
    expected = predict_image(run_engine(run), make_predict_fn(run.model, heads, 4), image, heads, 32)
    probs = Predictor(bundle).predict(image, heads=heads, tile_size=32)
    for head in heads:
        np.testing.assert_allclose(probs[head], expected[head], atol=1e-4, rtol=0)


def _onnx_outputs(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def test_transposed_convs_become_pixel_shuffles_with_the_same_outputs(binary, tmp_path):
    """The int8 export's rewrite (msunet.exporting.onnx_rewrite) on a real tf2onnx graph: same outputs, any size."""
    import onnx

    from msunet.exporting.onnx_rewrite import pixel_shuffle_upsampling

    _, bundle = binary  # depth 3: three 2x2 stride-2 up-convolutions
    model = onnx.load(str(bundle / "model.onnx"))
    assert sum(n.op_type == "ConvTranspose" for n in model.graph.node) == 3
    assert pixel_shuffle_upsampling(model) == 3
    ops = [n.op_type for n in model.graph.node]
    assert "ConvTranspose" not in ops and "Pad" not in ops  # tf2onnx's crop + pad after each went with it
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "shuffled.onnx"))
    for size in ((1, 1), (37, 101), (64, 64)):
        x = np.random.default_rng(size[0]).normal(size=(2, *size, 3)).astype(np.float32)
        for want, got in zip(_onnx_outputs(bundle / "model.onnx", x), _onnx_outputs(tmp_path / "shuffled.onnx", x)):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel, stride, bias, rewritten", [(3, 3, True, 1), (2, 2, False, 1), (3, 2, True, 0)])
def test_pixel_shuffle_rewrite_takes_any_kernel_equal_to_stride_and_leaves_the_rest(tmp_path, kernel, stride, bias,
                                                                                   rewritten):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from msunet.exporting.onnx_rewrite import pixel_shuffle_upsampling

    rng = np.random.default_rng(kernel + stride)
    weights = [numpy_helper.from_array(rng.normal(size=(4, 5, kernel, kernel)).astype(np.float32), "w")]
    if bias:
        weights.append(numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "b"))
    node = helper.make_node("ConvTranspose", ["x", "w", "b"][: len(weights) + 1], ["y"], kernel_shape=[kernel] * 2,
                            strides=[stride] * 2)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(tmp_path / "a.onnx"))
    assert pixel_shuffle_upsampling(model) == rewritten
    onnx.save(model, str(tmp_path / "b.onnx"))
    x = rng.normal(size=(2, 4, 7, 9)).astype(np.float32)
    np.testing.assert_allclose(_onnx_outputs(tmp_path / "b.onnx", x)[0], _onnx_outputs(tmp_path / "a.onnx", x)[0],
                               atol=1e-5, rtol=0)


def _files(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir())}


def test_predict_on_a_run_uses_its_int8_bundle_made_once(tmp_path, capsys, monkeypatch):
    """`msunet predict --model RUN`: the int8 bundle (the fastest measured path), exported once and
    again when the model changed; Keras when asked, or when the bundle cannot be made (saying why)."""
    import importlib.util
    import shutil

    from msunet.cli import main
    from msunet.data.imageio import read_image
    from msunet.runtime.bundle import sha256_of
    from msunet.data.synthetic import make_dataset
    from msunet.training.run import train

    data = make_dataset(tmp_path / "d", count=5, size=(48, 40))
    run = tmp_path / "run"
    train(RunConfig().override(["model.depth=2", "model.filters=4", "data.patch_size=32", "epochs=2",
                                "steps_per_epoch=4", "batch_size=2"]), data, run, verbose=0)
    args = ["predict", "--model", str(run), "--input", str(data / "images"), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "o1")]) == 0
    out = capsys.readouterr().out
    assert "on this CPU" in out and "exported in" in out and "written: 5 image(s)" in out
    assert out.splitlines()[-2].startswith("engine: ") and f"the run's bundle {run / 'bundle-int8'}" in out
    meta = read_bundle(run / "bundle-int8")
    assert meta["precision"] == "int8" and meta["source"]["model_sha256"] == sha256_of(run / "best.keras")
    # Again, in a fresh process: no export, and TensorFlow and Keras are never imported.
    script = NO_TENSORFLOW.split("bundle, images, out")[0] + (
        "run, images, out = sys.argv[1:4]\n"
        "assert main(['predict', '--model', run, '--input', images, '--out', out, '--quiet']) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)\nassert not heavy, heavy\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", script, str(run), str(data / "images"), str(tmp_path / "o2")],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
    assert "made earlier from this model" in result.stdout
    # msunet.predict makes the same choice as the CLI: the same files, byte for byte (same machine).
    import msunet

    msunet.predict(run, data / "images", tmp_path / "o-api")
    assert _files(tmp_path / "o-api") == _files(tmp_path / "o1")
    # The Keras model on request: the same files, masks nearly all the same.
    assert main([*args, "--out", str(tmp_path / "o3"), "--engine", "keras"]) == 0
    assert "engine: Keras (asked for)" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "o1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "o3").iterdir())
    agree = [np.mean(read_image(tmp_path / "o1" / n) == read_image(tmp_path / "o3" / n)) for n in names
             if n.endswith(".png") and "overlay" not in n]
    assert min(agree) > 0.95, agree
    # `evaluate --engine int8` scores that same bundle (no export: it is current); Keras by default.
    scores = {}
    for engine in ("keras", "int8"):
        assert main(["evaluate", "--model", str(run), "--data", str(data), "--out", str(tmp_path / f"e-{engine}"),
                     "--engine", engine, "--quiet", "--no-distances"]) == 0
        assert ("int8 bundle" in capsys.readouterr().out) == (engine == "int8")
        summary = json.loads((tmp_path / f"e-{engine}" / "summary.json").read_text())
        scores[engine] = summary["overall"]["dice_mean"]
    assert abs(scores["int8"] - scores["keras"]) < 0.05, scores
    # A bundle older than the model is made again.
    meta["source"]["model_sha256"] = "0" * 64
    (run / "bundle-int8" / "bundle.json").write_text(json.dumps(meta))
    assert main([*args, "--out", str(tmp_path / "o1"), "--overwrite"]) == 0
    assert "exported in" in capsys.readouterr().out
    # A bundle whose int8 graph strays on this machine runs its float32 graph instead, saying why.
    assert make_int8_graph_stray(run / "bundle-int8") > 0
    assert main([*args, "--out", str(tmp_path / "o5")]) == 0
    out = capsys.readouterr().out
    assert "engine: float32 graph on" in out and "its int8 graph moves probabilities by" in out, out
    assert "exported" not in out
    float32 = [np.mean(read_image(tmp_path / "o5" / n) == read_image(tmp_path / "o3" / n)) for n in names
               if n.endswith(".png") and "overlay" not in n]
    assert min(float32) > 0.99, float32  # the float32 graph: Keras' masks (but for pixels at the threshold)
    assert main(["evaluate", "--model", str(run), "--data", str(data), "--out", str(tmp_path / "e-strays"), "--engine",
                 "int8", "--quiet", "--no-distances"]) == 0  # asked for by name, its int8 graph is scored all the same
    out = capsys.readouterr().out
    assert "predicted with int8 graph" in out and "the run's int8 bundle" in out, out
    # Without the exporter: Keras, and the reason said.
    shutil.rmtree(run / "bundle-int8")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real_find_spec(name, *a))
    assert main([*args, "--out", str(tmp_path / "o1"), "--overwrite"]) == 0
    assert "engine: Keras (exporting the int8 bundle needs tf2onnx" in capsys.readouterr().out
    assert not (run / "bundle-int8").exists()
    monkeypatch.undo()
    # Engines that do not fit the model are one clear error.
    assert main([*args, "--out", str(tmp_path / "o4"), "--engine", "onnxruntime"]) == 2
    assert "msunet export" in capsys.readouterr().err
    export(run, tmp_path / "b")
    assert main(["predict", "--model", str(tmp_path / "b"), "--input", str(data / "images"), "--out",
                 str(tmp_path / "o4"), "--engine", "keras"]) == 2
    assert "predicts with a run folder" in capsys.readouterr().err


def test_a_bundle_checks_itself_where_it_runs_and_falls_back_to_its_float32_graph(tmp_path, monkeypatch):
    """An int8 graph that strays on the machine it is loaded on (made to: scaled weights, so on any CPU)
    is replaced by the bundle's float32 graph on the faster engine, saying why; the check is cached
    per machine and runs again on another CPU."""
    from msunet import machine
    from msunet.runtime import selfcheck
    from msunet.data.synthetic import make_dataset

    run = _run(depth=2)
    data = make_dataset(tmp_path / "d", count=3, size=(40, 44))
    bundle = export(run, tmp_path / "i8", int8=True, calibration=data)
    assert make_int8_graph_stray(bundle) > 0
    predictor = Predictor(bundle)
    print(predictor.choice)
    assert predictor.graph == "float32" and "its int8 graph moves probabilities by" in predictor.choice
    assert predictor.check["faithful"] and predictor.check["mean_abs_difference"] < 1e-3
    cache = json.loads(selfcheck.cache_path().read_text())
    int8_entry = next(v for k, v in cache.items() if k.startswith("int8 | " + read_bundle(bundle)["sha256"][:16]))
    assert not int8_entry["faithful"] and int8_entry["mean_abs_difference"] > selfcheck.MAX_MEAN_CHANGE
    assert int8_entry["machine"]["cpu"] == machine.cpu_model()
    import importlib.util

    if importlib.util.find_spec("openvino") is not None:  # the faster of the two engines, timed here
        timing = next(v for k, v in cache.items() if k.startswith("fastest | "))
        assert set(timing["seconds_per_batch"]) == {"onnxruntime", "openvino"}
        assert predictor.engine_name == timing["fastest"]
    image = (np.random.default_rng(3).random((37, 101, 3)) * 255).astype(np.uint8)
    heads = run.model.output_names
    expected = predict_image(run_engine(run), make_predict_fn(run.model, heads, 4), image, heads, 64)
    got = predictor.predict(image, heads=heads, tile_size=64)
    for head in heads:  # float32 on ONNX Runtime (1e-6 here), or OpenVINO in bfloat16 where the CPU has it (~2e-4)
        assert np.abs(got[head] - expected[head]).mean() < 1e-3
    # Cached: the next load on this machine does not run the reference.
    calls = []
    real_compare = selfcheck.compare
    monkeypatch.setattr(selfcheck, "compare", lambda *a: calls.append(1) or real_compare(*a))
    again = Predictor(bundle)
    assert not calls and "(cached)" in again.choice and again.graph == "float32"
    # Another CPU (model or flags): checked again.
    monkeypatch.setattr(machine, "fingerprint", lambda: "Another CPU | x86_64 | avx2 avx512f avx512_vnni")
    assert Predictor(bundle).graph == "float32" and calls
    # Asked for by name (check=False), the int8 graph runs as exported: visibly not float32
    assert Predictor(bundle, check=False).graph == "int8"


def test_float32_bundles_check_themselves_on_openvino_and_litert(binary, tmp_path):
    """Where a float32 graph strays from its reference (made to: the reference altered), OpenVINO
    drops to float32 precision, and every engine says so on its choice line."""
    from msunet.runtime import selfcheck
    from msunet.runtime.bundle import sha256_of, write_meta

    run, onnx_bundle = binary
    checked = Predictor(onnx_bundle)
    assert checked.graph == "float32" and checked.check["faithful"] and "checked on this CPU" in checked.choice

    def alter(bundle):
        meta = json.loads((bundle / "bundle.json").read_text())
        path = bundle / meta["reference"]["file"]
        with np.load(path) as stored:
            arrays = {k: (1 - stored[k]) if k.startswith("head/") else stored[k] for k in stored.files}
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        meta["reference"]["sha256"] = sha256_of(path)
        write_meta(bundle, meta)
        return bundle

    engines = [("onnxruntime", "onnx")]
    import importlib.util

    if importlib.util.find_spec("openvino") is not None:
        engines.append(("openvino", "openvino"))
    if importlib.util.find_spec("ai_edge_litert") is not None:
        engines.append(("litert", "litert"))
    for engine, fmt in engines:
        bundle = alter(export(run, tmp_path / fmt, format=fmt))
        predictor = Predictor(bundle, engine=engine)
        assert predictor.engine_name == engine and "STRAYS" in predictor.choice and not predictor.check["faithful"]
        if engine == "openvino":
            assert "so float32" in predictor.choice
    assert selfcheck.MAX_MEAN_CHANGE == 0.02 and selfcheck.MIN_MASK_AGREEMENT == 0.95


def test_a_run_whose_int8_export_fails_predicts_with_a_float32_bundle(tmp_path, capsys, monkeypatch):
    """Keras only when no bundle can be made: a failed quantization leaves a float32 bundle, named."""
    from msunet.exporting import bundle as exporting
    from msunet.cli import main
    from msunet.data.synthetic import make_dataset
    from msunet.training.run import train

    data = make_dataset(tmp_path / "d", count=4, size=(40, 40))
    run = tmp_path / "run"
    train(RunConfig().override(["model.depth=2", "model.filters=4", "data.patch_size=32", "epochs=1",
                                "steps_per_epoch=2", "batch_size=2"]), data, run, verbose=0)

    def broken(*args, **kwargs):
        raise ValueError("quantization broke")

    monkeypatch.setattr(exporting, "quantize_int8", broken)
    assert main(["predict", "--model", str(run), "--input", str(data / "images"), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "engine: float32 graph on" in out and "the int8 export failed (ValueError: quantization broke)" in out
    assert "a float32 bundle exported instead" in out and read_bundle(run / "bundle-int8")["precision"] == "float32"


def test_an_onnx_conversion_with_wrong_output_shapes_is_done_again_then_refused(binary, tmp_path, monkeypatch):
    """tf2onnx now and then drops a Squeeze (PYTHONHASHSEED-dependent): export checks every output's
    shape at an odd size, converts again, and refuses with the reason when it stays wrong."""
    from msunet.exporting import bundle as module
    run, bundle = binary
    from msunet.heads import head_scale
    from msunet.models import output_names
    factors = {h: (head_scale(h),) * 2 for h in output_names(run.model)}
    assert module.onnx_shape_errors(bundle / "model.onnx", run.model, factors) == []  # a right graph passes
    real, calls = module.onnx_shape_errors, []

    def wrong_once(*args):
        calls.append(1)
        return ["mask_s2: (1, 3, 7, 10, 1), want (3, 7, 10, 1)"] if len(calls) == 1 else real(*args)

    monkeypatch.setattr(module, "onnx_shape_errors", wrong_once)
    assert read_bundle(export(run, tmp_path / "again"))["engine"] == "onnx" and len(calls) == 2
    monkeypatch.setattr(module, "onnx_shape_errors", lambda *a: ["mask_s2: (1, 3, 7, 10, 1), want (3, 7, 10, 1)"])
    with pytest.raises(ValueError, match="wrong shape 3 times .*mask_s2"):
        export(run, tmp_path / "never")
    assert not (tmp_path / "never").exists()
