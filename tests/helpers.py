"""Shared test helpers: tiny configs, deterministic inputs, shape expectations, paths."""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np

from msunet.config import ModelConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_config(**overrides) -> ModelConfig:
    """A depth-2 U-Net with a few filters: builds and runs in well under a second."""
    base = dict(depth=2, filters=4, in_channels=3, num_classes=1)
    base.update(overrides)
    return ModelConfig(**base)


def random_image(height: int, width: int, channels: int = 3, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, height, width, channels), dtype=np.float32)


def expected_shapes(cfg: ModelConfig, height: int, width: int, batch: int = 1) -> dict[str, tuple]:
    """The output contract: "mask_s{s}" is ceil(H/s) x ceil(W/s); "mask" and "mask_fused" are H x W."""
    return {head.name: (batch, math.ceil(height / head.scale), math.ceil(width / head.scale), cfg.num_classes)
            for head in cfg.heads}


def expected_volume_shapes(cfg: ModelConfig, size: tuple[int, int, int], batch: int = 1) -> dict[str, tuple]:
    """The contract in 3-D: "mask_s{s}" is ceil(D/s) x ceil(H/s) x ceil(W/s), or keeps D slices where the
    first `inplane_levels` downsamplings pool in-plane only."""
    shapes = {}
    for head in cfg.heads:
        level = head.scale.bit_length() - 1  # scale 2**level
        factor = (2 ** max(0, level - cfg.inplane_levels), head.scale, head.scale)
        shapes[head.name] = (batch, *(math.ceil(n / f) for n, f in zip(size, factor)), cfg.num_classes)
    return shapes


def shared_dataset(name: str):
    """Path of a dataset in ../shared/data, or skip the test with the reason."""
    import pytest

    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (../shared/data is only beside the project in development and CI)")
    return path


def env_without_keras_backend() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    return env


def make_int8_graph_stray(bundle, factor: float = 3.0) -> int:
    """Scales the dequantization scale of every int8 weight of a bundle's int8 graph by `factor`
    and re-signs bundle.json: an int8 graph that strays from float32 on any CPU (what the bundle's
    self-check must catch). Returns how many weights were scaled."""
    import json

    import onnx
    from onnx import numpy_helper

    from msunet.runtime.bundle import sha256_of, write_meta

    bundle = pathlib.Path(bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    path = bundle / meta["model_file"]
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    scaled = 0
    for node in model.graph.node:
        weight = inits.get(node.input[0])
        if node.op_type == "DequantizeLinear" and weight is not None and weight.data_type == onnx.TensorProto.INT8:
            scale = inits[node.input[1]]
            scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), scale.name))
            scaled += 1
    onnx.save(model, str(path))
    meta["sha256"] = sha256_of(path)
    write_meta(bundle, meta)  # re-signed: the stray graph is the point, not an edited bundle.json
    return scaled


# The start of a script run in a subprocess to show that the runtime needs none of these: any import of
# them fails; the script ends by asserting `not [m for m in sys.modules if m.split(".")[0] in BLOCKED]`.
BLOCK_HEAVY_IMPORTS = r"""
import importlib.abc, sys
BLOCKED = ("tensorflow", "keras", "scipy", "jax", "torch")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the runtime imported {name}")
sys.meta_path.insert(0, Block())
"""
