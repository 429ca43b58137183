"""Dice and IoU from confusion counts: the one formula that training's metrics and evaluation share.

NumPy only. `overlap_from_counts(tp, fp, fn)` works on scalars or per-class arrays; where a class is
absent from both prediction and truth (tp + fp + fn = 0) it returns `empty`: NaN for training's
epoch metrics (the class is left out of the mean), 1.0 under evaluation's stated convention.

Example:
```python
overlap_from_counts(8, 2, 2)                 # Dice 16 / 20 = 0.8
overlap_from_counts(8, 2, 2, kind="iou")     # IoU 8 / 12
```
"""

from __future__ import annotations

import numpy as np

KINDS = ("dice", "iou")


def overlap_from_counts(tp, fp, fn, kind: str = "dice", empty: float = float("nan")):
    """Dice (2tp / (2tp + fp + fn)) or IoU (tp / (tp + fp + fn)); `empty` where tp + fp + fn = 0.

    Returns a float for scalar counts, a float64 array for arrays.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, received {kind!r}.")
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    numer = 2 * tp if kind == "dice" else tp
    denom = numer + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(denom > 0, numer / np.maximum(denom, 1e-300), empty)
    return float(value) if value.ndim == 0 else value
