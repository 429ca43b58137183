"""Volumes as a new user gets them: defaults and a time budget on MSD Hippocampus, scored on its test split.

`python benchmarks/volume_accuracy.py [--budget 20] [--set KEY=VALUE ...] [--no-tta]` trains on
`../shared/data/msd-hippocampus` (its split.csv: 166 train / 42 test; test never enters training) with
only `train.time_budget_min` (and any `--set`), everything else planned from the data and the device,
then `msunet.evaluate` on the test split, with the default engine (the run's int8 bundle where it passes its
self-check) and with Keras: Dice per structure (1 anterior, 2 posterior) and their mean,
HD95 in mm, per scale. Writes `benchmarks/results/volumes/msd-hippocampus[-VARIANT].json` with the CPU it
ran on (model and flags), the plan, the steps and seconds (check and probe included, from the call), and
keeps the run folder and the HTML report under `benchmarks/accuracy/work/msd-hippocampus/`.

Run it alone on the machine: the budget is wall-clock time. nnU-Net (3d_fullres, full GPU training)
reports ~0.90 / ~0.89 on the MSD test set (SOURCE.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "msd-hippocampus"
WORK = HERE / "accuracy" / "work" / "msd-hippocampus"
RESULTS = HERE / "results" / "volumes"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=20.0, help="train.time_budget_min (default 20)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a lever under test")
    parser.add_argument("--variant", default="", help="name of this variant (results ...-VARIANT.json)")
    parser.add_argument("--tta", action="store_true", default=None,
                        help="score with the mirroring test-time augmentation (the default for volumes since 2026-12-07)")
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="score without it")
    parser.add_argument("--score-only", action="store_true", help="score the run kept from an earlier call again "
                        "(its recorded training figures are kept)")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is missing: the benchmark needs the shared datasets beside the project.")
    import msunet
    from msunet import machine

    run_dir = WORK / (f"run-{args.variant}" if args.variant else "run")
    trained = RESULTS / f"msd-hippocampus{'-' + args.variant if args.variant else ''}.json"
    mode = {None: "-rescored", True: "-tta", False: "-no-tta"}[args.tta]
    out = trained.with_name(trained.stem + mode + ".json") if args.score_only else trained
    earlier = json.loads(trained.read_text()) if args.score_only and trained.is_file() else {}
    if args.score_only:
        train_s, result = earlier.get("train_wall_s", 0.0), None
    else:
        start = time.perf_counter()
        result = msunet.train(None, DATA, run_dir, overrides=[f"train.time_budget_min={args.budget}", *args.set],
                              overwrite=True, verbose=2)
        train_s = time.perf_counter() - start
    state = json.loads((run_dir / "state" / "state.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    scores = {}
    for engine in ("auto", "keras"):  # what `msunet evaluate` uses by default (the run's int8 bundle), and Keras
        started = time.perf_counter()
        evaluation = msunet.evaluate(run_dir, DATA, WORK / (f"eval{'-' + args.variant if args.variant else ''}-{engine}"
                                                            f"{'' if args.tta is None else '-tta' if args.tta else '-no-tta'}"),
                                     split="test", tta=args.tta, engine=engine)
        per = evaluation.summary["per_class_and_scale"]
        scores[engine] = {"dice": {cls: per[f"scale1/class{cls}"]["dice_mean"] for cls in (1, 2)}, "per": per,
                          "seconds": time.perf_counter() - started, "engine": evaluation.summary.get("engine")}
    per, eval_s, dice = scores["auto"]["per"], scores["auto"]["seconds"], scores["auto"]["dice"]
    record = {
        "dataset": "msd-hippocampus", "date": datetime.date.today().isoformat(), "machine": machine.describe(),
        "keras_backend": earlier.get("keras_backend") or __import__("keras").backend.backend(),  # trained with
        "scored_with_backend": __import__("keras").backend.backend(),
        "budget_min": args.budget, "overrides": args.set, "tta": "default (on for volumes)" if args.tta is None else args.tta,
        "train_wall_s": train_s, "steps_done": state.get("steps_done"),
        "epochs_done": result.epochs_done if result else earlier.get("epochs_done"),
        "s_per_step_from_call": train_s / max(1, state.get("steps_done") or 1),
        "planned_s_per_step": config["sources"].get("train.steps_per_epoch", {}).get("expected_s_per_step"),
        "plan": {k: v.get("value") for k, v in config["sources"].items() if v.get("source") in ("data", "device")},
        "best_val_dice": result.best_dice if result else earlier.get("best_val_dice"),
        "test_volumes": evaluation.summary["images"],
        "test_dice_anterior": dice[1], "test_dice_posterior": dice[2], "test_dice_mean": (dice[1] + dice[2]) / 2,
        "test_hd95_mm": {cls: per[f"scale1/class{cls}"].get("hd95_mean") for cls in (1, 2)},
        "per_class_and_scale": per, "evaluate_s": eval_s, "engine": scores["auto"]["engine"],
        "keras": {"test_dice_anterior": scores["keras"]["dice"][1], "test_dice_posterior": scores["keras"]["dice"][2],
                  "test_dice_mean": (scores["keras"]["dice"][1] + scores["keras"]["dice"][2]) / 2,
                  "evaluate_s": scores["keras"]["seconds"]},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"test Dice anterior {dice[1]:.4f} posterior {dice[2]:.4f} mean {record['test_dice_mean']:.4f} with "
          f"{record['engine']}; Keras {record['keras']['test_dice_mean']:.4f} ({record['steps_done']} steps in "
          f"{train_s:.0f} s); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
