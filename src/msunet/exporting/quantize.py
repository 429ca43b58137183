"""int8 quantization of an exported ONNX graph: ONNX Runtime static quantization (QDQ, per-channel
weights in a 7-bit range by default, uint8 activations calibrated on training patches), checked
against the float32 graph on the calibration patches."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from msunet import machine

# The int8 graph's weights. ONNX Runtime's U8S8 kernels on AVX2 and on AVX-512 without VNNI multiply
# with VPMADDUBSW, which adds pairs of uint8 x int8 products into 16 bits with saturation: 2 x 255 x
# 127 > 32767, so full-range int8 weights can saturate there (its quantization docs recommend 7-bit
# weights or U8U8 on such CPUs); 2 x 255 x 63 < 32767 cannot. VNNI CPUs accumulate in 32 bits.
WEIGHTS = {
    "int7": ("int8 per-channel weights in a 7-bit range (reduce_range): no x86 kernel can saturate", True, "QInt8"),
    "int8": ("int8 per-channel weights, full range: saturates on x86 CPUs without VNNI", False, "QInt8"),
    "uint8": ("uint8 per-channel weights (U8U8 kernels)", False, "QUInt8"),
}


def quantize_int8(path: pathlib.Path, patches: np.ndarray, weights: str = "int7") -> dict:
    """Replaces the ONNX model at `path` by its static int8 quantization (QDQ) calibrated on `patches`.

    Before quantizing, the graph's kernel == stride transposed convolutions become 1x1 convolutions
    and a pixel shuffle (`msunet.exporting.onnx_rewrite`; kept only if the float graph's outputs stay within
    1e-5 of the original's on two calibration patches and an odd-sized crop); after, `Shape` nodes
    read quantized tensors instead of dequantizing them first.
    """
    try:
        import onnx
        import onnxruntime as ort
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        raise ValueError("--int8 needs onnx and onnxruntime: `pip install 'msunet[export]'`.") from err
    from msunet.exporting.onnx_rewrite import pixel_shuffle_upsampling, shapes_skip_dequantize

    original = onnx.load(str(path))
    input_name = original.graph.input[0].name
    rewritten_path = path.with_name(f".{path.stem}.rewritten.onnx")
    prepared, quantized = path.with_name(f".{path.stem}.prepared.onnx"), path.with_name(f".{path.stem}.int8.onnx")

    class Patches(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(patches)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {input_name: item[None]}

    float_session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # the reference
    rewrites = {}
    try:
        source = path
        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(original)
        shuffles = pixel_shuffle_upsampling(rewritten)
        if shuffles:
            onnx.save(rewritten, str(rewritten_path))
            probe = [patches[:2], patches[(slice(0, 1), *(slice(0, max(1, n - k)) for n, k in
                                                      zip(patches.shape[1:-1], (3, 5, 1))))]]
            after = ort.InferenceSession(str(rewritten_path), providers=["CPUExecutionProvider"])
            difference = max(float(np.abs(a - b).max()) for x in probe for a, b in
                             zip(float_session.run(None, {input_name: x}), after.run(None, {input_name: x})))
            if difference <= 1e-5:
                source = rewritten_path
                rewrites["transposed_convs_as_pixel_shuffle"] = shuffles
            else:  # never expected; the original graph quantizes too, only slower
                rewrites["transposed_convs_kept"] = f"the rewrite changed outputs by {difference:.2g}"
        try:  # ONNX Runtime's recommended pre-processing: shape inference and graph optimisation
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # (symbolic: for transformers)
            source = prepared
        except Exception:  # noqa: BLE001 - quantization works without it, a little slower
            pass
        description, reduce_range, weight_type = WEIGHTS[weights]
        quantize_static(str(source), str(quantized), Patches(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=getattr(QuantType, weight_type),
                        per_channel=True, reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax)
        model = onnx.load(str(quantized))
        rewrites["shapes_skip_dequantize"] = shapes_skip_dequantize(model)
        onnx.save(model, str(quantized))
        agreement = _int8_agreement(float_session, quantized, input_name, patches[:8])
        os.replace(quantized, path)
    finally:
        for tmp in (rewritten_path, prepared, quantized):
            tmp.unlink(missing_ok=True)
    return {"method": "ONNX Runtime static quantization, QDQ, uint8 activations", "weights": weights,
            "weights_detail": description, "reduce_range": reduce_range,
            "calibration": "MinMax", "calibration_patches": int(len(patches)),
            "patch": list(map(int, patches.shape[1:-1])), "pre_processed": source == prepared,
            "graph_rewrites": rewrites, **agreement,
            "checked_on": {**machine.describe(), "onnxruntime": ort.__version__}}


def _int8_agreement(float_session, int8_path: pathlib.Path, input_name: str, patches: np.ndarray) -> dict:
    """How far the int8 graph moves the full-resolution head on calibration patches: the fraction of
    mask pixels unchanged (threshold 0.5, or the arg-max class) and the mean probability change."""
    import onnxruntime as ort

    sessions = [float_session, ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])]
    # Every output's shape at a batch of 3 and an odd, non-square size must be the float graph's (an int8
    # graph that fails this is never written: seen now and then in tests, a backbone's int8 graph with
    # wrong output shapes; cause not found).
    size = patches.shape[1]
    odd = (size + 5, 2 * size + 3) if patches.ndim == 4 else (size + 3, size + 5, size + 1)  # volumes: (D, H, W)
    probe = np.zeros((3, *odd, patches.shape[-1]), np.float32)
    shapes = [[o.shape for o in s.run(None, {input_name: probe})] for s in sessions]
    if shapes[0] != shapes[1]:
        raise ValueError(f"the int8 graph's outputs have shapes {shapes[1]} where the float32 graph's have {shapes[0]}"
                         f" (input {probe.shape}); export again in a new process, or use the float32 bundle.")
    name = "mask" if "mask" in [o.name for o in sessions[0].get_outputs()] else sessions[0].get_outputs()[0].name
    want, got = (np.concatenate([s.run([name], {input_name: x[None]})[0] for x in patches]) for s in sessions)
    masks = [p.argmax(-1) if p.shape[-1] > 1 else p[..., 0] > 0.5 for p in (want, got)]
    return {"calibration_mask_agreement": float(np.mean(masks[0] == masks[1])),
            "calibration_mean_abs_difference": float(np.abs(want - got).mean())}
