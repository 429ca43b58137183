"""The training step: `MultiScaleTrainer` (every head its own target and weight), the optimizer and
its learning-rate schedules.

What `msunet.train` fits, and what the device probe (`msunet.training.probe`) times: both import it from
here, so the probe never imports the run-folder orchestration that plans with it.
"""

from __future__ import annotations

import math

import keras

from msunet.config import RunConfig
from msunet.heads import deep_supervision_weights, metric_name, parse_head
from msunet.models import logits_model, resolve_precision
from msunet.training.losses import segmentation_loss
from msunet.training.metrics import SegmentationScore


class MultiScaleTrainer(keras.Model):
    """Wraps a msunet model's logits view; each head gets its own target and weight.

    `compute_loss` sums `weight[head] * loss(y[head], logits[head])` over the heads with y a dict of
    per-head targets of each head's own size; this avoids the multi-output `compile()` routing
    (keras issues 21675, 22625). `compute_metrics` updates a Dice and an IoU per head.
    """

    def __init__(self, model: keras.Model, run: RunConfig, **kwargs):
        super().__init__(**kwargs)
        self.model_cfg, self.train_cfg = run.model, run.train
        self.net = logits_model(model)
        self.head_weights = deep_supervision_weights(run.model.head_names, run.train.ds_weights)
        for head, weight in self.head_weights.items():
            if weight == 0:  # e.g. the coarsest head under "nnunet" weights: say so instead of a gradient warning
                self.net.get_layer(parse_head(head).logits_name).trainable = False
        self.scores = [
            SegmentationScore(run.model.num_classes, kind, run.train.threshold,
                              include_background=run.train.include_background, name=metric_name(kind, head))
            for head in run.model.head_names
            for kind in ("dice", "iou")
        ]
        self._score_heads = [head for head in run.model.head_names for _ in ("dice", "iou")]

    def call(self, inputs, training=False):
        return self.net(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        total = 0.0
        for head, weight in self.head_weights.items():
            if weight > 0:
                total = total + weight * segmentation_loss(y[head], y_pred[head], self.train_cfg)
        for extra in self.losses:  # weight decay terms, if any layer has them
            total = total + extra
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for head, score in zip(self._score_heads, self.scores):
            score.update_state(y[head], y_pred[head])
        return self.get_metrics_result()


def make_optimizer(run: RunConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """The optimizer and learning-rate schedule of `run` over `total_steps` (a plain learning rate that
    `msunet.train`'s TimeBudget sets before every step when a time budget is set; loss scaling for
    mixed float16)."""
    cfg = run.train
    if cfg.time_budget_min > 0:
        lr = cfg.learning_rate  # a variable that TimeBudget sets before every step
    elif cfg.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=total_steps, alpha=0.01)
    elif cfg.schedule == "poly":
        lr = keras.optimizers.schedules.PolynomialDecay(cfg.learning_rate, total_steps, end_learning_rate=0.0, power=0.9)
    else:
        lr = cfg.learning_rate
    ema = {"use_ema": True, "ema_momentum": cfg.ema} if cfg.ema > 0 else {}  # swapped in by AveragedWeights
    if cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, **ema)
    elif cfg.optimizer == "adam":
        optimizer = keras.optimizers.Adam(lr, **ema)
    else:
        optimizer = keras.optimizers.SGD(lr, momentum=0.99, nesterov=True, **ema)
    if resolve_precision(run.model.precision) == "mixed_float16":  # float16 gradients underflow without it
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def jit_compile(run: RunConfig) -> bool:
    """Keras' `jit_compile` for `run.train.compiler`: XLA only where asked for or chosen by the device
    probe, on TensorFlow ("auto" unmeasured is the graph); other backends keep the graph / eager step
    msunet has always used there."""
    return keras.backend.backend() == "tensorflow" and run.train.compiler == "xla"


def schedule_factor(schedule: str, progress: float) -> float:
    """Learning-rate multiplier at `progress` in [0, 1] (the same curves as `make_optimizer`'s schedules)."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.99 * 0.5 * (1.0 + math.cos(math.pi * p)) + 0.01
    if schedule == "poly":
        return (1.0 - p) ** 0.9
    return 1.0


class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`factor` times another learning-rate schedule (not saved: the trainer's optimizer is rebuilt on resume)."""

    def __init__(self, schedule, factor: float):
        self.schedule, self.factor = schedule, factor

    def __call__(self, step):
        return self.schedule(step) * self.factor
