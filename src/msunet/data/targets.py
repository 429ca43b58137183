"""Multi-scale targets: one-hot masks with a validity channel, downsampled per head by a rule (average,
nearest, max)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from msunet.config import ModelConfig
from msunet.data.pairs import IGNORE
from msunet.heads import head_scale


# --------------------------------------------------------------------------------------------------
# Multi-scale targets
# --------------------------------------------------------------------------------------------------
def one_hot_target(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W, K + 1) (or (D, H, W, K + 1) for a volume): class probabilities (K = 1 foreground channel
    for binary) and a validity channel."""
    valid = mask != IGNORE
    if num_classes == 1:
        probs = (mask == 1)[..., None]
    else:
        probs = mask[..., None] == np.arange(num_classes, dtype=mask.dtype)
    return np.concatenate([probs & valid[..., None], valid[..., None]], axis=-1).astype(np.float32)


def downsample_target(target: np.ndarray, scale, rule: str = "average") -> np.ndarray:
    """Target of the head at `scale`: ceil(H/s) x ceil(W/s), aligned with the model's heads.

    `scale` is an int or one factor per spatial axis (a volume's head at (1, 2, 2) keeps its slices).
    Coarse pixel (i, j) covers fine pixels [s*i, s*i+s) x [s*j, s*j+s) (the model's ceil-rounded
    downsampling); blocks at the border are averaged over the pixels that exist.

    Rules:
        "average": class fractions over the valid pixels of the block (soft targets); a thin
            vessel keeps its mass at every scale. The validity channel is the valid fraction.
        "nearest": the block's top-left pixel.
        "max": a class is present if any valid pixel of the block has it (renormalised to sum 1).
    """
    spatial, channels = target.shape[:-1], target.shape[-1]
    factor = (scale,) * len(spatial) if isinstance(scale, (int, np.integer)) else tuple(scale)
    if all(f == 1 for f in factor):
        return target
    if rule == "nearest":
        return np.ascontiguousarray(target[tuple(slice(None, None, f) for f in factor)])
    out = [-(-n // f) for n, f in zip(spatial, factor)]
    inner = tuple(slice(0, n) for n in spatial)
    padded = np.zeros((*(o * f for o, f in zip(out, factor)), channels), np.float32)
    padded[inner] = target
    split = [v for o, f in zip(out, factor) for v in (o, f)]  # (o1, f1, o2, f2, ...): blocks on the odd axes
    blocks = padded.reshape(*split, channels)
    block_axes = tuple(range(1, 2 * len(spatial), 2))
    valid = blocks[..., -1]
    probs = blocks[..., :-1]
    valid_count = valid.sum(axis=block_axes)
    if rule == "average":
        result = probs.sum(axis=block_axes) / np.maximum(valid_count, 1.0)[..., None]
    elif rule == "max":
        result = probs.max(axis=block_axes)
        if channels - 1 > 1:
            result = result / np.maximum(result.sum(-1, keepdims=True), 1.0)
    else:
        raise ValueError(f"downsample_target: unknown rule {rule!r}; valid: 'average', 'nearest', 'max'.")
    # Validity: the fraction of the block's real (inside-image) pixels that are not ignored.
    inside = np.zeros(padded.shape[:-1], np.float32)
    inside[inner] = 1.0
    inside_count = inside.reshape(split).sum(axis=block_axes)
    valid_frac = valid_count / np.maximum(inside_count, 1.0)
    return np.concatenate([result, valid_frac[..., None]], axis=-1).astype(np.float32)


def multiscale_targets(
    mask: np.ndarray, model_cfg: ModelConfig, rule: str = "average"
) -> dict[str, np.ndarray]:
    """Targets for every head of `model_cfg`, each of its own size: name -> (h, w, K + 1) ((d, h, w, K + 1))."""
    full = one_hot_target(mask, model_cfg.num_classes)
    targets = {}
    for name in model_cfg.head_names:
        targets[name] = downsample_target(full, model_cfg.scale_factor(head_scale(name)), rule)
    return targets


def foreground_survival(mask: np.ndarray, scale: int, rule: str) -> dict[str, float]:
    """How a binary mask's foreground fares at `scale` under `rule` (for choosing the rule).

    Returns:
        survival: share of foreground pixels whose coarse cell still carries foreground (> 0);
        mass_ratio: foreground mass at the coarse scale (soft values spread over their blocks) / fine count.
    """
    target = one_hot_target((mask > 0).astype(np.int16), 1)
    coarse = downsample_target(target, scale, rule)[..., 0]
    fine_fg = mask > 0
    if not fine_fg.any():
        return {"survival": 1.0, "mass_ratio": 1.0}
    cell = coarse.repeat(scale, 0).repeat(scale, 1)[: mask.shape[0], : mask.shape[1]]
    survival = float((cell[fine_fg] > 0).mean())
    mass = float(cell.sum()) / float(fine_fg.sum())  # each coarse value spread over its block's real pixels
    return {"survival": survival, "mass_ratio": mass}


def batch_targets(masks: Sequence[np.ndarray], model_cfg: ModelConfig, rule: str) -> dict[str, np.ndarray]:
    per_head: dict[str, list[np.ndarray]] = {name: [] for name in model_cfg.head_names}
    for mask in masks:
        for name, target in multiscale_targets(mask, model_cfg, rule).items():
            per_head[name].append(target)
    return {name: np.stack(values) for name, values in per_head.items()}
