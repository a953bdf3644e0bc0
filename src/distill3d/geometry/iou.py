"""Exact rotated-box overlaps: BEV intersection area, BEV IoU and 3D IoU.

Boxes are ``(x, y, z, l, w, h, yaw[, ...])`` rows in the key LiDAR frame (geometric
centre, see :mod:`distill3d.geometry.boxes`); only the first seven columns are used.

Method
------
1. **Prefilter.** Pairs whose axis-aligned bounding rectangles (in the x-y plane) do not
   overlap have zero intersection and are never clipped. The test runs in blocks of rows
   (a few MB of temporaries each) whatever ``N x M`` is.
2. **Separating axes.** Candidates are tested against the four edge directions of the
   two boxes; pairs that are separated or only touch get exactly 0.
3. **Exact clipping** of the remaining pairs, in chunks of ``_CLIP_PAIRS``. In the first
   box's local frame, the vertices of the convex polygon ``A n B`` are the end points of
   ``A``'s edges clipped to ``B`` and of ``B``'s edges clipped to ``A`` (Liang-Barsky
   segment clipping against an axis-aligned rectangle, in the clipping box's own frame):
   these include the corners of each box inside the other and all edge crossings. The
   at most 16 points are sorted by angle around their mean (an interior point) and the
   area follows from the shoelace formula. Duplicated points (identical boxes, shared
   corners) and collinear points (overlapping collinear edges) add zero-area terms, so
   no special cases are needed. The inside tests are inclusive with a relative
   tolerance of ``_INSIDE_RTOL`` (sub-nanometre for driving scenes): it keeps edges that
   lie on the other box's boundary, at the cost of an area error of at most about that
   tolerance times the perimeter; slivers below that size are reported as 0.
   All clipping runs in float64 whatever the input dtype; results are returned in the
   promoted input dtype.

The output of the dense functions is ``(N, M)``; everything else is bounded by the chunk
sizes below (a few hundred MB at most), so 2000 x 2000 and larger inputs are fine.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from distill3d.geometry.boxes import BOX_DIM, check_boxes

__all__ = ["box_intersection_bev", "box_iou_3d", "box_iou_bev", "overlapping_pairs_bev"]

# Pairs tested per prefilter block (1 B of bool temporaries per pair and comparison).
_PREFILTER_PAIRS = 1 << 22
# Candidate pairs clipped at once: about 3 KB of float64 temporaries per pair (~50 MB).
_CLIP_PAIRS = 1 << 14
# Tolerance of the inclusive inside tests, relative to the pair's sizes and distance.
_INSIDE_RTOL = 1e-13
# Placeholder angle for invalid points: sorts after every atan2 value (<= pi).
_INVALID_ANGLE = 10.0


def _prepare_pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, torch.dtype]:
    """Validate ``a`` and ``b``; return their geometry in float64 and the output dtype."""
    check_boxes(a, "a")
    check_boxes(b, "b")
    if a.device != b.device:
        raise ValueError(f"a and b must be on the same device, got {a.device} and {b.device}")
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    return _geometry64(a), _geometry64(b), out_dtype


def _geometry64(boxes: Tensor) -> Tensor:
    """Float64 rows ``(N, 9)``: the seven box columns, then ``cos(yaw)`` and ``sin(yaw)``."""
    geometry = boxes[:, :BOX_DIM].to(torch.float64)
    yaw = geometry[:, 6:7]
    return torch.cat((geometry, torch.cos(yaw), torch.sin(yaw)), dim=1)


def _bev_half_extents(boxes: Tensor) -> Tensor:
    """Half sizes ``(N, 2)`` of the axis-aligned rectangle around each BEV footprint.

    ``boxes`` are ``(N, 9)`` rows from :func:`_geometry64`.
    """
    cos = boxes[:, 7].abs()
    sin = boxes[:, 8].abs()
    half_l = 0.5 * boxes[:, 3]
    half_w = 0.5 * boxes[:, 4]
    return torch.stack((cos * half_l + sin * half_w, sin * half_l + cos * half_w), dim=1)


def _iter_candidate_pairs(
    a: Tensor, b: Tensor, *, upper_only: bool = False
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield index chunks ``(ia, ib)`` of the pairs whose BEV bounding rectangles overlap.

    Args:
        a: ``(N, 9)`` rows from :func:`_geometry64`.
        b: ``(M, 9)`` rows from :func:`_geometry64`.
        upper_only: keep only pairs with ``ia < ib`` (for ``a`` compared with itself).

    Yields:
        ``(K,)`` long tensors ``ia`` and ``ib`` with ``K <= _CLIP_PAIRS``.
    """
    n, m = a.shape[0], b.shape[0]
    if n == 0 or m == 0:
        return
    ext_a, ext_b = _bev_half_extents(a), _bev_half_extents(b)
    lo_a, hi_a = a[:, :2] - ext_a, a[:, :2] + ext_a  # (N, 2) bounding rectangles
    lo_b, hi_b = (b[:, :2] - ext_b).T.contiguous(), (b[:, :2] + ext_b).T.contiguous()  # (2, M)
    rows = max(1, _PREFILTER_PAIRS // m)
    # Candidates of several row blocks are batched so that each clipping call is large.
    pending_a: list[Tensor] = []
    pending_b: list[Tensor] = []
    num_pending = 0
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        mask = lo_a[r0:r1, 0:1] <= hi_b[0]
        mask &= lo_b[0] <= hi_a[r0:r1, 0:1]
        mask &= lo_a[r0:r1, 1:2] <= hi_b[1]
        mask &= lo_b[1] <= hi_a[r0:r1, 1:2]
        if upper_only:
            mask = torch.triu(mask, diagonal=r0 + 1)
        ia, ib = mask.nonzero(as_tuple=True)
        pending_a.append(ia + r0)
        pending_b.append(ib)
        num_pending += ia.numel()
        if num_pending < _CLIP_PAIRS and r1 < n:
            continue
        ia, ib = torch.cat(pending_a), torch.cat(pending_b)
        keep = num_pending % _CLIP_PAIRS if r1 < n else 0  # carry a partial chunk over
        stop = num_pending - keep
        for k0 in range(0, stop, _CLIP_PAIRS):
            yield ia[k0 : min(stop, k0 + _CLIP_PAIRS)], ib[k0 : min(stop, k0 + _CLIP_PAIRS)]
        pending_a, pending_b, num_pending = [ia[stop:]], [ib[stop:]], keep


def _local_corners(boxes: Tensor, frame: Tensor) -> Tensor:
    """BEV corners ``(K, 4, 2)`` of ``boxes`` expressed in the local frames of ``frame``.

    Both are ``(K, 9)`` rows from :func:`_geometry64`. A box's local frame has its origin
    at the box centre and ``+x`` along its heading. Corners are in the counter-clockwise
    order of :func:`~distill3d.geometry.box_corners_bev`.
    """
    cos_f, sin_f = frame[:, 7:8], frame[:, 8:9]
    cos_b, sin_b = boxes[:, 7:8], boxes[:, 8:9]
    cos = cos_b * cos_f + sin_b * sin_f  # cos(yaw_b - yaw_f)
    sin = sin_b * cos_f - cos_b * sin_f  # sin(yaw_b - yaw_f)
    sx = boxes.new_tensor([0.5, -0.5, -0.5, 0.5]) * boxes[:, 3:4]  # (K, 4) along heading
    sy = boxes.new_tensor([0.5, 0.5, -0.5, -0.5]) * boxes[:, 4:5]  # (K, 4) across it
    dx = boxes[:, 0:1] - frame[:, 0:1]
    dy = boxes[:, 1:2] - frame[:, 1:2]
    cx = dx * cos_f + dy * sin_f
    cy = dy * cos_f - dx * sin_f
    return torch.stack((sx * cos - sy * sin + cx, sx * sin + sy * cos + cy), dim=-1)


def _separated(corners: Tensor, half: Tensor) -> Tensor:
    """Whether polygons ``(K, 4, 2)`` lie on or beyond one side of the rectangles
    ``|x| <= half_x, |y| <= half_y`` (``half`` ``(K, 2)``): a separating-axis test."""
    low = corners.amin(dim=1)
    high = corners.amax(dim=1)
    return ((high <= -half) | (low >= half)).any(dim=1)


def _clip_to_rect(start: Tensor, end: Tensor, half: Tensor, tol: Tensor) -> tuple[Tensor, Tensor]:
    """Liang-Barsky clipping of segments ``start -> end`` ``(K, 4, 2)`` to rectangles.

    The rectangles are ``|x| <= half_x + tol``, ``|y| <= half_y + tol`` (``half``
    ``(K, 2)``, ``tol`` ``(K,)``), so the segments are given in each rectangle's local
    frame. Returns ``t0, t1`` ``(K, 4)`` in ``[0, 1]``: the part ``start + t (end -
    start)``, ``t0 <= t <= t1``, lies inside; ``t1 = -1`` when no part does.
    """
    delta = end - start
    lim = (half + tol[:, None])[:, None, :]  # (K, 1, 2)
    flat = delta == 0
    safe = torch.where(flat, torch.ones_like(delta), delta)
    t_a = (-lim - start) / safe
    t_b = (lim - start) / safe
    enter, leave = torch.minimum(t_a, t_b), torch.maximum(t_a, t_b)
    # A segment parallel to an axis is inside for all t, or for none, along that axis.
    inside = start.abs() <= lim
    inf = torch.full_like(enter, float("inf"))
    enter = torch.where(flat, torch.where(inside, -inf, inf), enter)
    leave = torch.where(flat, torch.where(inside, inf, -inf), leave)
    t0 = enter.amax(dim=-1).clamp(0.0, 1.0)
    t1 = leave.amin(dim=-1).clamp(0.0, 1.0)
    empty = (enter.amax(dim=-1) > 1.0) | (leave.amin(dim=-1) < 0.0)
    return t0, torch.where(empty, torch.full_like(t1, -1.0), t1)


def _clipped_edge_points(corners: Tensor, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
    """End points ``(K, 8, 2)`` of the clipped edges ``corners[k] -> corners[k+1]`` and
    their validity ``(K, 8)``."""
    delta = torch.roll(corners, -1, dims=1) - corners
    p0 = corners + t0[..., None] * delta
    p1 = corners + t1[..., None] * delta
    valid = t1 >= t0
    return torch.cat((p0, p1), dim=1), torch.cat((valid, valid), dim=1)


def _convex_polygon_area(pts: Tensor, valid: Tensor) -> Tensor:
    """Area ``(K,)`` of the convex polygons whose vertices are the valid ``pts``.

    ``pts`` ``(K, P, 2)`` must all lie on the boundary of their convex polygon (in any
    order, duplicates allowed); ``valid`` ``(K, P)`` marks which ones to use. The points
    are sorted by angle around their mean, an interior point, and the shoelace formula
    is applied around that mean.
    """
    count = valid.sum(dim=1)
    weight = valid.to(pts.dtype)[..., None]
    centre = (pts * weight).sum(dim=1) / count.clamp(min=1)[:, None].to(pts.dtype)
    rel = pts - centre[:, None, :]
    x, y = rel[..., 0], rel[..., 1]
    angle = torch.where(valid, torch.atan2(y, x), torch.full_like(x, _INVALID_ANGLE))
    order = angle.argsort(dim=1)
    x, y = torch.gather(x, 1, order), torch.gather(y, 1, order)
    valid_sorted = torch.gather(valid, 1, order)
    # Pad with the first vertex: padded edges then have zero length and the closing edge
    # runs from the last valid vertex back to the first one.
    x = torch.where(valid_sorted, x, x[:, :1])
    y = torch.where(valid_sorted, y, y[:, :1])
    area = 0.5 * (x * torch.roll(y, -1, dims=1) - y * torch.roll(x, -1, dims=1)).sum(dim=1)
    return torch.where(count >= 3, area, torch.zeros_like(area)).clamp(min=0.0)


def _pair_intersection_bev(a: Tensor, b: Tensor) -> Tensor:
    """Exact BEV intersection areas ``(K,)`` of aligned box pairs ``(K, 9)`` (see
    :func:`_geometry64`).

    In ``A``'s local frame, the vertices of the convex polygon ``A n B`` are the end
    points of ``A``'s edges clipped to ``B`` and of ``B``'s edges clipped to ``A``
    (Liang-Barsky; ``A``'s corners inside ``B`` and edge crossings among them). These at
    most 16 points are ordered by angle and the area follows from the shoelace formula.
    Pairs separated by an edge line of either box (the separating-axis test, touching
    included) are skipped and get exactly 0.
    """
    ca_in_b = _local_corners(a, b)
    cb_in_a = _local_corners(b, a)
    half_a, half_b = 0.5 * a[:, 3:5], 0.5 * b[:, 3:5]
    area = a.new_zeros(a.shape[0])
    hit = (~(_separated(cb_in_a, half_a) | _separated(ca_in_b, half_b))).nonzero().squeeze(1)
    if hit.numel() == 0:
        return area
    a, b, ca_in_b, cb_in_a = a[hit], b[hit], ca_in_b[hit], cb_in_a[hit]
    half_a, half_b = half_a[hit], half_b[hit]
    dist = torch.linalg.vector_norm(b[:, :2] - a[:, :2], dim=1)
    tol = _INSIDE_RTOL * (a[:, 3] + a[:, 4] + b[:, 3] + b[:, 4] + dist)
    # A's edges clipped to B (parameters from B's frame, points in A's frame).
    ca = a.new_tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]]) * a[:, None, 3:5]
    t0, t1 = _clip_to_rect(ca_in_b, torch.roll(ca_in_b, -1, dims=1), half_b, tol)
    pts_a, ok_a = _clipped_edge_points(ca, t0, t1)
    # B's edges clipped to A (all in A's frame).
    t0, t1 = _clip_to_rect(cb_in_a, torch.roll(cb_in_a, -1, dims=1), half_a, tol)
    pts_b, ok_b = _clipped_edge_points(cb_in_a, t0, t1)
    inter = _convex_polygon_area(torch.cat((pts_a, pts_b), dim=1), torch.cat((ok_a, ok_b), dim=1))
    # The tolerance may leave slivers about ``tol`` wide where boxes only touch.
    snap = 4.0 * tol * (a[:, 3] + a[:, 4] + b[:, 3] + b[:, 4])
    inter = torch.where(inter <= snap, torch.zeros_like(inter), inter)
    bound = torch.minimum(a[:, 3] * a[:, 4], b[:, 3] * b[:, 4])
    return area.index_put_((hit,), torch.minimum(inter, bound))


def _z_overlap(a: Tensor, b: Tensor) -> Tensor:
    """Vertical overlap ``(K,)`` of aligned box pairs ``(K, >=7)`` (centre z, height h)."""
    top = torch.minimum(a[:, 2] + 0.5 * a[:, 5], b[:, 2] + 0.5 * b[:, 5])
    bottom = torch.maximum(a[:, 2] - 0.5 * a[:, 5], b[:, 2] - 0.5 * b[:, 5])
    return (top - bottom).clamp(min=0.0)


def _pair_overlap(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Overlap measure ``(K,)`` of aligned float64 pairs: 'inter_bev', 'iou_bev' or 'iou_3d'."""
    inter = _pair_intersection_bev(a, b)
    if kind == "inter_bev":
        return inter
    if kind == "iou_bev":
        size_a, size_b = a[:, 3] * a[:, 4], b[:, 3] * b[:, 4]
    else:
        inter = inter * _z_overlap(a, b)
        size_a, size_b = a[:, 3] * a[:, 4] * a[:, 5], b[:, 3] * b[:, 4] * b[:, 5]
    return (inter / (size_a + size_b - inter)).clamp(0.0, 1.0)


def _iter_pair_overlaps(
    a: Tensor, b: Tensor, kind: str, *, upper_only: bool = False
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(ia, ib, value)`` for the candidate pairs of ``a`` and ``b`` (from :func:`_geometry64`).

    Pairs not yielded have a value of exactly zero. For ``'iou_3d'``, candidates without
    vertical overlap are dropped before clipping.
    """
    for ia, ib in _iter_candidate_pairs(a, b, upper_only=upper_only):
        pa, pb = a[ia], b[ib]
        if kind == "iou_3d":
            keep = _z_overlap(pa, pb) > 0
            ia, ib, pa, pb = ia[keep], ib[keep], pa[keep], pb[keep]
        yield ia, ib, _pair_overlap(pa, pb, kind)


def _dense_overlap(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """``(N, M)`` overlap matrix of the given kind, in the promoted input dtype."""
    a64, b64, out_dtype = _prepare_pair(a, b)
    out = torch.zeros((a64.shape[0], b64.shape[0]), dtype=out_dtype, device=a.device)
    for ia, ib, value in _iter_pair_overlaps(a64, b64, kind):
        out[ia, ib] = value.to(out_dtype)
    return out


def overlapping_pairs_bev(boxes: Tensor, iou_threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Pairs ``i < j`` of ``boxes`` whose exact BEV IoU is strictly above ``iou_threshold``.

    Memory is bounded by the number of such pairs (no ``N x N`` matrix is built), which
    is what greedy NMS needs.

    Args:
        boxes: ``(N, >=7)`` boxes.
        iou_threshold: IoU threshold, ``>= 0`` (pairs with IoU 0 are never returned).

    Returns:
        ``(i, j, iou)``: two ``(E,)`` long tensors with ``i < j`` and the ``(E,)`` float64
        IoUs, on ``boxes``' device.
    """
    check_boxes(boxes, "boxes")
    if not iou_threshold >= 0.0:
        raise ValueError(f"iou_threshold must be >= 0, got {iou_threshold}")
    geometry = _geometry64(boxes)
    parts_i, parts_j, parts_v = [], [], []
    for ia, ib, iou in _iter_pair_overlaps(geometry, geometry, "iou_bev", upper_only=True):
        hit = iou > iou_threshold
        parts_i.append(ia[hit])
        parts_j.append(ib[hit])
        parts_v.append(iou[hit])
    if not parts_i:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty.clone(), torch.zeros(0, dtype=torch.float64, device=boxes.device)
    return torch.cat(parts_i), torch.cat(parts_j), torch.cat(parts_v)


def box_intersection_bev(a: Tensor, b: Tensor) -> Tensor:
    """Exact bird's-eye-view intersection areas of rotated boxes, in square metres.

    Args:
        a: ``(N, >=7)`` boxes ``(x, y, z, l, w, h, yaw, ...)`` in the LiDAR frame.
        b: ``(M, >=7)`` boxes in the same frame and on the same device.

    Returns:
        ``(N, M)`` areas of the footprint intersections (``l x w`` rectangles rotated by
        ``yaw``), dtype ``torch.promote_types(a.dtype, b.dtype)``.

    Raises:
        ValueError: bad shapes, NaN/inf, non-positive sizes, or different devices.
    """
    return _dense_overlap(a, b, "inter_bev")


def box_iou_bev(a: Tensor, b: Tensor) -> Tensor:
    """Exact bird's-eye-view IoU of rotated boxes.

    IoU of the rotated ``l x w`` footprints: intersection area / union area, computed
    exactly by convex polygon clipping in float64 (identical boxes give 1 up to rounding,
    boxes that only touch give 0). Heights and z are ignored.

    Args:
        a: ``(N, >=7)`` boxes ``(x, y, z, l, w, h, yaw, ...)`` in the LiDAR frame.
        b: ``(M, >=7)`` boxes in the same frame and on the same device.

    Returns:
        ``(N, M)`` IoUs in ``[0, 1]``, dtype ``torch.promote_types(a.dtype, b.dtype)``.

    Raises:
        ValueError: bad shapes, NaN/inf, non-positive sizes, or different devices.
    """
    return _dense_overlap(a, b, "iou_bev")


def box_iou_3d(a: Tensor, b: Tensor) -> Tensor:
    """Exact 3D IoU of yaw-rotated boxes.

    Intersection volume = exact BEV intersection area x overlap of the vertical extents
    ``[z - h/2, z + h/2]``; union = ``l w h`` of both minus the intersection.

    Args:
        a: ``(N, >=7)`` boxes ``(x, y, z, l, w, h, yaw, ...)`` (geometric centres) in the
            LiDAR frame.
        b: ``(M, >=7)`` boxes in the same frame and on the same device.

    Returns:
        ``(N, M)`` IoUs in ``[0, 1]``, dtype ``torch.promote_types(a.dtype, b.dtype)``.

    Raises:
        ValueError: bad shapes, NaN/inf, non-positive sizes, or different devices.
    """
    return _dense_overlap(a, b, "iou_3d")
