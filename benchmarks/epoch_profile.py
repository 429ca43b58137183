"""Where an epoch's time goes, against the planner's seconds per step.

`python benchmarks/epoch_profile.py DATASET [--set KEY=VALUE ...] [--epochs 3]` plans DATASET (one of
the accuracy benchmark's views: busi-subset, dsb2018-nuclei, drive, ...) as `msunet train` would, with
the device probe, then measures on the planned model, patch and batch:

- `probe`: the probe's own figure (`train_on_batch` on one fixed batch, median of 3 after tracing);
- `step_fixed`: `train_on_batch` over the epoch's real batches, precomputed (median);
- `fit_memory`: `fit` over the same precomputed batches, no validation, no callbacks (s per step);
- `fit_data`: `fit` from the real `PatchDataset` (worker threads sampling, augmenting, building the
  targets while the model trains), no validation: data wait = 1 - fit_memory / fit_data;
- `batch_cpu`: one batch made by `PatchDataset` on one thread (and without augmentation);
- `fit_full`: `fit` as `msunet.train` runs it (validation, CSV log, the run checkpoint, time budget),
  split into the training steps, validation and the epoch-end callbacks; its seconds per step over
  the epochs after the first is what the time model must predict.

Every `fit` runs `--epochs` epochs and the first (tracing) is left out. Writes
`benchmarks/results/epoch-profile/DATASET[-VARIANT].json` with the CPU and prints a table. Run it alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "accuracy"))
import run as accuracy  # noqa: E402  (benchmarks/accuracy/run.py: the dataset views)

RESULTS = HERE / "results" / "epoch-profile"


class Phases:
    """A Keras callback pair that times each epoch's training steps, validation and epoch-end callbacks."""

    def __init__(self):
        import keras

        phases = self
        self.epochs: list[dict] = []

        class First(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                phases.epochs.append({"begin": time.perf_counter()})

            def on_train_batch_end(self, batch, logs=None):
                phases.epochs[-1]["train_end"] = time.perf_counter()
                phases.epochs[-1]["steps"] = batch + 1

            def on_test_begin(self, logs=None):
                phases.epochs[-1]["val_begin"] = time.perf_counter()

            def on_test_end(self, logs=None):
                phases.epochs[-1]["val_end"] = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                phases.epochs[-1]["callbacks_begin"] = time.perf_counter()

        class Last(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                phases.epochs[-1]["end"] = time.perf_counter()

        self.first, self.last = First(), Last()

    def summary(self) -> dict:
        steady = self.epochs[1:] or self.epochs
        steps = sum(e["steps"] for e in steady)
        out = {"epochs_timed": len(steady), "steps": steps,
               "s_per_step": sum(e["end"] - e["begin"] for e in steady) / steps,
               "train_s_per_step": sum(e["train_end"] - e["begin"] for e in steady) / steps}
        if all("val_end" in e for e in steady):
            out["validation_s_per_epoch"] = statistics.median(e["val_end"] - e["val_begin"] for e in steady)
        out["epoch_end_s_per_epoch"] = statistics.median(e["end"] - e["callbacks_begin"] for e in steady)
        out["first_epoch_s"] = self.epochs[0]["end"] - self.epochs[0]["begin"]
        return out


def memory_dataset(batches):
    """Precomputed batches as a one-thread `PyDataset` (no data work while the model trains)."""
    import keras

    class Memory(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)

        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            return batches[i]

    return Memory()


def measure(dataset: str, overrides: list[str], epochs: int) -> dict:
    import keras

    import msunet
    from msunet import machine
    from msunet.data.feeding import FixedPatchDataset, PatchDataset
    from msunet.data.pairs import find_pairs, split_pairs
    from msunet.data.preprocessing import compute_normalization
    from msunet.data.samples import fixed_patches, load_samples
    from msunet.models import build_model
    from msunet.training import probe
    from msunet.training.callbacks import RunCheckpoint, TimeBudget
    from msunet.training.check import plan_dataset
    from msunet.training.trainer import MultiScaleTrainer, make_optimizer

    fold, labels = accuracy.protocol(dataset)[0]
    view = accuracy.make_view(dataset, labels, dataset + (f"-{fold}" if fold else ""))
    config, user = msunet.config.resolve_run_config(None, ["train.time_budget_min=20", *overrides])
    planned = plan_dataset(view, config, user)
    run = planned.config
    expected = planned.to_json_dict()["train.steps_per_epoch"].get("expected_s_per_step")
    cfg = run.train
    index = find_pairs(view, run.data)
    splits = split_pairs(index, run.data)
    train_samples = load_samples(splits["train"], run.data, run.model, [])
    val_samples = load_samples(splits["val"], run.data, run.model, [])
    norm = compute_normalization([s.image for s in train_samples], run.data.normalization)
    steps = cfg.steps_per_epoch

    def dataset_of(augment=True, workers=cfg.workers):
        return PatchDataset(train_samples, run.model, run.data, norm, cfg.batch_size, steps, seed=cfg.seed,
                            augment=augment, workers=workers)

    def timed_batches(data, n):
        times = []
        for i in range(n):
            start = time.perf_counter()
            data[i]
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    result = {"dataset": dataset, "date": datetime.date.today().isoformat(), "machine": machine.describe(),
              "overrides": overrides,
              "plan": {k: e["value"] for k, e in planned.sources.items() if e["source"] != "default"},
              "planned_s_per_step": expected,
              "probe_s_per_step": probe.measure_steps(run, [run.model.precision])[run.model.precision]}
    result["batch_cpu_s"] = timed_batches(dataset_of(), min(steps, 12))
    result["batch_cpu_noaug_s"] = timed_batches(dataset_of(augment=False), min(steps, 12))
    memory = [dataset_of()[i] for i in range(steps)]

    def trainer():
        keras.utils.set_random_seed(cfg.seed)
        t = MultiScaleTrainer(build_model(run.model), run)
        t.compile(optimizer=make_optimizer(run, epochs * steps), jit_compile=False)
        return t

    t = trainer()
    t.train_on_batch(*memory[0])
    times = []
    for x, y in memory:
        start = time.perf_counter()
        t.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    result["step_fixed_s"] = statistics.median(times)

    for name, data in (("fit_memory", memory_dataset(memory)), ("fit_data", dataset_of())):
        phases = Phases()
        trainer().fit(data, epochs=epochs, callbacks=[phases.first, phases.last], verbose=0)
        result[name] = phases.summary()
    result["data_wait"] = 1 - result["fit_memory"]["train_s_per_step"] / result["fit_data"]["train_s_per_step"]

    limit = cfg.val_batches * cfg.batch_size if cfg.val_batches else max(512, cfg.batch_size)
    images, masks = fixed_patches(val_samples, run.data.patch_size, limit=limit, seed=cfg.seed)
    val = FixedPatchDataset(images, masks, run.model, run.data, norm, cfg.batch_size)
    result["val_batches"] = len(val)
    with tempfile.TemporaryDirectory() as tmp:
        phases = Phases()
        t = trainer()
        model = t.net
        clock = TimeBudget(3600.0, 0.0, cfg.learning_rate, cfg.schedule, epochs * steps, 0)
        checkpoint = RunCheckpoint(pathlib.Path(tmp), build_model(run.model), "val_dice", None, 0, 0, clock)
        checkpoint.net = model
        t.fit(dataset_of(), validation_data=val, epochs=epochs, verbose=0,
              callbacks=[phases.first, keras.callbacks.TerminateOnNaN(), clock,
                         keras.callbacks.CSVLogger(f"{tmp}/history.csv"), checkpoint, phases.last])
        result["fit_full"] = phases.summary()
    full = result["fit_full"]["s_per_step"]
    result["achieved_over_planned"] = full / expected if expected else None
    result["achieved_over_probe"] = full / result["probe_s_per_step"]
    return result


def table(r: dict) -> str:
    full, data, mem = r["fit_full"], r["fit_data"], r["fit_memory"]
    steps_per_epoch = full["steps"] / full["epochs_timed"]
    rows = [
        ("planned (planner)", r["planned_s_per_step"]),
        ("probe (train_on_batch, one batch)", r["probe_s_per_step"]),
        ("train_on_batch, the epoch's batches", r["step_fixed_s"]),
        ("fit, batches in memory", mem["train_s_per_step"]),
        ("fit, PatchDataset (workers)", data["train_s_per_step"]),
        ("fit as msunet.train (validation, callbacks)", full["s_per_step"]),
        ("  of which validation, per step", full.get("validation_s_per_epoch", 0) / steps_per_epoch),
        ("  of which epoch-end callbacks, per step", full["epoch_end_s_per_epoch"] / steps_per_epoch),
        ("one batch made on one thread", r["batch_cpu_s"]),
        ("one batch, no augmentation", r["batch_cpu_noaug_s"]),
    ]
    machine = r["machine"]
    lines = [(f"{r['dataset']} ({machine['cpu']}, {machine['cores']} cores, {','.join(machine['flags'])}): "
              f"plan {r['plan']}"), "", "| what | s per step |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" if value is not None else f"| {name} | - |" for name, value in rows]
    lines.append(f"\ndata wait {r['data_wait']:.1%}; achieved / planned {r['achieved_over_planned'] or 0:.2f}x; "
                 f"achieved / probe {r['achieved_over_probe']:.2f}x; validation {r['val_batches']} batches")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variant", default="")
    args = parser.parse_args(argv)
    result = measure(args.dataset, args.set, args.epochs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.dataset}{'-' + args.variant if args.variant else ''}.json"
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(table(result))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
