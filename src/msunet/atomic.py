"""Atomic file writes: the one way msunet writes a file (standard library only).

`with atomic_path(path) as tmp:` yields a temporary path in the same folder with the same suffix
(so writers that choose a format by it still do); when the block ends normally it replaces `path`
in one `os.replace`, and when it raises the temporary file is removed and `path` is untouched. A
reader therefore sees the old file or the new one, never half of one, also after a kill.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import re
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A temporary sibling of `path` to write; moved onto `path` when the block succeeds. It keeps all of
    the name's suffixes (`.epoch-3.tmp-PID-TID.weights.h5`): some writers check them (Keras' `.weights.h5`)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, dot, suffixes = path.name.partition(".") if not path.name.startswith(".") else (path.name, "", "")
    tmp = path.with_name(f".{stem}.tmp-{os.getpid()}-{threading.get_ident()}{dot}{suffixes}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def replace_folder(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Moves the complete folder `tmp` to `target` (a bundle, an OME-Zarr store); an existing `target`
    is removed only once the new one is in place, so a reader never finds neither or half of one."""
    import shutil

    tmp, target = pathlib.Path(tmp), pathlib.Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


# What a writer killed mid-write leaves: `.NAME.tmp-PID-...` (atomic_path, bundles, OME-Zarr stores)
# and `.NAME.old-PID` (replace_folder). Only the writer's PID tells a leftover from work in progress.
_LEFTOVER = re.compile(r"^\..+\.(?:tmp|old)-(\d+)(?:[-.].*)?$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_leftovers(folder: str | os.PathLike) -> list[pathlib.Path]:
    """Removes from `folder` the temporary files and folders of writers that are no longer running
    (a kill, a full disk, a power cut) and returns them: what a re-run or `--resume` finds is then
    only complete files. Live writers' temporaries (another process at work) are left alone."""
    folder = pathlib.Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _LEFTOVER.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        remove(entry)
        removed.append(entry)
    return removed


def remove(entry: pathlib.Path) -> None:
    """Removes a file, a link or a folder with its contents (a link's target is left alone)."""
    import shutil

    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


LOCK_FILE = ".msunet-lock"


def not_writable(folder: str | os.PathLike, err: OSError) -> OSError:
    """The error for a folder msunet cannot write into (read-only, no permission, full): names it and the fix."""
    reason = err.strerror or str(err)
    error = OSError(f"{folder}: cannot write there ({reason}); choose a writable folder"
                    + (" or free space on its disk" if err.errno in (errno.ENOSPC, errno.EDQUOT) else ""))
    error.errno = err.errno  # str(error) is the message alone
    return error


def check_writable(folder: str | os.PathLike) -> pathlib.Path:
    """Creates `folder` if needed and writes (then removes) a small file in it: a read-only, foreign or
    full output folder is refused before any work, with `not_writable`'s message."""
    folder = pathlib.Path(folder)
    probe = folder / f".msunet-probe.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"msunet")
    except OSError as err:
        raise not_writable(folder, err) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return folder


class FolderBusy(OSError):
    """Another msunet process works in the folder (training into the same run, predicting into the same output)."""


class FolderLock:
    """An exclusive, advisory lock on a folder for as long as one msunet process writes into it.

    `flock` on `FOLDER/.msunet-lock` (which holds the owner's PID and task): the kernel releases it
    when the process ends, however it ends, so a kill never leaves a stale lock behind (only the small
    file, which the next owner takes over). A second process is refused at once with `FolderBusy`
    naming the owner. The owner removes the file when it is done (checking, when it locks, that the file
    it locked is still the one at the path). Where `fcntl` is missing (Windows) it does nothing.
    """

    def __init__(self, folder: str | os.PathLike, task: str):
        self.folder, self.task, self._fd = pathlib.Path(folder), task, None

    def acquire(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks
            return self
        path = self.folder / LOCK_FILE
        for _ in range(100):
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise not_writable(self.folder, err) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise FolderBusy(f"{self.folder} is in use by {owner}; wait until it finishes or choose another "
                                 "folder") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its owner removed it between our open and our lock: lock the new one
        else:  # pragma: no cover
            raise FolderBusy(f"{self.folder}: could not lock {path}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"msunet {self.task} (pid {os.getpid()})\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                (self.folder / LOCK_FILE).unlink()  # while still held: nobody else has it
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self if self._fd is not None else self.acquire()  # `with FolderLock(...).acquire():` too

    def __exit__(self, *exc) -> None:
        self.release()
