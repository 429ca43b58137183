"""The device side of the plan: precision by measurement, CPU step time, epoch length (msunet.training.probe)."""

import dataclasses
import json

import pytest

from msunet.config import RunConfig
from msunet.plan.planner import plan_run
from msunet.plan.survey import survey
from test_plan import make_folder


class FakeDevice:
    """Seconds per step proportional to batch x patch^2 x filters^2, per precision."""

    def __init__(self, per_precision):
        self.per_precision, self.calls = per_precision, []

    def __call__(self, run, precisions):
        self.calls.append((run.train.batch_size, run.model.filters, tuple(precisions)))
        work = run.train.batch_size * (run.data.patch_size / 256) ** 2 * (run.model.filters / 32) ** 2
        return {p: self.per_precision[p] * work for p in precisions}


@pytest.fixture
def no_env_precision(monkeypatch):
    monkeypatch.delenv("MSUNET_PRECISION", raising=False)


def test_auto_precision_keeps_the_measured_faster_one_and_records_both(tmp_path, no_env_precision):
    found = survey(make_folder(tmp_path, count=4, size=(256, 256), channels=3))
    for faster, slower in (("float32", "mixed_bfloat16"), ("mixed_bfloat16", "float32")):
        device = FakeDevice({faster: 0.1, slower: 0.16})  # 0.8 s vs 1.28 s at batch 8
        plan = plan_run(found, RunConfig(), set(), memory=2**34, measure=device,
                        precisions=["float32", "mixed_bfloat16"])
        entry = plan.sources["model.precision"]
        assert plan.config.model.precision == faster and entry["source"] == "device"
        assert entry["seconds_per_step"] == {faster: 0.8, slower: 1.28}
        assert "measured a training step" in entry["why"]


def test_a_cpu_step_is_kept_near_one_to_two_seconds(tmp_path, no_env_precision):
    found = survey(make_folder(tmp_path, count=4, size=(256, 256), channels=3))
    slow = FakeDevice({"float32": 0.5})  # 4 s at batch 8, 32 filters: 1 s at 16, batch kept
    plan = plan_run(found, RunConfig(), set(), memory=2**34, measure=slow)
    assert (plan.config.train.batch_size, plan.config.model.filters) == (8, 16)
    assert "the width goes before the batch" in plan.sources["model.filters"]["why"]
    assert plan.sources["model.filters"]["source"] == "device" and slow.calls[-1] == (8, 16, ("float32",))
    near = FakeDevice({"float32": 0.22})  # 1.76 s at 32 filters: under 2 s, but the width cuts from 1.5 s (a margin
    plan = plan_run(found, RunConfig(), set(), memory=2**34, measure=near)  # over the noise of a measured step)
    assert (plan.config.train.batch_size, plan.config.model.filters) == (8, 16)
    kept = FakeDevice({"float32": 0.18})  # 1.44 s: kept
    assert plan_run(found, RunConfig(), set(), memory=2**34, measure=kept).config.model.filters == 32
    # under a time budget the width also halves while the budget affords fewer than BUDGET_STEPS steps
    fast = FakeDevice({"float32": 0.075})  # 0.6 s at 32 filters: 2,000 steps in 20 minutes; 0.15 s at 16
    budget = lambda minutes: RunConfig().override([f"train.time_budget_min={minutes}"])  # noqa: E731
    short = plan_run(found, budget(20), set(), memory=2**34, measure=fast)
    assert short.config.model.filters == 16 and "fewer than 3,000" in short.sources["model.filters"]["why"]
    assert "8,000 steps" in short.sources["model.filters"]["why"]  # what 16 filters afford, said
    assert plan_run(found, budget(60), set(), memory=2**34, measure=fast).config.model.filters == 32  # 6,000 steps
    assert plan_run(found, RunConfig(), set(), memory=2**34, measure=fast).config.model.filters == 32  # no budget
    assert plan_run(found, budget(20).override(["model.filters=32"]), {"model.filters"}, memory=2**34,
                    measure=fast).config.model.filters == 32  # the user's width
    slower = FakeDevice({"float32": 1.2})  # 9.6 s at 32 filters, 2.4 s at 16 (batch 8): then the batch is cut
    plan = plan_run(found, RunConfig(), set(), memory=2**34, measure=slower)
    assert (plan.config.train.batch_size, plan.config.model.filters) == (5, 16)  # int(8 * 1.5 / 2.4)
    assert "a training step of ~1.5 s" in plan.sources["train.batch_size"]["why"]
    assert slower.calls[-1] == (5, 16, ("float32",))  # measured again at the smaller batch, not scaled
    linear = FakeDevice({"float32": 1.2})

    def sublinear(run, precisions):  # a step at batch 5 costs 1.2x its share of batch 8 (fixed costs per step)
        return {p: t * (1.2 if run.train.batch_size < 8 else 1.0) for p, t in linear(run, precisions).items()}

    plan = plan_run(found, RunConfig(), set(), memory=2**34, measure=sublinear)
    assert plan.sources["train.steps_per_epoch"]["probe_s_per_step"] == pytest.approx(1.8)  # 1.2 x 1.5 s
    assert "1.80 s at 5" in plan.sources["train.batch_size"]["why"]
    very_slow = FakeDevice({"float32": 8.0})  # 16 s at 16 filters, 4 s even at batch 2: narrower again
    plan = plan_run(found, RunConfig(), set(), memory=2**34, measure=very_slow)
    assert (plan.config.train.batch_size, plan.config.model.filters) == (2, 8)
    assert very_slow.calls[-1] == (2, 8, ("float32",))
    assert not any("a training step takes" in n for n in plan.notes)  # 1 s at 8 filters
    wide = plan_run(found, RunConfig().override(["model.filters=32"]), {"model.filters"}, memory=2**34, measure=slow)
    assert (wide.config.train.batch_size, wide.config.model.filters) == (3, 32)  # the user's width: the batch goes
    user = plan_run(found, RunConfig().override(["train.batch_size=8"]), {"train.batch_size"}, memory=2**34,
                    measure=FakeDevice({"float32": 0.5}))
    assert user.config.train.batch_size == 8 and user.sources["train.batch_size"]["source"] == "user"
    gpu = plan_run(found, RunConfig(), set(), accelerator=True, memory=2**34, measure=FakeDevice({"float32": 0.5}))
    assert gpu.config.train.batch_size == 16  # a GPU fills its memory; no CPU step rule


def test_an_epoch_is_one_pass_over_the_training_pixels(tmp_path, no_env_precision):
    tiny = plan_run(survey(make_folder(tmp_path / "tiny", count=12)), RunConfig(), set())
    assert tiny.config.train.steps_per_epoch == 10  # 10 train images of 64 px, batch 8: 2 steps, at least 10
    assert tiny.config.train.val_batches == 2
    big = survey(make_folder(tmp_path / "big", count=30, size=(600, 520), channels=3))
    plan = plan_run(big, RunConfig(), set(), memory=2**34)
    one_pass = -(-big.train_pixels // (256 * 256 * 8))
    assert big.train_pixels == 24 * 600 * 520 and plan.config.train.steps_per_epoch == one_pass
    # 2 s steps (32 filters kept as the user's: the planner would narrow a step over 1.5 s)
    timed = plan_run(big, RunConfig(), {"model.filters"}, memory=2**34, measure=FakeDevice({"float32": 0.25}))
    assert timed.config.train.steps_per_epoch == one_pass  # 24 steps x 2 s: under 2 minutes
    many = dataclasses.replace(big, train_pixels=1000 * 256 * 256)  # a pass: 125 steps of 2 s
    timed = plan_run(many, RunConfig(), {"model.filters"}, memory=2**34, measure=FakeDevice({"float32": 0.25}))
    assert timed.config.train.steps_per_epoch == 60  # at most ~2 minutes per epoch
    assert "at most ~2 min per epoch" in timed.sources["train.steps_per_epoch"]["why"]


def test_short_measured_epochs_are_regrouped_into_fewer_longer_ones(tmp_path, no_env_precision):
    """A 64 px folder's epochs of 10 steps of 0.1 s spent a third of their time on the epoch end."""
    found = survey(make_folder(tmp_path, count=12))  # 10 train images of 64 px: 2 steps a pass, 10 at least
    fast = FakeDevice({"float32": 0.1 / (8 * (64 / 256) ** 2)})  # 0.1 s at batch 8, 64 px
    plan = plan_run(found, RunConfig(), set(), measure=fast)
    # 50 passes are 100 steps: at least 300 (MIN_TOTAL_STEPS), in 3 epochs of 100 (~10 s each at 0.1 s)
    assert (plan.config.train.steps_per_epoch, plan.config.train.epochs) == (100, 3)
    assert plan.sources["train.epochs"]["source"] == "data" and "regrouped" in plan.sources["train.epochs"]["why"]
    assert "at least 300" in plan.sources["train.epochs"]["why"]
    assert plan.config.train.val_batches == 15
    slow = plan_run(found, RunConfig(), set(), measure=FakeDevice({"float32": 1.5 / (8 * (64 / 256) ** 2)}))
    assert (slow.config.train.steps_per_epoch, slow.config.train.epochs) == (10, 30)  # 1.5 s steps: no regrouping
    budget = plan_run(found, RunConfig().override(["train.time_budget_min=15"]), {"train.time_budget_min"},
                      measure=fast)  # 15 min at 10 s per epoch: 90 epochs fit; the budget, not the epochs, ends training
    # a step of fit 1.15 x 0.1 s, plus 15 validation batches at a quarter step and 0.7 s of epoch end per 100 steps
    expected = 0.1 * 1.15 + (15 * 0.25 * 0.1 + 0.7) / 100
    entry = budget.sources["train.steps_per_epoch"]
    assert entry["expected_s_per_step"] == pytest.approx(expected, abs=1e-4) and entry["probe_s_per_step"] == 0.1
    assert (budget.config.train.steps_per_epoch, budget.config.train.epochs) == (100, 2 * 72)  # ceil(900 / 12.575)
    assert "train.time_budget_min=15 ends training" in budget.sources["train.epochs"]["why"]
    unmeasured = plan_run(found, RunConfig().override(["train.time_budget_min=15"]), {"train.time_budget_min"})
    assert unmeasured.config.train.epochs == 10_000
    for user in (["train.epochs=20"], ["train.steps_per_epoch=10"]):  # the user's choice is kept whole
        kept = plan_run(found, RunConfig().override(user), {user[0].split("=")[0]}, measure=fast)
        assert kept.config.train.epochs * kept.config.train.steps_per_epoch in (200, 500)
        assert kept.config.train.steps_per_epoch == 10


def test_xla_is_kept_where_the_probe_finds_it_faster(tmp_path, no_env_precision):
    found = survey(make_folder(tmp_path, count=4, size=(256, 256), channels=3))

    def device(xla_share):
        base = FakeDevice({"float32": 0.1})

        def measure(run, precisions):  # XLA's step `xla_share` of the graph's (None: XLA cannot compile the model)
            seconds = base(run, precisions)
            if run.train.compiler == "xla":
                return {} if xla_share is None else {p: t * xla_share for p, t in seconds.items()}
            return seconds
        return measure

    compilers = ["graph", "xla"]
    faster = plan_run(found, RunConfig(), set(), memory=2**34, measure=device(0.8), compilers=compilers)
    entry = faster.sources["train.compiler"]
    assert faster.config.train.compiler == "xla" and entry["source"] == "device"
    assert entry["why"] == "measured a training step (batch 8, 32 filters): 0.800 s as a graph, 0.640 s with XLA"
    assert faster.sources["train.steps_per_epoch"]["probe_s_per_step"] == pytest.approx(0.64)  # planned with XLA's
    for share, why in ((0.97, "0.776 s with XLA"), (None, "XLA could not compile it")):  # within 5%, or failed
        kept = plan_run(found, RunConfig(), set(), memory=2**34, measure=device(share), compilers=compilers)
        assert kept.config.train.compiler == "graph" and kept.sources["train.compiler"]["why"].endswith(why)
        assert kept.sources["train.steps_per_epoch"]["probe_s_per_step"] == pytest.approx(0.8)
    user = plan_run(found, RunConfig().override(["train.compiler=graph"]), {"train.compiler"}, memory=2**34,
                    measure=device(0.5), compilers=compilers)
    assert user.config.train.compiler == "graph" and user.sources["train.compiler"]["source"] == "user"
    other_backend = plan_run(found, RunConfig(), set(), memory=2**34, measure=device(0.5), compilers=[])
    assert other_backend.config.train.compiler == "auto"  # nothing to choose: Keras' own compilation


def test_environment_precision_is_the_users_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("MSUNET_PRECISION", "float32")
    device = FakeDevice({"float32": 0.1})
    plan = plan_run(survey(make_folder(tmp_path)), RunConfig(), set(), measure=device,
                    precisions=["float32", "mixed_bfloat16"])
    assert plan.config.model.precision == "float32" and device.calls[0][2] == ("float32",)
    assert plan.sources["model.precision"]["why"] == "MSUNET_PRECISION in the environment"


def test_probe_measures_both_precisions_once_then_reads_the_cache(tmp_path, monkeypatch):
    from msunet.training import probe

    monkeypatch.setenv("MSUNET_CACHE_DIR", str(tmp_path / "cache"))
    run = RunConfig().override(["model.depth=2", "model.filters=4", "data.patch_size=32", "train.batch_size=2"])
    seconds = probe.measure_steps(run, ["float32", "mixed_bfloat16"], rounds=2)
    assert set(seconds) == {"float32", "mixed_bfloat16"} and all(0 < s < 30 for s in seconds.values())
    cache = json.loads(probe.cache_path().read_text())
    assert len(cache) == 2 and {e["precision"] for e in cache.values()} == {"float32", "mixed_bfloat16"}
    monkeypatch.setattr(probe, "_trainer", lambda *a: pytest.fail("measured again instead of reading the cache"))
    assert probe.measure_steps(run, ["mixed_bfloat16", "float32"]) == pytest.approx(seconds, abs=1e-4)
    other = run.override(["model.filters=8"])  # another model shape is another measurement
    with pytest.raises(pytest.fail.Exception):
        probe.measure_steps(other, ["float32"])


def test_train_with_the_probe_records_the_measured_precision(tmp_path, monkeypatch, no_env_precision):
    from msunet.training.run import train

    monkeypatch.setenv("MSUNET_PROBE", "1")
    monkeypatch.setenv("MSUNET_CACHE_DIR", str(tmp_path / "cache"))
    data = make_folder(tmp_path / "data", count=6, size=(32, 32))
    train(RunConfig().override(["model.filters=4", "train.epochs=1", "train.workers=1"]), data, tmp_path / "run",
          verbose=0)
    sources = json.loads((tmp_path / "run" / "config.json").read_text())["sources"]
    entry = sources["model.precision"]
    assert entry["source"] == "device" and entry["value"] in entry["seconds_per_step"]
    assert entry["seconds_per_step"][entry["value"]] == min(entry["seconds_per_step"].values())  # the faster
    assert sources["train.steps_per_epoch"]["value"] == 10 and sources["train.steps_per_epoch"]["source"] == "data"
    compiler = sources["train.compiler"]  # the graph and XLA timed; whichever ran the training
    assert compiler["source"] == "device" and compiler["value"] in ("graph", "xla") and "with XLA" in compiler["why"]


def test_training_compiled_with_xla_runs_end_to_end(tmp_path):
    """`train.compiler=xla`: the training step and the validation compiled with XLA (tiny model)."""
    import csv

    import numpy as np

    from msunet.training.run import train

    data = make_folder(tmp_path / "data", count=6, size=(32, 32))
    config = RunConfig().override(["model.filters=4", "model.depth=2", "train.epochs=1", "train.steps_per_epoch=3",
                                   "train.workers=1", "train.compiler=xla"])
    result = train(config, data, tmp_path / "run", verbose=0)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["compiler"] == "xla" and saved["sources"]["train.compiler"]["source"] == "user"
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert result.epochs_done == 1 and len(rows) == 1 and np.isfinite(float(rows[0]["loss"]))
    assert 0 <= float(rows[0]["val_dice"]) <= 1 and result.metrics["evaluated_on"] == "validation tiles"


def test_the_probe_says_once_what_it_measures_and_when_the_cache_answers(tmp_path, monkeypatch, caplog):
    import logging

    from msunet.training.check import plan_dataset

    monkeypatch.setenv("MSUNET_PROBE", "1")
    monkeypatch.setenv("MSUNET_CACHE_DIR", str(tmp_path / "cache"))
    data = make_folder(tmp_path / "data", count=6, size=(32, 32))
    config = RunConfig().override(["model.filters=4", "model.depth=2", "model.precision=float32"])
    with caplog.at_level(logging.INFO, logger="msunet"):
        plan_dataset(data, config, {"model.filters", "model.depth", "model.precision"})
    first = [r.getMessage() for r in caplog.records if "training step" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="msunet"):
        plan_dataset(data, config, {"model.filters", "model.depth", "model.precision"})
    second = [r.getMessage() for r in caplog.records if "training step" in r.getMessage()]
    # the graph's step, then XLA's (TensorFlow): each measured once, then read from the cache
    assert len(first) == 2 and all(m.startswith("measuring a few training steps (float32, batch") for m in first)
    assert first[1].endswith("XLA); cached in " + str(tmp_path / "cache" / "probe.json"))
    assert len(second) == 2 and all("from the cache" in m and "measuring" not in m for m in second)
