"""Models composed of parts: encoder -> decoder -> heads, and views of a built model.

`build_model(cfg)` looks up `cfg.encoder` in `ENCODERS` and `cfg.decoder` in `DECODERS` and joins
them with the heads of `msunet.models.heads`:

    image --encoder--> pyramid {1: f1, 2: f2, ..., 2**depth: f_bottleneck}
          --decoder--> features {1, 2, ..., 2**(depth-1)}
          --heads----> outputs {"mask", "mask_s2", ..., "mask_fused"}

The output contract (what any registered architecture must expose; names from `msunet.heads`):

- one input named `"image"`, channels-last `(H, W, in_channels)`, any H and W >= 1 unless
  `input_size` fixes them;
- a dict of outputs, one per `cfg.heads`: `"mask"` at H x W, `"mask_s{s}"` at exactly
  ceil(H/s) x ceil(W/s) for each deep-supervision scale s, `"mask_fused"` at H x W when enabled;
  each with `num_classes` channels, float32, after the output activation;
- a float32 layer `"{name}_logits"` feeding each output's activation (training reads logits);
- only registered serializable layers (no `Lambda`), so `keras.saving.load_model` reloads the
  model in any process that has imported msunet.

An encoder returns the pyramid at scales 1..2**depth, each of ceil(H/s) x ceil(W/s) pixels; a
decoder returns features at scales 1..2**(depth-1) of the same sizes. `tests/models/harness.py`
checks every registered encoder x decoder against this contract.

Importing this package imports no keras: the part files (`encoders/`, `decoders/`) declare their
options for configs to validate, and the names below load `msunet.models.build` (keras) on first use.
"""

from __future__ import annotations

import importlib

# name -> module: loaded on first use, so that configs can read the parts' declarations without keras.
_LAZY = {
    "BilinearUpsampling2D": "msunet.models.build",
    "CropToMatch": "msunet.models.build",
    "DECODERS": "msunet.models.build",
    "ENCODERS": "msunet.models.build",
    "SEED_EXAMPLES": "msunet.models.build",
    "accelerators": "msunet.models.build",
    "apply_heads": "msunet.models.build",
    "build_model": "msunet.models.build",
    "cpu_has_bf16": "msunet.models.build",
    "describe_parts": "msunet.models.build",
    "get_decoder": "msunet.models.build",
    "get_encoder": "msunet.models.build",
    "gpu_compute_capability": "msunet.models.build",
    "load_model": "msunet.models.build",
    "logits_model": "msunet.models.build",
    "mixed_precision_for_gpu": "msunet.models.build",
    "output_names": "msunet.models.build",
    "output_shapes": "msunet.models.build",
    "parse_size": "msunet.models.build",
    "precision_scope": "msunet.models.build",
    "registered_parts": "msunet.models.build",
    "resolve_precision": "msunet.models.build",
    "seed_example": "msunet.models.build",
    "select_outputs": "msunet.models.build",
    "summarize": "msunet.models.build",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'msunet.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
