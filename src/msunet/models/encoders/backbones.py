"""The `keras.applications` backbones as U-Net encoders (registered by `msunet.models.encoders.applications`).
Backbones from `keras.applications` as U-Net encoders, ImageNet-pretrained or not.

Each returns the same pyramid as the built-in encoders, scales 1 .. 2**depth (depth <= 5), each
feature exactly ceil(H/s) x ceil(W/s) for any input size:

- the image is padded up to a multiple of 32 by repeating its last row and column
  (`PadToMultiple`), so that the backbone's stride-s feature covers ceil(H/s) and a top-left crop
  (`CropToMatch`) gives it exactly, whatever the backbone's padding (valid convolutions, ConvNeXt's
  stride-4 stem, MobileNetV3's floor rounding);
- the backbone's input scaling is part of the graph: the model takes images on the [0, 1] scale
  (`data.normalization=unit`, which the planner sets for backbones) and scales them as the
  ImageNet weights expect (x * 2 - 1 for ResNetV2 and MobileNetV3, ImageNet mean/std for
  EfficientNetV2 and ConvNeXt), so training, prediction, tiling and export agree by construction;
- scale 1 (no backbone has it) is a light conv block on the image; scale 2, where the backbone has
  none (ConvNeXt), another on the pooled scale-1 stage;
- images with other than 3 channels: the first convolution of the ImageNet weights is adapted as
  segmentation_models.pytorch does (summed for 1 channel; for more, the RGB kernels repeated and
  rescaled by 3/C).

Features are the last layer at each stride whose name matches the family's pattern (found by
symbolic shape inference on a 64x64 input, so no layer names per model size are hard-coded).
"""

from __future__ import annotations

import os
import pathlib
import re

import keras
import numpy as np

from msunet.config import ConfigError, ModelConfig
from msunet.models.blocks import apply_conv_block, apply_down, conv_settings, match_size
from msunet.models.encoders.backbone_table import BACKBONE_SPECS, FAMILIES, IMAGENET_MEAN, IMAGENET_STD, Family
from msunet.models.layers import PadToMultiple

BN_MOMENTUM = 0.99  # the most a backbone's batch norm keeps of its moving statistics per step


def construct_backbone(name: str, channels: int, weights):
    spec = BACKBONE_SPECS[name]
    kwargs = {"include_top": False, "weights": weights, "input_shape": (None, None, channels)}
    if FAMILIES[spec.family].has_preprocessing_flag:
        kwargs["include_preprocessing"] = False
    backbone = getattr(keras.applications, spec.constructor)(**kwargs)
    # MobileNetV3 (and V2) build their batch norms with momentum 0.999: from random weights their
    # moving statistics are still half the initial ones after 600 steps, so inference disagrees with
    # training (DSB: training Dice 0.85, validation 0.0003). 0.99 is the Keras default (0.9 in PyTorch).
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.momentum > BN_MOMENTUM:
            layer.momentum = BN_MOMENTUM
    return backbone


def pretrained_backbone(name: str, weights: str):
    """The 3-channel backbone with `weights` ("imagenet" or a file); errors say what to do offline."""
    spec = BACKBONE_SPECS[name]
    if weights != "imagenet":
        path = pathlib.Path(os.path.expanduser(weights))
        if not path.is_file():
            raise ConfigError(f"model.encoder_weights={weights!r}: no such file. Give the path of {name}'s weights "
                              f"(for ImageNet: {spec.url}), or 'imagenet', or 'none'.")
        backbone = construct_backbone(name, 3, None)
        load_weights_checked(backbone, path, name)
        return backbone
    try:
        return construct_backbone(name, 3, "imagenet")
    except Exception as err:  # noqa: BLE001 - urllib, OSError, ValueError: all mean "could not fetch"
        cache = pathlib.Path(os.path.expanduser("~/.keras/models")) / pathlib.Path(spec.weights_file).name
        raise ConfigError(
            f"model.encoder_weights=imagenet: could not get {name}'s ImageNet weights ({type(err).__name__}: "
            f"{str(err)[:200]}). Without a network, download {spec.url} elsewhere, copy it here and pass "
            f"model.encoder_weights=PATH (or put it at {cache}, where Keras looks first)."
        ) from err


def load_weights_checked(backbone: keras.Model, path: pathlib.Path, name: str) -> None:
    """Loads a weights file into `backbone`; a file for another model names the first layer that differs.

    Keras' legacy HDF5 files (what keras.applications ships) are matched layer by layer in order,
    as Keras loads them, comparing the weight shapes; Keras 3 `.weights.h5` files are checked by
    `load_weights` itself.
    """
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            if "layer_names" in fh.attrs:
                _check_legacy_layers(fh, backbone, path, name)
    except OSError as err:
        raise ConfigError(f"{path}: not a weights file Keras can read ({err}); give {name}'s .h5 weights.") from err
    try:
        backbone.load_weights(path)
    except (ValueError, KeyError) as err:
        first = str(err).splitlines()[0][:300]
        raise ConfigError(f"{path}: does not fit {name} ({first}); give the backbone's own 'notop' weights file.") from err


def _check_legacy_layers(fh, backbone: keras.Model, path, name: str) -> None:
    decode = lambda n: n.decode() if isinstance(n, bytes) else n  # noqa: E731
    saved = []
    for layer_name in map(decode, fh.attrs["layer_names"]):
        weight_names = [decode(w) for w in fh[layer_name].attrs.get("weight_names", [])]
        if weight_names:
            saved.append((layer_name, [tuple(fh[layer_name][w].shape) for w in weight_names]))
    layers = [layer for layer in backbone.layers if layer.weights]
    for index, layer in enumerate(layers):
        if index >= len(saved):
            raise ConfigError(f"{path}: has no weights for layer {layer.name!r} of {name} (the file holds "
                              f"{len(saved)} layers with weights, {name} {len(layers)}); it is for another model.")
        saved_name, shapes = saved[index]
        mine = [tuple(w.shape) for w in layer.weights]
        if shapes != mine:
            raise ConfigError(f"{path}: layer {layer.name!r} of {name} has weights {mine}, the file's layer "
                              f"{saved_name!r} {shapes}; this file is for another model.")
    if len(saved) != len(layers):
        raise ConfigError(f"{path}: holds {len(saved)} layers with weights, {name} has {len(layers)}; it is for "
                          "another model.")


def adapt_first_kernel(kernel: np.ndarray, channels: int) -> np.ndarray:
    """(kh, kw, 3, F) -> (kh, kw, channels, F): summed for 1 channel, else RGB repeated, times 3/C."""
    if channels == kernel.shape[2]:
        return kernel
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    repeat = np.concatenate([kernel] * (-(-channels // kernel.shape[2])), axis=2)[:, :, :channels]
    return repeat * (kernel.shape[2] / channels)


def _copy_weights(source: keras.Model, target: keras.Model, channels: int) -> None:
    first = True
    for src, dst in zip(source.layers, target.layers):
        values = src.get_weights()
        if not values:
            continue
        if first and isinstance(src, keras.layers.Conv2D) and values[0].shape[2] != channels:
            values = [adapt_first_kernel(values[0], channels), *values[1:]]
        first = first and not isinstance(src, keras.layers.Conv2D)
        dst.set_weights(values)


def _feature_layers(backbone: keras.Model, family: Family, depth: int) -> dict[int, keras.layers.Layer]:
    pattern = re.compile(family.features)
    candidates = [layer for layer in backbone.layers if pattern.search(layer.name)]
    probe = keras.Model(backbone.inputs, [layer.output for layer in candidates])
    shapes = probe.compute_output_shape((1, 64, 64, backbone.inputs[0].shape[-1]))
    by_stride: dict[int, keras.layers.Layer] = {}
    for layer, shape in zip(candidates, shapes):
        if shape[1] and 64 % shape[1] == 0:
            by_stride[64 // shape[1]] = layer  # the last one at each stride
    return {s: by_stride[s] for s in sorted(by_stride) if 2 <= s <= 2**depth}


def _input_scaling(x, family: Family, channels: int, name: str):
    if family.scaling == "tf":
        return keras.layers.Rescaling(2.0, offset=-1.0, name=f"{name}_scaling")(x)
    mean = np.resize(np.asarray(IMAGENET_MEAN), channels) if channels != 1 else np.asarray([np.mean(IMAGENET_MEAN)])
    std = np.resize(np.asarray(IMAGENET_STD), channels) if channels != 1 else np.asarray([np.mean(IMAGENET_STD)])
    # (x - mean) / std as a Rescaling: Keras' Normalization keeps mean and variance as tensors made
    # outside the traced graph, which tf2onnx turns into extra model inputs (an unusable ONNX bundle).
    return keras.layers.Rescaling((1.0 / std).tolist(), offset=(-mean / std).tolist(), name=f"{name}_scaling")(x)


def build_backbone_encoder(inputs, cfg: ModelConfig) -> dict:
    name, channels = cfg.encoder, cfg.in_channels
    spec = BACKBONE_SPECS[name]
    family = FAMILIES[spec.family]
    backbone = construct_backbone(name, channels, None)
    if cfg.encoder_weights != "none":
        pretrained = pretrained_backbone(name, cfg.encoder_weights)
        _copy_weights(pretrained, backbone, channels)
    features = _feature_layers(backbone, family, cfg.depth)
    extractor = keras.Model(backbone.inputs, [layer.output for layer in features.values()], name=f"{name}_backbone")
    padded = PadToMultiple(32, name="backbone_pad")(inputs)
    outputs = extractor(_input_scaling(padded, family, channels, "backbone"))
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    settings = conv_settings(cfg)
    pyramid = {1: apply_conv_block(inputs, cfg.filters, **settings, name="stem_full")}
    for stride, tensor in zip(features, outputs):
        # Only its shape is used (ceil(H/stride)); a window as large as the stride keeps ONNX's SAME
        # padding non-negative (a 1-pixel window with stride 8 made ONNX Runtime refuse the bundle).
        reference = keras.layers.MaxPooling2D(stride, strides=stride, padding="same", name=f"ref_s{stride}")(inputs)
        pyramid[stride] = match_size(tensor, reference, name=f"backbone_s{stride}")
    if 2 not in pyramid and cfg.depth >= 1:  # ConvNeXt: a stride-4 stem, no stride-2 feature
        down = apply_down(pyramid[1], "maxpool", cfg.norm, cfg.groups, cfg.activation, name="stem_half_down")
        pyramid[2] = apply_conv_block(down, 2 * cfg.filters, **settings, name="stem_half")
    return {s: pyramid[s] for s in sorted(pyramid) if s <= 2**cfg.depth}
