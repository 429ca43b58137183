"""The output contract, keras-free: which heads a model has and how their names are written.

Every msunet model, whatever its encoder and decoder, has one input `"image"` and one output per
head, each also exposed as a float32 `{name}_logits` layer before the activation:

| head          | kind    | scale | size for an H x W input  | file suffix (predict) | metric suffix |
|---------------|---------|-------|--------------------------|-----------------------|---------------|
| `mask`        | "scale" | 1     | H x W                    | (none)                | (none)        |
| `mask_s{s}`   | "scale" | s     | ceil(H/s) x ceil(W/s)    | `_s{s}`               | `_s{s}`       |
| `mask_fused`  | "fused" | 1     | H x W                    | `_fused`              | `_fused`      |

This module is the only place that writes or parses these names (tiling, training targets,
losses, metrics, prediction files and evaluation all go through it). It never imports keras.

Example:
```python
heads = contract_heads(scales=(1, 2, 4), fused=True)
[h.name for h in heads]          # ['mask', 'mask_s2', 'mask_s4', 'mask_fused']
parse_head("mask_s4").scale       # 4
parse_head("mask_s4").suffix      # '_s4'
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

PREFIX = "mask"
FUSED = "mask_fused"
KINDS = ("scale", "fused")


@dataclasses.dataclass(frozen=True, order=True)
class Head:
    """One output of a msunet model.

    Args:
        name: output name ("mask", "mask_s2", ..., "mask_fused").
        scale: downsampling factor of the output against the input (1 for "mask" and the fused head).
        kind: "scale" (a head on the decoder features of its scale) or "fused" (all scales fused at
            full resolution).
    """

    name: str
    scale: int
    kind: str = "scale"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Head.kind={self.kind!r} is not valid; valid: {', '.join(KINDS)}.")
        if not isinstance(self.scale, int) or self.scale < 1 or self.scale & (self.scale - 1):
            raise ValueError(f"Head.scale={self.scale!r} must be a power of two >= 1.")

    @property
    def suffix(self) -> str:
        """What follows the image stem in file names and the metric kind in metric names."""
        return self.name[len(PREFIX):]

    @property
    def logits_name(self) -> str:
        """Name of the float32 logits layer of this head."""
        return f"{self.name}_logits"

    def metric(self, kind: str) -> str:
        """Metric name of this head: "dice" for "mask", "dice_s2" for "mask_s2", "dice_fused"."""
        return f"{kind}{self.suffix}"

    @property
    def sort_key(self) -> tuple[int, int]:
        """Canonical order: scale heads finest first, then the fused head."""
        return (1 if self.kind == "fused" else 0, self.scale)


def head_name(scale: int) -> str:
    """Output name of the scale head at downsampling factor `scale` ("mask", "mask_s2", ...)."""
    return PREFIX if scale == 1 else f"{PREFIX}_s{scale}"


def parse_head(name: str) -> Head:
    """The `Head` an output name stands for; raises ValueError for a name outside the contract."""
    if name == PREFIX:
        return Head(PREFIX, 1)
    if name == FUSED:
        return Head(FUSED, 1, "fused")
    digits = name[len(PREFIX) + 2:] if name.startswith(f"{PREFIX}_s") else ""
    if digits.isdigit() and int(digits) > 1 and head_name(int(digits)) == name:
        try:
            return Head(name, int(digits))
        except ValueError:
            pass
    raise ValueError(
        f"{name!r} is not a msunet head name; valid: 'mask', 'mask_s2', 'mask_s4', ... (powers of two), 'mask_fused'."
    )


def is_head_name(name: str) -> bool:
    try:
        parse_head(name)
    except ValueError:
        return False
    return True


def head_scale(name: str) -> int:
    """Downsampling factor of an output name: "mask_s4" -> 4; "mask" and "mask_fused" -> 1."""
    return parse_head(name).scale


def contract_heads(scales: Iterable[int], fused: bool = False) -> tuple[Head, ...]:
    """The heads of a model with scale heads at `scales` and, if `fused`, the fused head."""
    heads = [Head(head_name(s), s) for s in sorted(set(scales))]
    if fused:
        heads.append(Head(FUSED, 1, "fused"))
    return tuple(heads)


def sort_names(names: Iterable[str]) -> list[str]:
    """Head names in canonical order ("mask", "mask_s2", ..., "mask_fused")."""
    return [h.name for h in sorted((parse_head(n) for n in names), key=lambda h: h.sort_key)]


def file_suffix(name: str) -> str:
    """Suffix after the image stem of the file predict writes for head `name` ("", "_s2", "_fused")."""
    return parse_head(name).suffix


def head_from_suffix(suffix: str) -> Head | None:
    """The head whose files end in `suffix` ("" -> mask, "_s2" -> mask_s2), or None if none does."""
    name = PREFIX + suffix
    return parse_head(name) if is_head_name(name) else None


def metric_name(kind: str, head: str) -> str:
    """"dice" for "mask", "dice_s2" for "mask_s2", "dice_fused" for "mask_fused"."""
    return parse_head(head).metric(kind)


def deep_supervision_weights(head_names: Sequence[str], scheme) -> dict[str, float]:
    """Normalised loss weight of each head.

    Scale heads ("mask", "mask_s2", ... finest first) get, by `scheme`:
    - "nnunet": 1/2^i, the coarsest set to 0 (nnU-Net), normalised to sum 1;
    - "halving": 1/2^i for every head, normalised;
    - "equal": the same weight each;
    - a list: one weight per scale head, finest first, normalised.
    "mask_fused" gets the weight of "mask".
    """
    scales = [n for n in head_names if parse_head(n).kind == "scale"]
    count = len(scales)
    if isinstance(scheme, str):
        if scheme == "equal":
            raw = [1.0] * count
        else:
            raw = [1.0 / 2**i for i in range(count)]
            if scheme == "nnunet" and count > 1:
                raw[-1] = 0.0
    else:
        if len(scheme) != count:
            raise ValueError(
                f"train.ds_weights lists {len(scheme)} weights but the model has {count} scale heads "
                f"({', '.join(scales)}); give one weight per head, finest first."
            )
        raw = [float(w) for w in scheme]
    weights = dict(zip(scales, raw))
    for name in head_names:
        if parse_head(name).kind == "fused":
            weights[name] = weights[head_name(1)]
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}
