"""Batch prediction on Ray Data (`msunet predict --engine ray`): same outputs as one process, corrupt files
reported, an actor killed mid-run loses and duplicates nothing. Needs Ray: `make test-scale`."""

import importlib.util
import json
import os
import pathlib
import signal
import threading
import time

import numpy as np
import pytest

from msunet.cli import main
from msunet.distributed.ray_predict import RayPredictError, predict_ray
from msunet.data.imageio import write_png

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is optional: `make test-scale` installs msunet[ray] and runs these tests")
needs_onnx = pytest.mark.skipif(importlib.util.find_spec("tf2onnx") is None,
                                reason="the bundle tests need tf2onnx (pip install 'msunet[export]'; `make venv` has it)")


def test_unreachable_address_is_refused_before_any_work(tmp_path):
    start = time.monotonic()
    with pytest.raises(RayPredictError, match="cannot be reached.*ray start --head"):
        predict_ray(tmp_path, tmp_path, tmp_path / "out", address="127.0.0.1:1")
    with pytest.raises(RayPredictError, match="not HOST:PORT"):
        predict_ray(tmp_path, tmp_path, tmp_path / "out", address="nowhere")
    with pytest.raises(RayPredictError, match="concurrency must be a whole number"):
        predict_ray(tmp_path, tmp_path, tmp_path / "out", concurrency=0)
    assert time.monotonic() - start < 15 and not (tmp_path / "out").exists()


def test_cli_ray_options_need_the_ray_engine(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path), "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--actors", "2"]) != 0
    assert "go with --engine ray" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# On a local Ray instance (2 CPUs)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as `msunet train` writes it (untrained weights, moved off their initial values)."""
    from msunet.config import RunConfig
    from msunet.data.preprocessing import Normalization
    from msunet.models import build_model

    cfg = RunConfig().override(["model.depth=2", "model.filters=4", "data.patch_size=32", "model.precision=float32"])
    model = build_model(cfg.model)
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    run = tmp_path_factory.mktemp("run")
    model.save(run / "best.keras")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    Normalization("dataset", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)).to_json(run / "normalization.json")
    return run


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory):
    from msunet.exporting.bundle import export

    return export(run_dir, tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """60 images of mixed sizes (a few larger, tiled in many windows), two of them corrupt."""
    src = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    for i in range(58):
        size = (400, 380) if i % 10 == 0 else tuple(int(v) for v in rng.integers(9, 140, 2))
        write_png(src / f"img{i:02d}.png", (rng.random((*size, 3)) * 255).astype(np.uint8))
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    (src / "empty.png").write_bytes(b"")
    return src


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(bundle, images, tmp_path_factory):
    from msunet.runtime import predict

    out = tmp_path_factory.mktemp("single")
    summary = predict(bundle, images, out, engine="onnxruntime", threads=1, tile_size=64)
    return out, summary


@needs_ray
@needs_onnx
def test_ray_writes_what_one_process_writes_and_reports_corrupt_files(ray_local, bundle, images, reference, tmp_path):
    single_out, single = reference
    summary = predict_ray(bundle, images, tmp_path / "out", engine="onnxruntime", threads=1, tile_size=64)
    assert _files(tmp_path / "out") == _files(single_out)  # byte for byte: masks, every scale, overlays
    assert sorted(map(str, summary.written)) == sorted(map(str, (tmp_path / "out").iterdir()))
    assert len(summary.written) == len(single.written) == 58 * 3
    assert summary.failed == single.failed and {pathlib.Path(p).name for p, _ in summary.failed} == {
        "broken.png", "empty.png"}
    again = predict_ray(bundle, images, tmp_path / "out", engine="onnxruntime", threads=1, tile_size=64)
    assert not again.written and len(again.existing) == 58  # nothing overwritten silently


def _kill_one_actor() -> int | None:
    """SIGKILL one of Ray Data's actor processes (as the kernel's OOM killer would); its pid, or None."""
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"_PredictWorker" in cmdline and b"MapWorker" in cmdline:
                os.kill(int(proc.name), signal.SIGKILL)
                return int(proc.name)
    return None


@needs_ray
@needs_onnx
def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(ray_local, bundle, images, reference, tmp_path):
    single_out, _ = reference
    out = tmp_path / "out"
    result = {}
    worker = threading.Thread(target=lambda: result.update(summary=predict_ray(
        bundle, images, out, engine="onnxruntime", threads=1, tile_size=64)))
    worker.start()
    killed, done_at_kill = None, None
    deadline = time.monotonic() + 120
    while killed is None and worker.is_alive() and time.monotonic() < deadline:
        done = len(list(out.glob("*_overlay.png"))) if out.is_dir() else 0
        if done >= 3:
            done_at_kill, killed = done, _kill_one_actor()
        time.sleep(0.02)
    worker.join(timeout=300)
    assert killed is not None and done_at_kill < 58, "the actor must die mid-run for this test to mean anything"
    summary = result["summary"]
    assert _files(out) == _files(single_out)  # every image whole, no temporary file left behind
    written = [str(p) for p in summary.written]
    assert len(written) == len(set(written)) == 58 * 3
    assert sorted(pathlib.Path(p).name for p, _ in summary.failed) == ["broken.png", "empty.png"]


@needs_ray
def test_ray_runs_the_engine_msunet_predict_chooses_for_a_run(ray_local, run_dir, images, tmp_path):
    from msunet.inference.engines import predict

    few = tmp_path / "few"
    few.mkdir()
    for name in ("img00.png", "img01.png", "broken.png"):
        (few / name).symlink_to(images / name)
    single = predict(run_dir, few, tmp_path / "single", tile_size=64)
    assert main(["predict", "--model", str(run_dir), "--input", str(few), "--out", str(tmp_path / "ray"),
                 "--tile", "64", "--engine", "ray", "--actors", "1"]) == 1  # 1: a file failed
    assert _files(tmp_path / "ray") == _files(tmp_path / "single")
    assert [pathlib.Path(p).name for p, _ in single.failed] == ["broken.png"]
