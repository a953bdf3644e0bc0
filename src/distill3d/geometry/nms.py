"""Greedy non-maximum suppression in bird's-eye view: rotated-IoU NMS and circle NMS.

Both functions sort by decreasing score with a **stable** sort (equal scores: lower index
first), find the suppression pairs ``(i, j)`` (i ranked above j) in one vectorised,
memory-bounded pass, then run the greedy selection over that sparse pair list: box ``j``
is dropped when some *kept* box ranked above it forms a pair with it. The Python loop of
that last step visits only candidates that pair with a lower-ranked one and does a
single vectorised numpy update for each that is kept.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
from torch import Tensor

from distill3d.geometry.boxes import check_boxes
from distill3d.geometry.iou import overlapping_pairs_bev

__all__ = ["circle_nms", "nms_bev"]

# Pairs of the distance test done at once in circle_nms (~16 B of float64 each, ~16 MB).
_CIRCLE_BLOCK_PAIRS = 1 << 20


def _check_scores(scores: Tensor, num: int, device: torch.device) -> None:
    """Raise ``ValueError`` unless ``scores`` is a finite ``(num,)`` tensor on ``device``."""
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.shape != (num,):
        raise ValueError(f"scores must have shape ({num},), got {tuple(scores.shape)}")
    if scores.device != device:
        raise ValueError(f"scores must be on {device}, got {scores.device}")
    if scores.is_floating_point() and not bool(torch.isfinite(scores).all()):
        raise ValueError("scores has NaN or inf")


def _check_max_size(value: int | None, name: str) -> int | None:
    """Return ``value`` as an ``int >= 0`` (or None); raise ``ValueError`` otherwise."""
    if value is None:
        return None
    try:
        size = operator.index(value)
    except TypeError:
        size = -1
    if size < 0:
        raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
    return size


def _check_number(value: float, name: str) -> float:
    """Return ``value`` as a finite ``float >= 0``; raise ``ValueError`` otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (math.isfinite(number) and number >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _rank(scores: Tensor, pre_max_size: int | None) -> Tensor:
    """Indices by decreasing score, ties by lower index first, truncated to ``pre_max_size``."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order if pre_max_size is None else order[:pre_max_size]


def _greedy_keep(num: int, rows: Tensor, cols: Tensor) -> Tensor:
    """Greedy selection from suppression pairs in rank space.

    Args:
        num: number of ranked candidates.
        rows: ``(E,)`` ranks of the suppressing candidates.
        cols: ``(E,)`` ranks of the candidates they suppress, ``cols > rows``.

    Returns:
        ``(num,)`` bool mask of kept ranks, on ``rows``' device.
    """
    keep = np.ones(num, dtype=bool)
    if rows.numel():
        r = rows.cpu().numpy()
        c = cols.cpu().numpy()
        by_row = np.argsort(r, kind="stable")
        r, c = r[by_row], c[by_row]
        row_ids, row_start = np.unique(r, return_index=True)
        row_end = np.append(row_start[1:], r.size)
        # Ranks are visited in increasing order, so keep[i] is final when row i is reached.
        for i, s, e in zip(row_ids.tolist(), row_start.tolist(), row_end.tolist()):
            if keep[i]:
                keep[c[s:e]] = False
    return torch.from_numpy(keep).to(rows.device)


def nms_bev(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    *,
    pre_max_size: int | None = None,
    post_max_size: int | None = None,
) -> Tensor:
    """Greedy NMS with the exact rotated bird's-eye-view IoU.

    Boxes are visited by decreasing score (stable: equal scores keep the lower index
    first); a box is suppressed when its BEV IoU (:func:`~distill3d.geometry.box_iou_bev`)
    with an already kept box is strictly greater than ``iou_threshold``.

    Args:
        boxes: ``(N, >=7)`` boxes ``(x, y, z, l, w, h, yaw, ...)`` in the LiDAR frame.
        scores: ``(N,)`` scores, same device.
        iou_threshold: suppression threshold, a finite number ``>= 0``.
        pre_max_size: if given, only the ``pre_max_size`` best-scoring boxes enter NMS.
        post_max_size: if given, at most this many kept indices are returned.

    Returns:
        ``(K,)`` long tensor of kept indices into ``boxes``, in decreasing score order,
        on ``boxes``' device.

    Raises:
        ValueError: bad box or score tensors, negative threshold or max sizes.
    """
    check_boxes(boxes, "boxes")
    _check_scores(scores, boxes.shape[0], boxes.device)
    threshold = _check_number(iou_threshold, "iou_threshold")
    pre_max_size = _check_max_size(pre_max_size, "pre_max_size")
    post_max_size = _check_max_size(post_max_size, "post_max_size")
    order = _rank(scores.detach(), pre_max_size)
    rows, cols, _ = overlapping_pairs_bev(boxes.detach()[order], threshold)
    kept = order[_greedy_keep(order.numel(), rows, cols)]
    return kept if post_max_size is None else kept[:post_max_size]


def _close_pairs(xy: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Pairs ``i < j`` of ``xy`` ``(N, 2)`` with squared distance below ``radius**2``."""
    n = xy.shape[0]
    limit = radius * radius
    rows_per_block = max(1, _CIRCLE_BLOCK_PAIRS // max(n, 1))
    parts_i, parts_j = [], []
    for r0 in range(0, n, rows_per_block):
        d = xy[r0 : r0 + rows_per_block, None, :] - xy[None, :, :]
        close = (d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) < limit
        i, j = torch.triu(close, diagonal=r0 + 1).nonzero(as_tuple=True)
        parts_i.append(i + r0)
        parts_j.append(j)
    if not parts_i:
        empty = torch.zeros(0, dtype=torch.long, device=xy.device)
        return empty, empty.clone()
    return torch.cat(parts_i), torch.cat(parts_j)


def circle_nms(
    centers: Tensor,
    scores: Tensor,
    radius: float,
    *,
    post_max_size: int | None = None,
) -> Tensor:
    """Greedy NMS on bird's-eye-view centre distance (CenterPoint's circle NMS).

    Visiting centres by decreasing score (stable: ties keep the lower index first), a
    centre is suppressed when its x-y distance to an already kept one is strictly less
    than ``radius`` (metres). Computed in float64.

    Relation to CenterPoint: its ``circle_nms(dets, thresh)`` compares the **squared**
    distance with ``dist <= thresh``, and its configs' ``min_radius`` values are those
    squared thresholds. Use ``radius = math.sqrt(thresh)``; the results agree except for
    pairs exactly at that distance (suppressed there, kept here) and for score ties
    (CenterPoint's reversed ``argsort`` does not order them by index).

    Args:
        centers: ``(N, >=2)`` centres in the LiDAR frame; only columns x, y are used (a
            ``(N, 3)`` tensor or full boxes ``(N, >=7)`` work too).
        scores: ``(N,)`` scores, same device.
        radius: suppression radius in metres, ``>= 0``.
        post_max_size: if given, at most this many kept indices are returned.

    Returns:
        ``(K,)`` long tensor of kept indices into ``centers``, in decreasing score order.

    Raises:
        ValueError: bad shapes, NaN/inf, negative radius or max size.
    """
    if not isinstance(centers, Tensor):
        raise TypeError(f"centers must be a torch.Tensor, got {type(centers).__name__}")
    if centers.dim() != 2 or centers.shape[1] < 2:
        raise ValueError(f"centers must have shape (N, >=2), got {tuple(centers.shape)}")
    xy = centers[:, :2].detach().to(torch.float64)
    if not bool(torch.isfinite(xy).all()):
        raise ValueError("centers has NaN or inf in its x, y columns")
    _check_scores(scores, centers.shape[0], centers.device)
    radius = _check_number(radius, "radius")
    post_max_size = _check_max_size(post_max_size, "post_max_size")
    order = _rank(scores.detach(), None)
    rows, cols = _close_pairs(xy[order], radius)
    kept = order[_greedy_keep(order.numel(), rows, cols)]
    return kept if post_max_size is None else kept[:post_max_size]
