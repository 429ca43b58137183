"""ONNX graph rewrites for the int8 export (`msunet export --int8`): the same function, faster kernels.

Measured on the default U-Net (depth 4, 32 filters, batch 8 at 256x256, ONNX Runtime 1.32, 2-core
AMD EPYC; `benchmarks/speed.py` has the side-by-side rows), the QDQ graph as tf2onnx and ONNX
Runtime's quantizer leave it spends 40% of its kernel time outside the int8 convolutions:

- **Transposed convolutions** (the decoder's 2x2, stride-2 up-convolutions): ONNX Runtime's CPU
  provider has no int8 `ConvTranspose`, so each runs in float32 between a dequantize and a
  quantize, followed by the Slice + Pad with which tf2onnx crops a transposed conv to its dynamic
  output shape (a no-op when kernel == stride). `pixel_shuffle_upsampling` writes each such
  transposed conv as what it is, a 1x1 convolution to k*k*C channels and a pixel shuffle done as
  Reshape / Transpose / Reshape in channels-last order: the convolution quantizes to int8, the
  shuffle moves uint8 bytes, and ONNX Runtime's layout optimizer cancels the transposes around it.
  The float graph's outputs are identical (max difference 0.0 on the default U-Net).
- **Shapes of dequantized tensors**: `CropToMatch` reads the shape of tensors the quantizer then
  dequantizes only for that `Shape`; `shapes_skip_dequantize` reads the quantized tensor's shape
  instead (the same shape) and the dequantize disappears.

Together: 444 -> 278 ms of kernel time per batch of 8 (1.6x). Every rewrite keeps tensor names that
other nodes read, and `prune` removes what nothing reads any more.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _consumers(graph) -> dict[str, list]:
    found = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            found[name].append(node)
    return found


def _is_shuffle_transpose(node, weights: dict) -> bool:
    """A ConvTranspose with square kernel == stride, no padding, groups or dilation, constant weights."""
    if node.op_type != "ConvTranspose" or node.input[1] not in weights:
        return False
    a = _attributes(node)
    strides, kernel = list(a.get("strides", [])), list(a.get("kernel_shape", []))
    return (len(strides) == 2 and strides == kernel and strides[0] == strides[1] and a.get("group", 1) == 1
            and not any(a.get("pads", [0])) and not any(a.get("output_padding", [0])) and "output_shape" not in a
            and all(d == 1 for d in a.get("dilations", [1]))
            and a.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID", "NOTSET", "VALID")
            and (len(node.input) < 3 or not node.input[2] or node.input[2] in weights))


def _tf2onnx_crop(output: str, consumers: dict) -> tuple[list, str]:
    """tf2onnx's Slice -> Pad to a transposed conv's dynamic output shape, when `output` feeds only it
    (and Shape nodes): ([slice, pad], the pad's output), else ([], output)."""
    readers = consumers[output]
    slices = [n for n in readers if n.op_type == "Slice" and n.input[0] == output]
    if len(slices) != 1 or any(n.op_type != "Shape" for n in readers if n is not slices[0]):
        return [], output
    after = consumers[slices[0].output[0]]
    if len(after) != 1 or after[0].op_type != "Pad" or after[0].input[0] != slices[0].output[0]:
        return [], output
    return [slices[0], after[0]], after[0].output[0]


def pixel_shuffle_upsampling(model) -> int:
    """Rewrites every kernel == stride transposed convolution of `model` (in place) as a 1x1
    convolution plus a channels-last pixel shuffle; returns how many it rewrote."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    consumers = _consumers(graph)
    nodes, dropped, rewritten = [], set(), 0
    for node in graph.node:
        if not _is_shuffle_transpose(node, weights):
            nodes.append(node)
            continue
        k = int(_attributes(node)["strides"][0])
        w = numpy_helper.to_array(weights[node.input[1]])  # (C_in, C_out, k, k)
        c_in, c_out = w.shape[:2]
        prefix = f"{node.name or node.output[0]}/pixel_shuffle"
        # channel (a * k + b) * C_out + c of the 1x1 conv is output pixel (k*i + a, k*j + b), channel c
        graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(k * k * c_out, c_in, 1, 1)), f"{prefix}/weights"))
        conv_inputs = [node.input[0], f"{prefix}/weights"]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(weights[node.input[2]])
            graph.initializer.append(numpy_helper.from_array(np.tile(bias, k * k), f"{prefix}/bias"))
            conv_inputs.append(f"{prefix}/bias")
        crop, output = _tf2onnx_crop(node.output[0], consumers)
        dropped.update(id(n) for n in crop)
        for reader in consumers[node.output[0]]:  # Shape readers of the removed output read the new one
            if reader.op_type == "Shape" and output != node.output[0]:
                reader.input[0] = output
        graph.initializer.extend([
            numpy_helper.from_array(np.array([0, 0, 0, k, k, -1], np.int64), f"{prefix}/blocks"),
            numpy_helper.from_array(np.array([1, 1, 1, k * k], np.int64), f"{prefix}/div"),
            numpy_helper.from_array(np.array([1, k, k, 1], np.int64), f"{prefix}/mul"),
        ])
        p = prefix
        nodes += [
            helper.make_node("Conv", conv_inputs, [f"{p}/conv"], name=f"{p}/conv", kernel_shape=[1, 1]),
            helper.make_node("Transpose", [f"{p}/conv"], [f"{p}/nhwc"], name=f"{p}/to_nhwc", perm=[0, 2, 3, 1]),
            helper.make_node("Shape", [f"{p}/nhwc"], [f"{p}/shape"], name=f"{p}/shape"),
            helper.make_node("Div", [f"{p}/shape", f"{p}/div"], [f"{p}/shape_c"], name=f"{p}/shape_c"),
            helper.make_node("Mul", [f"{p}/shape_c", f"{p}/mul"], [f"{p}/shape_up"], name=f"{p}/shape_up"),
            helper.make_node("Reshape", [f"{p}/nhwc", f"{p}/blocks"], [f"{p}/blocks6"], name=f"{p}/split"),
            helper.make_node("Transpose", [f"{p}/blocks6"], [f"{p}/interleaved"], name=f"{p}/interleave",
                             perm=[0, 1, 3, 2, 4, 5]),
            helper.make_node("Reshape", [f"{p}/interleaved", f"{p}/shape_up"], [f"{p}/up"], name=f"{p}/merge"),
            helper.make_node("Transpose", [f"{p}/up"], [output], name=f"{p}/to_nchw", perm=[0, 3, 1, 2]),
        ]
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(n for n in nodes if id(n) not in dropped)
        prune(model)
    return rewritten


def shapes_skip_dequantize(model) -> int:
    """`Shape(DequantizeLinear(x))` -> `Shape(x)` (in place); returns how many Shape nodes it rewired."""
    producer = {out: node for node in model.graph.node for out in node.output}
    rewired = 0
    for node in model.graph.node:
        source = producer.get(node.input[0]) if node.op_type == "Shape" and node.input else None
        if source is not None and source.op_type == "DequantizeLinear":
            node.input[0] = source.input[0]
            rewired += 1
    if rewired:
        prune(model)
    return rewired


def prune(model) -> None:
    """Removes nodes whose outputs reach no graph output, and initializers nothing reads (not in
    graphs with subgraphs, whose outer-scope reads this does not follow)."""
    graph = model.graph
    if any(a.g.node or a.graphs for node in graph.node for a in node.attribute):
        return
    needed = {o.name for o in graph.output}
    alive = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            alive.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(alive))
    kept = [w for w in graph.initializer if w.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept)
