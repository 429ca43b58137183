"""The planner's time model: seconds per training step as `msunet.train` runs it, from the device probe's
`train_on_batch` step (`msunet.training.probe`). Keras-free, like the planner that uses it."""

from __future__ import annotations

# The time model: what a step of `fit` costs against the probe's `train_on_batch` step (`benchmarks/epoch_profile.py`,
# 2-core AVX2 EPYC, 2026-12-06: busi-subset / DSB / DRIVE plans): the data threads' CPU share (3-7% of a step) and
# Keras' loop make a step of fit 1.12 / 1.21 / 1.12x; a validation batch (forward only) costs 0.25 / 0.20 / 0.20 of a
# training step; an epoch end (CSV row, last.keras, best.keras, the resume state) 0.6 / 0.7 / 0.8 s.
FIT_STEP_FACTOR = 1.15
VAL_STEP_SHARE = 0.25
EPOCH_END_S = 0.7


def expected_step_seconds(step: float, steps_per_epoch: int, val_batches: int) -> float:
    """Seconds per training step as `msunet.train` runs it, from the probe's `train_on_batch` step: a step of fit
    (`FIT_STEP_FACTOR`), plus each epoch's validation batches and epoch end spread over its steps."""
    per_epoch = val_batches * VAL_STEP_SHARE * step + EPOCH_END_S
    return step * FIT_STEP_FACTOR + per_epoch / max(steps_per_epoch, 1)
