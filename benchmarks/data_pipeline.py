"""Does the data pipeline keep the model busy? Fraction of training step time spent waiting for data.

A/B in one process, alternating: the same model (depth 4, 32 filters, deep supervision) trains on
DRIVE at 256x256, batch 8, (A) from `PatchDataset` (patch sampling, augmentation and multi-scale
targets computed by worker threads while the model trains), and (B) from the same batches already in
memory. Data wait = 1 - median step time (B) / median step time (A). Also reports steps/s.
Run: `.venv/bin/python benchmarks/data_pipeline.py [--steps 12] [--rounds 2] [--workers 2]`
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import time

import keras

from msunet.config import RunConfig
from msunet.data.preprocessing import compute_normalization
from msunet.data.pairs import find_pairs, split_pairs
from msunet.data.samples import load_samples
from msunet.data.feeding import PatchDataset
from msunet.models import build_model
from msunet.training.trainer import MultiScaleTrainer, make_optimizer

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


class InMemory(keras.utils.PyDataset):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


class StepTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.times, self.last = [], time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def measure_data_wait(run: RunConfig, samples, steps: int, rounds: int) -> dict:
    """Median fit step from PatchDataset (workers threads) vs from the same batches in memory."""
    cfg = run.train
    norm = compute_normalization([s.image for s in samples], run.data.normalization)
    live = PatchDataset(samples, run.model, run.data, norm, cfg.batch_size, steps, workers=cfg.workers)
    memory = InMemory([live[i] for i in range(steps)])
    trainer = MultiScaleTrainer(build_model(run.model), run)
    trainer.compile(optimizer=make_optimizer(run, 10_000))
    timer = StepTimer()
    trainer.fit(memory, epochs=1, verbose=0, callbacks=[timer])  # warm-up: tracing
    times = {"pipeline": [], "in_memory": []}
    for _ in range(rounds):
        for name, data in (("pipeline", live), ("in_memory", memory)):
            trainer.fit(data, epochs=1, verbose=0, callbacks=[timer])
            times[name].extend(timer.times[1:])  # the first step of an epoch includes queue start-up
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "median_step_s": med,
        "min_max_step_s": {k: [min(v), max(v)] for k, v in times.items()},
        "steps_per_s": 1 / med["pipeline"],
        "images_per_s": cfg.batch_size / med["pipeline"],
        "data_wait_fraction": max(0.0, 1 - med["in_memory"] / med["pipeline"]),
        "producer_seconds_per_batch": _producer_time(live),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    run = RunConfig().override(["data.patch_size=256", "train.batch_size=8", f"train.workers={args.workers}"])
    index = find_pairs(SHARED / "drive", run.data)
    samples = load_samples(split_pairs(index, run.data)["train"], run.data, run.model, [])
    result = {
        "date": datetime.date.today().isoformat(),
        "backend": keras.backend.backend(),
        "setup": "DRIVE, depth 4, 32 filters, 4 heads, patch 256, batch 8, workers %d" % args.workers,
        **measure_data_wait(run, samples, args.steps, args.rounds),
    }
    out = pathlib.Path(__file__).parent / "results" / f"data-pipeline-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _producer_time(dataset, n=5):
    start = time.perf_counter()
    for i in range(n):
        dataset[i]
    return (time.perf_counter() - start) / n


if __name__ == "__main__":
    main()
