"""Writing a file so that no reader ever sees half of it, and a crash leaves the old one or the new."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; only if the block succeeds is the temporary synced
    to disk and renamed to ``path`` (and the folder synced after, where the OS can open one).
    Otherwise the temporary is removed and ``path`` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        _fsync(tmp, os.O_RDWR)
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # POSIX: the rename itself is durable once the folder is synced
            _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        tmp.unlink(missing_ok=True)
