"""CenterPoint head: task groups, Gaussian heatmap targets, losses and decoding.

The head of CenterPoint (Yin, Zhou, Krahenbuhl, CVPR 2021; tianweiy/CenterPoint and
mmdetection3d's ``CenterHead``) on a BEV map of the key LiDAR frame.

Layout and frames
-----------------
Every map is ``(B, C, H, W)`` on the head's :class:`~distill3d.structures.BEVGrid`: rows
along +y, columns along +x, cell ``(row i, col j)`` covering
``x in [x_min + j * cell_x, x_min + (j + 1) * cell_x)``. The flat cell index used by the
targets is ``i * W + j``. Boxes are ``(x, y, z, l, w, h, yaw, vx, vy)`` rows in the key
LiDAR frame (geometric centre, metres, yaw counter-clockwise from +x, m/s).

Head outputs (one dict per task group)
--------------------------------------
* ``heatmap``: ``(B, n_task_classes, H, W)`` logits; class ``k`` of the task is
  ``tasks[t][k]``.
* ``reg``: ``(B, 2, H, W)`` sub-cell offset ``(dx, dy)`` of the box centre **from the cell
  centre**, in cells (targets in ``[-0.5, 0.5)``). CenterPoint measures it from the
  cell's lower corner (``[0, 1)``): ours is theirs minus 0.5.
* ``height``: ``(B, 1, H, W)`` box centre z, metres (geometric centre).
* ``dim``: ``(B, 3, H, W)`` ``log(l), log(w), log(h)``, metres.
* ``rot``: ``(B, 2, H, W)`` ``(sin(yaw), cos(yaw))``.
* ``vel``: ``(B, 2, H, W)`` ``(vx, vy)`` m/s, only with ``predict_velocity``.

Targets (:func:`build_targets`)
-------------------------------
Per task group: a Gaussian heatmap ``(B, n, H, W)`` in ``[0, 1]`` (exactly 1 at each box's
centre cell, max over overlapping boxes), and up to ``max_objects`` regression targets
per sample at flat cell indices, in the order of :data:`TARGET_FIELDS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Literal

import torch
from torch import Tensor, nn

from distill3d.geometry import circle_nms, nms_bev, wrap_angle
from distill3d.structures import BEVGrid, Detections

__all__ = [
    "CENTERPOINT_CIRCLE_NMS_RADIUS",
    "CENTERPOINT_NUSCENES_TASKS",
    "CODE_SIZE",
    "DEFAULT_CODE_WEIGHTS",
    "REGRESSION_HEADS",
    "TARGET_FIELDS",
    "CenterPointHead",
    "box_gaussian_radii",
    "build_targets",
    "clamp_sigmoid",
    "draw_gaussian_heatmaps",
    "gather_regression",
    "gaussian_focal_loss",
    "gaussian_radius",
    "weighted_l1_loss",
]

#: Columns of the regression targets (and of :func:`gather_regression`'s output).
TARGET_FIELDS: tuple[str, ...] = ("dx", "dy", "z", "log_l", "log_w", "log_h", "sin", "cos", "vx", "vy")
#: Number of regression target columns.
CODE_SIZE = len(TARGET_FIELDS)
#: Regression head names and channels, in target-column order (``vel`` last, optional).
REGRESSION_HEADS: tuple[tuple[str, int], ...] = (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))
#: CenterPoint's code weights: 0.2 on the two velocity columns.
DEFAULT_CODE_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
#: CenterPoint's nuScenes task groups.
CENTERPOINT_NUSCENES_TASKS: tuple[tuple[str, ...], ...] = (
    ("car",), ("truck", "construction_vehicle"), ("bus", "trailer"), ("barrier",),
    ("motorcycle", "bicycle"), ("pedestrian", "traffic_cone"),
)
#: Circle-NMS radii in metres by class name (lower case): the square roots of CenterPoint's
#: nuScenes ``min_radius`` (squared-distance thresholds ``[4, 12, 10, 1, 0.85, 0.175]``),
#: plus KITTI's ``cyclist`` as a two-wheeler. A task uses the largest radius of its
#: classes; unknown names get :data:`_DEFAULT_CIRCLE_RADIUS`.
CENTERPOINT_CIRCLE_NMS_RADIUS: Mapping[str, float] = MappingProxyType({
    "car": 2.0,
    "truck": math.sqrt(12.0), "construction_vehicle": math.sqrt(12.0),
    "bus": math.sqrt(10.0), "trailer": math.sqrt(10.0),
    "barrier": 1.0,
    "motorcycle": math.sqrt(0.85), "bicycle": math.sqrt(0.85), "cyclist": math.sqrt(0.85),
    "pedestrian": math.sqrt(0.175), "traffic_cone": math.sqrt(0.175),
})
_DEFAULT_CIRCLE_RADIUS = 1.0
# Boxes x window cells evaluated at once when drawing Gaussians (~4M, a few tens of MB).
_DRAW_BLOCK_CELLS = 1 << 22
# Clamp of the predicted log sizes before ``exp`` in decoding (keeps sizes finite).
_MAX_LOG_SIZE = 20.0


# ----------------------------------------------------------------------------------------
# Target generation
# ----------------------------------------------------------------------------------------


def gaussian_radius(l_cells: Tensor | float, w_cells: Tensor | float, min_overlap: float = 0.1) -> Tensor:
    """CenterPoint's (CornerNet's) Gaussian radius for boxes of ``l_cells x w_cells`` cells.

    The smallest of the three radii from CornerNet's quadratic equations (a shifted corner
    still gives IoU ``>= min_overlap``), with the original code's ``(b + sqrt(D)) / 2``
    (not ``/ (2a)``), exactly as CenterPoint and mmdetection3d compute it. Symmetric in
    its two sizes.

    Args:
        l_cells: box extents along x, in cells; tensor of any shape or a number.
        w_cells: box extents along y, in cells; broadcastable with ``l_cells``.
        min_overlap: the IoU the radius must preserve, in ``(0, 1)``.

    Returns:
        Float tensor of the broadcast shape (not rounded, not clamped to a minimum).
    """
    h = torch.as_tensor(l_cells)
    if not h.is_floating_point():
        h = h.to(torch.get_default_dtype())
    w = torch.as_tensor(w_cells, device=h.device)
    dtype = torch.promote_types(h.dtype, w.dtype) if w.is_floating_point() else h.dtype
    h, w = h.to(dtype), w.to(dtype)
    o = float(min_overlap)
    b1 = h + w
    c1 = w * h * (1.0 - o) / (1.0 + o)
    r1 = (b1 + torch.sqrt((b1 * b1 - 4.0 * c1).clamp(min=0.0))) / 2.0
    b2 = 2.0 * (h + w)
    c2 = (1.0 - o) * w * h
    r2 = (b2 + torch.sqrt((b2 * b2 - 16.0 * c2).clamp(min=0.0))) / 2.0
    a3 = 4.0 * o
    b3 = -2.0 * o * (h + w)
    c3 = (o - 1.0) * w * h
    r3 = (b3 + torch.sqrt((b3 * b3 - 4.0 * a3 * c3).clamp(min=0.0))) / 2.0
    return torch.minimum(torch.minimum(r1, r2), r3)


def box_gaussian_radii(boxes: Tensor, grid: BEVGrid, min_overlap: float = 0.1, min_radius: int = 2) -> Tensor:
    """Integer Gaussian radii of boxes on ``grid``, as CenterPoint assigns them.

    ``max(min_radius, int(gaussian_radius(l / cell_x, w / cell_y, min_overlap)))``: the
    box's ``l`` is measured in x cells and ``w`` in y cells whatever its yaw (as
    CenterPoint does).

    Args:
        boxes: ``(..., >=6)`` boxes ``(x, y, z, l, w, h, ...)``, metres.
        grid: the heatmap's grid.
        min_overlap: see :func:`gaussian_radius`.
        min_radius: smallest radius, cells.

    Returns:
        ``(...)`` int64 radii in cells, on ``boxes``' device.
    """
    cell_x, cell_y = grid.cell_size
    radius = gaussian_radius(boxes[..., 3].float() / cell_x, boxes[..., 4].float() / cell_y, min_overlap)
    radius = torch.nan_to_num(radius, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0.0)
    return radius.floor().long().clamp(min=int(min_radius))


def draw_gaussian_heatmaps(centers_cells: Tensor, radii: Tensor, labels: Tensor, num_classes: int,
                           grid: BEVGrid | tuple[int, int]) -> Tensor:
    """Draw CenterNet Gaussians of boxes into per-class heatmaps (max over boxes).

    Box ``k`` contributes ``exp(-(di^2 + dj^2) / (2 sigma^2))`` with
    ``sigma = (2 r_k + 1) / 6`` on the square window ``|di|, |dj| <= r_k`` around its
    centre cell (``di``, ``dj`` in cells), clipped to the grid, in channel
    ``labels[k]``; overlapping boxes combine by maximum. This is CenterPoint's
    ``draw_heatmap_gaussian`` (``gaussian2D`` + ``np.maximum``), including its rule that
    values below ``float eps * max`` are zero, vectorised over boxes: each box's window is
    evaluated by broadcasting and scattered with ``amax``. Centres outside the grid draw
    the part of their window that lies inside.

    The function is per sample; to draw a batch at once pass ``labels = b * n + class`` and
    ``num_classes = B * n`` and reshape the result to ``(B, n, H, W)``.

    Args:
        centers_cells: ``(N, 2)`` integer centre cells ``(col, row)`` (x index, y index);
            floating input is floored.
        radii: ``(N,)`` integer radii in cells, ``>= 0``.
        labels: ``(N,)`` int channel of each box in ``[0, num_classes)``.
        num_classes: number of output channels.
        grid: the heatmap's grid, or its ``(H, W)``.

    Returns:
        ``(num_classes, H, W)`` float32 heatmaps in ``[0, 1]`` on ``centers_cells``'
        device, exactly 1 at each drawn centre cell.
    """
    height, width = grid.shape if isinstance(grid, BEVGrid) else (int(grid[0]), int(grid[1]))
    device = centers_cells.device
    out = torch.zeros(num_classes * height * width, dtype=torch.float32, device=device)
    n = int(centers_cells.shape[0])
    if centers_cells.dim() != 2 or centers_cells.shape[1] != 2:
        raise ValueError(f"centers_cells must be (N, 2), got {tuple(centers_cells.shape)}")
    if radii.shape != (n,) or labels.shape != (n,):
        raise ValueError(f"radii {tuple(radii.shape)} and labels {tuple(labels.shape)} must be ({n},)")
    if n == 0:
        return out.view(num_classes, height, width)
    centers = centers_cells.floor().long() if centers_cells.is_floating_point() else centers_cells.long()
    radii = radii.long().to(device)
    labels = labels.long().to(device)
    if bool((radii < 0).any()):
        raise ValueError("radii must be >= 0")
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    r_max = int(radii.max())
    size = 2 * r_max + 1
    offsets = torch.arange(-r_max, r_max + 1, device=device)
    d_row = offsets.view(1, size, 1)
    d_col = offsets.view(1, 1, size)
    dist2 = (d_row * d_row + d_col * d_col).float()
    eps = torch.finfo(torch.float32).eps
    block = max(1, _DRAW_BLOCK_CELLS // (size * size))
    for s in range(0, n, block):
        c = centers[s:s + block]
        r = radii[s:s + block].view(-1, 1, 1)
        lab = labels[s:s + block].view(-1, 1, 1)
        sigma = (2 * r + 1).float() / 6.0
        g = torch.exp(-dist2 / (2.0 * sigma * sigma))
        g = torch.where(g < eps, torch.zeros_like(g), g)  # gaussian2D's h < eps * h.max(), max 1
        row = c[:, 1].view(-1, 1, 1) + d_row
        col = c[:, 0].view(-1, 1, 1) + d_col
        valid = ((d_row.abs() <= r) & (d_col.abs() <= r)
                 & (row >= 0) & (row < height) & (col >= 0) & (col < width))
        flat = (lab * height + row) * width + col
        out.scatter_reduce_(0, flat[valid], g[valid], reduce="amax", include_self=True)
    return out.view(num_classes, height, width)


def _class_lookup(task_ids: Sequence[int], labels: Tensor) -> Tensor:
    """Task-local class index of every label (``-1`` for labels outside the task)."""
    ids = [int(i) for i in task_ids]
    size = max(ids) + 1
    lut = torch.full((size,), -1, dtype=torch.long, device=labels.device)
    lut[torch.tensor(ids, dtype=torch.long, device=labels.device)] = torch.arange(len(ids), device=labels.device)
    inside = (labels >= 0) & (labels < size)
    return torch.where(inside, lut[labels.clamp(0, size - 1)], torch.full_like(labels, -1))


def build_targets(
    boxes: Tensor,
    labels: Tensor,
    box_mask: Tensor,
    tasks: Sequence[Sequence[int]],
    grid: BEVGrid,
    *,
    gaussian_overlap: float = 0.1,
    min_radius: int = 2,
    max_objects: int = 500,
) -> list[dict[str, Tensor]]:
    """CenterPoint targets of a batch, for every task group, without a loop over boxes.

    A box takes part when ``box_mask`` is set, its label belongs to the task, its x, y, z,
    l, w, h, yaw are finite, its sizes are positive and its centre lies on the grid (boxes
    outside the grid are skipped). The task's first ``max_objects`` such boxes per sample
    (in box order) are assigned to the slots ``0..``; their Gaussians are drawn (radius
    :func:`box_gaussian_radii`) into the channel of their task-local class. NaN
    velocities give 0 targets with their two columns masked out of ``target_mask``.

    Args:
        boxes: ``(B, M, >=7)`` boxes ``(x, y, z, l, w, h, yaw[, vx, vy])`` in the key LiDAR
            frame (without velocity columns the velocity targets are 0 and masked).
        labels: ``(B, M)`` int class indices in the model's label order (``-1`` = none).
        box_mask: ``(B, M)`` bool, True for real boxes.
        tasks: per task group, the label indices of its classes (their order is the
            order of the task's heatmap channels).
        grid: the head's output grid.
        gaussian_overlap: ``min_overlap`` of :func:`gaussian_radius`.
        min_radius: smallest Gaussian radius, cells.
        max_objects: target slots per sample and task.

    Returns:
        One dict per task with (``K = max_objects``, ``n`` = the task's classes):

        * ``heatmap``: ``(B, n, H, W)`` float32 Gaussian targets in ``[0, 1]``;
        * ``indices``: ``(B, K)`` int64 flat cell ``row * W + col`` of each slot (0 when
          empty);
        * ``mask``: ``(B, K)`` bool, True for used slots;
        * ``targets``: ``(B, K, 10)`` float32 ``[dx, dy, z, log l, log w, log h, sin,
          cos, vx, vy]`` (:data:`TARGET_FIELDS`; ``dx, dy`` from the cell centre in
          cells, in ``[-0.5, 0.5)``), zeros in empty slots;
        * ``target_mask``: ``(B, K, 10)`` bool, ``mask`` per column with the velocity
          columns off for NaN velocities;
        * ``box_ids``: ``(B, K)`` int64 index into ``M`` of each slot's box (``-1`` when
          empty);
        * ``labels``: ``(B, K)`` int64 task-local class of each slot (``-1`` when empty).
    """
    if boxes.dim() != 3 or boxes.shape[-1] < 7:
        raise ValueError(f"boxes must be (B, M, >=7), got {tuple(boxes.shape)}")
    bsz, num_boxes = boxes.shape[:2]
    if labels.shape != (bsz, num_boxes) or box_mask.shape != (bsz, num_boxes):
        raise ValueError(f"labels {tuple(labels.shape)} and box_mask {tuple(box_mask.shape)} "
                         f"must be ({bsz}, {num_boxes})")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    device = boxes.device
    height, width = grid.shape
    boxes = boxes.float()
    labels = labels.long()
    geometry_ok = torch.isfinite(boxes[..., :7]).all(-1)
    safe = torch.where(geometry_ok[..., None], boxes, torch.zeros_like(boxes))
    cells = grid.xy_to_cell(safe[..., :2])  # (B, M, 2) continuous (col, row)
    cell_int = cells.floor().long()
    valid = (box_mask.bool() & geometry_ok & (safe[..., 3:6] > 0).all(-1)
             & (cell_int[..., 0] >= 0) & (cell_int[..., 0] < width)
             & (cell_int[..., 1] >= 0) & (cell_int[..., 1] < height))
    flat_cell = cell_int[..., 1] * width + cell_int[..., 0]
    radii = box_gaussian_radii(safe, grid, gaussian_overlap, min_radius)

    sizes = torch.where(valid[..., None], safe[..., 3:6], torch.ones_like(safe[..., 3:6]))
    if boxes.shape[-1] >= 9:
        vel = boxes[..., 7:9]
        vel_ok = torch.isfinite(vel).all(-1)
        vel = torch.where(vel_ok[..., None], vel, torch.zeros_like(vel))
    else:
        vel = boxes.new_zeros(bsz, num_boxes, 2)
        vel_ok = torch.zeros(bsz, num_boxes, dtype=torch.bool, device=device)
    yaw = safe[..., 6]
    reg_targets = torch.cat([
        cells - (cell_int.float() + 0.5),
        safe[..., 2:3],
        torch.log(sizes),
        torch.sin(yaw)[..., None],
        torch.cos(yaw)[..., None],
        vel,
    ], dim=-1)  # (B, M, 10)
    column_ok = torch.ones(bsz, num_boxes, CODE_SIZE, dtype=torch.bool, device=device)
    column_ok[..., 8:10] = vel_ok[..., None]

    out: list[dict[str, Tensor]] = []
    for task_ids in tasks:
        n_cls = len(task_ids)
        if n_cls == 0:
            raise ValueError("every task needs at least one class")
        local = _class_lookup(task_ids, labels)
        in_task = valid & (local >= 0)
        slot = torch.cumsum(in_task.long(), dim=1) - 1
        keep = in_task & (slot < max_objects)
        b_idx, m_idx = keep.nonzero(as_tuple=True)
        s_idx = slot[b_idx, m_idx]
        indices = torch.zeros(bsz, max_objects, dtype=torch.long, device=device)
        mask = torch.zeros(bsz, max_objects, dtype=torch.bool, device=device)
        targets = torch.zeros(bsz, max_objects, CODE_SIZE, dtype=torch.float32, device=device)
        target_mask = torch.zeros(bsz, max_objects, CODE_SIZE, dtype=torch.bool, device=device)
        box_ids = torch.full((bsz, max_objects), -1, dtype=torch.long, device=device)
        slot_labels = torch.full((bsz, max_objects), -1, dtype=torch.long, device=device)
        indices[b_idx, s_idx] = flat_cell[b_idx, m_idx]
        mask[b_idx, s_idx] = True
        targets[b_idx, s_idx] = reg_targets[b_idx, m_idx]
        target_mask[b_idx, s_idx] = column_ok[b_idx, m_idx]
        box_ids[b_idx, s_idx] = m_idx
        slot_labels[b_idx, s_idx] = local[b_idx, m_idx]
        heatmap = draw_gaussian_heatmaps(cell_int[b_idx, m_idx], radii[b_idx, m_idx],
                                         b_idx * n_cls + local[b_idx, m_idx], bsz * n_cls, grid)
        out.append({
            "heatmap": heatmap.view(bsz, n_cls, height, width),
            "indices": indices,
            "mask": mask,
            "targets": targets,
            "target_mask": target_mask,
            "box_ids": box_ids,
            "labels": slot_labels,
        })
    return out


# ----------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------


def clamp_sigmoid(logits: Tensor, eps: float = 1e-4) -> Tensor:
    """``sigmoid(logits)`` clamped to ``[eps, 1 - eps]`` (CenterPoint's ``_sigmoid``)."""
    return torch.clamp(torch.sigmoid(logits), min=eps, max=1.0 - eps)


def gaussian_focal_loss(pred: Tensor, target: Tensor, *, alpha: float = 2.0, beta: float = 4.0,
                        eps: float = 1e-12, num_pos: Tensor | float | None = None) -> Tensor:
    """Penalty-reduced pixel-wise focal loss of CornerNet/CenterNet on Gaussian heatmaps.

    ``L = -sum[ 1(t=1) (1-p)^alpha log(p) + (1-t)^beta p^alpha log(1-p) ] / max(N_pos, 1)``
    with ``N_pos`` the number of cells where ``target == 1`` (mmdetection3d's
    ``GaussianFocalLoss`` with ``avg_factor = max(num_pos, 1)``, which equals
    CenterPoint's ``FastFocalLoss`` when every positive lies at a box's centre cell).

    Args:
        pred: probabilities in ``(0, 1)``, any shape (use :func:`clamp_sigmoid` on logits).
        target: Gaussian targets in ``[0, 1]``, the same shape.
        alpha: focusing exponent.
        beta: exponent of the penalty reduction near positives.
        eps: added inside the logs.
        num_pos: normaliser override (e.g. a count reduced across processes).

    Returns:
        Scalar loss, in ``pred``'s dtype promoted with float32.
    """
    pred = pred.float()
    target = target.float()
    pos = target.eq(1.0)
    pos_loss = -torch.log(pred + eps) * (1.0 - pred).pow(alpha) * pos
    neg_loss = -torch.log(1.0 - pred + eps) * pred.pow(alpha) * (1.0 - target).pow(beta)
    if num_pos is None:
        num_pos = pos.sum()
    norm = torch.as_tensor(num_pos, dtype=pred.dtype, device=pred.device).clamp(min=1.0)
    return (pos_loss + neg_loss).sum() / norm


def weighted_l1_loss(pred: Tensor, target: Tensor, weight: Tensor, avg_factor: Tensor | float) -> Tensor:
    """``sum(weight * |pred - target|) / (avg_factor + 1e-4)`` (CenterPoint's ``RegLoss``).

    Masked entries (weight 0) contribute exactly 0 even when ``target`` is not finite.

    Args:
        pred: ``(B, K, C)`` gathered predictions.
        target: ``(B, K, C)`` targets.
        weight: ``(B, K, C)`` weights (mask times code weights), or broadcastable.
        avg_factor: normaliser, e.g. the number of target objects.

    Returns:
        Scalar loss (float32 or wider).
    """
    weight = weight.float()
    diff = (pred.float() - torch.nan_to_num(target.float())).abs()
    loss = torch.where(weight > 0, diff * weight, torch.zeros_like(diff))
    return loss.sum() / (torch.as_tensor(avg_factor, dtype=loss.dtype, device=loss.device) + 1e-4)


def gather_regression(head: Mapping[str, Tensor], indices: Tensor) -> Tensor:
    """Regression outputs of one task at flat cells, in :data:`TARGET_FIELDS` order.

    Args:
        head: one task's outputs (``reg``, ``height``, ``dim``, ``rot``, optional ``vel``),
            each ``(B, c, H, W)``.
        indices: ``(B, K)`` int64 flat cells ``row * W + col``.

    Returns:
        ``(B, K, 10)`` (``(B, K, 8)`` without ``vel``) gathered values, differentiable.
    """
    parts = []
    for name, _ in REGRESSION_HEADS:
        if name not in head:
            if name == "vel":
                continue
            raise KeyError(f"head output lacks {name!r}; has {sorted(head)}")
        m = head[name]
        flat = m.flatten(2)  # (B, c, H*W)
        idx = indices[:, None, :].expand(-1, flat.shape[1], -1)
        parts.append(torch.gather(flat, 2, idx).transpose(1, 2))
    return torch.cat(parts, dim=-1)


# ----------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------


def _conv_block(in_ch: int, out_ch: int, norm: bool) -> list[nn.Module]:
    """3x3 conv (+ BatchNorm) + ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.ReLU(inplace=True))
    return layers


def _branch(in_ch: int, head_ch: int, out_ch: int, num_convs: int, norm: bool) -> nn.Sequential:
    """CenterPoint's ``SepHead`` branch: ``num_convs - 1`` conv blocks and a final 3x3 conv."""
    layers: list[nn.Module] = []
    ch = in_ch
    for _ in range(num_convs - 1):
        layers += _conv_block(ch, head_ch, norm)
        ch = head_ch
    layers.append(nn.Conv2d(ch, out_ch, 3, padding=1, bias=True))
    return nn.Sequential(*layers)


def _per_task(value: float | Sequence[float], num_tasks: int, name: str) -> tuple[float, ...]:
    """A per-task tuple from a scalar or a sequence of ``num_tasks`` values."""
    if isinstance(value, (int, float)):
        return (float(value),) * num_tasks
    values = tuple(float(v) for v in value)
    if len(values) != num_tasks:
        raise ValueError(f"{name} needs one value per task ({num_tasks}), got {len(values)}")
    return values


class CenterPointHead(nn.Module):
    """CenterPoint's multi-group center head on one BEV map.

    A shared 3x3 conv block, then per task group separate branches (``num_head_convs - 1``
    conv blocks and a final 3x3 conv) for ``heatmap`` and the regression maps (see the
    module docstring for the outputs and their frames).

    Args:
        in_channels: channels of the input BEV map.
        tasks: class-name groups, e.g. :data:`CENTERPOINT_NUSCENES_TASKS`; every name must
            be in ``class_names`` and appear in one task at most.
        class_names: the model's label order (decoded labels index it).
        grid: the head's input and output grid.
        share_channels, head_channels: widths of the shared block and of the branches.
        num_head_convs: convs per branch including the final one (``>= 1``).
        predict_velocity: add the ``vel`` branch.
        norm: BatchNorm in the conv blocks (convs before a BatchNorm have no bias).
        init_bias: initial bias of the heatmap logits (``-2.19``: prior 0.1).
        heatmap_weight, bbox_weight: loss weights.
        code_weights: per-column weights of the L1 loss (10 values; the velocity ones are
            ignored without ``predict_velocity``).
        gaussian_overlap, min_radius, max_objects: target settings (:func:`build_targets`).
        score_threshold: decoding keeps scores strictly above it.
        pre_max_size: top-k candidates per sample and task (over classes and cells).
        post_max_size: boxes kept per sample and task after NMS.
        nms: ``"circle"`` (centre distance), ``"rotated"`` (BEV IoU) or ``"none"``.
        nms_radius: circle-NMS radius in metres, one or one per task; None takes
            :data:`CENTERPOINT_CIRCLE_NMS_RADIUS` by class name.
        nms_iou_threshold: rotated-NMS IoU threshold, one or one per task.
        max_detections: boxes per sample after merging the tasks.
        post_center_range: optional ``(x0, y0, z0, x1, y1, z1)``; decoded centres outside
            are dropped.
    """

    def __init__(
        self,
        in_channels: int,
        tasks: Sequence[Sequence[str]],
        class_names: Sequence[str],
        grid: BEVGrid,
        *,
        share_channels: int = 64,
        head_channels: int = 64,
        num_head_convs: int = 2,
        predict_velocity: bool = True,
        norm: bool = True,
        init_bias: float = -2.19,
        heatmap_weight: float = 1.0,
        bbox_weight: float = 0.25,
        code_weights: Sequence[float] = DEFAULT_CODE_WEIGHTS,
        gaussian_overlap: float = 0.1,
        min_radius: int = 2,
        max_objects: int = 500,
        score_threshold: float = 0.1,
        pre_max_size: int = 1000,
        post_max_size: int = 83,
        nms: Literal["circle", "rotated", "none"] = "circle",
        nms_radius: float | Sequence[float] | None = None,
        nms_iou_threshold: float | Sequence[float] = 0.2,
        max_detections: int = 500,
        post_center_range: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {self.class_names}")
        self.tasks: tuple[tuple[str, ...], ...] = tuple(tuple(t) for t in tasks)
        if not self.tasks or any(not t for t in self.tasks):
            raise ValueError(f"tasks must be non-empty groups of class names, got {self.tasks}")
        seen: set[str] = set()
        for name in (n for t in self.tasks for n in t):
            if name not in self.class_names:
                raise ValueError(f"task class {name!r} is not in class_names {self.class_names}")
            if name in seen:
                raise ValueError(f"class {name!r} appears in more than one task")
            seen.add(name)
        #: Per task, the label indices (into ``class_names``) of its heatmap channels.
        self.task_class_ids: tuple[tuple[int, ...], ...] = tuple(
            tuple(self.class_names.index(n) for n in t) for t in self.tasks)
        if num_head_convs < 1:
            raise ValueError(f"num_head_convs must be >= 1, got {num_head_convs}")
        if nms not in ("circle", "rotated", "none"):
            raise ValueError(f"nms must be 'circle', 'rotated' or 'none', got {nms!r}")
        if len(code_weights) != CODE_SIZE:
            raise ValueError(f"code_weights needs {CODE_SIZE} values, got {len(code_weights)}")
        self.grid = grid
        self.in_channels = int(in_channels)
        self.predict_velocity = bool(predict_velocity)
        self.heatmap_weight = float(heatmap_weight)
        self.bbox_weight = float(bbox_weight)
        self.code_weights = tuple(float(w) for w in code_weights)
        self.gaussian_overlap = float(gaussian_overlap)
        self.min_radius = int(min_radius)
        self.max_objects = int(max_objects)
        self.score_threshold = float(score_threshold)
        self.pre_max_size = int(pre_max_size)
        self.post_max_size = int(post_max_size)
        self.nms = nms
        if nms_radius is None:
            self.nms_radius = tuple(max(CENTERPOINT_CIRCLE_NMS_RADIUS.get(n.lower(), _DEFAULT_CIRCLE_RADIUS)
                                        for n in t) for t in self.tasks)
        else:
            self.nms_radius = _per_task(nms_radius, len(self.tasks), "nms_radius")
        self.nms_iou_threshold = _per_task(nms_iou_threshold, len(self.tasks), "nms_iou_threshold")
        self.max_detections = int(max_detections)
        if post_center_range is not None and len(post_center_range) != 6:
            raise ValueError(f"post_center_range needs 6 values, got {len(post_center_range)}")
        self.post_center_range = None if post_center_range is None else tuple(float(v) for v in post_center_range)

        self.shared_conv = nn.Sequential(*_conv_block(in_channels, share_channels, norm))
        outputs = [(name, ch) for name, ch in REGRESSION_HEADS if name != "vel" or self.predict_velocity]
        self.task_heads = nn.ModuleList()
        for t in self.tasks:
            branches = nn.ModuleDict()
            branches["heatmap"] = _branch(share_channels, head_channels, len(t), num_head_convs, norm)
            for name, ch in outputs:
                branches[name] = _branch(share_channels, head_channels, ch, num_head_convs, norm)
            self.task_heads.append(branches)
        self.init_weights(init_bias)

    @property
    def code_size(self) -> int:
        """Regression columns predicted: 10 with velocity, 8 without."""
        return CODE_SIZE if self.predict_velocity else CODE_SIZE - 2

    def init_weights(self, init_bias: float = -2.19) -> None:
        """CenterPoint's init: heatmap output bias ``init_bias``; regression branch convs
        Kaiming-normal (fan out, ReLU) with zero bias."""
        for branches in self.task_heads:
            for name, branch in branches.items():
                if name == "heatmap":
                    nn.init.constant_(branch[-1].bias, init_bias)
                    continue
                for m in branch.modules():
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                        if m.bias is not None:
                            nn.init.zeros_(m.bias)

    def forward(self, bev: Tensor) -> list[dict[str, Tensor]]:
        """Run the head.

        Args:
            bev: ``(B, in_channels, H, W)`` map on :attr:`grid`.

        Returns:
            Per task group a dict: ``heatmap`` ``(B, n_task_classes, H, W)`` logits,
            ``reg`` ``(B, 2, H, W)``, ``height`` ``(B, 1, H, W)``, ``dim`` ``(B, 3, H, W)``,
            ``rot`` ``(B, 2, H, W)`` and, with velocity, ``vel`` ``(B, 2, H, W)``.
        """
        if bev.dim() != 4 or bev.shape[1] != self.in_channels or tuple(bev.shape[2:]) != self.grid.shape:
            raise ValueError(f"CenterPointHead expects (B, {self.in_channels}, {self.grid.height}, "
                             f"{self.grid.width}), got {tuple(bev.shape)}")
        x = self.shared_conv(bev)
        return [{name: branch(x) for name, branch in branches.items()} for branches in self.task_heads]

    # -- targets and losses ------------------------------------------------------------

    def build_targets(self, boxes: Tensor, labels: Tensor, box_mask: Tensor) -> list[dict[str, Tensor]]:
        """:func:`build_targets` with this head's tasks, grid and target settings."""
        return build_targets(boxes, labels, box_mask, self.task_class_ids, self.grid,
                             gaussian_overlap=self.gaussian_overlap, min_radius=self.min_radius,
                             max_objects=self.max_objects)

    def loss(self, heads: Sequence[Mapping[str, Tensor]], boxes: Tensor, labels: Tensor, box_mask: Tensor,
             targets: Sequence[Mapping[str, Tensor]] | None = None) -> dict[str, Tensor]:
        """CenterPoint's loss, summed over tasks.

        Per task ``t``: ``heatmap_weight * gaussian_focal_loss(clamp_sigmoid(heatmap),
        target heatmap)`` and ``bbox_weight * weighted_l1_loss`` of the regression at the
        target cells with ``code_weights``, normalised by the task's number of targets.

        Args:
            heads: :meth:`forward`'s output.
            boxes, labels, box_mask: ``(B, M, 9)``, ``(B, M)``, ``(B, M)`` GT as in a
                :class:`~distill3d.data.loader.Batch`.
            targets: precomputed :meth:`build_targets` output (then the GT arguments are
                not used), e.g. to share targets with a distillation loss.

        Returns:
            ``task{t}.heatmap`` and ``task{t}.bbox`` (weighted), their sums ``heatmap`` and
            ``bbox``, and the total ``loss``: float32 scalars.
        """
        if len(heads) != len(self.tasks):
            raise ValueError(f"expected {len(self.tasks)} task outputs, got {len(heads)}")
        if targets is None:
            targets = self.build_targets(boxes, labels, box_mask)
        k = self.code_size
        out: dict[str, Tensor] = {}
        hm_total: Tensor | None = None
        box_total: Tensor | None = None
        for t, (head, tgt) in enumerate(zip(heads, targets)):
            hm = gaussian_focal_loss(clamp_sigmoid(head["heatmap"].float()), tgt["heatmap"])
            pred = gather_regression(head, tgt["indices"])[..., :k]
            weights = tgt["target_mask"][..., :k].float() * pred.new_tensor(self.code_weights[:k]).float()
            box = weighted_l1_loss(pred, tgt["targets"][..., :k], weights, tgt["mask"].sum())
            hm = self.heatmap_weight * hm
            box = self.bbox_weight * box
            out[f"task{t}.heatmap"] = hm
            out[f"task{t}.bbox"] = box
            hm_total = hm if hm_total is None else hm_total + hm
            box_total = box if box_total is None else box_total + box
        assert hm_total is not None and box_total is not None
        out["heatmap"] = hm_total
        out["bbox"] = box_total
        out["loss"] = hm_total + box_total
        return out

    # -- decoding ----------------------------------------------------------------------

    def _task_candidates(self, head: Mapping[str, Tensor], t: int) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k candidates of one task for the whole batch: boxes ``(B, k, 9)``, scores
        ``(B, k)`` and labels ``(B, k)`` (model label order)."""
        heat = head["heatmap"].detach().float().sigmoid()
        _, n_cls, height, width = heat.shape
        k = min(self.pre_max_size, n_cls * height * width)
        scores, flat = heat.flatten(1).topk(k, dim=1)  # sorted, (B, k)
        cls_local = torch.div(flat, height * width, rounding_mode="floor")
        cell = flat - cls_local * (height * width)
        row = torch.div(cell, width, rounding_mode="floor")
        col = cell - row * width
        reg = gather_regression({n: m.detach().float() for n, m in head.items()}, cell)
        cell_x, cell_y = self.grid.cell_size
        x = self.grid.x_min + (col.float() + 0.5 + reg[..., 0]) * cell_x
        y = self.grid.y_min + (row.float() + 0.5 + reg[..., 1]) * cell_y
        dims = torch.exp(reg[..., 3:6].clamp(max=_MAX_LOG_SIZE))
        yaw = wrap_angle(torch.atan2(reg[..., 6], reg[..., 7]))
        if self.predict_velocity:
            vel = reg[..., 8:10]
        else:
            vel = torch.full_like(reg[..., :2], float("nan"))
        boxes = torch.cat([x[..., None], y[..., None], reg[..., 2:3], dims, yaw[..., None], vel], dim=-1)
        class_ids = torch.tensor(self.task_class_ids[t], dtype=torch.long, device=heat.device)
        return boxes, scores, class_ids[cls_local]

    def _nms(self, boxes: Tensor, scores: Tensor, t: int) -> Tensor:
        """Kept indices (by decreasing score) of one sample's candidates of task ``t``."""
        if self.nms == "circle":
            return circle_nms(boxes[:, :2], scores, self.nms_radius[t], post_max_size=self.post_max_size)
        if self.nms == "rotated":
            return nms_bev(boxes, scores, self.nms_iou_threshold[t], pre_max_size=self.pre_max_size,
                           post_max_size=self.post_max_size)
        order = torch.sort(scores, descending=True, stable=True).indices
        return order[: self.post_max_size]

    @torch.no_grad()
    def decode(self, heads: Sequence[Mapping[str, Tensor]], *, score_threshold: float | None = None,
               max_detections: int | None = None) -> list[Detections]:
        """Boxes per sample from the head outputs.

        Per task, for the whole batch at once: sigmoid heatmaps, top ``pre_max_size`` over
        classes and cells, centre = cell centre + ``reg`` offset (cells -> metres on
        :attr:`grid`), ``z = height``, sizes ``exp(dim)``, ``yaw = atan2(sin, cos)``
        wrapped to ``[-pi, pi)``, velocity (NaN without ``vel``). Then per sample: scores
        strictly above ``score_threshold``, optional ``post_center_range``, NMS of the
        task (:func:`~distill3d.geometry.circle_nms` in metres or
        :func:`~distill3d.geometry.nms_bev`) keeping ``post_max_size``; tasks merged,
        sorted by decreasing score (stable), at most ``max_detections``.

        Args:
            heads: :meth:`forward`'s output.
            score_threshold: overrides the head's threshold.
            max_detections: overrides the head's limit.

        Returns:
            ``B`` :class:`~distill3d.structures.Detections` in the key LiDAR frame of the
            (augmented) input, labels in :attr:`class_names` order.
        """
        if len(heads) != len(self.tasks):
            raise ValueError(f"expected {len(self.tasks)} task outputs, got {len(heads)}")
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        limit = self.max_detections if max_detections is None else int(max_detections)
        candidates = [self._task_candidates(head, t) for t, head in enumerate(heads)]
        bsz = candidates[0][0].shape[0]
        results: list[Detections] = []
        for b in range(bsz):
            parts_boxes, parts_scores, parts_labels = [], [], []
            for t, (boxes, scores, labels) in enumerate(candidates):
                keep = scores[b] > threshold
                if self.post_center_range is not None:
                    lo = boxes.new_tensor(self.post_center_range[:3])
                    hi = boxes.new_tensor(self.post_center_range[3:])
                    keep &= ((boxes[b, :, :3] >= lo) & (boxes[b, :, :3] <= hi)).all(-1)
                sel = keep.nonzero(as_tuple=True)[0]
                if sel.numel() == 0:
                    continue
                bx, sc, lb = boxes[b, sel], scores[b, sel], labels[b, sel]
                kept = self._nms(bx, sc, t)
                parts_boxes.append(bx[kept])
                parts_scores.append(sc[kept])
                parts_labels.append(lb[kept])
            if not parts_boxes:
                results.append(Detections.empty(device=candidates[0][0].device))
                continue
            all_boxes = torch.cat(parts_boxes)
            all_scores = torch.cat(parts_scores)
            all_labels = torch.cat(parts_labels)
            order = torch.sort(all_scores, descending=True, stable=True).indices[:limit]
            results.append(Detections(all_boxes[order], all_scores[order], all_labels[order]))
        return results
