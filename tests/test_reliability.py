"""Reliability (issue 29): the quick part of `benchmarks/reliability.py` (kills, graceful stops, a rotten
folder, a full disk, a read-only folder, concurrent runs; `make test-chaos` runs the full counts), and
the pieces it relies on: the folder lock and the sweep of interrupted writes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings

import pytest
from helpers import ROOT

from msunet.atomic import LOCK_FILE, FolderBusy, FolderLock, atomic_path, sweep_leftovers


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_lock_on_a_folder_is_refused_with_its_owner_named(tmp_path):
    with FolderLock(tmp_path / "out", "predict"):
        with pytest.raises(FolderBusy, match=rf"{tmp_path / 'out'} is in use by msunet predict \(pid {os.getpid()}\)"):
            FolderLock(tmp_path / "out", "train").acquire()
    with FolderLock(tmp_path / "out", "train"):  # released: free again
        pass
    assert not (tmp_path / "out" / LOCK_FILE).exists()  # removed by its owner


def test_a_lock_dies_with_its_process(tmp_path):
    script = f"from msunet.atomic import FolderLock; import os; FolderLock({str(tmp_path)!r}, 'x').acquire(); os._exit(0)"
    subprocess.run([sys.executable, "-c", script], check=True)
    FolderLock(tmp_path, "train").acquire().release()  # no stale lock after the owner is gone


def test_sweep_removes_what_dead_writers_left_and_nothing_else(tmp_path):
    dead = _dead_pid()
    left = [tmp_path / f".last.tmp-{dead}-140.keras", tmp_path / f".epoch-3.tmp-{dead}.weights.h5"]
    (tmp_path / f".bundle-int8.tmp-{dead}").mkdir()
    live = [tmp_path / f".mask.tmp-{os.getpid()}-1.png", tmp_path / "a.tmp-1.png", tmp_path / ".hidden"]
    for path in left + live:
        path.write_bytes(b"x")
    removed = sweep_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted([p.name for p in left] + [f".bundle-int8.tmp-{dead}"])
    assert all(p.exists() for p in live)


def test_atomic_path_leaves_nothing_when_the_write_fails(tmp_path):
    with pytest.raises(OSError), atomic_path(tmp_path / "a.png") as tmp:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


# --- the harness, quick counts ------------------------------------------------------------------------

def test_reliability_harness_quick_counts_hold(tmp_path):
    """One test, so that pytest-xdist cannot split the scenarios over workers and run the harness twice.
    A scenario the machine cannot run (full-disk and read-only need root or a non-root user) is skipped
    by the harness with its reason, shown here as a warning."""
    spec = importlib.util.spec_from_file_location("reliability", ROOT / "benchmarks" / "reliability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.run(quick=True, root=tmp_path)
    assert [r["scenario"] for r in result["rows"]] == list(module.SCENARIOS)
    failed = []
    for entry in result["rows"]:
        if entry["tried"] == 0 and entry["note"].startswith("skipped"):
            warnings.warn(f"reliability {entry['scenario']}: {entry['note']}", stacklevel=1)
        elif not (entry["tried"] > 0 and entry["held"] == entry["tried"] and entry["lost_bytes"] == 0):
            failed.append(entry)
    assert not failed, "\n".join(f"{e['scenario']}: held {e['held']}/{e['tried']}, {e['lost_bytes']} bytes lost; "
                                 f"{e['failures']}" for e in failed)
