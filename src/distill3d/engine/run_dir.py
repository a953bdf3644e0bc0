"""The run folder of a training run (DESIGN.md section 2, "Configs and commands").

::

    runs/<name>/
      config.yaml        the resolved config (``dump_config``), loadable with load_config
      checkpoints/       last.pth, best.pth, epoch_N.pth (the newest keep_checkpoints)
      tensorboard/       TensorBoard event files
      metrics.jsonl      one JSON record per log step, epoch and evaluation
      eval/epoch_N/      what each evaluation wrote (results files, metrics.json)
      train.log          the plain-text log lines

A run never overwrites another run's folder unless asked: an existing non-empty folder is
refused unless ``--resume`` (continue it) or ``--overwrite`` (replace it); a folder holding
only empty folders counts as empty. ``--overwrite``
deletes only what a run writes (the entries above and ``report*``), never other files a
user may have put there.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distill3d.errors import Distill3DError

__all__ = ["RUN_ENTRIES", "RunDir", "RunDirError", "config_differences", "default_run_dir",
           "prepare_run_dir"]

#: What a run writes at the top of its folder (what ``--overwrite`` deletes).
RUN_ENTRIES: tuple[str, ...] = ("config.yaml", "checkpoints", "tensorboard", "metrics.jsonl",
                                "eval", "train.log", "test")


class RunDirError(Distill3DError):
    """A run folder that cannot be used as asked."""


@dataclass(frozen=True)
class RunDir:
    """Paths of a run folder (nothing is created by constructing one)."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def log_path(self) -> Path:
        return self.root / "train.log"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pth"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pth"

    def epoch_checkpoint(self, epoch: int) -> Path:
        """``checkpoints/epoch_N.pth`` (``N``: completed epochs, 1-based)."""
        return self.checkpoints / f"epoch_{epoch}.pth"

    def eval_epoch_dir(self, epoch: int) -> Path:
        """``eval/epoch_N``: where the evaluation after epoch ``N`` writes."""
        return self.eval_dir / f"epoch_{epoch}"

    def create(self) -> None:
        """Make the folder and its sub-folders (rank 0 only)."""
        for folder in (self.root, self.checkpoints, self.tensorboard, self.eval_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def write_config(self, text: str) -> None:
        """Write ``config.yaml`` atomically."""
        from distill3d.engine.checkpoint import atomic_write_bytes

        atomic_write_bytes(self.config_path, text.encode("utf-8"))


def default_run_dir(config: Any, work_dir: str | os.PathLike[str] | None = None) -> Path:
    """``work_dir`` when given, else the config's ``work_dir``, else ``runs/<config name>``
    (relative to the current folder)."""
    if work_dir:
        return Path(work_dir)
    if getattr(config, "work_dir", None):
        return Path(config.work_dir)
    return Path("runs") / str(getattr(config, "name", "experiment"))


def _is_empty(root: Path) -> bool:
    """True when ``root`` holds no file (empty sub-folders, e.g. those a run creates before
    writing anything, do not count)."""
    return not any(p.is_file() or p.is_symlink() for p in root.rglob("*"))


def prepare_run_dir(root: str | os.PathLike[str], *, resume: bool = False,
                    overwrite: bool = False, create: bool = True) -> RunDir:
    """Check (and with ``create``, make) a run folder for a new, resumed or replaced run.

    Args:
        root: the folder.
        resume: continue the run in ``root`` (an absent or empty folder starts a new run).
        overwrite: delete what a previous run wrote in ``root`` (see :data:`RUN_ENTRIES`).
        create: make the folder and its sub-folders (only rank 0 does).

    Raises:
        RunDirError: both flags, a path that is a file, or a non-empty folder without
            either flag (the message names the folder and the two flags).
    """
    path = Path(root)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other: --resume continues "
                          f"the run in {path}, --overwrite deletes it; pass one of them")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run folder {path} exists and is not a folder")
    if path.is_dir() and not _is_empty(path) and not (resume or overwrite):
        raise RunDirError(f"run folder {path} already exists and is not empty: pass --resume to "
                          f"continue that run, --overwrite to replace it, or choose another "
                          f"--work-dir")
    run = RunDir(path)
    if overwrite and create and path.is_dir():
        for entry in RUN_ENTRIES:
            target = path / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        for report in path.glob("report*"):
            if report.is_dir() and not report.is_symlink():
                shutil.rmtree(report)
            else:
                report.unlink()
    if create:
        run.create()
        from distill3d.engine.checkpoint import remove_stale_temp_files

        remove_stale_temp_files(run.checkpoints)  # left by a writer killed mid-write
    return run


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def config_differences(old_text: str, new_text: str) -> list[str]:
    """``key: old -> new`` for every leaf that differs between two YAML configs."""
    old = _flatten(yaml.safe_load(old_text) or {})
    new = _flatten(yaml.safe_load(new_text) or {})
    missing = object()
    return [f"{key}: {old.get(key, missing) if key in old else '(absent)'} -> "
            f"{new.get(key) if key in new else '(absent)'}"
            for key in sorted(set(old) | set(new)) if old.get(key, missing) != new.get(key, missing)]
