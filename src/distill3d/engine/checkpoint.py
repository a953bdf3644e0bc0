"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a ``torch.save`` file holding a plain dict:

=================  ===================================================================
key                content
=================  ===================================================================
``format``         ``"distill3d.checkpoint"``; ``version``: :data:`CHECKPOINT_VERSION`
``model``          the model's ``state_dict`` (never a DDP wrapper's ``module.`` keys)
``optimizer``      the optimiser's ``state_dict``
``scheduler``      the learning-rate schedule's ``state_dict``
``scaler``         the AMP ``GradScaler``'s ``state_dict`` (disabled scalers too)
``ema``            the weight EMA (``{"shadow": {name: tensor}, "updates": n}``) or None
``rng``            one entry per rank: python, numpy, torch CPU and CUDA generator states
``epochs_done``    completed epochs
``step_in_epoch``  optimiser steps done in the next (unfinished) epoch; 0 at epoch ends
``global_step``    optimiser steps done in the run
``best``           ``{"metric", "value", "epoch"}`` of the best evaluation so far
``config``         the resolved config as YAML text (or None)
``meta``           versions, time, world size, steps per epoch, batch size
=================  ===================================================================

Everything in it is plain data (tensors, numbers, strings, lists, dicts), so checkpoints
load with ``torch.load(weights_only=True)``: reading a checkpoint never runs code.

**Atomic writes.** The file is serialised in memory, written to a temporary file in the
same folder, flushed and ``fsync``-ed, then moved over the target with ``os.replace``
(atomic on POSIX and Windows) and the folder entry is synced. A process killed at any
point leaves either the previous checkpoint or the new one, never a torn file; at worst a
``.NAME.*.tmp`` file is left behind (ignored, and removed by :func:`remove_stale_temp_files`).
"""

from __future__ import annotations

import io
import os
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from distill3d.atomic_io import atomic_write_bytes
from distill3d.errors import Distill3DError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "StateDictReport",
    "atomic_write_bytes",
    "capture_rng_state",
    "check_state_dict",
    "checkpoint_meta",
    "find_last_checkpoint",
    "list_epoch_checkpoints",
    "load_checkpoint",
    "load_model_state",
    "read_checkpoint",
    "remove_stale_temp_files",
    "restore_rng_state",
    "save_checkpoint",
    "serialize",
    "unwrap_model",
]

CHECKPOINT_FORMAT = "distill3d.checkpoint"
CHECKPOINT_VERSION = 1

_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pth$")
#: where a distillation checkpoint keeps its student's weights (the distiller's ``student`` module)
STUDENT_PREFIX = "student."
_LIST_LIMIT = 40


class CheckpointError(Distill3DError):
    """A checkpoint that cannot be read or does not fit the model / optimiser."""


# ----------------------------------------------------------------------------- writing


def serialize(payload: Mapping[str, Any]) -> bytes:
    """``payload`` as the bytes of a ``torch.save`` file."""
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    return buffer.getvalue()


def save_checkpoint(payload: Mapping[str, Any], *paths: str | os.PathLike[str]) -> None:
    """Serialise ``payload`` once and write it atomically to every path in ``paths``
    (e.g. ``last.pth`` and ``epoch_3.pth``)."""
    if not paths:
        raise ValueError("save_checkpoint: no path given")
    data = serialize(payload)
    for path in paths:
        atomic_write_bytes(path, data)


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files that a killed writer left in ``folder``; returns them."""
    removed = []
    root = Path(folder)
    if root.is_dir():
        for path in root.glob(".*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's ``random``, numpy's legacy global generator, torch's CPU
    generator and every initialised CUDA generator, as plain data."""
    np_state = np.random.get_state()
    cuda: list[torch.Tensor] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {
        "python": random.getstate(),
        "numpy": [str(np_state[0]), np.asarray(np_state[1]).tolist(), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
    }


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only where CUDA is
    available and the counts of devices agree)."""
    if "python" in state:
        random.setstate(_as_tuple(state["python"]))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss),
                             float(cached)))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])


# ----------------------------------------------------------------------------- reading


def unwrap_model(module: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or the
    module itself)."""
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return module


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint file (on the CPU, ``weights_only=True``) and check its format.

    A plain state dict (a file holding only ``{name: tensor}``) is accepted too and
    returned as ``{"model": state_dict}``.

    Raises:
        CheckpointError: a missing, unreadable or foreign file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reading problem is the file's
        raise CheckpointError(f"cannot read checkpoint {p}: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{p}: expected a dict, got {type(payload).__name__}")
    if payload.get("format") == CHECKPOINT_FORMAT:
        version = payload.get("version")
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            raise CheckpointError(f"{p}: checkpoint version {version!r} is newer than this "
                                  f"distill3d reads ({CHECKPOINT_VERSION}); upgrade distill3d")
        return payload
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return {"model": payload}
    if isinstance(payload.get("model_state"), dict):  # OpenPCDet's layout
        return {"model": payload["model_state"]}
    if isinstance(payload.get("state_dict"), dict):  # mmengine's layout
        return {"model": payload["state_dict"]}
    raise CheckpointError(f"{p}: not a distill3d checkpoint (keys: {sorted(payload)[:10]})")


@dataclass
class StateDictReport:
    """How a state dict fits a model.

    Attributes:
        missing: model keys absent from the state dict.
        unexpected: state-dict keys the model does not have.
        mismatched: ``(key, state-dict shape, model shape)`` for keys whose shapes differ.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every key is present with the model's shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, source: str = "checkpoint") -> str:
        """A multi-line description listing the problems (long lists are cut)."""
        lines: list[str] = []

        def block(title: str, items: list[str]) -> None:
            if not items:
                return
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items[:_LIST_LIMIT])
            if len(items) > _LIST_LIMIT:
                lines.append(f"    ... and {len(items) - _LIST_LIMIT} more")

        block(f"shape mismatch ({source} shape vs model shape)",
              [f"{k}: {list(a)} vs {list(b)}" for k, a, b in self.mismatched])
        block(f"missing from the {source}", self.missing)
        block(f"unexpected in the {source} (not in the model)", self.unexpected)
        return "\n".join(lines)


def _strip_prefix(state: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def check_state_dict(model: nn.Module, state: Mapping[str, Any]) -> StateDictReport:
    """Compare a state dict with ``model``'s keys and shapes."""
    own = unwrap_model(model).state_dict()
    state = _strip_prefix(state)
    report = StateDictReport()
    for key, value in own.items():
        if key not in state:
            report.missing.append(key)
            continue
        theirs = state[key]
        if isinstance(value, torch.Tensor) and isinstance(theirs, torch.Tensor) and value.shape != theirs.shape:
            report.mismatched.append((key, tuple(theirs.shape), tuple(value.shape)))
    report.unexpected = [k for k in state if k not in own]
    return report


def load_model_state(model: nn.Module, state: Mapping[str, Any], strict: bool = True,
                     source: str = "checkpoint") -> StateDictReport:
    """Load ``state`` into ``model`` after checking keys and shapes.

    Args:
        model: the model (a DDP wrapper is unwrapped).
        state: a state dict (``module.`` prefixes of a DDP model's keys are stripped).
        strict: any missing, unexpected or mismatched key is an error. With
            ``strict=False`` the keys that fit are loaded and the others reported.
        source: what ``state`` is, for the message (e.g. the file name).

    Raises:
        CheckpointError: (strict) the list of mismatched, missing and unexpected keys.
    """
    target = unwrap_model(model)
    state = _strip_prefix(state)
    report = check_state_dict(target, state)
    if strict and not report.ok:
        n = len(report.mismatched) + len(report.missing) + len(report.unexpected)
        raise CheckpointError(
            f"{source} does not fit the model ({n} problem{'s' if n != 1 else ''}; was it "
            f"written for another config, e.g. another width or voxel size?):\n"
            + report.describe())
    bad = {k for k, _, _ in report.mismatched}
    fitting = {k: v for k, v in state.items() if k not in bad and k not in report.unexpected}
    target.load_state_dict(fitting, strict=False)
    return report


def load_checkpoint(path: str | os.PathLike[str], model: nn.Module | None = None, *,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    scaler: Any = None, ema: Any = None, strict: bool = True,
                    weights: Literal["model", "ema", "auto"] = "model",
                    prefix: str | Literal["auto"] | None = None) -> dict[str, Any]:
    """Read a checkpoint and load its parts into the given objects.

    Args:
        path: the ``.pth`` file.
        model: receives ``payload["model"]`` (or the EMA weights, see ``weights``).
        optimizer, scheduler, scaler, ema: receive their saved states when given (an
            absent state is an error for the optimiser and the scheduler, as resuming
            without them would not continue the run).
        strict: see :func:`load_model_state`.
        weights: which weights go into ``model``: ``model`` (the trained weights, what
            resuming needs), ``ema`` (the EMA weights; an error when there are none) or
            ``auto`` (EMA when present: what evaluation and teachers use).
        prefix: load only the weights under this prefix, stripped (e.g. ``"student."``
            to load the student of a distillation checkpoint into a detector); ``"auto"``:
            ``"student."`` when the checkpoint is a distillation checkpoint (it has weights
            under ``student.`` and none of ``model``'s own names), else no prefix.

    Returns:
        The checkpoint dict (see the module docstring).

    Raises:
        CheckpointError: unreadable file, shape or key mismatch (listing the keys), or a
            missing part.
    """
    payload = read_checkpoint(path)
    name = Path(path).name
    if model is not None:
        if "model" not in payload:
            raise CheckpointError(f"{path}: has no model weights")
        ema_state = payload.get("ema")
        if weights == "ema" and not ema_state:
            raise CheckpointError(f"{path}: has no EMA weights (trained with train.ema: false)")
        state = dict(payload["model"])
        source = f"checkpoint {name}"
        if weights in ("ema", "auto") and ema_state:
            state.update(ema_state["shadow"])
            source += " (EMA weights)"
        if prefix == "auto":
            prefix = distillation_prefix(state, model)
        if prefix:
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not state:
                raise CheckpointError(f"{path}: has no weights under {prefix!r}")
            source += f" (weights under {prefix!r})"
        load_model_state(model, state, strict, source=source)
    parts = (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler), ("ema", ema))
    for key, target in parts:
        if target is None:
            continue
        state = payload.get(key)
        if key == "scaler" and not state:  # written by a disabled scaler (CPU / float32)
            continue
        if state is None:
            if key in ("optimizer", "scheduler"):
                raise CheckpointError(f"{path}: has no {key} state; it cannot be resumed from "
                                      "(it holds weights only)")
            continue
        try:
            target.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: cannot restore the {key} state: {exc}") from None
    return payload


def distillation_prefix(state: Mapping[str, Any], model: nn.Module) -> str | None:
    """``"student."`` when ``state`` is a distiller's (weights under ``student.``, none with
    ``model``'s own names), else None: the prefix that loads a distillation checkpoint's
    student into a bare detector."""
    if set(state) & set(model.state_dict()):
        return None
    return STUDENT_PREFIX if any(k.startswith(STUDENT_PREFIX) for k in state) else None


def find_last_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``--resume`` continues from: ``checkpoints/last.pth`` of the run
    folder, else its newest ``epoch_N.pth``, else None. ``run_dir`` may also be the
    ``checkpoints`` folder itself."""
    root = Path(run_dir)
    folder = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    if not folder.is_dir():
        return None
    last = folder / "last.pth"
    if last.is_file():
        return last
    epochs = list_epoch_checkpoints(folder)
    return epochs[-1][1] if epochs else None


def list_epoch_checkpoints(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(N, path)`` of the ``epoch_N.pth`` files in ``folder``, by increasing ``N``."""
    out = []
    root = Path(folder)
    if root.is_dir():
        for path in root.iterdir():
            match = _EPOCH_FILE.match(path.name)
            if match and path.is_file():
                out.append((int(match.group(1)), path))
    return sorted(out)


def checkpoint_meta(extra: Mapping[str, Any] | None = None, world_size: int = 1) -> dict[str, Any]:
    """The ``meta`` entry: versions, time, world size and the caller's extra fields."""
    from distill3d import __version__

    meta: dict[str, Any] = {"distill3d_version": __version__, "torch_version": str(torch.__version__),
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "world_size": world_size}
    meta.update(dict(extra or {}))
    return meta
