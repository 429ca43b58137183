"""Time to accuracy: what a new user gets per CPU-minute, as a curve.

`python benchmarks/time_to_accuracy.py DATASET [--budget 20] [--points 2,5,10,20] [--variant NAME]
[--set KEY=VALUE ...]` trains with the defaults (only `train.time_budget_min`, and any `--set`: a
lever under test) on one of the accuracy benchmark's datasets (`benchmarks/accuracy/run.py`:
busi-subset, dsb2018-nuclei, drive, ...), keeps the model at the first epoch end after each point
of wall-clock time *from the call* (the check and the device probe count), and scores every kept
model on the dataset's test protocol afterwards (scoring is not timed). Writes
`benchmarks/results/time-to-accuracy/DATASET[-VARIANT].json` with the CPU it ran on, the plan, the
seconds per step the planner expected and the ones achieved (validation and epoch ends included),
and the curve; `--plot` draws every result file of the dataset into one PNG.

Run it alone on the machine: the curve is wall-clock time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shutil
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "accuracy"))
import run as accuracy  # noqa: E402  (benchmarks/accuracy/run.py: views, protocols, scoring)

RESULTS = HERE / "results" / "time-to-accuracy"


def snapshot_callback(run_dir: pathlib.Path, start: float, points_s: list[float]):
    """A Keras callback that copies RUN/last.keras (written at every epoch end) to
    RUN/snapshots/tNNNN.keras at the first epoch end after each point (seconds from `start`)."""
    import keras

    class Snapshots(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.pending, self.taken = sorted(points_s), []
            self.train_begin_s, self.epoch_ends_s = None, []  # from the call: where the time goes

        def on_train_begin(self, logs=None):
            self.train_begin_s = time.perf_counter() - start

        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.perf_counter() - start
            self.epoch_ends_s.append(elapsed)
            while self.pending and elapsed >= self.pending[0]:
                point = self.pending.pop(0)
                target = run_dir / "snapshots" / f"t{int(point):05d}.keras"
                target.parent.mkdir(exist_ok=True)
                shutil.copy2(run_dir / "last.keras", target)
                self.taken.append({"point_s": point, "at_s": elapsed, "epoch": epoch + 1, "file": str(target)})

    return Snapshots()


def measure(dataset: str, budget_min: float, points_min: list[float], overrides: list[str], work: pathlib.Path,
            quiet: bool) -> dict:
    import msunet
    from msunet import machine
    from msunet.inference.engines import predict
    from msunet.models import load_model
    from msunet.training.run_folder import LoadedRun, load_run

    accuracy.WORK = work
    fold, labels = accuracy.protocol(dataset)[0]
    name = dataset + (f"-{fold}" if fold else "")
    view = accuracy.make_view(dataset, labels, name)
    run_dir = work / name / "run"
    protocol_cfg = msunet.RunConfig.from_json(HERE / "accuracy" / "configs" / f"{dataset}.json")
    start = time.perf_counter()
    snapshots = snapshot_callback(run_dir, start, [60.0 * p for p in points_min])
    all_overrides = [f"train.time_budget_min={budget_min}", *overrides]
    result = msunet.train(None, view, run_dir, overrides=all_overrides, overwrite=True, verbose=0 if quiet else 2,
                          callbacks=[snapshots])
    wall_s = time.perf_counter() - start
    info = json.loads((run_dir / "run.json").read_text())
    state = json.loads((run_dir / "state" / "state.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    sources = config.get("sources", {})
    planned_step = sources.get("train.steps_per_epoch", {}).get("expected_s_per_step")
    steps = int(state.get("steps_done") or 0)
    spent = float(info.get("time_spent_s") or wall_s)
    loaded = load_run(run_dir)
    test = sorted(s for s, split in labels.items() if split == "test")
    inputs = accuracy.link_inputs(view, test, work / name / "inputs")
    binary = loaded.config.model.num_classes == 1
    curve = []
    models = [*snapshots.taken, {"point_s": None, "at_s": wall_s, "epoch": result.epochs_done,
                                 "file": str(run_dir / "best.keras"), "best": True}]
    for entry in models:
        model = load_model(entry["file"])
        snap = LoadedRun(model, loaded.config, loaded.normalization, run_dir)
        tag = pathlib.Path(entry["file"]).stem
        pred_dir = work / name / f"pred-{tag}"
        predict(snap, inputs, pred_dir, probabilities=binary, overlay_images=False, overwrite=True)
        scores = accuracy.score(dataset, view, pred_dir, work / name / f"eval-{tag}", test,
                                protocol_cfg.model.num_classes, protocol_cfg.data,
                                protocol_cfg.train.include_background)
        curve.append({**entry, "scores": scores})
        if not quiet:
            print(f"{tag}: {json.dumps({k: v for k, v in scores.items() if isinstance(v, float)})}", flush=True)
    return {
        "dataset": dataset, "date": datetime.date.today().isoformat(), "machine": machine.describe(),
        "budget_min": budget_min, "points_min": points_min, "overrides": overrides, "wall_s": wall_s,
        "training_s": spent, "steps_done": steps, "epochs_done": result.epochs_done,
        "achieved_s_per_step": spent / steps if steps else None,  # from the call: check, probe, loading included
        "before_training_s": snapshots.train_begin_s,  # the call until fit starts: check, probe, loading
        "epoch_ends_s": snapshots.epoch_ends_s,
        "steady_s_per_step": _steady(snapshots.epoch_ends_s, config),
        "planned_s_per_step": planned_step, "plan": {k: v.get("value") for k, v in sources.items()
                                                     if v.get("source") in ("data", "device")},
        "best_val_dice": result.best_dice, "test_images": len(test), "curve": curve,
    }


def _steady(epoch_ends_s: list[float], config: dict) -> float | None:
    """Seconds per step between the first epoch's end (tracing done) and the last full epoch's (the
    budget may cut the last one short), validation and epoch ends included."""
    steps = (config.get("train") or {}).get("steps_per_epoch")
    if len(epoch_ends_s) < 3 or not steps:
        return None
    return (epoch_ends_s[-2] - epoch_ends_s[0]) / (steps * (len(epoch_ends_s) - 2))


def plot(dataset: str, out_png: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for path in sorted(RESULTS.glob(f"{dataset}*.json")):
        data = json.loads(path.read_text())
        points = [(c["at_s"] / 60, c["scores"].get("f1_pooled", c["scores"].get("miou_pooled")))
                  for c in data["curve"] if not c.get("best")]
        if points:
            ax.plot(*zip(*points), marker="o", label=path.stem)
    ax.set_xlabel("minutes from the call (check, probe and training)")
    ax.set_ylabel("test Dice (pooled)")
    ax.set_title(f"{dataset}: time to accuracy, defaults")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=accuracy.DATASETS)
    parser.add_argument("--budget", type=float, default=20.0, help="train.time_budget_min (default 20)")
    parser.add_argument("--points", default="2,5,10,20", help="minutes from the call at which the model is kept")
    parser.add_argument("--variant", default="", help="name of this variant (results DATASET-VARIANT.json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a lever under test")
    parser.add_argument("--work", help="folder for views and runs (default benchmarks/accuracy/work)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/time-to-accuracy/...)")
    parser.add_argument("--plot", action="store_true", help="only draw the dataset's curves into a PNG")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.plot:
        out = RESULTS / f"{args.dataset}.png"
        plot(args.dataset, out)
        print(f"wrote {out}")
        return 0
    if not accuracy.SHARED.is_dir():
        raise SystemExit(f"{accuracy.SHARED} is missing: the benchmark needs the shared datasets beside the project.")
    points = [float(p) for p in args.points.split(",") if p.strip()]
    work = pathlib.Path(args.work) if args.work else accuracy.WORK
    record = measure(args.dataset, args.budget, points, args.set, work, args.quiet)
    out = pathlib.Path(args.out) if args.out else RESULTS / f"{args.dataset}{'-' + args.variant if args.variant else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
