"""Masks and weights on a BEV grid shared by the distillation losses.

Every function here is pure (no state, no caching: callers cache in
:attr:`~distill3d.distill.context.KDContext.cache` when they wish).

Frames and layout
-----------------
Boxes are rows ``(x, y, z, l, w, h, yaw[, vx, vy])`` in the key LiDAR frame of the
(augmented) sample: geometric centre, metres, yaw counter-clockwise from +x; only the BEV
part ``(x, y, l, w, yaw)`` matters here (z is ignored). A batch of boxes is a list of ``B``
tensors ``(M_b, >=7)``, one per sample (``Batch.boxes_list``).

Maps are ``(B, H, W)`` on a :class:`~distill3d.structures.BEVGrid`: rows along +y, columns
along +x; cell ``(row i, col j)`` has its centre at
``(x_min + (j + 0.5) * cell_x, y_min + (i + 0.5) * cell_y)``; the flat cell index is
``i * W + j`` (the index CenterPoint's targets use).

Membership tests
----------------
A cell belongs to a box when its **centre** lies in the box's rotated BEV footprint
(``|u| <= l/2`` and ``|v| <= w/2`` in the box frame, inclusive, as
:mod:`distill3d.geometry.points`), or in its axis-aligned bounding rectangle where asked.
The tests run in float64 on candidate (box, cell) pairs drawn from each box's bounding
window of cells, so the cost is the number of cells near boxes, never ``boxes x cells``
for small boxes, and there is no Python loop over boxes or cells. A box that contains no
cell centre (smaller than a cell, or thinner than one) is given the cell containing its
centre when that centre is on the grid, so tiny objects are never lost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from distill3d.geometry.boxes import BOX_DIM, check_boxes
from distill3d.models.heads.centerpoint import (
    box_gaussian_radii,
    clamp_sigmoid,
    draw_gaussian_heatmaps,
)
from distill3d.structures import BEVGrid

__all__ = [
    "box_area_scale",
    "box_cell_mask",
    "box_keypoints",
    "box_region_weights",
    "false_positive_mask",
    "gaussian_mask",
    "gt_center_indices",
    "heatmap_scores",
    "teacher_score_map",
]

# Box-frame (l, w) fractions of UniDistill's nine key points: corners counter-clockwise from
# front-left (the order of ``geometry.box_corners_bev``), centre, then the midpoints of the
# front, left, rear and right edges.
_KEYPOINT_FRACTIONS = (
    (0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5),
    (0.0, 0.0),
    (0.5, 0.0), (0.0, 0.5), (-0.5, 0.0), (0.0, -0.5),
)


# ----------------------------------------------------------------------------------------
# Validation and flattening
# ----------------------------------------------------------------------------------------


def _check_grid(grid: BEVGrid) -> None:
    if not isinstance(grid, BEVGrid):
        raise TypeError(f"grid must be a BEVGrid, got {type(grid).__name__}")


def _flatten_boxes(boxes: Sequence[Tensor], grid: BEVGrid) -> tuple[Tensor, Tensor, Tensor, torch.device]:
    """Validate a per-sample box list and concatenate it.

    Returns:
        ``geom`` ``(N, 7)`` float64 box geometry, ``batch`` ``(N,)`` int64 sample of each box,
        ``local`` ``(N,)`` int64 index of each box in its sample's list, and the device.
    """
    _check_grid(grid)
    if isinstance(boxes, Tensor) or not isinstance(boxes, Sequence):
        raise TypeError("boxes must be a list of per-sample (M_b, >=7) tensors, got "
                        f"{type(boxes).__name__}")
    device = boxes[0].device if len(boxes) and isinstance(boxes[0], Tensor) else torch.device("cpu")
    for b, box in enumerate(boxes):
        check_boxes(box, f"boxes[{b}]")
        if box.device != device:
            raise ValueError(f"boxes[{b}] is on {box.device} but boxes[0] is on {device}")
    if not len(boxes):
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return torch.zeros(0, BOX_DIM, dtype=torch.float64, device=device), empty, empty, device
    counts = torch.tensor([int(box.shape[0]) for box in boxes], dtype=torch.long, device=device)
    geom = torch.cat([box[:, :BOX_DIM].detach().to(torch.float64) for box in boxes])
    batch = torch.repeat_interleave(torch.arange(len(boxes), device=device), counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(geom.shape[0], device=device) - starts[batch]
    return geom, batch, local, device


def _center_cells(xy: Tensor, grid: BEVGrid) -> tuple[Tensor, Tensor]:
    """Integer cell ``(col, row)`` ``(N, 2)`` of metric points and whether each is on the grid.

    Computed exactly as :func:`~distill3d.models.heads.centerpoint.build_targets` computes
    its centre cells (float32 ``xy_to_cell``, floored), so indices agree with the targets.
    """
    xy = xy.float()
    finite = torch.isfinite(xy).all(-1)
    cells = grid.xy_to_cell(torch.where(finite[:, None], xy, torch.zeros_like(xy))).floor()
    cells = cells.clamp(-1.0, float(max(grid.width, grid.height))).long()
    on_grid = (finite & (cells[:, 0] >= 0) & (cells[:, 0] < grid.width)
               & (cells[:, 1] >= 0) & (cells[:, 1] < grid.height))
    return cells, on_grid


# ----------------------------------------------------------------------------------------
# Box / cell membership
# ----------------------------------------------------------------------------------------


def _half_extents(geom: Tensor) -> tuple[Tensor, Tensor]:
    """Half sizes ``(N,)`` along x and y of each box's axis-aligned BEV bounding rectangle."""
    cos, sin = torch.cos(geom[:, 6]).abs(), torch.sin(geom[:, 6]).abs()
    half_l, half_w = 0.5 * geom[:, 3], 0.5 * geom[:, 4]
    return cos * half_l + sin * half_w, sin * half_l + cos * half_w


def _window(center: Tensor, half: Tensor, origin: float, cell: float, size: int) -> tuple[Tensor, Tensor]:
    """First index and count ``(N,)`` of the cells along one axis whose centres may lie in
    ``[center - half, center + half]`` (widened by one cell each side, clipped to the grid)."""
    lo = ((center - half - origin) / cell - 0.5).clamp(-2.0, size + 1.0)
    hi = ((center + half - origin) / cell - 0.5).clamp(-2.0, size + 1.0)
    first = (torch.ceil(lo).long() - 1).clamp(min=0)
    last = (torch.floor(hi).long() + 1).clamp(max=size - 1)
    return first, (last - first + 1).clamp(min=0)


def _candidate_pairs(geom: Tensor, grid: BEVGrid) -> tuple[Tensor, Tensor, Tensor]:
    """All (box, row, col) with the cell in the box's widened bounding window: ``(P,)`` each."""
    device = geom.device
    half_x, half_y = _half_extents(geom)
    cell_x, cell_y = grid.cell_size
    c0, nc = _window(geom[:, 0], half_x, grid.x_min, cell_x, grid.width)
    r0, nr = _window(geom[:, 1], half_y, grid.y_min, cell_y, grid.height)
    count = nc * nr
    box = torch.repeat_interleave(torch.arange(geom.shape[0], device=device), count)
    start = torch.cumsum(count, 0) - count
    local = torch.arange(box.shape[0], device=device) - start[box]
    return box, r0[box] + local // nc[box], c0[box] + local % nc[box]


def _pair_inside(geom: Tensor, box: Tensor, row: Tensor, col: Tensor, grid: BEVGrid,
                 axis_aligned: bool) -> Tensor:
    """``(P,)`` bool: the centre of cell ``(row, col)`` lies in box ``box`` (inclusive)."""
    cell_x, cell_y = grid.cell_size
    g = geom[box]
    dx = grid.x_min + (col.to(torch.float64) + 0.5) * cell_x - g[:, 0]
    dy = grid.y_min + (row.to(torch.float64) + 0.5) * cell_y - g[:, 1]
    if axis_aligned:
        half_x, half_y = _half_extents(g)
        return (dx.abs() <= half_x) & (dy.abs() <= half_y)
    cos, sin = torch.cos(g[:, 6]), torch.sin(g[:, 6])
    u = dx * cos + dy * sin
    v = dy * cos - dx * sin
    return (u.abs() <= 0.5 * g[:, 3]) & (v.abs() <= 0.5 * g[:, 4])


def _membership(geom: Tensor, batch: Tensor, grid: BEVGrid, axis_aligned: bool = False) -> tuple[Tensor, Tensor]:
    """Every (box, cell) membership of a flattened batch of boxes.

    Returns:
        ``box`` ``(P,)`` int64 global box index and ``cell`` ``(P,)`` int64 global flat cell
        ``b * H * W + row * W + col``; boxes with no cell centre inside get their centre
        cell when it is on the grid (the tiny-object rule).
    """
    height, width = grid.shape
    box, row, col = _candidate_pairs(geom, grid)
    inside = _pair_inside(geom, box, row, col, grid, axis_aligned)
    box, row, col = box[inside], row[inside], col[inside]
    hits = torch.bincount(box, minlength=geom.shape[0])
    centers, on_grid = _center_cells(geom[:, :2], grid)
    tiny = ((hits == 0) & on_grid).nonzero(as_tuple=True)[0]
    box = torch.cat([box, tiny])
    row = torch.cat([row, centers[tiny, 1]])
    col = torch.cat([col, centers[tiny, 0]])
    return box, (batch[box] * height + row) * width + col


def _owners(boxes: Sequence[Tensor], grid: BEVGrid) -> tuple[Tensor, Tensor, int]:
    """Global index of the box owning each cell (``-1`` outside every box).

    Returns:
        ``owner`` ``(B, H, W)`` int64 global box index, ``local`` ``(N,)`` int64 index of each
        global box in its sample's list, and ``N``.
    """
    geom, batch, local, device = _flatten_boxes(boxes, grid)
    n = int(geom.shape[0])
    height, width = grid.shape
    num_cells = len(boxes) * height * width
    box, cell = _membership(geom, batch, grid)
    # Priority: smaller BEV area first, ties by lower index (stable sort of the flat order).
    order = torch.sort(geom[:, 3] * geom[:, 4], stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=device)
    best = torch.full((num_cells,), n, dtype=torch.long, device=device)
    best.scatter_reduce_(0, cell, rank[box], reduce="amin", include_self=True)
    owned = best < n
    owner = torch.where(owned, order[best.clamp(max=max(n - 1, 0))] if n else best, torch.full_like(best, -1))
    return owner.view(len(boxes), height, width), local, n


def box_cell_mask(boxes: list[Tensor], grid: BEVGrid) -> tuple[Tensor, Tensor]:
    """Cells whose centre lies inside a box's rotated BEV footprint, and which box.

    z is ignored. Where boxes overlap the box with the smallest BEV area ``l * w`` wins
    (ties: lower index). A box that contains no cell centre (smaller or thinner than a cell)
    still marks the cell containing its centre when that centre is on the grid, so tiny
    objects are never lost (it then competes for that cell by area like any box).

    Args:
        boxes: ``B`` tensors ``(M_b, >=7)`` ``(x, y, z, l, w, h, yaw, ...)``, key LiDAR frame.
        grid: the BEV grid of the mask.

    Returns:
        ``mask`` ``(B, H, W)`` bool, and ``index`` ``(B, H, W)`` int64: the owning box's index
        into that sample's list, ``-1`` outside every box. On the boxes' device.

    Raises:
        TypeError, ValueError: ``boxes`` is not a list of valid box tensors on one device.
    """
    owner, local, _ = _owners(boxes, grid)
    index = torch.where(owner >= 0, local[owner.clamp(min=0)] if local.numel() else owner, owner)
    return owner >= 0, index


def box_area_scale(boxes: list[Tensor], grid: BEVGrid, power: float = 1.0) -> Tensor:
    """Per-cell inverse box area, ``1 / area_k ** power`` in the cells box ``k`` owns.

    ``area_k`` is the number of cells :func:`box_cell_mask` assigns to box ``k`` (so
    ``>= 1`` wherever it is used); ``power = 1`` is FGD's ``1 / area``, ``power = 0.5``
    DistillBEV's ``1 / sqrt(area)``.

    Args:
        boxes: ``B`` tensors ``(M_b, >=7)``, key LiDAR frame.
        grid: the BEV grid of the map.
        power: exponent of the area.

    Returns:
        ``(B, H, W)`` float32, 0 in cells no box owns, on the boxes' device.
    """
    owner, _, n = _owners(boxes, grid)
    scale = torch.zeros(owner.shape, dtype=torch.float32, device=owner.device)
    if n == 0:
        return scale
    owned = owner >= 0
    area = torch.bincount(owner[owned], minlength=n).to(torch.float32)
    scale[owned] = area[owner[owned]].pow(-float(power))
    return scale


def box_region_weights(boxes: list[Tensor], grid: BEVGrid, axis_aligned: bool = True) -> Tensor:
    """LiDAR Distillation's RoI mask: every box spreads a total weight of 1 over its cells.

    Cell ``i`` gets ``sum over boxes k containing i of 1 / n_k`` where ``n_k`` is the number
    of cells box ``k`` covers on the grid. A box covers a cell when the cell centre lies in
    its axis-aligned BEV bounding rectangle (``axis_aligned``, as the reference) or in its
    rotated footprint; a box covering no cell centre covers the cell containing its centre
    when that is on the grid (tiny-object rule). Overlapping boxes add up, so the map sums
    to the number of boxes that cover at least one cell.

    Args:
        boxes: ``B`` tensors ``(M_b, >=7)``, key LiDAR frame.
        grid: the BEV grid of the map.
        axis_aligned: use the boxes' axis-aligned bounding rectangles.

    Returns:
        ``(B, H, W)`` float32 on the boxes' device.
    """
    geom, batch, _, device = _flatten_boxes(boxes, grid)
    height, width = grid.shape
    out = torch.zeros(len(boxes) * height * width, dtype=torch.float32, device=device)
    if geom.shape[0]:
        box, cell = _membership(geom, batch, grid, axis_aligned=axis_aligned)
        covered = torch.bincount(box, minlength=geom.shape[0]).clamp(min=1).to(torch.float32)
        out.index_add_(0, cell, 1.0 / covered[box])
    return out.view(len(boxes), height, width)


# ----------------------------------------------------------------------------------------
# Gaussians, centres and key points
# ----------------------------------------------------------------------------------------


def gaussian_mask(boxes: list[Tensor], grid: BEVGrid, min_overlap: float = 0.1, min_radius: int = 2) -> Tensor:
    """Class-agnostic CenterPoint Gaussian heatmap: the max over boxes of their Gaussians.

    Exactly what :func:`~distill3d.models.heads.centerpoint.build_targets` draws (radius
    :func:`~distill3d.models.heads.centerpoint.box_gaussian_radii`, drawing
    :func:`~distill3d.models.heads.centerpoint.draw_gaussian_heatmaps`) with every class
    merged into one channel: boxes whose centre is off the grid are skipped, as there.
    (``build_targets``' ``max_objects`` cap per task is not applied.)

    Args:
        boxes: ``B`` tensors ``(M_b, >=7)``, key LiDAR frame.
        grid: the heatmap's grid.
        min_overlap: CornerNet's IoU of the radius (0.1 CenterPoint, 0.7 UniDistill).
        min_radius: smallest radius, cells.

    Returns:
        ``(B, H, W)`` float32 in ``[0, 1]``, exactly 1 at each box's centre cell.
    """
    geom, batch, _, device = _flatten_boxes(boxes, grid)
    cells, on_grid = _center_cells(geom[:, :2], grid)
    radii = box_gaussian_radii(geom.float(), grid, min_overlap, min_radius)
    heat = draw_gaussian_heatmaps(cells[on_grid], radii[on_grid], batch[on_grid], max(len(boxes), 1), grid)
    return heat[: len(boxes)].to(device)


def gt_center_indices(boxes: list[Tensor], grid: BEVGrid) -> tuple[Tensor, Tensor, Tensor]:
    """Flat cells ``row * W + col`` of every box centre on the grid.

    The cells are those of CenterPoint's targets (``build_targets``' ``indices``).

    Args:
        boxes: ``B`` tensors ``(M_b, >=7)``, key LiDAR frame.
        grid: the map's grid.

    Returns:
        ``batch_index`` ``(K,)``, ``flat_index`` ``(K,)`` and ``box_index`` ``(K,)`` (into the
        sample's list), int64, in sample then box order; boxes off the grid are skipped.
    """
    geom, batch, local, _ = _flatten_boxes(boxes, grid)
    cells, on_grid = _center_cells(geom[:, :2], grid)
    flat = cells[:, 1] * grid.width + cells[:, 0]
    return batch[on_grid], flat[on_grid], local[on_grid]


def box_keypoints(boxes: Tensor) -> Tensor:
    """UniDistill's nine BEV key points of each box.

    Order: the four corners counter-clockwise starting at front-left (``(+l/2, +w/2)`` in
    the box frame; the order of :func:`~distill3d.geometry.box_corners_bev`), the centre,
    then the midpoints of the front (``+l/2``), left (``+w/2``), rear and right edges.

    Args:
        boxes: ``(M, >=7)`` boxes ``(x, y, z, l, w, h, yaw, ...)``, key LiDAR frame.

    Returns:
        ``(M, 9, 2)`` metric ``(x, y)`` in the same frame, dtype and device (differentiable).
    """
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] < BOX_DIM:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be an (M, >=7) tensor, got {shape}")
    if not boxes.is_floating_point():
        raise ValueError(f"boxes must be floating point, got {boxes.dtype}")
    frac = torch.tensor(_KEYPOINT_FRACTIONS, dtype=boxes.dtype, device=boxes.device)  # (9, 2)
    local = frac * boxes[:, None, 3:5]  # (M, 9, 2)
    cos = torch.cos(boxes[:, 6])[:, None]
    sin = torch.sin(boxes[:, 6])[:, None]
    x = boxes[:, None, 0] + local[..., 0] * cos - local[..., 1] * sin
    y = boxes[:, None, 1] + local[..., 0] * sin + local[..., 1] * cos
    return torch.stack((x, y), dim=-1)


# ----------------------------------------------------------------------------------------
# Teacher scores
# ----------------------------------------------------------------------------------------


def _heatmap_logits(heads: Sequence[dict[str, Tensor]]) -> Tensor:
    """Every task's ``heatmap`` concatenated along channels: ``(B, C_total, H, W)``."""
    if isinstance(heads, dict) or not len(heads):
        raise ValueError("heads must be a non-empty list of per-task dicts")
    maps = []
    for t, head in enumerate(heads):
        if "heatmap" not in head:
            raise ValueError(f"heads[{t}] has no 'heatmap' (keys: {sorted(head)})")
        hm = head["heatmap"]
        if hm.dim() != 4:
            raise ValueError(f"heads[{t}]['heatmap'] must be (B, C, H, W), got {tuple(hm.shape)}")
        if maps and (hm.shape[0] != maps[0].shape[0] or hm.shape[2:] != maps[0].shape[2:]):
            raise ValueError(f"heads[{t}]['heatmap'] is {tuple(hm.shape)} but heads[0]['heatmap'] is "
                             f"{tuple(maps[0].shape)}: tasks must share B, H and W")
        maps.append(hm)
    return torch.cat(maps, dim=1)


def heatmap_scores(heads: list[dict[str, Tensor]]) -> Tensor:
    """CenterPoint's clamped sigmoid scores of every task's heatmap, tasks concatenated.

    Args:
        heads: one dict per task with ``heatmap`` ``(B, n_t, H, W)`` logits.

    Returns:
        ``(B, C_total, H, W)`` float32 ``clamp_sigmoid(logits)`` in ``[1e-4, 1 - 1e-4]``
        (differentiable; detach the teacher's yourself).
    """
    return clamp_sigmoid(_heatmap_logits(heads).float())


def teacher_score_map(heads: list[dict[str, Tensor]]) -> Tensor:
    """The max over tasks and classes of ``sigmoid(heatmap logits)``.

    Args:
        heads: one dict per task with ``heatmap`` ``(B, n_t, H, W)`` logits.

    Returns:
        ``(B, H, W)`` float32 in ``[0, 1]`` (not clamped, not detached).
    """
    return torch.sigmoid(_heatmap_logits(heads).float().amax(dim=1))


def false_positive_mask(score_map: Tensor, positive_mask: Tensor, threshold: float = 0.3) -> Tensor:
    """Teacher hard negatives: score above ``threshold`` in cells outside ``positive_mask``.

    Args:
        score_map: ``(B, H, W)`` teacher scores (e.g. :func:`teacher_score_map`).
        positive_mask: ``(B, H, W)`` positives (bool, or numbers: nonzero is positive), e.g.
            :func:`box_cell_mask`'s mask.
        threshold: strict score threshold.

    Returns:
        ``(B, H, W)`` bool.
    """
    if score_map.dim() != 3:
        raise ValueError(f"score_map must be (B, H, W), got {tuple(score_map.shape)}")
    if positive_mask.shape != score_map.shape:
        raise ValueError(f"positive_mask {tuple(positive_mask.shape)} must match score_map "
                         f"{tuple(score_map.shape)}")
    positive = positive_mask if positive_mask.dtype == torch.bool else positive_mask != 0
    return (score_map > threshold) & ~positive.to(score_map.device)
