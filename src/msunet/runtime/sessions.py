"""The engines a bundle runs on, behind one call: ONNX Runtime's `InferenceSession`, and OpenVINO and
LiteRT adapted to its `get_inputs()` / `run(names, {input: batch})`. NumPy only; each engine imported
when a bundle asks for it, with the pip package to install where it is missing."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np


class BundleError(ValueError):
    """A bundle that cannot be used (missing, altered, unsupported, or its engine not installed)."""


def onnx_session(model_file: pathlib.Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise BundleError("ONNX Runtime is not installed: `pip install 'msunet[runtime]'` (or `pip install "
                          "onnxruntime`) runs bundles without TensorFlow.") from err
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning between calls: the same speed alone (int8 default U-Net,
    # 29-30 images/s at batch 1 and 8 either way), and the tile blending between calls, or whatever
    # else shares the CPU, gets the cores back.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


class OpenVINOSession:
    """An OpenVINO compiled model behind `run(names, {input: batch})`, as ONNX Runtime's session.

    OpenVINO reads the bundle's IR (`openvino/model.xml`) or its ONNX file. `precision` is its
    inference precision hint: None keeps OpenVINO's choice (bfloat16 on CPUs that have it), "f32"
    computes in float32.
    """

    def __init__(self, model_file: pathlib.Path, threads: int | None, precision: str | None):
        try:
            import openvino as ov
        except ImportError as err:
            raise BundleError("OpenVINO is not installed: `pip install 'msunet[openvino]'` (or `pip install "
                              "openvino`).") from err
        core = ov.Core()
        config = {}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        path = model_file / "model.xml" if model_file.is_dir() else model_file
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.ports = {name: port for port in self.compiled.outputs for name in port.get_names()}
        self.request = self.compiled.create_infer_request()
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))

    def get_inputs(self):
        return [type("Input", (), {"name": self.compiled.inputs[0].get_any_name()})()]

    def run(self, names, feeds):
        results = self.request.infer(list(feeds.values()))
        return [np.array(results[self.ports[name]]) for name in names]


class LiteRTSession:
    """A LiteRT (TensorFlow Lite) interpreter behind `run(names, {input: batch})`, as ONNX Runtime's
    session; the input is resized when a batch of another shape comes (tiles keep one shape)."""

    def __init__(self, model_file: pathlib.Path, threads: int | None, heads: Sequence[dict]):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise BundleError("LiteRT is not installed: `pip install 'msunet[litert]'` (or `pip install "
                              "ai-edge-litert`).") from err
        self.interpreter = Interpreter(model_path=str(model_file), num_threads=int(threads or os.cpu_count() or 1))
        self.input = self.interpreter.get_input_details()[0]
        self.shape: tuple[int, ...] | None = None
        self.heads = list(heads)

    def get_inputs(self):
        return [type("Input", (), {"name": self.input["name"]})()]

    def _outputs_by_head(self, batch_shape: tuple[int, ...]) -> dict[str, int]:
        # The converter names outputs after its own graph: `msunet export` records which is which;
        # without that record the heads are told apart by their size (one output per scale).
        outputs = self.interpreter.get_output_details()
        by_name = {d["name"]: d["index"] for d in outputs}
        if all(h.get("litert_output") in by_name for h in self.heads):  # recorded by `msunet export`
            return {h["name"]: by_name[h["litert_output"]] for h in self.heads}
        height = batch_shape[1]
        mapping, taken = {}, set()
        for head in self.heads:
            want = -(-height // int(head["scale"]))
            for d in outputs:
                if d["index"] not in taken and int(self.interpreter.get_tensor(d["index"]).shape[1]) == want:
                    mapping[head["name"]] = d["index"]
                    taken.add(d["index"])
                    break
        return mapping

    def run(self, names, feeds):
        batch = np.ascontiguousarray(next(iter(feeds.values())), np.float32)
        if batch.shape != self.shape:
            self.interpreter.resize_tensor_input(self.input["index"], list(batch.shape), strict=False)
            self.interpreter.allocate_tensors()
            self.shape = batch.shape
            self.mapping = None
        self.interpreter.set_tensor(self.input["index"], batch)
        self.interpreter.invoke()
        if self.mapping is None:
            self.mapping = self._outputs_by_head(batch.shape)
        return [np.array(self.interpreter.get_tensor(self.mapping[name])) for name in names]
