"""Atomic file writes: the one way msunet writes a file (standard library only).

`with atomic_path(path) as tmp:` yields a temporary path in the same folder with the same suffix
(so writers that choose a format by it still do); when the block ends normally it replaces `path`
in one `os.replace`, and when it raises the temporary file is removed and `path` is untouched. A
reader therefore sees the old file or the new one, never half of one, also after a kill.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A temporary sibling of `path` to write; moved onto `path` when the block succeeds."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{threading.get_ident()}{path.suffix}")
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
