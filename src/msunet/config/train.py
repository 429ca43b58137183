"""The train section: loss, deep supervision, optimiser, schedule, budget (`TrainConfig`)."""

from __future__ import annotations

import dataclasses

from msunet.config.base import BaseConfig, ConfigError, check_choice, check_float, check_int

# --------------------------------------------------------------------------------------------------
LOSSES = ("dice_ce", "dice", "ce", "focal", "tversky", "dice_focal")
DS_WEIGHTINGS = ("nnunet", "halving", "equal")
OPTIMIZERS = ("adam", "adamw", "sgd")
DISTRIBUTIONS = ("none", "data_parallel")
SCHEDULES = ("cosine", "poly", "constant")
COMPILERS = ("auto", "graph", "xla")


@dataclasses.dataclass(frozen=True)
class TrainConfig(BaseConfig):
    """Optimisation options.

    Args:
        epochs, steps_per_epoch, batch_size: an epoch is `steps_per_epoch` batches of random patches.
        val_batches: validation batches of fixed patches per epoch (0: validate on all of them).
        loss: "dice_ce" (default), "dice", "ce", "focal", "tversky" or "dice_focal".
        dice_smooth: smoothing of the soft Dice.
        include_background: count the background class in the multi-class Dice.
        class_weights: per-class weights of the Dice/CE terms (None: equal).
        tversky_alpha, tversky_beta: false-positive / false-negative weights of the Tversky loss.
        focal_gamma: focusing parameter of the focal loss.
        ds_weights: weights of the heads, finest first: "halving" (default: 1/2^i normalised, every
            head trained), "nnunet" (the same with the coarsest at 0: that head is then not
            written by predict), "equal", or an explicit list.
        optimizer, learning_rate, weight_decay, schedule: optimiser and learning-rate schedule
            ("cosine" decay, "poly" (nnU-Net's 0.9 power) or "constant").
        ema: momentum of an exponential moving average of the weights (Polyak averaging), e.g. 0.99
            (0: off, the default). Validation, best.keras, last.keras and exports then hold the
            averaged weights; training steps on the raw ones.
        early_stopping: stop after this many epochs without a better validation Dice (0: never).
        threshold: probability threshold of binary metrics.
        seed: seed of weights initialisation and sampling.
        workers: data-loading threads feeding `fit` (keras.utils.PyDataset workers).
        compiler: how TensorFlow runs the training step: "graph" (a `tf.function`), "xla" (compiled
            with XLA: `jit_compile=True`) or "auto" (default: the device probe times both and keeps
            the faster, which depends on the CPU: XLA took 0.76-0.87x the graph's time on a 2-core
            AVX2 EPYC; without a measurement, "graph"). Other backends keep Keras' own compilation.
        time_budget_min: wall-clock budget of the training in minutes (0: none), counted from the
            call of `train` (planning, the device probe, loading the data and building the model
            included). Training stops when it is spent (the epoch in progress is cut short, validated and saved) and the
            learning-rate schedule runs on the share of the budget used, so it anneals on time;
            `epochs` x `steps_per_epoch` stays an upper bound. A resumed run counts the time
            already spent.
        distribution: "none" (one device) or "data_parallel": `keras.distribution.DataParallel`
            over every device (and every host started with `keras.distribution.initialize`'s
            environment variables); `batch_size` is then per device, the global batch
            `batch_size` x devices. JAX backend (`msunet.distributed.training`).
    """

    epochs: int = 50
    steps_per_epoch: int = 100
    batch_size: int = 8
    val_batches: int = 0
    loss: str = "dice_ce"
    dice_smooth: float = 1.0
    include_background: bool = False
    class_weights: tuple[float, ...] | None = None
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    focal_gamma: float = 2.0
    ds_weights: str | tuple[float, ...] = "halving"
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    ema: float = 0.0
    early_stopping: int = 0
    threshold: float = 0.5
    seed: int = 0
    workers: int = 2
    compiler: str = "auto"
    time_budget_min: float = 0.0
    distribution: str = "none"

    def validate(self) -> None:
        owner = type(self).__name__
        check_int(owner, "epochs", self.epochs, 1)
        check_int(owner, "steps_per_epoch", self.steps_per_epoch, 1)
        check_int(owner, "batch_size", self.batch_size, 1, 4096)
        check_int(owner, "val_batches", self.val_batches, 0)
        check_choice(owner, "loss", self.loss, LOSSES)
        check_float(owner, "dice_smooth", self.dice_smooth, 0.0)
        if not isinstance(self.include_background, bool):
            raise ConfigError(f"{owner}.include_background={self.include_background!r} must be true or false.")
        if self.class_weights is not None:
            for i, w in enumerate(self.class_weights):
                check_float(owner, f"class_weights[{i}]", w, 0.0)
        check_float(owner, "tversky_alpha", self.tversky_alpha, 0.0, 1.0)
        check_float(owner, "tversky_beta", self.tversky_beta, 0.0, 1.0)
        check_float(owner, "focal_gamma", self.focal_gamma, 0.0, 10.0)
        if isinstance(self.ds_weights, str):
            check_choice(owner, "ds_weights", self.ds_weights, DS_WEIGHTINGS)
        else:
            if not self.ds_weights:
                raise ConfigError(f"{owner}.ds_weights=[] must name a scheme or list one weight per head.")
            for i, w in enumerate(self.ds_weights):
                check_float(owner, f"ds_weights[{i}]", w, 0.0)
            if sum(self.ds_weights) <= 0:
                raise ConfigError(f"{owner}.ds_weights={list(self.ds_weights)!r} must have a positive sum.")
        check_choice(owner, "optimizer", self.optimizer, OPTIMIZERS)
        check_float(owner, "learning_rate", self.learning_rate, 0.0, 10.0)
        if self.learning_rate <= 0:
            raise ConfigError(f"{owner}.learning_rate={self.learning_rate!r} must be > 0.")
        check_float(owner, "weight_decay", self.weight_decay, 0.0, 1.0)
        check_choice(owner, "schedule", self.schedule, SCHEDULES)
        check_float(owner, "ema", self.ema, 0.0, 1.0, hi_open=True)
        check_int(owner, "early_stopping", self.early_stopping, 0)
        check_float(owner, "threshold", self.threshold, 0.0, 1.0)
        check_int(owner, "seed", self.seed, 0)
        check_int(owner, "workers", self.workers, 0, 64)
        check_choice(owner, "compiler", self.compiler, COMPILERS)
        check_float(owner, "time_budget_min", self.time_budget_min, 0.0, 100_000.0)
        check_choice(owner, "distribution", self.distribution, DISTRIBUTIONS)


# --------------------------------------------------------------------------------------------------
# A run: model + data + train, saved as RUN/config.json
