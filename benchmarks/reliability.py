"""Reliability in figures: random kills, graceful stops, rotten folders, full disks, read-only folders and
concurrent runs, each tried many times on the `msunet` command line, with what held counted.

`python benchmarks/reliability.py [--quick] [--only NAME[,NAME]] [--seed N]` runs the scenarios below in
subprocesses (`python -m msunet ...`, as a user runs them) on synthetic data that msunet makes, and
writes `benchmarks/results/reliability/reliability-DATE.json` and a Markdown table (`--table` prints it).
`--quick` is the part `make test` runs (tests/test_reliability.py): fewer kills, smaller folders.
`make test-chaos` runs the full counts.

Scenarios (what "held" means for each):
- train-kills: `kill -9` at random moments of `msunet train` (a fraction of them timed to land while a
  checkpoint is being written or the run's bundle exported), each followed by `msunet train --resume`
  until the run completes. Held: the final best.keras and history.csv equal an uninterrupted run's with
  the same seed (weights within `WEIGHT_TOL`, see there), and no visible file in the run folder was ever
  partial (a scanner thread opens every file while the run goes), and no temporary file is left at the end.
- predict-kills: `kill -9` at random moments of `msunet predict` on a folder, then a re-run: outputs
  byte-identical to an uninterrupted run, none partial at any moment.
- graceful-stop: SIGTERM and SIGINT during training (exit 128+signal, a message naming `--resume`, the
  resume completes) and during prediction (finished outputs kept and whole, the re-run completes).
- rot-folder: a folder with 1% bad files (zero bytes, truncated PNG / JPEG / TIFF, a text file named
  .png, a decompression-bomb header, an unreadable file (not as root), a mask of the wrong size, an
  empty mask): `check`, `train` and `predict` finish, report each bad file once with its reason, and
  their counts add up to the inputs.
- full-disk (root, Linux: a small tmpfs): training and prediction into a folder that fills up: a clear
  error naming the folder, no partial or temporary file left, and once space is back `--resume` / the
  re-run completes.
- read-only: a read-only output folder (a read-only tmpfs as root, chmod 555 otherwise) is refused by
  `predict` and `train` before any work, with the folder named.
- concurrency: two `msunet predict` into one folder and two `msunet train` into one `--out`, started
  together: one works, the other is refused at once with the owner named; nothing is corrupted.
- memory: peak RSS of `msunet predict` on the rot folder (the 20000x20000 figure is
  `benchmarks/out_of_core.py`'s).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "reliability"
# Tiny and deterministic: one worker thread for the patches, fixed epochs (no time budget), no planning left.
TRAIN_SET = ["model.depth=2", "model.filters=4", "data.patch_size=32", "train.batch_size=4",
             "train.steps_per_epoch=4", "train.workers=1", "train.seed=7", "train.val_batches=2",
             "model.precision=float32", "train.compiler=graph"]  # no device probe: the same step every time
# The resumed run must reproduce the uninterrupted one. Measured on TensorFlow CPU (oneDNN) with one
# patch thread: bit-identical weights; the tolerance allows for a kernel that sums in another order
# after a restart (float32 round-off, ~1e-6 relative, grown over a few epochs), not for a lost epoch.
WEIGHT_TOL = 1e-4
LEFTOVER = re.compile(r"^\..+\.(?:tmp|old)-\d+")


# --- helpers -----------------------------------------------------------------------------------------

def msunet(*args: str, **kwargs) -> subprocess.Popen:
    """`python -m msunet ARGS` with the caller's environment and stdout/stderr captured."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "msunet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, (out or "") + (err or "")


def check_file(path: pathlib.Path) -> str | None:
    """Why `path` is partial or unreadable, or None: every kind of file msunet writes, opened and checked."""
    try:
        suffix = path.suffix.lower()
        if suffix == ".json":
            json.loads(path.read_text())
        elif suffix in (".keras", ".npz", ".zip"):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
                if bad:
                    return f"corrupt member {bad}"
        elif suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as f:
                f.visit(lambda name: None)
        elif suffix == ".csv":
            text = path.read_text()
            lines = text.splitlines()
            if text and not text.endswith("\n"):
                return "last row unfinished"
            widths = {line.count(",") for line in lines if line}
            if len(widths) > 1:
                return f"rows of {sorted(widths)} commas"
        elif suffix in (".png", ".tif", ".tiff", ".jpg"):
            from msunet.data.imageio import read_image

            read_image(path)
        elif suffix == ".onnx":
            if path.stat().st_size == 0:
                return "empty"
    except FileNotFoundError:
        return None  # replaced or removed between the listing and the open: not partial
    except Exception as err:  # noqa: BLE001 - any failure to read is the finding
        return f"{type(err).__name__}: {str(err)[:200]}"
    return None


class Scanner(threading.Thread):
    """Opens every visible file under `folder` over and over while a command runs; records partial ones.
    Hidden files (`.NAME.tmp-PID...`: writes in progress) are skipped: they are never read as results."""

    def __init__(self, folder: pathlib.Path, pause: float = 0.02):
        super().__init__(daemon=True)
        self.folder, self.pause = folder, pause
        self.stop_event, self.findings, self.scans, self.files_checked = threading.Event(), [], 0, 0

    def run(self):
        while not self.stop_event.is_set():
            for path in visible_files(self.folder):
                why = check_file(path)
                self.files_checked += 1
                if why:
                    self.findings.append(f"{path.relative_to(self.folder)}: {why}")
            self.scans += 1
            self.stop_event.wait(self.pause)

    def stop(self) -> list[str]:
        self.stop_event.set()
        self.join()
        return self.findings


def visible_files(folder: pathlib.Path):
    if not folder.is_dir():
        return
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                yield pathlib.Path(root) / name


def leftovers(folder: pathlib.Path) -> list[str]:
    """Temporary files or folders of interrupted writes still present under `folder`."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if LEFTOVER.match(name):
                found.append(str(pathlib.Path(root, name).relative_to(folder)))
    return found


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, poll: float = 0.002) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def writing(folder: pathlib.Path, pattern: str) -> bool:
    """A temporary file or folder matching `pattern` exists under `folder` (a write in progress)."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if LEFTOVER.match(name) and re.search(pattern, name):
                return True
    return False


def rows(path: pathlib.Path) -> list[list[str]]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def weights_of(path: pathlib.Path) -> list[np.ndarray]:
    """The weights of a .keras file, read from its archive with h5py (no TensorFlow in this process)."""
    import io

    import h5py

    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as f:
        arrays = []
        f.visititems(lambda name, obj: arrays.append((name, np.asarray(obj))) if isinstance(obj, h5py.Dataset) else None)
    return [a for _, a in sorted(arrays, key=lambda t: t[0])]


def compare_runs(ref: pathlib.Path, run: pathlib.Path) -> tuple[float, str | None]:
    """(largest weight difference of best.keras, what differs in history.csv or None)."""
    a, b = weights_of(ref / "best.keras"), weights_of(run / "best.keras")
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf"), "different model"
    diff = max(float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0 for x, y in zip(a, b))
    ra, rb = rows(ref / "history.csv"), rows(run / "history.csv")
    if [r[0] for r in ra] != [r[0] for r in rb] or ra[0] != rb[0]:
        return diff, f"history epochs {[r[0] for r in rb[1:]]} vs {[r[0] for r in ra[1:]]}"
    worst = max((abs(float(x) - float(y)) for r1, r2 in zip(ra[1:], rb[1:]) for x, y in zip(r1[1:], r2[1:])),
                default=0.0)
    return diff, None if worst <= 1e-3 else f"history values differ by up to {worst:.2e}"


def row(name: str, tried: int, held: int, lost_bytes: int = 0, note: str = "", failures=(), **figures) -> dict:
    return {"scenario": name, "tried": tried, "held": held, "lost_bytes": lost_bytes, "note": note,
            "failures": list(failures)[:20], **figures}


# --- setup -------------------------------------------------------------------------------------------

class Workspace:
    """Synthetic data and one uninterrupted reference run (+ its predictions), made once per harness run."""

    def __init__(self, root: pathlib.Path, quick: bool, seed: int):
        from msunet.data.synthetic import make_dataset

        self.root, self.quick, self.rng = root, quick, random.Random(seed)
        self.data = make_dataset(root / "data", count=12, size=(48, 40), seed=3)
        self.epochs = 4 if quick else 8
        self.train_args = ["--set", *TRAIN_SET, f"train.epochs={self.epochs}"]
        self.images = root / "predict-in"
        make_dataset(root / "predict-src", count=8 if quick else 60, size=(64, 56), seed=5)
        shutil.copytree(root / "predict-src" / "images", self.images, dirs_exist_ok=True)
        self._refs = {}

    def fresh(self, name: str) -> pathlib.Path:
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def train_cmd(self, out: pathlib.Path, bundle: bool = True) -> list[str]:
        return ["train", "--data", str(self.data), "--out", str(out), *self.train_args, "--verbose", "0",
                *([] if bundle else ["--no-bundle"])]

    def _reference(self, name: str, command) -> tuple[pathlib.Path, float]:
        """Runs `command(out)` once, uninterrupted, into a fresh folder `name`: (that folder, its wall time)."""
        if name not in self._refs:
            out = self.fresh(name)
            start = time.monotonic()
            code, text = finish(msunet(*command(out)))
            if code != 0:
                raise RuntimeError(f"the uninterrupted {name} failed ({code}):\n{text[-3000:]}")
            self._refs[name] = (out, time.monotonic() - start)
        return self._refs[name]

    def ref_run(self) -> tuple[pathlib.Path, float]:
        """The uninterrupted run (with its int8 bundle) and its wall time."""
        return self._reference("ref-run", self.train_cmd)

    def predict_cmd(self, out: pathlib.Path, images: pathlib.Path | None = None) -> list[str]:
        run, _ = self.ref_run()
        return ["predict", "--model", str(run), "--input", str(images or self.images), "--out", str(out), "--quiet"]

    def ref_pred(self) -> tuple[pathlib.Path, float]:
        """The uninterrupted prediction of the run's bundle on the predict folder, and its wall time."""
        return self._reference("ref-pred", self.predict_cmd)


def tree_bytes(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in visible_files(folder)}


# --- scenarios ---------------------------------------------------------------------------------------

def train_kills(ws: Workspace) -> dict:
    """Kill chains: one run killed again and again (each time resumed as a user would: `--resume` where
    run.json exists, else the same `msunet train` again) until it completes; a new chain while kills remain."""
    ref, ref_s = ws.ref_run()
    kills = 3 if ws.quick else 20
    where = {"random": 0, "during a checkpoint write": 0, "during the bundle export": 0}
    landed, commands, failures, chains = 0, 0, [], 0
    diffs, reads, scans = [], 0, 0
    while landed < kills and chains < kills:  # a chain ends when a resume completes before its kill
        chains += 1
        out = ws.fresh(f"kill-run-{chains}")
        scanner = Scanner(out)
        scanner.start()
        for _ in range(4 * kills + 10):
            resume = (out / "run.json").is_file()
            proc = msunet(*(["train", "--resume", str(out), "--verbose", "0"] if resume else ws.train_cmd(out)))
            commands += 1
            if landed < kills:
                kind = ["during a checkpoint write", "during the bundle export", "random", "random"][landed % 4]
                if kind == "during a checkpoint write":
                    wait_for(lambda: writing(out, r"\.(keras|h5)$"), ref_s * 2, proc)
                elif kind == "during the bundle export":
                    wait_for(lambda: writing(out, r"^\.bundle"), ref_s * 2, proc)
                else:
                    wait_for(lambda: False, ws.rng.uniform(1.0, ref_s), proc)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                    landed += 1
                    where[kind] += 1
                    continue
            code, text = finish(proc)
            if code != 0:
                failures.append(f"chain {chains}: exit {code}: {text.strip().splitlines()[-1:]}")
            break  # completed (or failed): this chain is done
        findings = scanner.stop()
        reads, scans = reads + scanner.files_checked, scans + scanner.scans
        diff, history = compare_runs(ref, out) if (out / "best.keras").is_file() else (float("inf"), "no best.keras")
        diffs.append(diff)
        failures += [f"chain {chains}: {f}" for f in findings] + [f"chain {chains} left over: {p}" for p in leftovers(out)]
        if history:
            failures.append(f"chain {chains}: {history}")
        if diff > WEIGHT_TOL:
            failures.append(f"chain {chains}: best.keras differs by {diff:.3g}")
        if not _same_bundle(ref, out):
            failures.append(f"chain {chains}: the run's bundle differs from the uninterrupted run's")
    held = landed if not failures else 0
    return row("train-kills", landed, held, note=f"{', '.join(f'{n} {k}' for k, n in where.items())}; {chains} run(s), {commands} commands; "
               f"largest weight difference {max(diffs):.3g}; {reads} file reads in {scans} scans",
               failures=failures, max_weight_diff=max(diffs), kills_by_moment=where, file_reads=reads)


def _same_bundle(ref: pathlib.Path, run: pathlib.Path) -> bool:
    """Both runs' int8 bundles hold the same model: the same reference outputs (what best.keras computes,
    stored at export) and the same outputs of their int8 graphs on them. The ONNX files' bytes are not
    compared: the converter writes node names that differ from one export to the next."""
    a, b = ref / "bundle-int8", run / "bundle-int8"
    if not ((a / "bundle.json").is_file() and (b / "bundle.json").is_file()):
        return (a / "bundle.json").is_file() == (b / "bundle.json").is_file()
    if (a / "reference.npz").read_bytes() != (b / "reference.npz").read_bytes():
        return False
    import onnxruntime as ort

    with np.load(a / "reference.npz") as stored:
        inputs = stored["inputs"]
    outputs = []
    for bundle in (a, b):
        session = ort.InferenceSession(str(bundle / json.loads((bundle / "bundle.json").read_text())["model_file"]),
                                       providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: inputs}))
    # Same graph, same inputs, same process: equal up to float round-off of kernel choice (1e-6).
    return all(np.allclose(x, y, atol=1e-6) for x, y in zip(*outputs))


def predict_kills(ws: Workspace) -> dict:
    """Kill chains: one output folder killed and re-run until a run completes, compared byte for byte with the
    uninterrupted run's; a new folder while kills remain (a complete folder leaves nothing to kill)."""
    ref, ref_s = ws.ref_pred()
    kills = 2 if ws.quick else 20
    landed, failures, chains, compared, reads, scans, lost = 0, [], 0, 0, 0, 0, 0
    a = tree_bytes(ref)
    while landed < kills and chains < kills:
        chains += 1
        out = ws.fresh(f"kill-pred-{chains}")
        scanner = Scanner(out, pause=0.005)
        scanner.start()
        for _ in range(4 * kills + 10):
            proc = msunet(*ws.predict_cmd(out))
            if landed < kills:
                wait_for(lambda: False, ws.rng.uniform(0.3, ref_s), proc)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                    landed += 1
                    continue
            code, text = finish(proc)
            if code != 0:
                failures.append(f"chain {chains}: exit {code}: {text.strip().splitlines()[-1:]}")
            break
        findings = scanner.stop()
        reads, scans = reads + scanner.files_checked, scans + scanner.scans
        b = tree_bytes(out)
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        lost += sum(len(a[k]) for k in differ if k in a)
        compared += len(a)
        failures += [f"chain {chains}: {f}" for f in findings] + [f"chain {chains} left over: {p}" for p in leftovers(out)]
        failures += [f"chain {chains} differs: {k}" for k in differ]
    held = landed if not failures else 0
    return row("predict-kills", landed, held, lost, note=f"{chains} output folder(s), {compared} output files compared "
               f"byte for byte; {reads} file reads in {scans} scans", failures=failures)


def _signal_once(proc, sig, ready, timeout: float, poll: float, settle: float = 0.0) -> tuple[int, str] | None:
    """Sends `sig` once `ready()` (and `settle` seconds more): (exit code, output), or None if `proc` ended first."""
    wait_for(ready, timeout, proc, poll=poll)
    time.sleep(settle)
    if proc.poll() is not None:
        return None
    proc.send_signal(sig)
    return finish(proc)


def graceful_stop(ws: Workspace) -> dict:
    ref, ref_s = ws.ref_run()
    tried, held, failures = 0, 0, []
    # Quick: SIGTERM for training and SIGINT for prediction (cli.py handles both the same way, as Ctrl-C).
    for sig in (signal.SIGTERM,) if ws.quick else (signal.SIGTERM, signal.SIGINT):
        out = ws.fresh(f"stop-run-{sig.name}")
        proc = msunet(*ws.train_cmd(out, bundle=False))
        # Once the first epoch's state is on disk: the stop lands inside a later epoch.
        stopped = _signal_once(proc, sig, lambda: (out / "state" / "state.json").is_file(), ref_s * 3, 0.01, 0.3)
        if stopped is None:
            failures.append(f"train finished before {sig.name}")
            continue
        code, text = stopped
        tried += 1
        ok = code == 128 + sig and f"msunet train --resume {out}" in text and "Traceback" not in text
        rcode, _ = finish(msunet("train", "--resume", str(out), "--verbose", "0", "--no-bundle"))
        diff, history = compare_runs(ref, out)
        ok = ok and rcode == 0 and history is None and diff <= WEIGHT_TOL and not leftovers(out)
        held += ok
        if not ok:
            failures.append(f"train {sig.name}: exit {code}, resume exit {rcode}, weights {diff:.3g}, history {history}: "
                            f"{text.strip().splitlines()[-1:]}")
    ref_pred, ref_pred_s = ws.ref_pred()
    for sig in (signal.SIGINT,) if ws.quick else (signal.SIGTERM, signal.SIGINT):
        out = ws.fresh(f"stop-pred-{sig.name}")
        proc = msunet(*ws.predict_cmd(out))
        stopped = _signal_once(proc, sig, lambda: any(out.glob("*.png")), ref_pred_s * 3, 0.005)
        if stopped is None:
            failures.append(f"predict finished before {sig.name}")
            continue
        code, text = stopped
        tried += 1
        kept = [p for p in visible_files(out) if p.suffix == ".png"]
        whole = all(check_file(p) is None for p in kept)
        ok = code == 128 + sig and "run the same command again" in text and whole and "Traceback" not in text
        rcode, _ = finish(msunet(*ws.predict_cmd(out)))
        ok = ok and rcode == 0 and tree_bytes(out) == tree_bytes(ref_pred) and not leftovers(out)
        held += ok
        if not ok:
            failures.append(f"predict {sig.name}: exit {code}, {len(kept)} kept (whole: {whole}), re-run {rcode}: "
                            f"{text.strip().splitlines()[-1:]}")
    return row("graceful-stop", tried, held, failures=failures,
               note=("SIGTERM in train (mid-epoch), SIGINT in predict (after the first output)" if ws.quick else
                     "SIGTERM and SIGINT once each in train (mid-epoch) and in predict (after the first output)"))


BAD_KINDS = ("zero-byte image", "truncated PNG", "truncated JPEG", "truncated TIFF", "text named .png",
             "decompression bomb header", "unreadable file", "dangling symlink", "mask of the wrong size",
             "empty mask file")


def make_rot_folder(root: pathlib.Path, count: int, seed: int = 11) -> tuple[pathlib.Path, dict[str, str]]:
    """`count` pairs of 40x40 images, 1% of them bad (at least one of each kind): {file name: kind}."""
    import struct
    import zlib

    from msunet.data.imageio import write_png
    from msunet.data.synthetic import make_pair

    rng = np.random.default_rng(seed)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    kinds = [k for k in BAD_KINDS if not (k == "unreadable file" and os.geteuid() == 0)]  # root reads anything
    nbad = max(len(kinds), count // 100)
    bad_at = {int(i): kinds[n % len(kinds)] for n, i in enumerate(rng.choice(count, nbad, replace=False))}
    bad = {}
    for i in range(count):
        name = f"img_{i:04d}"
        image, mask = make_pair((40, 40), rng)
        kind = bad_at.get(i)
        ext = {"truncated JPEG": ".jpg", "truncated TIFF": ".tif"}.get(kind, ".png")
        ipath, mpath = images / f"{name}{ext}", masks / f"{name}.png"
        if kind == "truncated JPEG":
            from PIL import Image

            Image.fromarray(image).save(ipath, quality=90)
            ipath.write_bytes(ipath.read_bytes()[: ipath.stat().st_size // 3])
        elif kind == "truncated TIFF":
            import tifffile

            tifffile.imwrite(ipath, image)
            ipath.write_bytes(ipath.read_bytes()[: ipath.stat().st_size // 2])
        else:
            write_png(ipath, image)
        write_png(mpath, mask)
        if kind == "zero-byte image":
            ipath.write_bytes(b"")
        elif kind == "truncated PNG":
            ipath.write_bytes(ipath.read_bytes()[: ipath.stat().st_size // 2])
        elif kind == "text named .png":
            ipath.write_text("this is not an image\n")
        elif kind == "decompression bomb header":
            def chunk(tag, data):
                return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
            ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
            ipath.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                              + chunk(b"IEND", b""))
        elif kind == "unreadable file":
            ipath.chmod(0)
        elif kind == "dangling symlink":
            ipath.unlink()
            ipath.symlink_to(root / "gone" / ipath.name)
        elif kind == "mask of the wrong size":
            write_png(mpath, np.zeros((20, 30), np.uint8))
        elif kind == "empty mask file":
            mpath.write_bytes(b"")
        if kind:
            bad[ipath.name if "mask" not in kind else mpath.name] = kind
    return root, bad


def rot_folder(ws: Workspace) -> dict:
    count = 60 if ws.quick else 1000
    data, bad = make_rot_folder(ws.fresh("rot"), count)
    bad_images = {n for n, k in bad.items() if "mask" not in k}
    failures, tried = [], 0

    def reported(text: str, names) -> dict[str, int]:  # lines that name each file
        lines = text.splitlines()
        return {n: sum(bool(re.search(re.escape(pathlib.Path(n).stem) + r"\b", line)) for line in lines) for n in names}

    # check: every bad file named, once
    code, text = finish(msunet("check", str(data), "--set", "model.in_channels=3"))
    tried += 1
    counts = reported(text, bad)
    if code not in (0, 1) or "Traceback" in text or any(c != 1 for c in counts.values()):
        failures.append(f"check: exit {code}; times each bad file is named: {counts}")
    # train: the run's problems.txt lists each bad pair once; the run completes
    run = ws.fresh("rot-run")
    code, text = finish(msunet("train", "--data", str(data), "--out", str(run), "--set", *TRAIN_SET, "train.epochs=1",
                               "--verbose", "0", "--no-bundle"))
    tried += 1
    problems = (run / "problems.txt").read_text() if (run / "problems.txt").is_file() else ""
    counts = reported(problems, bad)
    if code != 0 or any(c != 1 for c in counts.values()) or len(problems.splitlines()) != len(bad):
        failures.append(f"train: exit {code}; {len(problems.splitlines())} problems for {len(bad)} bad files; {counts}"
                        + (f": {text.strip().splitlines()[-1]}" if code else ""))
    # predict: written + failed = inputs; each bad image failed once with a reason
    out = ws.fresh("rot-pred")
    proc = msunet("predict", "--model", str(run), "--input", str(data / "images"), "--out", str(out), "--quiet",
                  "--no-overlay")
    rss = _peak_rss(proc)
    code, text = finish(proc)
    tried += 1
    written = int(re.search(r"written: (\d+) image", text).group(1)) if "written:" in text else -1
    failed = re.findall(r"^  (.+?): (.+)$", text, flags=re.MULTILINE)
    failed_names = [pathlib.Path(p).name for p, _ in failed]
    if (code != 1 or written + len(failed) != count or sorted(failed_names) != sorted(bad_images)
            or any(not reason.strip() for _, reason in failed)):
        failures.append(f"predict: exit {code}; {written} written + {len(failed)} failed of {count}; "
                        f"failed {sorted(failed_names)[:8]} vs bad {sorted(bad_images)[:8]}")
    return row("rot-folder", tried, tried - len(failures), failures=failures,
               note=f"{count} pairs, {len(bad)} bad ({', '.join(sorted(set(bad.values())))}); check, train, predict"
               + (f"; predict's peak RSS {rss:.0f} MiB" if rss else ""),
               predict_peak_rss_mib=rss)


def _peak_rss(proc: subprocess.Popen) -> float | None:
    """Peak resident memory of `proc` in MiB (Linux: VmHWM), polled until it exits."""
    peak = None
    status = pathlib.Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            peak = int(re.search(r"VmHWM:\s+(\d+)", status.read_text()).group(1)) / 1024
        time.sleep(0.05)
    return peak


@contextlib.contextmanager
def tmpfs(path: pathlib.Path, size_kib: int, read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size_kib}k" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PermissionError(proc.stderr.strip() or "mount failed")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def can_mount() -> str | None:
    """None where this process may mount a tmpfs (root on Linux), else why not."""
    if platform.system() != "Linux" or os.geteuid() != 0 or not shutil.which("mount"):
        return "needs root on Linux to mount a small tmpfs"
    probe = pathlib.Path(tempfile.mkdtemp(prefix="msunet-mount-"))
    try:
        with tmpfs(probe, 64):
            return None
    except PermissionError as err:
        return f"cannot mount a tmpfs here ({err})"
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def full_disk(ws: Workspace) -> dict:
    why = can_mount()
    if why:
        return row("full-disk", 0, 0, note=f"skipped: {why}")
    ref, _ = ws.ref_run()
    ref_pred, _ = ws.ref_pred()
    failures, tried = [], 0
    mount = ws.root / "small-disk"
    with tmpfs(mount, 600) as disk:
        # Training: 600 KiB holds the run's first files and a checkpoint or two, then fills.
        run = disk / "run"
        code, text = finish(msunet(*ws.train_cmd(run, bundle=False)))
        tried += 1
        clear = code != 0 and f"{run}" in text and "space" in text and "Traceback" not in text
        partial = [f for f in (check_file(p) for p in visible_files(run)) if f] + leftovers(run)
        subprocess.run(["mount", "-o", "remount,size=65536k", str(disk)], check=True)  # space is back
        rcode, rtext = finish(msunet("train", "--resume", str(run), "--verbose", "0", "--no-bundle"))
        diff, history = compare_runs(ref, run) if rcode == 0 else (float("inf"), "no resume")
        if not (clear and not partial and rcode == 0 and diff <= WEIGHT_TOL and history is None):
            failures.append(f"train: exit {code} ({text.strip().splitlines()[-1:]}), partial {partial}, "
                            f"resume {rcode} ({rtext.strip().splitlines()[-1:]}), weights {diff:.3g}, {history}")
    with tmpfs(mount, 96) as disk:
        out = disk / "pred"
        code, text = finish(msunet(*ws.predict_cmd(out)))
        tried += 1
        clear = code != 0 and str(out) in text and "space" in text and "Traceback" not in text
        partial = [f for f in (check_file(p) for p in visible_files(out)) if f] + leftovers(out)
        kept = len(list(visible_files(out)))
        subprocess.run(["mount", "-o", "remount,size=65536k", str(disk)], check=True)
        rcode, _ = finish(msunet(*ws.predict_cmd(out)))
        same = rcode == 0 and tree_bytes(out) == tree_bytes(ref_pred)
        if not (clear and not partial and same):
            failures.append(f"predict: exit {code} ({text.strip().splitlines()[-1:]}), {kept} kept, partial {partial}, "
                            f"re-run {rcode}, same as uninterrupted {same}")
    return row("full-disk", tried, tried - len(failures), failures=failures,
               note="a 600 KiB tmpfs for training, 96 KiB for prediction, then remounted at 64 MiB and resumed")


def read_only(ws: Workspace) -> dict:
    ws.ref_run()
    failures, tried = [], 0
    mount = ws.root / "read-only"
    shutil.rmtree(mount, ignore_errors=True)
    with contextlib.ExitStack() as stack:
        if can_mount() is None:
            folder = stack.enter_context(tmpfs(mount, 64, read_only=True))
            how = "a read-only tmpfs"
        elif os.geteuid() != 0:
            mount.mkdir()
            mount.chmod(0o555)
            stack.callback(mount.chmod, 0o755)
            folder = mount
            how = "chmod 555"
        else:
            return row("read-only", 0, 0, note="skipped: root ignores permissions and no tmpfs can be mounted")
        for name, cmd in (("predict", ws.predict_cmd(folder)),
                          ("train", ws.train_cmd(folder / "run", bundle=False))):
            start = time.monotonic()
            code, text = finish(msunet(*cmd))
            tried += 1
            seconds = time.monotonic() - start
            if not (code != 0 and str(folder) in text and "cannot write there" in text and "Traceback" not in text):
                failures.append(f"{name}: exit {code}: {text.strip().splitlines()[-1:]}")
            elif "Epoch" in text or "written:" in text:
                failures.append(f"{name}: refused only after working ({seconds:.1f} s)")
    return row("read-only", tried, tried - len(failures), failures=failures, note=how)


def concurrency(ws: Workspace) -> dict:
    ref_pred, _ = ws.ref_pred()
    failures, tried = [], 0
    out = ws.fresh("two-preds")
    procs = [msunet(*ws.predict_cmd(out)) for _ in range(2)]
    results = [finish(p) for p in procs]
    tried += 1
    codes = sorted(c for c, _ in results)
    refused = [t for c, t in results if c != 0]
    if not (codes[0] == 0 and (codes[1] == 0 or any("in use by msunet predict" in t for t in refused))
            and tree_bytes(out) == tree_bytes(ref_pred) and not leftovers(out)):
        failures.append(f"predict: exits {codes}; {[t.strip().splitlines()[-1:] for t in refused]}")
    ref, _ = ws.ref_run()
    out = ws.fresh("two-runs")
    procs = [msunet(*ws.train_cmd(out, bundle=False)) for _ in range(2)]
    results = [finish(p) for p in procs]
    tried += 1
    codes = sorted(c for c, _ in results)
    refused = [t for c, t in results if c != 0]
    diff, history = compare_runs(ref, out) if codes[0] == 0 else (float("inf"), "no run")
    if not (codes == [0, 2] and any("in use by msunet train" in t or "refusing to overwrite" in t for t in refused)
            and diff <= WEIGHT_TOL and history is None):
        failures.append(f"train: exits {codes}; {[t.strip().splitlines()[-1:] for t in refused]}; weights {diff:.3g}")
    return row("concurrency", tried, tried - len(failures), failures=failures,
               note="two predicts into one folder, two trains into one --out, started together")


SCENARIOS = {"train-kills": train_kills, "predict-kills": predict_kills, "graceful-stop": graceful_stop,
             "rot-folder": rot_folder, "full-disk": full_disk, "read-only": read_only, "concurrency": concurrency}


def run(quick: bool = False, only=None, seed: int = 0, root: pathlib.Path | None = None) -> dict:
    """Runs the scenarios (all, or `only`) and returns {"rows": [...], machine, ...}."""
    from msunet import machine

    root = pathlib.Path(root or tempfile.mkdtemp(prefix="msunet-reliability-"))
    ws = Workspace(root, quick, seed)
    rows_ = []
    for name, fn in SCENARIOS.items():
        if only and name not in only:
            continue
        start = time.monotonic()
        try:
            entry = fn(ws)
        except Exception as err:  # noqa: BLE001 - a harness failure is a finding, reported in the table
            entry = row(name, 0, 0, failures=[f"harness: {type(err).__name__}: {err}"])
        entry["seconds"] = round(time.monotonic() - start, 1)
        rows_.append(entry)
        print(f"{name}: held {entry['held']}/{entry['tried']} in {entry['seconds']} s; {entry['note']}"
              + "".join(f"\n  ! {f}" for f in entry["failures"]), flush=True)
    return {"date": datetime.date.today().isoformat(), "quick": quick, "seed": seed,
            "machine": machine.describe(),
            "rows": rows_}


def table(result: dict) -> str:
    lines = ["| scenario | tried | held | bytes lost | note |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['scenario']} | {r['tried']} | {r['held']} | {r['lost_bytes']} | {r['note']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the counts make test uses")
    parser.add_argument("--only", help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--work", help="working folder (default: a new temporary folder)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/reliability/reliability-DATE.json)")
    parser.add_argument("--table", action="store_true", help="print the Markdown table at the end")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    result = run(args.quick, only, args.seed, pathlib.Path(args.work) if args.work else None)
    out = pathlib.Path(args.out) if args.out else RESULTS / f"reliability-{result['date']}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.table:
        print(table(result))
    print(f"wrote {out}")
    return 0 if all(r["held"] == r["tried"] for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
