"""TensorFlow's oneDNN kernels on every x86-64 CPU: `import msunet` asks for them, the plan says when they are off.

TensorFlow turns its oneDNN kernels on by itself only with AVX512-VNNI / -BF16, AVX-VNNI or AMX; on an
AVX2-only CPU it trained with its Eigen kernels (a 3-D step ~4x slower, docs/performance.md). These tests
hold on either kind of CPU: they check the environment msunet sets and what TensorFlow reports after it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from msunet import machine
from msunet.plan import device

X86 = platform.machine().lower() in machine.X86_64
CHILD = ("import os, msunet, keras\n"
         "from tensorflow.python.util import _pywrap_util_port\n"
         "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), _pywrap_util_port.IsMklEnabled())\n")


def child_env(**values):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["KERAS_BACKEND"] = "tensorflow"
    env.update(values)
    return env


@pytest.mark.skipif(not X86, reason="TensorFlow's oneDNN default is about x86-64 CPUs")
def test_import_msunet_turns_tensorflow_onednn_on_whatever_the_cpu():
    out = subprocess.run([sys.executable, "-c", CHILD], env=child_env(), capture_output=True, text=True,
                         check=True).stdout.split()
    # Without msunet's default an AVX2-only CPU prints "None False" here (TensorFlow's Eigen kernels)
    assert out == ["1", "True"], out


@pytest.mark.skipif(not X86, reason="TensorFlow's oneDNN default is about x86-64 CPUs")
def test_a_users_choice_of_tensorflow_kernels_is_kept():
    out = subprocess.run([sys.executable, "-c", CHILD], env=child_env(TF_ENABLE_ONEDNN_OPTS="0"),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "False"], out


def test_tensorflow_onednn_reads_the_environment_then_the_cpu(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert machine.onednn_requested() is False and machine.tensorflow_onednn() is False
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "true")
    assert machine.onednn_requested() is True and machine.tensorflow_onednn() is True
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")  # TensorFlow's own default: VNNI, BF16 or AMX
    avx2 = {"avx2": True, "fma": True, "avx512": False, "vnni": False, "bf16": False, "amx": False}
    monkeypatch.setattr(machine, "features", lambda: avx2)
    assert machine.onednn_requested() is None and machine.tensorflow_onednn() is False
    monkeypatch.setattr(machine, "features", lambda: {**avx2, "avx512": True, "vnni": True})
    assert machine.tensorflow_onednn() is True
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert machine.tensorflow_onednn() is False  # x86-64 kernels only


def test_the_plan_notes_tensorflow_without_onednn(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(device, "keras_backend", lambda: "tensorflow")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    note = device.kernel_note()
    assert note and "TF_ENABLE_ONEDNN_OPTS=0 is set" in note and "TF_ENABLE_ONEDNN_OPTS=1" in note
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    monkeypatch.setattr(machine, "features", lambda: {"avx2": True, "vnni": False, "bf16": False, "amx": False})
    assert "imported before msunet" in device.kernel_note()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert device.kernel_note() is None
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.setattr(device, "keras_backend", lambda: "torch")
    assert device.kernel_note() is None  # other backends: nothing to say


def test_probe_timings_are_keyed_by_the_tensorflow_kernels():
    import keras

    from msunet.training import probe

    kernels = probe.tensorflow_kernels()
    if keras.backend.backend() != "tensorflow":
        assert kernels == ""
    else:
        assert kernels in (" onednn", " eigen") and kernels in probe.machine_id()
        assert (kernels == " onednn") == (X86 and os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0")
