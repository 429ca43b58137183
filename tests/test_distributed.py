"""Data-parallel training with keras.distribution (`train.distribution=data_parallel`, `msunet train --distributed`).

On JAX with two virtual CPU devices: the same losses as one device over 10 steps; two processes on
localhost (`keras.distribution.initialize`) train together and write one run folder. Keras picks its
backend at import, so the JAX runs are subprocesses; skipped (with the reason) without JAX:
`make test-scale` installs it.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from msunet.distributed.training import DistributionError
from msunet.data.synthetic import make_dataset
from msunet.training.run import train

needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                               reason="JAX is optional: `make test-scale` installs msunet[jax] and runs these tests")
TINY = ["model.depth=2", "model.filters=4", "data.patch_size=32", "train.steps_per_epoch=10", "train.epochs=1",
        "train.workers=0", "train.val_batches=1", "model.norm=batch", "model.precision=float32"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synth"), count=8, size=(48, 40), seed=3)


def test_data_parallel_on_tensorflow_is_refused_before_the_run_folder(synth, tmp_path):
    import keras

    if keras.backend.backend() == "jax":
        pytest.skip("this test checks the refusal on a backend without keras.distribution")
    with pytest.raises(DistributionError, match="JAX backend.*keras #20585"):
        train(None, synth, tmp_path / "run", overrides=[*TINY, "train.distribution=data_parallel"])
    assert not (tmp_path / "run").exists()


def test_multi_process_variables_without_data_parallel_are_refused(synth, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    with pytest.raises(DistributionError, match="train.distribution=data_parallel"):
        train(None, synth, tmp_path / "run", overrides=TINY)
    assert not (tmp_path / "run").exists()


SCRIPT = r"""
import json, sys, keras, msunet
from msunet.training.run import train

class Losses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__(); self.seen = []
    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(float(logs["loss"]))

data, out, mode, batch = sys.argv[1:5]
overrides = json.loads(sys.argv[5]) + [f"train.distribution={mode}", f"train.batch_size={batch}"]
losses = Losses()
result = train(None, data, out, overrides=overrides, callbacks=[losses], plan=False)
print("LOSSES", json.dumps(losses.seen))
"""


def _jax(args, env_extra=None, timeout=600):
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@needs_jax
def test_data_parallel_on_two_devices_matches_one_device(synth, tmp_path):
    # The same global batch of 4 from the same seed: one device x 4, or two devices x 2 (batch
    # statistics and gradients all-reduced over both). Only the order of float32 sums differs: the
    # losses agreed to 4.2e-7 relative over the 10 steps here; 1e-5 leaves room for other CPUs.
    runs = {}
    for mode, batch in (("none", 4), ("data_parallel", 2)):
        result = _jax([str(synth), str(tmp_path / mode), mode, str(batch), json.dumps(TINY)])
        assert result.returncode == 0, result.stderr[-4000:]
        runs[mode] = json.loads(result.stdout.split("LOSSES", 1)[1])
    assert len(runs["none"]) == len(runs["data_parallel"]) == 10
    np.testing.assert_allclose(runs["data_parallel"], runs["none"], rtol=1e-5)
    info = json.loads((tmp_path / "data_parallel" / "run.json").read_text())
    assert info["devices"] == 2 and info["processes"] == 1 and info["status"] == "completed"


@needs_jax
def test_one_device_or_a_zero_batch_is_refused(synth, tmp_path):
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="")
    result = subprocess.run([sys.executable, "-m", "msunet", "train", "--data", str(synth), "--out",
                             str(tmp_path / "one"), "--distributed", "--set", *TINY],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "found one device" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "one").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@needs_jax
def test_two_processes_on_localhost_train_together_and_write_one_run(synth, tmp_path):
    port = _free_port()
    procs = []
    for pid in (0, 1):
        env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="", KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                   KERAS_DISTRIBUTION_NUM_PROCESSES="2", KERAS_DISTRIBUTION_PROCESS_ID=str(pid),
                   TMPDIR=str(tmp_path))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "msunet", "train", "--data", str(synth), "--out", str(tmp_path / "run"),
             "--distributed", "--verbose", "0", "--set", *TINY, "train.batch_size=2", "train.time_budget_min=5"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-4000:]
    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["processes"] == 2 and info["devices"] == 2
    assert (run / "best.keras").is_file() and (run / "metrics.json").is_file()
    assert json.loads((run / "config.json").read_text())["train"]["distribution"] == "data_parallel"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("msunet-process")]
    assert not leftovers  # process 1 wrote into a private folder, removed at the end


RESUME_SCRIPT = r"""
import json, sys, keras
from msunet.training.run import train

class StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt

data, out, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    train(None, data, out, overrides=overrides, callbacks=[StopAfterFirstEpoch()], plan=False)
except KeyboardInterrupt:
    print("INTERRUPTED")
result = train(None, None, out, resume=True)
print("EPOCHS", result.epochs_done)
"""


@needs_jax
def test_an_interrupted_data_parallel_run_resumes(synth, tmp_path):
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    overrides = [*TINY, "train.epochs=2", "train.steps_per_epoch=3", "train.batch_size=2",
                 "train.distribution=data_parallel"]
    result = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(synth), str(tmp_path / "run"),
                             json.dumps(overrides)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "INTERRUPTED" in result.stdout and "EPOCHS 2" in result.stdout
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "completed" and info["devices"] == 2
