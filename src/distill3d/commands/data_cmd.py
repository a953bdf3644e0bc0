"""``distill3d data index ROOT``: build (or check) the cached index of a dataset and summarise it.

Example::

    distill3d data index data/kitti                         # every ImageSets split
    distill3d data index data/kitti --split train --rebuild
    distill3d data index data/nuscenes --version v1.0-mini --split mini_train

The format is detected from the layout when ``--format`` is not given: KITTI has
``training/`` (or ``testing/``) and ``ImageSets/``; nuScenes has a ``v1.0-*`` folder holding
``sample.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from distill3d.errors import Distill3DError

_KITTI_SPLIT_ORDER = ("train", "val", "trainval", "test")


def detect_format(root: Path) -> str:
    """``"kitti"`` or ``"nuscenes"`` from the folder layout of ``root``.

    Raises:
        Distill3DError: the layout is neither, or both.
    """
    if not root.is_dir():
        raise Distill3DError(f"{root}: dataset folder not found")
    is_kitti = (root / "ImageSets").is_dir() and ((root / "training").is_dir()
                                                   or (root / "testing").is_dir())
    is_nuscenes = bool(nuscenes_versions(root))
    if is_kitti and is_nuscenes:
        raise Distill3DError(f"{root}: looks like both KITTI and nuScenes; pass --format")
    if is_kitti:
        return "kitti"
    if is_nuscenes:
        return "nuscenes"
    raise Distill3DError(
        f"{root}: unknown dataset layout (KITTI needs training/ and ImageSets/, nuScenes a "
        f"v1.0-* folder with sample.json); pass --format, or check the path")


def nuscenes_versions(root: Path) -> list[str]:
    """The ``v1.0-*`` folders of ``root`` that hold a ``sample.json``, sorted."""
    return sorted(p.name for p in root.glob("v1.0-*") if (p / "sample.json").is_file())


def _kitti_splits(root: Path) -> list[str]:
    folder = root / "ImageSets"
    found = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
    ordered = [s for s in _KITTI_SPLIT_ORDER if s in found] + [s for s in found if s not in _KITTI_SPLIT_ORDER]
    if not ordered:
        raise Distill3DError(f"{folder}: no split files (*.txt); KITTI needs ImageSets/<split>.txt")
    return ordered


def _index_kitti(root: Path, splits: list[str] | None, rebuild: bool) -> None:
    from distill3d.data.kitti import build_kitti_index, kitti_index_path

    for split in splits or _kitti_splits(root):
        before = _stamp(kitti_index_path(root, split))
        tic = time.perf_counter()
        index = build_kitti_index(root, split, rebuild=rebuild)
        elapsed = time.perf_counter() - tic
        where = kitti_index_path(root, split)
        print(index.summary())
        if where is None:
            print(f"  index: built in {elapsed:.2f} s, not cached (no writable location)")
        else:
            state = "up to date" if before is not None and before == _stamp(where) else "built"
            print(f"  index: {where} ({state}, {elapsed:.2f} s)")


def _stamp(path: Path | None) -> tuple[str, int, int, int] | None:
    """Identity of a file version (path, inode, size, mtime), or ``None`` if absent: the
    index is written atomically, so a rewrite always gets a new inode."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns


def _describe(index: Any) -> str:
    """Summary of an index object we do not own (the nuScenes reader's)."""
    summary = getattr(index, "summary", None)
    if callable(summary):
        return str(summary())
    parts = []
    try:
        parts.append(f"{len(index)} samples")
    except TypeError:
        parts.append(type(index).__name__)
    counts = getattr(index, "class_counts", None)
    counts = counts() if callable(counts) else counts
    if not isinstance(counts, dict):
        counts = _entry_class_counts(index)
    if counts:
        width = max(len(str(name)) for name in counts)
        parts += [f"  {name!s:<{width}}  {n}" for name, n in counts.items()]
    return "\n".join(parts)


def _entry_class_counts(index: Any) -> dict[str, int] | None:
    """Boxes per class of a list of index entries ``{'gt': {'name': [...]}}`` (the nuScenes
    reader's layout; ``None`` names, boxes of no detection class, are counted apart)."""
    if not isinstance(index, (list, tuple)):
        return None
    counts: dict[str, int] = {}
    for entry in index:
        gt = entry.get("gt") if isinstance(entry, dict) else None
        names = gt.get("name") if isinstance(gt, dict) else None
        if names is None:
            return None
        for name in list(names):
            key = "(no detection class)" if name is None else str(name)
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _default_nuscenes_splits(version: str) -> list[str]:
    if version.endswith("-mini"):
        return ["mini_train", "mini_val"]
    if version.endswith("-test"):
        return ["test"]
    return ["train", "val"]


def _index_nuscenes(root: Path, version: str | None, splits: list[str] | None, rebuild: bool) -> None:
    try:
        from distill3d.data.nuscenes import build_nuscenes_index
    except ImportError as exc:
        raise Distill3DError(f"the nuScenes reader is not available in this installation ({exc})") from None
    if version is None:
        versions = nuscenes_versions(root)
        if len(versions) != 1:
            raise Distill3DError(f"{root}: found nuScenes versions {versions or 'none'}; pass --version")
        version = versions[0]
    for split in splits or _default_nuscenes_splits(version):
        tic = time.perf_counter()
        try:
            index = build_nuscenes_index(root, version, split, rebuild=rebuild)
        except Distill3DError:
            raise
        except ValueError as exc:  # e.g. an unknown split for the version
            raise Distill3DError(f"{root} ({version}, split {split}): {exc}") from None
        elapsed = time.perf_counter() - tic
        print(f"nuScenes {version}, split {split}: {_describe(index)}")
        print(f"  index: ready in {elapsed:.2f} s")


def _run_index(args: argparse.Namespace) -> int:
    root = Path(args.root)
    fmt = args.format or detect_format(root)
    if fmt == "kitti":
        if args.version is not None:
            print("distill3d data index: note: --version is ignored for KITTI", file=sys.stderr)
        _index_kitti(root, args.split, args.rebuild)
    else:
        _index_nuscenes(root, args.version, args.split, args.rebuild)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` verb (``data index``)."""
    parser = subparsers.add_parser("data", help="dataset tools: build the cached index",
                                   description="Dataset tools.")
    verbs = parser.add_subparsers(dest="data_verb", metavar="VERB", required=True)
    index = verbs.add_parser(
        "index", help="build (or check) the cached index of a dataset and print a summary",
        description="Build the cached index of a KITTI or nuScenes dataset (beside the data, or "
                    "in the user cache for read-only folders) and print frames and boxes per "
                    "class. An index that is up to date is only read back.")
    index.add_argument("root", metavar="ROOT", help="dataset root (KITTI object root or nuScenes dataroot)")
    index.add_argument("--format", choices=["kitti", "nuscenes"],
                       help="dataset layout (default: detected from ROOT)")
    index.add_argument("--version", help="nuScenes version, e.g. v1.0-mini (default: the only one in ROOT)")
    index.add_argument("--split", action="append", metavar="S",
                       help="split to index (repeatable; default: every KITTI ImageSets split, "
                            "nuScenes train and val, mini_train and mini_val for v1.0-mini)")
    index.add_argument("--rebuild", action="store_true",
                       help="rebuild even if the cached index looks up to date")
    index.set_defaults(func=_run_index)
