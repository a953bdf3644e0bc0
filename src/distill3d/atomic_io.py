"""Atomic file writes: a crash (or a kill) during a write leaves the previous file intact.

Every write that matters (checkpoints, results, metrics, caches, dataset tables) goes
through :func:`atomic_write_bytes`: the data is written to a temporary file in the target's
folder, flushed and ``fsync``-ed, moved over the target with ``os.replace`` (atomic on
POSIX), and the folder entry is ``fsync``-ed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

_CHUNK = 16 << 20


def _write_all(handle: Any, data: bytes | memoryview) -> None:
    """Write ``data`` to ``handle`` in chunks (a separate function so that tests can
    simulate a crash in the middle of a write)."""
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        handle.write(view[start:start + _CHUNK])


def _fsync_dir(folder: Path) -> None:
    """Persist a folder entry (the rename) where the OS allows opening folders."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, ``fsync`` and
    ``os.replace``: a crash leaves the previous file (or none), never a partial one.
    Missing parent folders are created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_all(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding))
