"""Teacher-guided initialisation (TGI, SparseKD; methods.md section 4.5).

A width-reduced student (the teacher's config with a smaller ``width_multiplier``) starts
from the teacher's weights narrowed to its shapes, FNA-style: for every student parameter
and buffer, the teacher tensor of the same key is cut to its **leading slice** along every
dimension (``t[:s0, :s1, ...]``). Equal shapes are copied whole (scalar buffers such as
``num_batches_tracked`` included).

Concatenation points
--------------------
Where a layer reads a *concatenation* of blocks, a plain leading slice of its input
channels would take only the first block (e.g. the head's shared conv reads the FPN
output ``[level 0 | level 1 | level 2]``: the first 192 of 384 teacher channels are level 0
and half of level 1). The student's block ``k`` holds the first ``s_k`` channels of the
teacher's block ``k`` (each block's producer was narrowed by its leading slice), so such a
tensor is re-indexed **block-wise** along dim 1: the first ``s_k`` channels of every teacher
block, concatenated (SparseKD's FNAV2 re-indexes at the same points).

``input_blocks`` maps a parameter key to the **teacher's** block sizes along dim 1; the
student's block sizes come from the student itself when :func:`concat_input_blocks` knows
the key, else from an even split of the student's dim 1. With ``input_blocks=None`` they
are found automatically for the detectors of :mod:`distill3d.models`:

* ``head.shared_conv.0.weight``: the FPN concatenation (``SECONDFPN`` with more than one
  level feeding ``CenterPointHead``), blocks = each level's width;
* ``<pfn>.layers.{i}.linear.weight`` for ``i >= 1``: a ``PillarFeatureNet`` inner layer's
  output ``[point features | pillar max]``, two blocks of half its width.

The teacher's block sizes are read from the teacher *state* (the producers' shapes), so no
teacher model is needed. CenterPoint-Voxel's ``map_to_bev`` (channel ``c * D + d``) needs no
re-indexing: with the same voxel grid (same ``D``), the student's ``C_S * D`` channels are
exactly the teacher's leading ``C_S * D``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["NarrowReport", "concat_input_blocks", "narrow_state_dict", "teacher_guided_init"]

#: consumer key -> the ``(producer key, dim)`` whose sizes are the consumer's dim-1 blocks
_Sources = dict[str, list[tuple[str, int]]]


@dataclass
class NarrowReport:
    """What :func:`narrow_state_dict` did with every student key.

    Attributes:
        copied: keys copied whole (equal shapes).
        narrowed: keys sliced to the student's shape (block-wise keys included).
        skipped: student keys kept at their own init (only with ``strict=False``: absent
            from the teacher, or reading a concatenation whose teacher blocks are unknown),
            with the reason in ``reasons``.
        reasons: key -> why it was skipped.
        blockwise: the keys of ``narrowed`` whose dim 1 was re-indexed block-wise, with
            the teacher and student block sizes in ``blocks``.
        blocks: key -> ``(teacher block sizes, student block sizes)``.
    """

    copied: list[str] = field(default_factory=list)
    narrowed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    blockwise: list[str] = field(default_factory=list)
    blocks: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- concat points


def _concat_sources(model: nn.Module) -> _Sources:
    """The concatenation points of the detectors of :mod:`distill3d.models` in ``model``
    (see the module docstring): consumer key -> producers ``(key, dim)`` of its blocks."""
    from distill3d.models.encoders.pillar import PillarFeatureNet
    from distill3d.models.heads.centerpoint import CenterPointHead
    from distill3d.models.necks.second_fpn import SECONDFPN

    sources: _Sources = {}
    neck, head = getattr(model, "neck", None), getattr(model, "head", None)
    if isinstance(neck, SECONDFPN) and isinstance(head, CenterPointHead) and len(neck.deblocks) > 1:
        # each deblock is (conv, BatchNorm2d, ReLU): the BN weight (C_i,) gives the width
        sources["head.shared_conv.0.weight"] = [(f"neck.deblocks.{i}.1.weight", 0)
                                                for i in range(len(neck.deblocks))]
    for name, module in model.named_modules():
        if isinstance(module, PillarFeatureNet):
            prefix = f"{name}." if name else ""
            for i in range(1, len(module.layers)):
                producer = (f"{prefix}layers.{i - 1}.linear.weight", 0)  # (C_out / 2, C_in)
                sources[f"{prefix}layers.{i}.linear.weight"] = [producer, producer]
    return sources


def _block_sizes(sources: list[tuple[str, int]], state: Mapping[str, Tensor]) -> tuple[int, ...] | None:
    """Block sizes read from ``state`` (None when a producer is missing there)."""
    if any(key not in state or state[key].dim() <= dim for key, dim in sources):
        return None
    return tuple(int(state[key].shape[dim]) for key, dim in sources)


def concat_input_blocks(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The concatenation points of ``model`` and their block sizes in ``model``'s own shapes.

    Args:
        model: a detector of :mod:`distill3d.models` (others have none: ``{}``).

    Returns:
        Parameter key -> block sizes along its dim 1, e.g. for the full-width
        CenterPoint-Pillar ``{"head.shared_conv.0.weight": (128, 128, 128)}``. Called on the
        teacher model this is the ``input_blocks`` argument of :func:`narrow_state_dict`.
    """
    state = model.state_dict()
    out = {}
    for key, src in _concat_sources(model).items():
        sizes = _block_sizes(src, state)
        if sizes is not None:
            out[key] = sizes
    return out


def _block_index(teacher_blocks: tuple[int, ...], student_blocks: tuple[int, ...], device: torch.device) -> Tensor:
    """``(sum(student_blocks),)`` int64 teacher channels: the first ``s_k`` of every teacher
    block ``k``."""
    offsets = torch.tensor((0, *teacher_blocks[:-1]), dtype=torch.long).cumsum(0).tolist()
    return torch.cat([torch.arange(o, o + s, dtype=torch.long, device=device)
                      for o, s in zip(offsets, student_blocks)])


def _student_blocks(key: str, teacher_blocks: tuple[int, ...], shape: torch.Size,
                    own: Mapping[str, tuple[int, ...]]) -> tuple[int, ...] | str:
    """The student's block sizes of ``key`` (its own, else an even split), or an error."""
    if key in own:
        return own[key]
    n = len(teacher_blocks)
    if len(shape) < 2 or shape[1] % n:
        return (f"{tuple(shape)}: dim 1 cannot be split evenly into the {n} blocks of input_blocks "
                f"{teacher_blocks}")
    return (shape[1] // n,) * n


def _check_blocks(teacher_blocks: tuple[int, ...], student_blocks: tuple[int, ...], t_shape: torch.Size,
                  s_shape: torch.Size) -> str | None:
    """Why the blocks do not fit the shapes, or None."""
    if len(t_shape) < 2:
        return f"teacher {tuple(t_shape)} has no dim 1 to re-index"
    if sum(teacher_blocks) != t_shape[1] or sum(student_blocks) != s_shape[1]:
        return (f"blocks teacher {teacher_blocks} / student {student_blocks} do not sum to dim 1 of teacher "
                f"{tuple(t_shape)} / student {tuple(s_shape)}")
    if len(teacher_blocks) != len(student_blocks) or any(s > t for s, t in zip(student_blocks, teacher_blocks)):
        return f"student blocks {student_blocks} do not fit in teacher blocks {teacher_blocks}"
    return None


# ----------------------------------------------------------------------------- narrowing


def _narrow(t: Tensor, s_shape: torch.Size, dim1_index: Tensor | None) -> Tensor:
    """``t`` cut to ``s_shape``: leading slices (dim 1 by ``dim1_index`` when given)."""
    if dim1_index is not None:
        t = t.index_select(1, dim1_index.to(t.device))
    return t[tuple(slice(0, n) for n in s_shape)].clone()


def _resolve_blocks(teacher_state: Mapping[str, Tensor], student: nn.Module,
                    input_blocks: Mapping[str, tuple[int, ...]] | None,
                    ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]], dict[str, str]]:
    """``(teacher blocks, the student's own blocks, unresolved)`` per re-indexed key;
    ``unresolved``: keys whose teacher blocks cannot be read from ``teacher_state`` (a
    producer is missing there), with the reason."""
    sources = _concat_sources(student)
    student_state = student.state_dict()
    own = {k: b for k, src in sources.items() if (b := _block_sizes(src, student_state)) is not None}
    unresolved: dict[str, str] = {}
    if input_blocks is None:
        teacher = {}
        for key, src in sources.items():
            sizes = _block_sizes(src, teacher_state)
            if sizes is None:
                missing = sorted({k for k, _ in src if k not in teacher_state})
                unresolved[key] = (f"reads a concatenation whose teacher block sizes are unknown (missing from "
                                   f"the teacher state: {missing})")
            else:
                teacher[key] = sizes
    else:
        teacher = {k: tuple(int(v) for v in b) for k, b in input_blocks.items()}
    return teacher, own, unresolved


def narrow_state_dict(teacher_state: Mapping[str, Tensor], student: nn.Module, *, strict: bool = True,
                      input_blocks: Mapping[str, tuple[int, ...]] | None = None,
                      ) -> tuple[dict[str, Tensor], NarrowReport]:
    """The teacher's state narrowed to the student's shapes (see the module docstring).

    Args:
        teacher_state: the teacher's ``state_dict()`` (keys as the student's: strip any
            checkpoint prefix first).
        student: the student model (same architecture, each dimension <= the teacher's).
        strict: student keys absent from the teacher are errors; with False they are
            skipped (kept at the student's init) and reported.
        input_blocks: parameter key -> the teacher's block sizes along dim 1 for tensors
            that read a concatenation; None finds them for our detectors
            (:func:`concat_input_blocks` semantics, read from ``teacher_state``); ``{}``
            re-indexes nothing (plain leading slices everywhere).

    Returns:
        The narrowed state (student keys, except the skipped ones; tensors on the teacher
        state's device and dtype) and the :class:`NarrowReport`. Teacher keys absent from
        the student are ignored.

    Raises:
        ValueError: listing **every** offending key: a student dimension larger than the
            teacher's, a different number of dimensions, blocks that do not fit, and with
            ``strict`` the student keys missing from the teacher.
    """
    teacher_blocks, own_blocks, unresolved = _resolve_blocks(teacher_state, student, input_blocks)
    report = NarrowReport()
    state: dict[str, Tensor] = {}
    errors: list[str] = []
    for key, s in student.state_dict().items():
        if key not in teacher_state:
            if strict:
                errors.append(f"{key}: missing from the teacher state")
            else:
                report.skipped.append(key)
                report.reasons[key] = "absent from the teacher state: kept at the student's init"
            continue
        if key in unresolved:
            if strict:
                errors.append(f"{key}: {unresolved[key]}")
            else:
                report.skipped.append(key)
                report.reasons[key] = f"{unresolved[key]}: kept at the student's init"
            continue
        t = teacher_state[key]
        if t.dim() != s.dim():
            errors.append(f"{key}: teacher {tuple(t.shape)} and student {tuple(s.shape)} differ in their number "
                          "of dimensions")
            continue
        if any(sd > td for sd, td in zip(s.shape, t.shape)):
            errors.append(f"{key}: student {tuple(s.shape)} is larger than teacher {tuple(t.shape)}")
            continue
        index = None
        if key in teacher_blocks:
            t_blocks = teacher_blocks[key]
            s_blocks = _student_blocks(key, t_blocks, s.shape, own_blocks)
            problem = s_blocks if isinstance(s_blocks, str) else _check_blocks(t_blocks, s_blocks, t.shape, s.shape)
            if problem is not None:
                errors.append(f"{key}: {problem}")
                continue
            assert not isinstance(s_blocks, str)
            if s_blocks != t_blocks:
                index = _block_index(t_blocks, s_blocks, t.device)
                report.blockwise.append(key)
                report.blocks[key] = (t_blocks, s_blocks)
        state[key] = _narrow(t, s.shape, index)
        (report.copied if t.shape == s.shape and index is None else report.narrowed).append(key)
    if errors:
        raise ValueError(f"teacher-guided init: {len(errors)} student tensor(s) cannot be taken from the teacher:\n  "
                         + "\n  ".join(errors))
    return state, report


def teacher_guided_init(student: nn.Module, teacher_state: Mapping[str, Tensor], *, strict: bool = True,
                        input_blocks: Mapping[str, tuple[int, ...]] | None = None) -> NarrowReport:
    """Load the teacher's state narrowed to ``student`` into it (in place).

    Args and errors as :func:`narrow_state_dict`; skipped keys keep the student's values.

    Returns:
        The :class:`NarrowReport`.
    """
    state, report = narrow_state_dict(teacher_state, student, strict=strict, input_blocks=input_blocks)
    result = student.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - set(report.skipped)
    if missing or result.unexpected_keys:  # pragma: no cover - narrow_state_dict covers every key
        raise RuntimeError(f"teacher-guided init: missing {sorted(missing)}, unexpected {result.unexpected_keys}")
    return report
