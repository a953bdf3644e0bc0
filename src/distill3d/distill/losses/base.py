"""The contract of a distillation loss and the registry that builds one by name.

A loss is an ``nn.Module`` (it may own learnable parameters, e.g. PointDistiller's graph
encoders or FGD's context blocks: they are KD-only, trained with the student and dropped at
export) with

``forward(student, teacher, ctx) -> Tensor``: a float32 scalar, **unweighted** (the term's
``weight`` multiplies it in the distiller).

What ``student`` and ``teacher`` are depends on :attr:`KDLoss.input_kind`:

* ``"bev"``: :class:`~distill3d.models.base.Tap` of kind ``bev``, ``(B, C, H, W)`` each,
  already on the **same grid** (``student.grid == teacher.grid``) and, when the term has an
  adapter, the student already mapped to the teacher's channels (``C_S == C_T``) unless
  :attr:`KDLoss.needs_same_channels` is False.
* ``"voxels"``: taps of kind ``voxels``: ``(V, C)`` features with ``index`` ``(V, 4)``
  ``(b, z, y, x)``; teacher and student rows describe the same voxels in the same order
  (the distiller checks it).
* ``"heads"``: :class:`~distill3d.distill.context.HeadMaps` of both models, on the same
  grid.

Losses are registered with :func:`register_loss` and built with :func:`build_loss`, which
rejects unknown names and unknown parameters with the closest valid ones.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from distill3d.distill.context import KDContext

InputKind = Literal["bev", "voxels", "heads"]


class KDLoss(nn.Module):
    """Base class of distillation losses (see the module docstring).

    Subclasses set :attr:`input_kind` and take their hyper-parameters as keyword arguments
    of ``__init__`` after ``student_channels`` and ``teacher_channels`` (both ``int``,
    ``0`` for ``heads`` inputs), which the distiller passes.
    """

    input_kind: ClassVar[InputKind] = "bev"
    #: whether the student must have the teacher's channels (an adapter is then required
    #: when they differ); False for losses that compare channel-free statistics
    #: (attention maps) or project both sides themselves (PointDistiller).
    needs_same_channels: ClassVar[bool] = True

    def forward(self, student: Any, teacher: Any, ctx: KDContext) -> Tensor:  # pragma: no cover
        raise NotImplementedError


_REGISTRY: dict[str, type[KDLoss]] = {}


def register_loss(name: str) -> Callable[[type[KDLoss]], type[KDLoss]]:
    """Class decorator: make a :class:`KDLoss` buildable as ``loss: name`` in a term."""

    def wrap(cls: type[KDLoss]) -> type[KDLoss]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"distillation loss {name!r} is registered twice")
        _REGISTRY[name] = cls
        return cls

    return wrap


def loss_names() -> list[str]:
    """Names of every registered loss."""
    _import_builtin_losses()
    return sorted(_REGISTRY)


def loss_class(name: str) -> type[KDLoss]:
    """The class registered as ``name``.

    Raises:
        KeyError: unknown name, with the closest registered ones.
    """
    _import_builtin_losses()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown distillation loss {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def loss_parameters(name: str) -> dict[str, Any]:
    """The hyper-parameters of loss ``name`` and their defaults (``inspect.Parameter.empty``
    when required)."""
    cls = loss_class(name)
    sig = inspect.signature(cls.__init__)
    skip = {"self", "student_channels", "teacher_channels"}
    return {p.name: p.default for p in sig.parameters.values()
            if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def build_loss(name: str, params: dict[str, Any], student_channels: int, teacher_channels: int) -> KDLoss:
    """Build loss ``name`` with ``params``.

    Raises:
        KeyError: unknown loss name.
        ValueError: an unknown or missing parameter, naming it and the valid ones.
    """
    cls = loss_class(name)
    valid = loss_parameters(name)
    unknown = [k for k in params if k not in valid]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(valid), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"loss {name!r}: unknown parameter(s) {', '.join(hints)}; valid: {', '.join(valid)}")
    missing = [k for k, d in valid.items() if d is inspect.Parameter.empty and k not in params]
    if missing:
        raise ValueError(f"loss {name!r}: missing required parameter(s) {', '.join(missing)}")
    return cls(student_channels=student_channels, teacher_channels=teacher_channels, **params)


def _import_builtin_losses() -> None:
    """Import the modules that register the built-in losses (idempotent)."""
    from distill3d.distill.losses import feature, logit, pointdistiller  # noqa: F401
