"""Logit (head-output) distillation losses for CenterPoint heads.

Inputs are the :class:`~distill3d.distill.context.HeadMaps` of both models (``input_kind =
"heads"``): per task group a ``heatmap`` ``(B, n_t, H, W)`` of logits and the regression
maps ``reg`` (2), ``height`` (1), ``dim`` (3), ``rot`` (2) and optionally ``vel`` (2), all
on one :class:`~distill3d.structures.BEVGrid` (rows along +y, columns along +x; flat cell
``row * W + col``). Student and teacher must have the same tasks, grid and map shapes.

Every loss computes in float32 whatever the maps' dtype, detaches the teacher, averages
over tasks and returns an unweighted float32 scalar:

* ``hinton_heatmap``: dense binary Hinton KD on the per-class sigmoids (methods.md 8.1).
* ``gaussian_response``: heatmap (and optional regression) KD under the GT Gaussian mask
  (UniDistill / SparseKD response KD, methods.md 8.5).
* ``pp_logit``: SparseKD's pivotal-position heatmap KD (methods.md 4.3).
* ``center_regression``: SparseKD's regression KD at the GT centre cells (methods.md 4.3).

GT boxes come from ``ctx.gt_boxes()`` (key LiDAR frame of the augmented sample), their
labels index ``ctx.batch.class_names`` and are matched to tasks by class name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from distill3d.distill import masks
from distill3d.distill.context import HeadMaps, KDContext
from distill3d.distill.losses.base import KDLoss, register_loss
from distill3d.models.heads.centerpoint import REGRESSION_HEADS, clamp_sigmoid

__all__ = [
    "CenterRegressionKD",
    "GaussianResponseKD",
    "HintonHeatmapKD",
    "PPLogitKD",
    "check_head_maps",
    "task_of_labels",
]

_REGRESSION_NAMES: tuple[str, ...] = tuple(name for name, _ in REGRESSION_HEADS)
# Regression channels of CenterPoint without / with velocity.
_CODE_SIZES = (8, 10)


# ----------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def check_head_maps(student: HeadMaps, teacher: HeadMaps) -> None:
    """Raise ``ValueError`` naming what differs when two :class:`HeadMaps` cannot be compared.

    Checks: same grid, same tasks, one head dict per task, heatmaps ``(B, n_t, H, W)`` with
    ``n_t = len(tasks[t])`` and ``(H, W) = grid.shape``, equal heatmap shapes, and equal
    shapes of every regression map present in both.
    """
    for name, maps in (("student", student), ("teacher", teacher)):
        if not isinstance(maps, HeadMaps):
            raise TypeError(f"{name} must be HeadMaps, got {type(maps).__name__}")
    if student.grid != teacher.grid:
        raise ValueError(f"student and teacher head grids differ: {student.grid} vs {teacher.grid}")
    s_tasks = [tuple(t) for t in student.tasks]
    t_tasks = [tuple(t) for t in teacher.tasks]
    if s_tasks != t_tasks:
        raise ValueError(f"student and teacher head tasks differ: {s_tasks} vs {t_tasks}")
    batch = None
    for name, maps in (("student", student), ("teacher", teacher)):
        if len(maps.heads) != len(maps.tasks):
            raise ValueError(f"{name} has {len(maps.heads)} head dicts for {len(maps.tasks)} tasks")
        for t, (head, classes) in enumerate(zip(maps.heads, maps.tasks)):
            if "heatmap" not in head:
                raise ValueError(f"{name} task {t} has no 'heatmap' (keys: {sorted(head)})")
            shape = _shape(head["heatmap"])
            batch = shape[0] if batch is None else batch
            expected = (batch, len(classes), *maps.grid.shape)
            if shape != expected:
                raise ValueError(f"{name} task {t} heatmap is {shape}, expected {expected} "
                                 f"(B, classes {tuple(classes)}, grid H, W)")
    for t, (s_head, t_head) in enumerate(zip(student.heads, teacher.heads)):
        for key in sorted(set(s_head) & set(t_head)):
            if _shape(s_head[key]) != _shape(t_head[key]):
                raise ValueError(f"task {t} map {key!r} shapes differ: student {_shape(s_head[key])}, "
                                 f"teacher {_shape(t_head[key])}")


def _check_batch(ctx: KDContext, batch_size: int) -> None:
    """Raise when the context's GT batch does not match the maps' batch size."""
    n = len(ctx.gt_boxes())
    if n != batch_size:
        raise ValueError(f"the context has GT boxes for {n} samples but the head maps have batch {batch_size}")


def _zero(student: HeadMaps) -> Tensor:
    """A float32 zero connected to the student's graph (for steps with nothing to distil)."""
    return sum(head["heatmap"].float().sum() for head in student.heads) * 0.0


def _mean(values: Sequence[Tensor]) -> Tensor:
    return torch.stack(list(values)).mean()


def task_of_labels(tasks: Sequence[Sequence[str]], class_names: Sequence[str], labels: Tensor) -> Tensor:
    """Task group of every label: ``(N,)`` int64, ``-1`` for classes in no task.

    Args:
        tasks: per task, its class names.
        class_names: the names ``labels`` index (``ctx.batch.class_names``).
        labels: ``(N,)`` int class indices.

    Raises:
        ValueError: a label outside ``[0, len(class_names))``.
    """
    labels = labels.long()
    if labels.numel() and (bool((labels < 0).any()) or bool((labels >= len(class_names)).any())):
        raise ValueError(f"labels must lie in [0, {len(class_names)}) (class names {tuple(class_names)}), "
                         f"got min {int(labels.min())} max {int(labels.max())}")
    task_of_name = {name: t for t, classes in enumerate(tasks) for name in classes}
    lut = torch.tensor([task_of_name.get(name, -1) for name in class_names] or [-1],
                       dtype=torch.long, device=labels.device)
    return lut[labels] if labels.numel() else labels.new_zeros(0)


def _task_boxes(ctx: KDContext, tasks: Sequence[Sequence[str]]) -> list[list[Tensor]]:
    """Per task, the per-sample GT boxes whose class belongs to the task."""
    boxes, labels = ctx.gt_boxes(), ctx.gt_labels()
    names = ctx.batch.class_names
    per_sample = [task_of_labels(tasks, names, lab.to(box.device)) for box, lab in zip(boxes, labels)]
    return [[box[task == t] for box, task in zip(boxes, per_sample)] for t in range(len(tasks))]


def _regression_stack(head: dict[str, Tensor], names: Sequence[str], detach: bool) -> Tensor:
    """The regression maps ``names`` concatenated: ``(B, C, H, W)`` float32."""
    maps = [head[name].float() for name in names]
    out = torch.cat(maps, dim=1)
    return out.detach() if detach else out


def _common_regression(s_head: dict[str, Tensor], t_head: dict[str, Tensor]) -> list[str]:
    """Regression map names present in both heads, in CenterPoint's target order."""
    return [name for name in _REGRESSION_NAMES if name in s_head and name in t_head]


# ----------------------------------------------------------------------------------------
# Hinton
# ----------------------------------------------------------------------------------------


@register_loss("hinton_heatmap")
class HintonHeatmapKD(KDLoss):
    """Dense binary Hinton KD on CenterPoint heatmaps (methods.md 8.1).

    ``L = T^2 * mean_{b, c, i} BCE(sigmoid(z_S / T), sigmoid(z_T / T))`` per task, averaged
    over tasks (per-class Bernoulli distributions; computed with
    ``binary_cross_entropy_with_logits`` and soft targets). Note the value at
    ``z_S = z_T`` is the teacher's binary entropy, not 0 (the gradient is 0 there).

    Args:
        temperature: ``T > 0``.
    """

    input_kind = "heads"

    def __init__(self, student_channels: int, teacher_channels: int, *, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"hinton_heatmap: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student: HeadMaps, teacher: HeadMaps, ctx: KDContext) -> Tensor:
        check_head_maps(student, teacher)
        temp = self.temperature
        losses = []
        for s_head, t_head in zip(student.heads, teacher.heads):
            z_s = s_head["heatmap"].float() / temp
            p_t = torch.sigmoid(t_head["heatmap"].detach().float() / temp)
            losses.append(F.binary_cross_entropy_with_logits(z_s, p_t) * temp * temp)
        return _mean(losses)


# ----------------------------------------------------------------------------------------
# Gaussian response
# ----------------------------------------------------------------------------------------


@register_loss("gaussian_response")
class GaussianResponseKD(KDLoss):
    """Heatmap KD weighted by the GT Gaussian mask (UniDistill / SparseKD, methods.md 8.5).

    ``G`` is :func:`~distill3d.distill.masks.gaussian_mask` of ``ctx.gt_boxes()`` on the
    head grid (class-agnostic, shared by every task); with ``soft`` the mask is
    ``M = G * max_c h_T`` (the task's teacher max score), else ``M = G``. Per task, with
    ``h = clamp_sigmoid(logits)``::

        L_t = sum_i M(i) d(h_S(i), h_T(i)) / max(sum_i M(i), 1)

    with ``d`` the L1 or squared difference summed over the task's classes, or, with
    ``class_max``, of the class-max maps ``max_c h``. With ``regression_weight > 0`` adds
    ``regression_weight * sum_i M(i) mean_ch |r_S(i) - r_T(i)| / max(sum_i M(i), 1)`` over
    the regression maps present in both heads (UniDistill's ``mean_ch``). Averaged over
    tasks; 0 (with a graph) when no box draws on the grid.

    Args:
        distance: ``"l1"`` (UniDistill) or ``"mse"`` (SparseKD).
        soft: multiply the mask by the teacher's max score.
        class_max: compare the class-max maps instead of every class.
        min_overlap, min_radius: Gaussian radius settings (0.1 CenterPoint, 0.7 UniDistill).
        regression_weight: weight of the regression term (0 = off).
    """

    input_kind = "heads"

    def __init__(self, student_channels: int, teacher_channels: int, *,
                 distance: Literal["l1", "mse"] = "mse", soft: bool = False, class_max: bool = False,
                 min_overlap: float = 0.1, min_radius: int = 2, regression_weight: float = 0.0) -> None:
        super().__init__()
        if distance not in ("l1", "mse"):
            raise ValueError(f"gaussian_response: distance must be 'l1' or 'mse', got {distance!r}")
        if not 0.0 < min_overlap < 1.0:
            raise ValueError(f"gaussian_response: min_overlap must be in (0, 1), got {min_overlap}")
        if min_radius < 0 or regression_weight < 0:
            raise ValueError("gaussian_response: min_radius and regression_weight must be >= 0")
        self.distance = distance
        self.soft = bool(soft)
        self.class_max = bool(class_max)
        self.min_overlap = float(min_overlap)
        self.min_radius = int(min_radius)
        self.regression_weight = float(regression_weight)

    def _distance(self, h_s: Tensor, h_t: Tensor) -> Tensor:
        """``(B, H, W)`` distance of two ``(B, C, H, W)`` score maps."""
        if self.class_max:
            h_s, h_t = h_s.amax(dim=1, keepdim=True), h_t.amax(dim=1, keepdim=True)
        diff = h_s - h_t
        d = diff.abs() if self.distance == "l1" else diff * diff
        return d.sum(dim=1)

    def forward(self, student: HeadMaps, teacher: HeadMaps, ctx: KDContext) -> Tensor:
        check_head_maps(student, teacher)
        batch_size = student.heads[0]["heatmap"].shape[0]
        _check_batch(ctx, batch_size)
        device = student.heads[0]["heatmap"].device
        gauss = masks.gaussian_mask(ctx.gt_boxes(), student.grid, self.min_overlap, self.min_radius).to(device)
        if not bool((gauss > 0).any()):
            return _zero(student)
        losses = []
        for s_head, t_head in zip(student.heads, teacher.heads):
            h_s = clamp_sigmoid(s_head["heatmap"].float())
            h_t = clamp_sigmoid(t_head["heatmap"].detach().float())
            mask = gauss * h_t.amax(dim=1) if self.soft else gauss
            norm = mask.sum().clamp(min=1.0)
            loss = (mask * self._distance(h_s, h_t)).sum() / norm
            names = _common_regression(s_head, t_head)
            if self.regression_weight > 0 and names:
                r_s = _regression_stack(s_head, names, detach=False)
                r_t = _regression_stack(t_head, names, detach=True)
                reg = (mask * (r_s - r_t).abs().mean(dim=1)).sum() / norm
                loss = loss + self.regression_weight * reg
            losses.append(loss)
        return _mean(losses)


# ----------------------------------------------------------------------------------------
# SparseKD PP-logit
# ----------------------------------------------------------------------------------------


def _top_k_cells(score: Tensor, k: int) -> Tensor:
    """``(B, H, W)`` float32: 1 at the ``k`` highest cells of each sample of ``score``."""
    flat = score.flatten(1)
    top = flat.topk(min(k, flat.shape[1]), dim=1).indices
    out = torch.zeros_like(flat)
    out.scatter_(1, top, 1.0)
    return out.view_as(score)


@register_loss("pp_logit")
class PPLogitKD(KDLoss):
    """SparseKD's Pivotal-Position heatmap KD (methods.md 4.3).

    Per task, with ``h = clamp_sigmoid(logits)`` and ``s = max_c h_T`` the task's teacher
    max score, the mask is the product of the enabled factors::

        1[s > score_threshold]  *  s (soft)  *  G_t (gaussian)  *  top-k(s) (rank_top_k)

    where ``G_t`` is the max over the task's classes of the CenterPoint GT Gaussian heatmap
    (boxes of the task's classes only, as SparseKD's per-head target heatmaps) and
    ``top-k(s)`` is 1 at the ``rank_top_k`` highest cells of ``s`` per sample. Then::

        L_t = sum_{c, i} m(i) (h_S,c(i) - h_T,c(i))^2 / max(sum_i m(i), 1e-6)

    averaged over tasks. The released default (threshold 0, soft, gaussian) is
    ``m = max_c h_T * G``.

    Args:
        score_threshold: strict threshold on ``s``.
        soft: multiply by ``s``.
        gaussian: multiply by the task's GT Gaussian.
        rank_top_k: keep only the teacher's top-k cells per sample (None = off).
        min_overlap, min_radius: Gaussian radius settings.
    """

    input_kind = "heads"
    _EPS = 1e-6

    def __init__(self, student_channels: int, teacher_channels: int, *,
                 score_threshold: float = 0.0, soft: bool = True, gaussian: bool = True,
                 rank_top_k: int | None = None, min_overlap: float = 0.1, min_radius: int = 2) -> None:
        super().__init__()
        if rank_top_k is not None and int(rank_top_k) < 1:
            raise ValueError(f"pp_logit: rank_top_k must be >= 1 or None, got {rank_top_k}")
        if not 0.0 < min_overlap < 1.0:
            raise ValueError(f"pp_logit: min_overlap must be in (0, 1), got {min_overlap}")
        if min_radius < 0:
            raise ValueError(f"pp_logit: min_radius must be >= 0, got {min_radius}")
        self.score_threshold = float(score_threshold)
        self.soft = bool(soft)
        self.gaussian = bool(gaussian)
        self.rank_top_k = None if rank_top_k is None else int(rank_top_k)
        self.min_overlap = float(min_overlap)
        self.min_radius = int(min_radius)

    def _task_gaussians(self, maps: HeadMaps, ctx: KDContext) -> list[Tensor]:
        """Per task ``(B, H, W)`` GT Gaussian of the task's boxes (cached in ``ctx.cache``)."""
        tasks = tuple(tuple(t) for t in maps.tasks)
        key = ("pp_logit.task_gaussians", maps.grid, tasks, self.min_overlap, self.min_radius)
        if key not in ctx.cache:
            ctx.cache[key] = [masks.gaussian_mask(boxes, maps.grid, self.min_overlap, self.min_radius)
                              for boxes in _task_boxes(ctx, tasks)]
        return ctx.cache[key]

    def _mask(self, score: Tensor, gauss: Tensor | None) -> Tensor:
        """``(B, H, W)`` mask from the teacher's max score ``score`` and the GT Gaussian."""
        mask = (score > self.score_threshold).float()
        if self.soft:
            mask = mask * score
        if gauss is not None:
            mask = mask * gauss.to(score.device)
        if self.rank_top_k is not None:
            mask = mask * _top_k_cells(score, self.rank_top_k)
        return mask

    def forward(self, student: HeadMaps, teacher: HeadMaps, ctx: KDContext) -> Tensor:
        check_head_maps(student, teacher)
        gaussians: list[Tensor | None] = [None] * len(student.tasks)
        if self.gaussian:
            _check_batch(ctx, student.heads[0]["heatmap"].shape[0])
            gaussians = list(self._task_gaussians(student, ctx))
        losses = []
        for s_head, t_head, gauss in zip(student.heads, teacher.heads, gaussians):
            h_s = clamp_sigmoid(s_head["heatmap"].float())
            h_t = clamp_sigmoid(t_head["heatmap"].detach().float())
            mask = self._mask(h_t.amax(dim=1), gauss)
            diff = (h_s - h_t) ** 2
            losses.append((diff * mask[:, None]).sum() / mask.sum().clamp(min=self._EPS))
        return _mean(losses)


# ----------------------------------------------------------------------------------------
# SparseKD regression at GT centres
# ----------------------------------------------------------------------------------------


@register_loss("center_regression")
class CenterRegressionKD(KDLoss):
    """SparseKD's regression KD: L1 to the teacher's regression at the GT centre cells.

    For every GT box whose centre is on the head grid
    (:func:`~distill3d.distill.masks.gt_center_indices`, the cells of CenterPoint's
    targets), in the task containing its class (classes in no task are skipped)::

        L_t = sum_{boxes k of t} sum_ch w_ch |r_S(k) - r_T(k)| / N_t

    with ``r`` the regression vector ``(reg 2, height 1, dim 3, rot 2[, vel 2])`` at the
    box's centre cell (velocity only when both heads predict it). Averaged over tasks
    (a task without boxes contributes 0, as SparseKD's ``RegLossCenterNet``); 0 with a
    graph when there is no box.

    Args:
        code_weights: per-channel weights, 8 (no velocity) or 10 values in the order above;
            None = all 1. With 10 values and heads without velocity the last two are unused.
    """

    input_kind = "heads"

    def __init__(self, student_channels: int, teacher_channels: int, *,
                 code_weights: list[float] | None = None) -> None:
        super().__init__()
        if code_weights is not None and len(code_weights) not in _CODE_SIZES:
            raise ValueError(f"center_regression: code_weights needs 8 or 10 values (reg 2, height 1, dim 3, "
                             f"rot 2[, vel 2]), got {len(code_weights)}")
        self.code_weights = None if code_weights is None else [float(w) for w in code_weights]

    def _names(self, s_head: dict[str, Tensor], t_head: dict[str, Tensor]) -> list[str]:
        """Regression maps compared: reg, height, dim, rot and vel when both have it."""
        names = _common_regression(s_head, t_head)
        missing = [n for n in _REGRESSION_NAMES[:4] if n not in names]
        if missing:
            raise ValueError(f"center_regression: both heads need regression maps {missing}; "
                             f"student has {sorted(s_head)}, teacher {sorted(t_head)}")
        return names

    def _weights(self, channels: int, like: Tensor) -> Tensor:
        if self.code_weights is None:
            return like.new_ones(channels)
        if len(self.code_weights) < channels:
            raise ValueError(f"center_regression: {len(self.code_weights)} code_weights for {channels} "
                             "regression channels (the heads predict velocity)")
        return like.new_tensor(self.code_weights[:channels])

    def forward(self, student: HeadMaps, teacher: HeadMaps, ctx: KDContext) -> Tensor:
        check_head_maps(student, teacher)
        batch_size = student.heads[0]["heatmap"].shape[0]
        _check_batch(ctx, batch_size)
        device = student.heads[0]["heatmap"].device
        b_idx, flat, box_idx = masks.gt_center_indices(ctx.gt_boxes(), student.grid)
        if b_idx.numel() == 0:
            return _zero(student)
        labels = ctx.gt_labels()
        offsets = torch.tensor([0] + [int(lab.shape[0]) for lab in labels], device=b_idx.device).cumsum(0)
        all_labels = torch.cat([lab.to(b_idx.device) for lab in labels])
        task = task_of_labels(student.tasks, ctx.batch.class_names, all_labels[offsets[b_idx] + box_idx])
        b_idx, flat, task = b_idx.to(device), flat.to(device), task.to(device)
        losses = []
        for t, (s_head, t_head) in enumerate(zip(student.heads, teacher.heads)):
            names = self._names(s_head, t_head)
            r_s = _regression_stack(s_head, names, detach=False).flatten(2)  # (B, C, H*W)
            sel = task == t
            if not bool(sel.any()):
                losses.append(r_s.sum() * 0.0)
                continue
            r_t = _regression_stack(t_head, names, detach=True).flatten(2)
            v_s = r_s[b_idx[sel], :, flat[sel]]  # (K_t, C)
            v_t = r_t[b_idx[sel], :, flat[sel]]
            weights = self._weights(v_s.shape[1], v_s)
            losses.append(((v_s - v_t).abs() * weights).sum() / v_s.shape[0])
        return _mean(losses)
