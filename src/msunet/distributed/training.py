"""Data-parallel training with `keras.distribution` (`train.distribution="data_parallel"`, `msunet
train --distributed`).

What msunet adds to `keras.distribution.DataParallel` is what a run folder needs:

- **Devices and hosts**: every device Keras lists; across hosts, `keras.distribution.initialize()`
  with its environment variables (`KERAS_DISTRIBUTION_JOB_ADDRESSES`, `_NUM_PROCESSES`,
  `_PROCESS_ID`), called before any computation (`initialize_from_environment`).
- **Batches**: `train.batch_size` is per device; each process feeds `batch_size` x its local
  devices (its own patches: the sampling seed is offset by the process id; Keras' auto-sharding is
  off), so the global batch is `batch_size` x all devices.
- **One writer**: process 0 writes the run folder; the others write into a private temporary
  folder (resume reads the run folder, which must then be on storage every host sees).
- **Agreement**: the planned config, the time budget's clock (it drives the learning rate and the
  stop) are process 0's, broadcast, so every process takes the same steps.

Backends: JAX only. Keras' TensorFlow `distribution_lib` is a prototype marked "do not use" and
TensorFlow multi-worker training with Keras 3 is reported broken (keras #20585); PyTorch has no
`keras.distribution` backend. Other backends get an error that names the JAX backend.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np


class DistributionError(ValueError):
    """A data-parallel request this backend or device set cannot do (raised before any work)."""


def multi_process_environment() -> int:
    try:
        return int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1") or 1)
    except ValueError:
        raise DistributionError("KERAS_DISTRIBUTION_NUM_PROCESSES must be a whole number (the processes of the "
                                f"run); received {os.environ['KERAS_DISTRIBUTION_NUM_PROCESSES']!r}.") from None


_INITIALIZED = False


def initialize_from_environment() -> bool:
    """`keras.distribution.initialize()` when the environment names more than one process (once).

    Must run before the first computation of the process (msunet's import hook skips its warm-up
    when these variables are set). Returns whether this is a multi-process run.
    """
    global _INITIALIZED
    processes = multi_process_environment()
    if processes <= 1:
        return False
    if keras.backend.backend() != "jax":
        raise DistributionError(_backend_message(f"KERAS_DISTRIBUTION_NUM_PROCESSES={processes}"))
    if not _INITIALIZED:
        for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_PROCESS_ID"):
            if not os.environ.get(name):
                raise DistributionError(f"KERAS_DISTRIBUTION_NUM_PROCESSES={processes} but {name} is not set: every "
                                        "process needs the coordinator's HOST:PORT and its own id (0 .. N-1).")
        keras.distribution.initialize()
        _INITIALIZED = True
    return True


def _backend_message(what: str) -> str:
    return (f"{what}: data-parallel training runs on the JAX backend (KERAS_BACKEND=jax, "
            f"pip install 'msunet[jax]'); this is the {keras.backend.backend()} backend, where keras.distribution "
            "is not supported (TensorFlow: a prototype Keras marks do-not-use; multi-worker training with Keras 3 "
            "is reported broken, keras #20585). Or set train.distribution=none.")


@dataclasses.dataclass(frozen=True)
class Topology:
    """Where a data-parallel run runs: all devices, this process's share, and whether it writes."""

    devices: tuple[str, ...]
    local_devices: int
    processes: int
    process_id: int

    @property
    def writer(self) -> bool:
        return self.process_id == 0

    def process_batch(self, per_device: int) -> int:
        """What this process feeds per step: per-device batch x its local devices."""
        return per_device * self.local_devices


def start(per_device_batch: int) -> Topology:
    """Sets `keras.distribution.DataParallel` over every device; raises before any work if it cannot."""
    if keras.backend.backend() != "jax":
        raise DistributionError(_backend_message("train.distribution=data_parallel"))
    multi = initialize_from_environment()
    import jax  # the JAX backend is active: its own API for process ids and local devices

    devices = tuple(keras.distribution.list_devices())
    if len(devices) < 2:
        raise DistributionError(
            f"train.distribution=data_parallel found one device ({devices[0] if devices else 'none'}): nothing to "
            "split. Use train.distribution=none, or more devices (GPUs; on CPU for testing: "
            "XLA_FLAGS=--xla_force_host_platform_device_count=2; hosts: KERAS_DISTRIBUTION_* variables).")
    if not isinstance(per_device_batch, int) or per_device_batch < 1:
        raise DistributionError(f"train.batch_size={per_device_batch!r} is per device and must be >= 1 "
                                f"(global batch = batch_size x {len(devices)} devices).")
    topology = Topology(devices, jax.local_device_count(), jax.process_count() if multi else 1,
                        jax.process_index() if multi else 0)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=list(devices),
                                                                        auto_shard_dataset=False))
    return topology


def stop() -> None:
    keras.distribution.set_distribution(None)


def broadcast(value, topology: Topology | None):
    """Process 0's NumPy value on every process (the value itself on one process)."""
    if topology is None or topology.processes == 1:
        return value
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def broadcast_json(data, topology: Topology | None):
    """Process 0's JSON-able data on every process (the planned config: the device probe times differ)."""
    if topology is None or topology.processes == 1:
        return data
    raw = np.frombuffer(json.dumps(data).encode(), np.uint8)
    size = int(broadcast(np.int64(raw.size), topology))
    buffer = np.zeros(size, np.uint8)
    buffer[: min(size, raw.size)] = raw[:size]
    return json.loads(bytes(broadcast(buffer, topology)).decode())
