"""Which LiDAR points lie inside which boxes.

A point ``p`` is inside box ``(x, y, z, l, w, h, yaw)`` when its coordinates in the box
frame (origin at the geometric centre, ``+x`` along the heading, ``+z`` up)

    dx =  (p_x - x) cos(yaw) + (p_y - y) sin(yaw)
    dy = -(p_x - x) sin(yaw) + (p_y - y) cos(yaw)
    dz =   p_z - z

satisfy ``|dx| <= l/2``, ``|dy| <= w/2`` and ``|dz| <= h/2``: the test is **inclusive**, so
points exactly on a face count as inside. Points and boxes are in the same frame (the key
LiDAR frame); the test runs in the promoted dtype of the two inputs.

Method (fast and memory-bounded): the points are bucketed into a regular BEV grid whose
cells are about a quarter of a typical box. A box's axis-aligned bound covers a few
cells; points in cells no box covers are dropped at once, the rest are sorted by cell,
and each (box, cell) query finds its points as a contiguous run with two
``searchsorted`` calls. So only (point, box) pairs inside or near the box's bound are
ever formed. Those candidate pairs are enumerated in flat chunks of ``_PAIR_CHUNK``
pairs and get the exact test, so temporaries stay below about 256 MB for any number of
points and boxes (200k points x 500 boxes included); only the requested output
(``(P, M)`` bool for :func:`points_in_boxes`) scales with ``P x M``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from distill3d.geometry.boxes import BOX_DIM, check_boxes

__all__ = ["count_points_in_boxes", "points_in_boxes", "points_in_boxes_indices"]

# Candidate (point, box) pairs tested at once: about 150-250 B of temporaries per pair.
_PAIR_CHUNK = 1 << 20
# Widening of the boxes' axis-aligned bounds (relative, plus 1e-6 m): it only adds
# candidates, so the exact test alone decides boundary points whatever the rounding.
_BOUND_RTOL = 1e-6
# Upper bounds of the BEV grid index: number of cells, and of (box, cell) queries.
_MAX_CELLS = 1 << 22
_MAX_QUERIES = 1 << 21


def _check_points(points: Tensor, name: str = "points") -> None:
    """Raise if ``points`` is not a floating ``(P, >=3)`` tensor with finite x, y, z."""
    if not isinstance(points, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(points).__name__}")
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"{name} must have shape (P, >=3) as (x, y, z, ...), got {tuple(points.shape)}")
    if not points.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {points.dtype}")
    if points.shape[0] and not bool(torch.isfinite(points[:, :3]).all()):
        raise ValueError(f"{name} has NaN or inf in its x, y, z columns")


def _prepare(points: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Validate inputs; return ``xyz`` ``(P, 3)`` and box geometry ``(M, 7)`` in one dtype."""
    _check_points(points, "points")
    check_boxes(boxes, "boxes")
    if points.device != boxes.device:
        raise ValueError(
            f"points and boxes must be on the same device, got {points.device} and {boxes.device}"
        )
    dtype = torch.promote_types(points.dtype, boxes.dtype)
    # Membership is not differentiable: work on detached values.
    return points[:, :3].detach().to(dtype), boxes[:, :BOX_DIM].detach().to(dtype)


def _box_params(boxes: Tensor) -> Tensor:
    """Per-box test parameters ``(M, 8)``: x, y, z, cos, sin, l/2, w/2, h/2."""
    yaw = boxes[:, 6]
    return torch.stack(
        (
            boxes[:, 0],
            boxes[:, 1],
            boxes[:, 2],
            torch.cos(yaw),
            torch.sin(yaw),
            0.5 * boxes[:, 3],
            0.5 * boxes[:, 4],
            0.5 * boxes[:, 5],
        ),
        dim=1,
    )


def _inside(xyz: Tensor, params: Tensor) -> Tensor:
    """Exact inclusive test for aligned (point ``(K, 3)``, box params ``(K, 8)``) pairs."""
    d = xyz - params[:, :3]
    cos, sin = params[:, 3], params[:, 4]
    u = d[:, 0] * cos + d[:, 1] * sin
    v = d[:, 1] * cos - d[:, 0] * sin
    return (u.abs() <= params[:, 5]) & (v.abs() <= params[:, 6]) & (d[:, 2].abs() <= params[:, 7])


def _bev_half_extents(params: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 half sizes ``(M,)`` in x and y of each box's axis-aligned bound, widened.

    The widening (``_BOUND_RTOL``) only adds candidates, so that rounding in the prefilter
    can never drop a point that the exact test accepts.
    """
    p = params.to(torch.float64)
    cos, sin = p[:, 3].abs(), p[:, 4].abs()
    half_x = cos * p[:, 5] + sin * p[:, 6]
    half_y = sin * p[:, 5] + cos * p[:, 6]
    half_x = half_x + _BOUND_RTOL * (1.0 + p[:, 0].abs() + half_x)
    half_y = half_y + _BOUND_RTOL * (1.0 + p[:, 1].abs() + half_y)
    return half_x, half_y


class _Grid(NamedTuple):
    """Regular BEV grid over the points' bounding rectangle (float64 origin and cell size)."""

    x_min: float
    y_min: float
    cell: float
    nx: int
    ny: int

    def index(self, v: Tensor, axis: int) -> Tensor:
        """Unclamped float cell coordinate ``floor((v - min) / cell)`` along ``axis``."""
        origin = self.x_min if axis == 0 else self.y_min
        return torch.floor((v - origin) / self.cell)


def _box_cell_ranges(grid: _Grid, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Clamped first/last cells ``(M, 2)`` covered by bounds ``lo``/``hi`` ``(M, 2)``, and counts ``(M,)``."""
    first = torch.stack((grid.index(lo[:, 0], 0), grid.index(lo[:, 1], 1)), dim=1)
    last = torch.stack((grid.index(hi[:, 0], 0), grid.index(hi[:, 1], 1)), dim=1)
    size = first.new_tensor([grid.nx - 1, grid.ny - 1])
    misses = ((last < 0) | (first > size)).any(dim=1)
    first = torch.minimum(first.clamp(min=0), size)
    last = torch.minimum(last.clamp(min=0), size)
    extent = last - first + 1
    count = torch.where(misses, torch.zeros_like(extent[:, 0]), extent[:, 0] * extent[:, 1])
    return first.long(), last.long(), count.long()


def _make_grid(xy: Tensor, lo: Tensor, hi: Tensor) -> _Grid:
    """Choose a grid: cells about a quarter of a typical box bound, within the budgets."""
    x_min, y_min = float(xy[:, 0].min()), float(xy[:, 1].min())
    span_x = float(xy[:, 0].max()) - x_min
    span_y = float(xy[:, 1].max()) - y_min
    typical = float((hi - lo).max(dim=1).values.median())
    cell = max(typical / 4.0, math.sqrt(span_x * span_y / _MAX_CELLS), 1e-6)
    while True:
        grid = _Grid(x_min, y_min, cell, int(span_x / cell) + 1, int(span_y / cell) + 1)
        if grid.nx * grid.ny == 1:
            return grid
        if grid.nx * grid.ny <= _MAX_CELLS:
            _, _, count = _box_cell_ranges(grid, lo, hi)
            if int(count.sum()) <= _MAX_QUERIES:
                return grid
        cell *= 2.0


def _candidate_ranges(xyz: Tensor, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bucket the points into BEV grid cells and find each box's candidate points.

    Every box is expanded into the (box, cell) queries of the cells its axis-aligned
    bound covers. Points in cells no box covers are dropped at once; the others are
    sorted by cell, so that each query's points are a contiguous run found with two
    ``searchsorted`` calls.

    Returns:
        ``order`` ``(P',)`` point indices sorted by cell, and per query ``(Q,)``: the box
        index and the ``[lo, hi)`` range into ``order``.
    """
    xy = xyz[:, :2].to(torch.float64)
    half = torch.stack(_bev_half_extents(params), dim=1)
    centre = params[:, :2].to(torch.float64)
    grid = _make_grid(xy, centre - half, centre + half)
    first, last, count = _box_cell_ranges(grid, centre - half, centre + half)

    query_box = torch.repeat_interleave(torch.arange(params.shape[0], device=xyz.device), count)
    step = torch.arange(query_box.numel(), device=xyz.device) - (torch.cumsum(count, 0) - count)[query_box]
    rows = (last[:, 1] - first[:, 1] + 1)[query_box]
    cell_x = first[query_box, 0] + torch.div(step, rows, rounding_mode="floor")
    cell_y = first[query_box, 1] + torch.remainder(step, rows)
    query_cell = cell_x * grid.ny + cell_y

    point_cell = (
        grid.index(xy[:, 0], 0).clamp_(0, grid.nx - 1) * grid.ny
        + grid.index(xy[:, 1], 1).clamp_(0, grid.ny - 1)
    ).long()
    occupied = torch.zeros(grid.nx * grid.ny, dtype=torch.bool, device=xyz.device)
    occupied[query_cell] = True
    candidates = occupied[point_cell].nonzero().squeeze(1)
    sorted_cell, order = torch.sort(point_cell[candidates])
    lo = torch.searchsorted(sorted_cell, query_cell)
    hi = torch.searchsorted(sorted_cell, query_cell, right=True)
    return candidates[order], query_box, lo, hi


def _iter_inside_pairs(xyz: Tensor, geometry: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield chunks ``(point_index, box_index)`` of the (point, box) pairs with the point inside.

    Candidates come from :func:`_candidate_ranges`; they are enumerated flat, at most
    ``_PAIR_CHUNK`` at a time, and get the exact inclusive test.

    Args:
        xyz: ``(P, 3)`` validated points (see :func:`_prepare`).
        geometry: ``(M, 7)`` validated boxes, same frame, dtype and device.

    Yields:
        Two ``(K,)`` long tensors; every inside pair appears exactly once overall.
    """
    if xyz.shape[0] == 0 or geometry.shape[0] == 0:
        return
    params = _box_params(geometry)
    order, query_box, lo, hi = _candidate_ranges(xyz, params)
    counts = hi - lo
    ends = torch.cumsum(counts, dim=0)
    starts = ends - counts
    total = int(ends[-1]) if ends.numel() else 0
    for f0 in range(0, total, _PAIR_CHUNK):
        flat = torch.arange(f0, min(total, f0 + _PAIR_CHUNK), device=xyz.device)
        query = torch.searchsorted(ends, flat, right=True)
        point_idx = order[lo[query] + (flat - starts[query])]
        box_idx = query_box[query]
        inside = _inside(xyz[point_idx], params[box_idx])
        yield point_idx[inside], box_idx[inside]


def points_in_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """Inclusive point-in-box membership matrix.

    Args:
        points: ``(P, >=3)`` points ``(x, y, z, ...)`` in the key LiDAR frame (extra
            columns such as intensity are ignored).
        boxes: ``(M, >=7)`` boxes ``(x, y, z, l, w, h, yaw, ...)`` in the same frame, on
            the same device.

    Returns:
        ``(P, M)`` bool tensor: ``[p, m]`` is True when point ``p`` satisfies
        ``|dx| <= l/2, |dy| <= w/2, |dz| <= h/2`` in the frame of box ``m`` (faces
        included; see the module docstring).

    Raises:
        ValueError: bad shapes, non-finite coordinates, non-positive sizes, or different
            devices.
    """
    xyz, geometry = _prepare(points, boxes)
    out = torch.zeros((xyz.shape[0], geometry.shape[0]), dtype=torch.bool, device=xyz.device)
    for point_idx, box_idx in _iter_inside_pairs(xyz, geometry):
        out[point_idx, box_idx] = True
    return out


def points_in_boxes_indices(points: Tensor, boxes: Tensor) -> Tensor:
    """Index of the first (lowest-index) box containing each point, or -1.

    Same inclusive test as :func:`points_in_boxes`, without building the ``(P, M)`` matrix.

    Args:
        points: ``(P, >=3)`` points in the key LiDAR frame.
        boxes: ``(M, >=7)`` boxes in the same frame and on the same device.

    Returns:
        ``(P,)`` long tensor of box indices in ``[-1, M)``.
    """
    xyz, geometry = _prepare(points, boxes)
    num_boxes = geometry.shape[0]
    out = torch.full((xyz.shape[0],), num_boxes, dtype=torch.long, device=xyz.device)
    for point_idx, box_idx in _iter_inside_pairs(xyz, geometry):
        out.scatter_reduce_(0, point_idx, box_idx, reduce="amin")
    out[out == num_boxes] = -1
    return out


def count_points_in_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """Number of points inside each box (e.g. a box's ``num_lidar_pts``).

    Same inclusive test as :func:`points_in_boxes`; a point inside several boxes counts
    for each of them. Memory-bounded: no ``(P, M)`` matrix is built.

    Args:
        points: ``(P, >=3)`` points in the key LiDAR frame.
        boxes: ``(M, >=7)`` boxes in the same frame and on the same device.

    Returns:
        ``(M,)`` long tensor of counts.
    """
    xyz, geometry = _prepare(points, boxes)
    num_boxes = geometry.shape[0]
    counts = torch.zeros(num_boxes, dtype=torch.long, device=xyz.device)
    for _, box_idx in _iter_inside_pairs(xyz, geometry):
        counts += torch.bincount(box_idx, minlength=num_boxes)
    return counts
