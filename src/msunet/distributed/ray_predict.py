"""Batch prediction of large image collections on Ray Data: an actor pool, each actor loads the model once.

`predict_ray(model, inputs, out_dir, address=...)` lists the inputs on the driver (the same output
names as `msunet predict`, `output_stems`), makes a Ray Dataset of one row per image, and maps it
with `map_batches` over a pool of actors (`_PredictWorker`): each loads the run (Keras) or the
exported bundle (ONNX Runtime / OpenVINO / LiteRT, no TensorFlow) once, then predicts its images
with the single-process step (`msunet.runtime.files.predict_file`: tiling, every scale, TTA,
overlays, probabilities, out-of-core streaming of huge images, atomic writes). Rows come back as
outcomes and are folded into the same `PredictSummary`, in input order; a corrupt file is a
"failed" row, reported, never an error of the run.

Fault tolerance is Ray Data's: its actors restart (`max_restarts=-1`) and a task lost with its actor
is retried (`max_task_retries=-1`); one image per task, and every output written to a temporary
name then renamed, so a retried image is written whole, once. What a lost attempt had already
renamed into place is counted as written by this run (outputs present before the run are not).

Images are read by the actors from their paths: on a cluster, inputs and the output folder must be
on storage every node sees (NFS, a mounted bucket).
"""

from __future__ import annotations

import os
import pathlib
import socket
import time

from msunet.inference.engines import choose_engine
from msunet.runtime.files import (
    FileOutcome,
    PredictSummary,
    file_job,
    list_inputs,
    output_folder,
    output_stems,
    predict_file,
)
from msunet.runtime.options import PredictOptions


class RayPredictError(ValueError):
    """A Ray batch prediction that cannot start (Ray missing, unreachable address, bad option)."""


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise RayPredictError(f"--engine ray needs Ray Data ({err}); install it with: pip install 'msunet[ray]'") from err
    return ray


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Fails fast, before any work, when `address` (HOST:PORT or ray://HOST:PORT) cannot be reached.

    None or "auto" (a cluster started on this machine with `ray start`) or "local" are Ray's own.
    """
    if address in (None, "auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayPredictError(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, or ray://HOST:10001 "
                              "for Ray Client, or auto for the cluster of this machine).")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise RayPredictError(f"Ray address {address!r} cannot be reached ({err}); start the cluster with "
                              "`ray start --head` on that host, or check the address and port.") from None


class _PredictWorker:
    """One actor of the pool: the engine chosen on the driver, opened once, then one image per call."""

    def __init__(self, choice, options: PredictOptions, out_dir: str, threads: int | None):
        self.engine = choice.open(threads)
        self.job = file_job(self.engine, options, out_dir)
        self.fn = self.engine.make_fn(self.job.heads, options.batch_size, self.job.tta)

    def __call__(self, batch: dict) -> dict:
        outcomes = [predict_file(self.engine, self.fn, pathlib.Path(str(path)), str(stem), self.job)
                    for path, stem in zip(batch["path"], batch["stem"])]
        return {
            "index": list(batch["index"]),
            "status": [o.status for o in outcomes],
            "written": ["\n".join(str(p) for p in o.written) for o in outcomes],
            "outputs": ["\n".join(str(p) for p in o.outputs) for o in outcomes],
            "reason": [o.reason for o in outcomes],
            "megapixels": [o.megapixels for o in outcomes],
        }


def predict_ray(
    model: str | os.PathLike,
    inputs: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: PredictOptions | None = None,
    *,
    engine: str = "auto",
    address: str | None = None,
    concurrency: int | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    images_per_task: int = 1,
    threads: int | None = None,
    progress_bars: bool = True,
    **values,
) -> PredictSummary:
    """`msunet predict` over a Ray cluster: the same outputs, files and summary, from a pool of actors.

    Example:
    ```python
    from msunet.distributed.ray_predict import predict_ray
    summary = predict_ray("runs/first", "archive/", "masks/", address="10.0.0.5:6379", num_gpus=1)
    ```

    Args:
        model: a run folder or .keras file (actors need msunet[train]) or an exported bundle.
        address: the Ray cluster (HOST:PORT, ray://HOST:PORT, "auto"); None starts a local Ray.
        concurrency: actors in the pool (default: the cluster's CPUs // num_cpus, or its GPUs // num_gpus).
        num_cpus, num_gpus: resources per actor (a GPU actor predicts on its GPU).
        images_per_task: images per Ray task (1: the finest retry and balance).
        engine: chosen once on the driver as `msunet.predict` chooses it (`open_engine`: "auto" is a
            run's int8 bundle, exported there once), then opened in every actor: the same masks.
        threads: a bundle runtime's threads per actor.
        progress_bars: Ray Data's progress bars on stderr.
        options and keyword `values`: `PredictOptions`, as `msunet.predict` takes them.

    Raises:
        RayPredictError: Ray not installed, the address cannot be reached, or an option is invalid,
        before any image is read.
    """
    options = PredictOptions.of(options, **values)
    for name, value, low in (("concurrency", concurrency, 1), ("images_per_task", images_per_task, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise RayPredictError(f"{name} must be a whole number >= {low}; received {value!r}.")
    if num_cpus < 0 or num_gpus < 0 or (num_cpus == 0 and num_gpus == 0):
        raise RayPredictError(f"each actor needs some resources: num_cpus={num_cpus}, num_gpus={num_gpus}.")
    if not pathlib.Path(model).exists():
        raise RayPredictError(f"{model}: no such run folder, .keras file or bundle.")
    check_address(address)
    ray = _import_ray()
    choice = choose_engine(pathlib.Path(model).resolve(), engine)  # on the driver: a run's bundle is exported once
    files = list_inputs(inputs)
    stems = output_stems(files)
    out = pathlib.Path(out_dir)
    with output_folder(out):  # as predict_files: one prediction per output folder
        before = {p.name for p in out.iterdir()}

        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = progress_bars
        resources = ray.cluster_resources()
        if concurrency is None:
            by_cpu = int(resources.get("CPU", 1) // num_cpus) if num_cpus else 1 << 30
            by_gpu = int(resources.get("GPU", 0) // num_gpus) if num_gpus else 1 << 30
            concurrency = max(1, min(by_cpu, by_gpu, len(files)))
        if num_gpus and resources.get("GPU", 0) < num_gpus:
            raise RayPredictError(f"num_gpus={num_gpus} per actor, but the cluster has {resources.get('GPU', 0):g} GPU(s).")

        rows = [{"index": i, "path": str(p), "stem": stems[p]} for i, p in enumerate(files)]
        start = time.perf_counter()
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // images_per_task)))
        results = dataset.map_batches(
            _PredictWorker, batch_size=images_per_task, compute=ray.data.ActorPoolStrategy(size=concurrency),
            num_cpus=num_cpus, num_gpus=num_gpus,
            fn_constructor_kwargs=dict(choice=choice, options=options, out_dir=str(out), threads=threads),
        ).take_all()
        summary = PredictSummary()
        for row in sorted(results, key=lambda r: int(r["index"])):
            path = files[int(row["index"])]
            written, outputs = ([pathlib.Path(p) for p in str(row[key]).split("\n") if p] for key in ("written", "outputs"))
            outcome = FileOutcome(path, str(row["status"]), written, str(row["reason"]), float(row["megapixels"]), outputs)
            if outcome.status in ("written", "existing") and not options.overwrite:
                # An attempt lost with its actor may have renamed some outputs into place before the retry
                # found them: they are written by this run all the same (outputs there before it are not).
                outcome.written = [p for p in outputs if p.name not in before]
                outcome.status = "written" if outcome.written else "existing"
            outcome.add_to(summary)
        summary.seconds = time.perf_counter() - start
    return summary
