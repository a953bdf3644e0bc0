"""A dataset index built once and cached beside the data (or in the user cache).

Building an index (which frames exist, which files belong to them, GT per frame) can
take a while on a large dataset; reading it back must be instant. The index is cached as
a pickle with a schema version and a fingerprint of the files it was built from, so a
stale index (new files, a newer distill3d schema) is rebuilt, never silently used.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from distill3d.atomic_io import atomic_write_bytes

INDEX_DIR_NAME = ".distill3d_index"


def user_cache_dir() -> Path:
    """``$DISTILL3D_CACHE`` or ``$XDG_CACHE_HOME/distill3d`` or ``~/.cache/distill3d``."""
    explicit = os.environ.get("DISTILL3D_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "distill3d"


def fingerprint_files(paths: Iterable[Path]) -> str:
    """A hash of the names, sizes and modification times of ``paths`` (missing files count)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        try:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class IndexKey:
    """What identifies an index: its kind (``kitti``, ``nuscenes-v1.0-mini-train``, ...),
    the schema version of the code that builds it, and the fingerprint of its sources."""

    kind: str
    schema_version: int
    fingerprint: str


INDEX_DIR_ENV = "DISTILL3D_INDEX_DIR"


def index_locations(root: Path, kind: str) -> list[Path]:
    """Where an index may live, in order of preference.

    Beside the data first (``ROOT/.distill3d_index/KIND.pkl``), then in the user cache
    (for read-only dataset folders). When ``$DISTILL3D_INDEX_DIR`` is set, only that folder
    is used, so a shared dataset folder is never written to.
    """
    root = Path(root).resolve()
    safe_kind = kind.replace("/", "_")
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    explicit = os.environ.get(INDEX_DIR_ENV)
    if explicit:
        return [Path(explicit) / f"{tag}-{safe_kind}.pkl"]
    return [root / INDEX_DIR_NAME / f"{safe_kind}.pkl",
            user_cache_dir() / "index" / f"{tag}-{safe_kind}.pkl"]


def load_or_build_index(root: Path, key: IndexKey, build: Callable[[], Any], rebuild: bool = False) -> Any:
    """Return the cached index for ``key`` if one matches, else ``build()`` it and cache it.

    A cached file whose schema version or fingerprint differs, or that cannot be read, is
    ignored and replaced. ``rebuild=True`` builds and rewrites the index unconditionally.
    """
    locations = index_locations(root, key.kind)
    for path in locations:
        if rebuild or not path.is_file():
            continue
        try:
            with path.open("rb") as handle:
                stored = pickle.load(handle)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            continue
        if isinstance(stored, dict) and stored.get("key") == key:
            return stored["index"]
    index = build()
    payload = pickle.dumps({"key": key, "index": index}, protocol=pickle.HIGHEST_PROTOCOL)
    for path in locations:
        try:
            atomic_write_bytes(path, payload)
            break
        except OSError:
            continue
    return index
