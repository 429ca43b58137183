"""One test harness for every registered architecture (encoder x decoder), in the spirit of
keras-hub's `run_vision_backbone_test` and segmentation_models.pytorch's `BaseModelTester`.

Each `check_*` takes a `ModelConfig` (small widths) and asserts one part of the output contract
of `msunet.models`; `ARCHITECTURES` lists the combinations `test_architectures.py` runs.
"""

from __future__ import annotations

import itertools
import pathlib

import keras
import numpy as np

from helpers import expected_shapes, expected_volume_shapes
import dataclasses

from msunet.config import ModelConfig, RunConfig, TrainConfig
from msunet.data.targets import batch_targets
from msunet.heads import parse_head
from msunet.training.losses import segmentation_loss
from msunet.models import DECODERS, ENCODERS, build_model, logits_model, output_names
from msunet.inference.keras_engine import make_predict_fn
from msunet.runtime.tiling import predict_tiled
from msunet.training.trainer import MultiScaleTrainer

SIZES = [(1, 1), (37, 101), (255, 257)]
VOLUME_SIZES = [(1, 1, 1), (7, 13, 11), (19, 33, 17)]  # odd in every axis: the ceil rounding at each scale


# One backbone per keras.applications family in `make test` (they share their code path: the
# family's feature pattern, scaling and padding); the other sizes run under `make test-slow`.
BACKBONES_IN_MAKE_TEST = ("convnext_tiny", "efficientnetv2b0", "mobilenetv3large", "resnet50v2")


def backbones() -> list[str]:
    """The registered encoders that load pretrained weights (keras.applications backbones)."""
    return [name for name in ENCODERS.names() if ENCODERS[name].pretrained]


def _flags(part) -> list[str]:
    """A part's boolean options: each gets a combination of its own with the option on."""
    return [f.name for f in dataclasses.fields(part.options) if f.type in ("bool", bool)]


def architectures(slow: bool = False) -> list[dict]:
    """Every built-in encoder x decoder, each boolean option of a part on once (the "unet" decoder's
    attention gates with every built-in encoder; an encoder's flags with the "unet" decoder), and
    every backbone encoder with the "unet" decoder (the decoders only see the pyramid; the built-in
    encoders test them all). A part registered in its package is covered with no test code.
    `slow`: the backbones not in BACKBONES_IN_MAKE_TEST instead."""
    if slow:
        return [dict(encoder=b, decoder="unet") for b in backbones() if b not in BACKBONES_IN_MAKE_TEST]
    combos = []
    built_in = [e for e in ENCODERS.names() if not ENCODERS[e].pretrained]
    for encoder, decoder in itertools.product(built_in, DECODERS.names()):
        combos.append(dict(encoder=encoder, decoder=decoder))
        combos += [dict(encoder=encoder, decoder=decoder, decoder_options={flag: True})
                   for flag in _flags(DECODERS[decoder])]
        if decoder == "unet":
            combos += [dict(encoder=encoder, decoder=decoder, encoder_options={flag: True})
                       for flag in _flags(ENCODERS[encoder])]
    combos += [dict(encoder=b, decoder="unet") for b in BACKBONES_IN_MAKE_TEST]
    return combos


def volume_architectures() -> list[dict]:
    """Every built-in encoder x decoder that builds volumes (`model.dims=3`), each boolean option of a part
    on once, and a model whose first downsampling pools in-plane only (`inplane_levels=1`, anisotropic
    volumes). The `keras.applications` backbones are image networks: 2-D only."""
    combos = []
    built_in = [e for e in ENCODERS.names() if 3 in ENCODERS[e].dims]
    for encoder, decoder in itertools.product(built_in, [d for d in DECODERS.names() if 3 in DECODERS[d].dims]):
        combos.append(dict(encoder=encoder, decoder=decoder, dims=3))
        combos += [dict(encoder=encoder, decoder=decoder, dims=3, decoder_options={flag: True})
                   for flag in _flags(DECODERS[decoder])]
        if decoder == "unet":
            combos += [dict(encoder=encoder, decoder=decoder, dims=3, encoder_options={flag: True})
                       for flag in _flags(ENCODERS[encoder])]
            combos.append(dict(encoder=encoder, decoder=decoder, dims=3, inplane_levels=1))
    return combos


def combo_id(combo: dict) -> str:
    flags = [k for key in ("encoder_options", "decoder_options") for k, v in combo.get(key, {}).items() if v]
    flags += [f"inplane{combo['inplane_levels']}"] if combo.get("inplane_levels") else []
    return (f"{combo['encoder']}-{combo['decoder']}" + "".join(f"-{flag}" for flag in flags)
            + ("-3d" if combo.get("dims") == 3 else ""))


def small_config(combo: dict, **overrides) -> ModelConfig:
    """Depth 3 (heads at 1, 2, 4 plus the fused head), a few filters, bilinear upsampling where
    the decoder needs factors > 2 (UNet 3+), float32."""
    base = dict(depth=3, filters=4, num_classes=2, fused_head=True, precision="float32", **combo)
    base.update(overrides)
    return ModelConfig(**base)


def _numpy(outputs) -> dict[str, np.ndarray]:
    return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}


def sample_batch(cfg: ModelConfig, size: int = 32, batch: int = 4, seed: int = 0):
    """Images whose foreground is a bright disc (volumes: a ball; learnable in a few steps), and per-head
    targets. Volumes are `size // 2` on a side (16^3 for the default)."""
    rng = np.random.default_rng(seed)
    if cfg.dims == 3:
        size = size // 2
    grid = np.mgrid[(slice(0, size),) * cfg.dims]
    images, masks = [], []
    for _ in range(batch):
        centre, r = rng.uniform(size / 4, size - size / 4, cfg.dims), rng.uniform(size / 8, size / 4)
        mask = (sum((g - c) ** 2 for g, c in zip(grid, centre)) < r**2).astype(np.int16)
        image = rng.normal(0, 0.3, (*mask.shape, cfg.in_channels)) + mask[..., None]
        images.append(image.astype(np.float32))
        masks.append(mask)
    return np.stack(images), batch_targets(masks, cfg, "average")


# --- Checks ------------------------------------------------------------------------------------------
def check_output_sizes(cfg: ModelConfig) -> keras.Model:
    """Every head at ceil(H/s) x ceil(W/s) (full size for mask and mask_fused), float32, finite."""
    model = build_model(cfg)
    assert output_names(model) == list(cfg.head_names)
    for size in SIZES if cfg.dims == 2 else VOLUME_SIZES:
        x = np.random.default_rng(size[0]).random((1, *size, cfg.in_channels), dtype=np.float32)
        out = _numpy(model(x, training=False))
        want = expected_shapes(cfg, *size) if cfg.dims == 2 else expected_volume_shapes(cfg, size)
        assert {k: v.shape for k, v in out.items()} == want, size
        for name, value in out.items():
            assert value.dtype == np.float32 and np.isfinite(value).all(), name
    for name in cfg.head_names:  # the logits layer of every head exists and is float32
        assert model.get_layer(parse_head(name).logits_name).compute_dtype == "float32"
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    return model


def check_save_reload(model: keras.Model, folder: pathlib.Path) -> pathlib.Path:
    """Saved and reloaded with plain `keras.saving.load_model` (no custom_objects, safe mode):
    identical outputs. Returns the file, for a reload in a fresh process."""
    size = (37, 29) if len(model.inputs[0].shape) == 4 else (9, 17, 13)
    x = np.random.default_rng(1).random((2, *size, model.inputs[0].shape[-1]), dtype=np.float32)
    path = folder / f"{model.name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    before, after = _numpy(model(x, training=False)), _numpy(loaded(x, training=False))
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    np.save(folder / f"{model.name}.x.npy", x)
    np.savez(folder / f"{model.name}.y.npz", **before)
    return path


def check_gradients(cfg: ModelConfig) -> None:
    """A loss over every head sends a non-zero gradient to every trainable weight."""
    import tensorflow as tf  # tests may use the backend; the harness runs under TensorFlow

    model = build_model(cfg)
    net = logits_model(model)
    x, y = sample_batch(cfg, size=24, batch=2)
    train_cfg = TrainConfig()
    with tf.GradientTape() as tape:
        logits = net(x, training=True)
        loss = sum(segmentation_loss(y[name], logits[name], train_cfg) for name in cfg.head_names)
    grads = tape.gradient(loss, net.trainable_variables)
    missing = [v.path for v, g in zip(net.trainable_variables, grads) if g is None]
    assert not missing, f"no gradient reaches {missing}"
    zero = [v.path for v, g in zip(net.trainable_variables, grads) if not np.any(np.asarray(g))]
    assert not zero, f"zero gradient at {zero}"


def check_mixed_precision(cfg: ModelConfig) -> None:
    """Under mixed bfloat16 the convolutions compute in bfloat16, the heads and outputs stay
    float32, sizes are exact, and a training step gives a finite loss."""
    bf16 = cfg.replace(precision="mixed_bfloat16")
    model = build_model(bf16)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    heads = {parse_head(name).logits_name for name in bf16.head_names}
    assert all(layer.compute_dtype == "bfloat16" for layer in convs if layer.name not in heads)
    assert all(model.get_layer(name).compute_dtype == "float32" for name in heads)
    x = np.random.default_rng(2).random((1, 37, 101, cfg.in_channels), dtype=np.float32)
    out = _numpy(model(x, training=False))
    assert {k: v.shape for k, v in out.items()} == expected_shapes(bf16, 37, 101)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())
    run = RunConfig(model=bf16, train=TrainConfig(ds_weights="halving"))
    trainer = MultiScaleTrainer(model, run)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)  # eager: no tracing cost
    xb, yb = sample_batch(bf16, size=24, batch=2)
    logs = trainer.train_on_batch(xb, yb, return_dict=True)
    assert np.isfinite(logs["loss"])


def check_fit_lowers_loss(cfg: ModelConfig, steps: int = 20) -> tuple[float, float]:
    """20 steps of msunet's trainer (every head weighted) on a fixed batch lower the loss by 20% or more."""
    model = build_model(cfg)
    run = RunConfig(model=cfg, train=TrainConfig(ds_weights="halving"))
    trainer = MultiScaleTrainer(model, run)
    # Eager steps: on a 32x32 batch they cost less than tracing the graph would (this is about
    # the model learning, not about tf.function).
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)
    x, y = sample_batch(cfg)
    # Training-mode losses (batch statistics): 20 steps are too few for BN's moving averages.
    losses = [float(trainer.train_on_batch(x, y, return_dict=True)["loss"]) for _ in range(steps)]
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses
    return losses[0], losses[-1]


def check_tiled_prediction(model: keras.Model, cfg: ModelConfig) -> None:
    """`predict_tiled` over a 300x200 image gives every head at its exact size, as probabilities."""
    image = np.random.default_rng(3).random((300, 200, cfg.in_channels), dtype=np.float32)
    names = output_names(model)
    scales = {name: parse_head(name).scale for name in names}
    probs = predict_tiled(make_predict_fn(model, names, batch_size=2), image, tile_size=64, overlap=0.25,
                          batch_size=2, scales=scales)
    assert {k: v.shape for k, v in probs.items()} == {k: v[1:] for k, v in expected_shapes(cfg, 300, 200).items()}
    for name, p in probs.items():
        assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1 + 1e-5, name
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)  # softmax heads: blended rows still sum to 1
