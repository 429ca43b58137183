"""Stopping cleanly: SIGTERM (`kill PID`, a scheduler's stop) handled as Ctrl-C, and what each command
says when it is interrupted (standard library only).

A stop raises `KeyboardInterrupt` where the process is; the writers are atomic (`msunet.atomic`), so
what is on disk is whole: a run keeps its last finished epoch, a prediction its finished images.
"""

from __future__ import annotations

import errno
import os
import re
import signal

# A full or read-only disk: not the fault of an image or a setting, and gone once space is freed.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class Stopped(KeyboardInterrupt):
    """A signal such as SIGTERM, raised where the process is, so that it stops as Ctrl-C stops it."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def stop_on_signal(signum, frame):
    """A `signal.signal` handler: raises `Stopped`."""
    raise Stopped(signum)


NOTES = {
    "predict": "the images finished so far are kept; run the same command again to predict the rest",
    "evaluate": "run the same command again",
    "export": "no bundle was half-written; run the same command again",
    "check": "run the same command again",
    "demo": "run `make demo` again",
}


def interrupted_note(command: str) -> str:
    """What an interrupted `msunet COMMAND` leaves and how to go on (train says it itself: --resume)."""
    return NOTES.get(command, "nothing was left half-written")


def disk_errno(err: BaseException) -> int | None:
    """The errno of a full or read-only disk behind `err`, else None. Some writers report it only in
    their message (h5py: a RuntimeError "... errno = 28, error message = 'No space left on device'")."""
    code = getattr(err, "errno", None)
    if code is None:
        match = re.search(r"errno = (\d+)", str(err))
        code = int(match.group(1)) if match else None
    return code if code in DISK_ERRNOS else None


def train_stopped(err: BaseException, run_dir) -> tuple[int, str] | None:
    """(exit code, message) for a training stopped by Ctrl-C, a signal or a full disk, else None: the
    run keeps its last finished epoch and `--resume` goes on from there."""
    resume = f"msunet train --resume {run_dir}"
    if isinstance(err, KeyboardInterrupt):
        return (128 + getattr(err, "signum", signal.SIGINT),
                f"\nmsunet train: interrupted; the run keeps its last finished epoch. Continue with: {resume}")
    code = disk_errno(err)
    if code is None:
        return None
    return 1, (f"msunet train: error: {run_dir}: cannot write there ({os.strerror(code)}); the run keeps its last "
               f"finished epoch. Free space (or make it writable), then continue with: {resume}")
