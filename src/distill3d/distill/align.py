"""Aligning BEV maps of different models by metric position (methods.md section 13).

Teacher and student rarely share a BEV grid (different point-cloud ranges, cell sizes or
strides). Every map carries its :class:`~distill3d.structures.BEVGrid`, so a map is moved
onto another grid by sampling it at the metric centres of the destination cells.

Layout (see :mod:`distill3d.structures`): maps are ``(B, C, H, W)``, rows along +y, columns
along +x; cell ``(i, j)`` covers ``x in [x_min + j * cell_x, x_min + (j + 1) * cell_x)`` and
``y in [y_min + i * cell_y, ...)``, its centre at ``+ 0.5`` cell.

Resampling modes of :func:`resample_bev`:

* ``"bilinear"``: features and soft maps (upsampling, shifts, crops);
* ``"nearest"``: label-like maps on upsampling;
* ``"area"``: the average of the source cells each destination cell covers, weighted by the
  covered area (anti-aliased downsampling of features);
* ``"max"``: the maximum over the source cells each destination cell covers (downsampling
  binary or soft masks without losing small positives).

Everywhere, whatever lies outside the source grid's area counts as zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distill3d.models.base import Tap
from distill3d.structures import BEVGrid

RESAMPLE_MODES: tuple[str, ...] = ("bilinear", "nearest", "area", "max")
ALIGN_POLICIES: tuple[str, ...] = ("teacher", "student", "finer", "coarser")

#: a source cell overlapping a destination cell by less than this fraction of a source cell
#: is ignored by "area"/"max" (floating-point slivers at shared cell edges)
_SLIVER = 1e-6


class AlignmentError(ValueError):
    """Two BEV maps or grids cannot be aligned (no overlap, wrong shapes, not BEV maps)."""


def _fmt_range(g: BEVGrid) -> str:
    """``x [x0, x1) y [y0, y1) m (HxW)``, for messages."""
    return (f"x [{g.x_min:g}, {g.x_max:g}) y [{g.y_min:g}, {g.y_max:g}) m "
            f"({g.height}x{g.width} cells)")


def grids_equal(a: BEVGrid, b: BEVGrid, tol: float = 1e-6) -> bool:
    """Whether ``a`` and ``b`` have the same shape and the same area up to ``tol`` metres."""
    if (a.height, a.width) != (b.height, b.width):
        return False
    return all(abs(u - v) <= tol for u, v in ((a.x_min, b.x_min), (a.y_min, b.y_min),
                                              (a.x_max, b.x_max), (a.y_max, b.y_max)))


def _check_grid(g: BEVGrid, name: str) -> None:
    """Raise :class:`AlignmentError` when ``g`` is degenerate (non-finite or empty area,
    non-positive shape)."""
    bounds = (g.x_min, g.y_min, g.x_max, g.y_max)
    if not all(math.isfinite(float(v)) for v in bounds):
        raise AlignmentError(f"{name} grid is degenerate: non-finite bounds {bounds}")
    if not (g.x_max > g.x_min and g.y_max > g.y_min):
        raise AlignmentError(f"{name} grid is degenerate: empty area {_fmt_range(g)}")
    if int(g.height) < 1 or int(g.width) < 1:
        raise AlignmentError(f"{name} grid is degenerate: shape {g.height}x{g.width}")


def overlap_fraction(src: BEVGrid, dst: BEVGrid) -> float:
    """The fraction of ``dst``'s area that ``src`` covers, in [0, 1]."""
    ox = max(0.0, min(src.x_max, dst.x_max) - max(src.x_min, dst.x_min))
    oy = max(0.0, min(src.y_max, dst.y_max) - max(src.y_min, dst.y_min))
    return (ox * oy) / ((dst.x_max - dst.x_min) * (dst.y_max - dst.y_min))


def check_alignable(src: BEVGrid, dst: BEVGrid, *, min_overlap: float = 0.5) -> None:
    """Check that a map on ``src`` can be resampled onto ``dst``.

    Raises:
        AlignmentError: a grid is degenerate, or ``src`` covers less than ``min_overlap`` of
            ``dst``'s area (the message gives both ranges in metres).
    """
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap}")
    _check_grid(src, "source")
    _check_grid(dst, "destination")
    frac = overlap_fraction(src, dst)
    if frac < min_overlap:
        raise AlignmentError(
            f"source grid {_fmt_range(src)} covers {100 * frac:.1f}% of destination grid "
            f"{_fmt_range(dst)}, less than min_overlap {100 * min_overlap:.1f}%")


def _same_area(a: BEVGrid, b: BEVGrid) -> bool:
    """Whether ``a`` and ``b`` cover the same area (relative tolerance), whatever their shapes."""
    scale = max(1.0, *(abs(v) for v in (a.x_min, a.y_min, a.x_max, a.y_max)))
    return all(abs(u - v) <= 1e-6 * scale for u, v in ((a.x_min, b.x_min), (a.y_min, b.y_min),
                                                       (a.x_max, b.x_max), (a.y_max, b.y_max)))


def _is_integer_downsample(src: BEVGrid, dst: BEVGrid) -> tuple[int, int] | None:
    """``(ky, kx)`` when ``dst`` is ``src`` pooled by integer factors over the same area."""
    if src.height % dst.height or src.width % dst.width or not _same_area(src, dst):
        return None
    return src.height // dst.height, src.width // dst.width


def _sample_grid(src: BEVGrid, dst: BEVGrid, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Normalised ``grid_sample`` coordinates (1, H_d, W_d, 2) of ``dst``'s cell centres in
    ``src`` (align_corners=False: -1 / +1 are the outer edges of ``src``'s border cells),
    and the (H_d, W_d) mask of centres inside ``src``'s area."""
    centres = dst.cell_centers(dtype=torch.float64)  # (H_d, W_d, 2) metres, on the CPU
    u = 2.0 * (centres[..., 0] - src.x_min) / (src.x_max - src.x_min) - 1.0
    v = 2.0 * (centres[..., 1] - src.y_min) / (src.y_max - src.y_min) - 1.0
    eps = 1e-9
    inside = (u >= -1.0 - eps) & (u <= 1.0 + eps) & (v >= -1.0 - eps) & (v <= 1.0 + eps)
    grid = torch.stack([u, v], dim=-1).unsqueeze(0).to(device=device, dtype=dtype)
    return grid, inside.to(device)


def _grid_sample(x: Tensor, src: BEVGrid, dst: BEVGrid, mode: str) -> Tensor:
    """Point sampling at ``dst``'s centres: (B, C, H_s, W_s) -> (B, C, H_d, W_d).

    Uses border padding then zeroes the centres outside ``src``, so that cells inside
    ``src`` near its edge are not blended with zeros."""
    b, c, hs, ws = x.shape
    grid, inside = _sample_grid(src, dst, x.device, x.dtype)
    out = F.grid_sample(x.reshape(1, b * c, hs, ws), grid, mode=mode, padding_mode="border",
                        align_corners=False)
    out = out.reshape(b, c, dst.height, dst.width)
    if not bool(inside.all()):
        out = out * inside.to(out.dtype)
    return out


def _axis_overlaps(s_min: float, s_max: float, n_s: int, d_min: float, d_max: float, n_d: int,
                   device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per destination cell along one axis, the source cells it overlaps.

    Returns:
        idx: (n_d, K) int64 source indices (clamped into range; check ``valid``).
        weight: (n_d, K) float64 overlap length / destination cell length (0 when invalid).
        valid: (n_d, K) bool, the slot overlaps a source cell by more than a sliver.
    """
    cs = (s_max - s_min) / n_s
    cd = (d_max - d_min) / n_d
    d0 = d_min + torch.arange(n_d, dtype=torch.float64) * cd  # (n_d,)
    d1 = d0 + cd
    i0 = torch.floor((d0 - s_min) / cs).clamp(0, n_s).long()
    i1 = torch.ceil((d1 - s_min) / cs).clamp(0, n_s).long()
    k = max(int((i1 - i0).max()), 1)
    idx = i0[:, None] + torch.arange(k)[None, :]  # (n_d, K)
    e0 = s_min + idx.double() * cs
    overlap = (torch.minimum(d1[:, None], e0 + cs) - torch.maximum(d0[:, None], e0)).clamp(min=0.0)
    valid = (idx < i1[:, None]) & (overlap > _SLIVER * cs)
    weight = torch.where(valid, overlap / cd, torch.zeros_like(overlap))
    idx = idx.clamp(0, n_s - 1)
    return idx.to(device), weight.to(device), valid.to(device)


def _reduce_axis(x: Tensor, dim: int, idx: Tensor, weight: Tensor, valid: Tensor, mode: str) -> Tensor:
    """Pool ``x`` along ``dim`` (-1 or -2) over the source slots of each destination cell:
    area-weighted sum ("area") or max ("max", with 0 for the part outside the source)."""
    n_d, k = idx.shape
    xt = x.movedim(dim, -1)  # (..., n_s)
    gathered = xt[..., idx.reshape(-1)].reshape(*xt.shape[:-1], n_d, k)  # (..., n_d, K)
    if mode == "area":
        out = (gathered * weight.to(x.dtype)).sum(-1)
    else:
        out = gathered.masked_fill(~valid, float("-inf")).amax(-1)
        covered = weight.sum(-1)  # fraction of each destination cell inside the source
        outside = covered < 1.0 - 1e-6
        none = ~valid.any(-1)
        out = torch.where(none, torch.zeros_like(out), out)
        out = torch.where(outside & ~none, out.clamp(min=0.0), out)
    return out.movedim(-1, dim)


def _pool_resample(x: Tensor, src: BEVGrid, dst: BEVGrid, mode: str) -> Tensor:
    """"area"/"max" resampling: (B, C, H_s, W_s) -> (B, C, H_d, W_d).

    Integer downsampling over the same area uses ``avg_pool2d``/``max_pool2d``; any other
    pair of grids uses the exact separable form (each destination cell is a rectangle, so
    its average/max is taken along x then along y over the source cells it overlaps, with
    weights equal to the overlapped fraction). Memory stays within a small multiple of the
    input's: ``(B, C, H_s, W_d, K_x)`` with ``K_x`` the most source cells one destination
    cell spans."""
    factors = _is_integer_downsample(src, dst)
    if factors is not None:
        pool = F.avg_pool2d if mode == "area" else F.max_pool2d
        return pool(x, kernel_size=factors, stride=factors)
    ix = _axis_overlaps(src.x_min, src.x_max, src.width, dst.x_min, dst.x_max, dst.width, x.device)
    iy = _axis_overlaps(src.y_min, src.y_max, src.height, dst.y_min, dst.y_max, dst.height, x.device)
    out = _reduce_axis(x, -1, *ix, mode=mode)
    return _reduce_axis(out, -2, *iy, mode=mode)


def resample_bev(x: Tensor, src: BEVGrid, dst: BEVGrid, mode: str = "bilinear", *,
                 min_overlap: float = 0.5) -> Tensor:
    """Move a BEV map from grid ``src`` onto grid ``dst`` by metric position.

    Args:
        x: (B, C, src.height, src.width).
        src, dst: the grids of the input and of the output.
        mode: ``"bilinear"`` / ``"nearest"``: the value at each destination cell centre
            (``grid_sample``, ``align_corners=False`` so that source samples sit at source
            cell centres; inside ``src``'s area but beyond its outer centres the border
            value is held). ``"area"``: the area-weighted average of the source cells each
            destination cell covers (``avg_pool2d`` for integer downsampling over the same
            area, else the exact separable overlap average; on upsampling this is
            nearest-like with blending at source cell edges). ``"max"``: the max over the
            covered source cells (``max_pool2d`` for integer downsampling; for masks).
        min_overlap: the least fraction of ``dst``'s area that ``src`` must cover (see
            :func:`check_alignable`); 0 disables the check.

    Returns:
        (B, C, dst.height, dst.width); zeros where ``dst`` lies outside ``src``. ``x``
        itself (same object) when the grids are equal. Non-float inputs (bool/int masks)
        are computed in float32 and cast back for ``nearest``/``max``; ``bilinear``/``area``
        return float32 for them.

    Raises:
        AlignmentError: ``x`` is not 4-D or its H, W differ from ``src``'s; the grids are
            degenerate or overlap too little.
        ValueError: unknown mode.
    """
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"unknown resample mode {mode!r}; valid: {', '.join(RESAMPLE_MODES)}")
    if x.ndim != 4:
        raise AlignmentError(f"resample_bev expects a (B, C, H, W) map, got shape {tuple(x.shape)}")
    if tuple(x.shape[-2:]) != (src.height, src.width):
        raise AlignmentError(f"map H, W {tuple(x.shape[-2:])} do not match the source grid "
                             f"{src.height}x{src.width} ({_fmt_range(src)})")
    if grids_equal(src, dst):
        return x
    check_alignable(src, dst, min_overlap=min_overlap)
    in_dtype = x.dtype
    xf = x if x.is_floating_point() else x.float()
    if mode in ("bilinear", "nearest"):
        out = _grid_sample(xf, src, dst, mode)
    else:
        out = _pool_resample(xf, src, dst, mode)
    if not x.is_floating_point() and mode in ("nearest", "max"):
        out = out.to(in_dtype) if in_dtype != torch.bool else out > 0.5
    return out


def _bev_tap(tap: Tap, role: str) -> BEVGrid:
    """The grid of a BEV tap, or :class:`AlignmentError` naming the tap's kind."""
    if tap.kind != "bev":
        raise AlignmentError(f"{role} tap is of kind {tap.kind!r}; only 'bev' maps can be aligned on a grid")
    if tap.grid is None:
        raise AlignmentError(f"{role} tap (kind {tap.kind!r}) has no BEV grid to align with")
    if tap.tensor.ndim != 4:
        raise AlignmentError(f"{role} tap (kind {tap.kind!r}) must be (B, C, H, W), got {tuple(tap.tensor.shape)}")
    return tap.grid


def _cell_area(g: BEVGrid) -> float:
    cx, cy = g.cell_size
    return cx * cy


def _target_grid(s: BEVGrid, t: BEVGrid, policy: str) -> BEVGrid:
    """The grid both maps go to under ``policy`` (ties go to the teacher's grid)."""
    if policy == "teacher":
        return t
    if policy == "student":
        return s
    if policy == "finer":
        return s if _cell_area(s) < _cell_area(t) * (1 - 1e-9) else t
    if policy == "coarser":
        return s if _cell_area(s) > _cell_area(t) * (1 + 1e-9) else t
    raise AlignmentError(f"unknown alignment policy {policy!r}; valid: {', '.join(ALIGN_POLICIES)}")


def _auto_mode(src: BEVGrid, dst: BEVGrid) -> str:
    """"area" when ``dst``'s cells are at least as large on both axes (downsampling,
    anti-aliased), else "bilinear"."""
    (sx, sy), (dx, dy) = src.cell_size, dst.cell_size
    tol = 1e-9
    if dx >= sx * (1 - tol) and dy >= sy * (1 - tol) and (dx > sx * (1 + tol) or dy > sy * (1 + tol)):
        return "area"
    return "bilinear"


def align_pair(student: Tap, teacher: Tap, policy: str = "teacher", *, mode: str | None = None,
               min_overlap: float = 0.5) -> tuple[Tensor, Tensor, BEVGrid]:
    """Put a student and a teacher BEV map on one grid.

    Args:
        student, teacher: taps of kind ``"bev"`` with grids, ``(B, C_S, H_S, W_S)`` and
            ``(B, C_T, H_T, W_T)``.
        policy: ``"teacher"`` (student resampled onto the teacher's grid), ``"student"``
            (teacher onto the student's), ``"finer"`` / ``"coarser"`` (both onto the grid
            with the smaller / larger cells; the teacher's on a tie).
        mode: resampling mode (see :func:`resample_bev`); ``None`` picks ``"area"`` for a
            map that is downsampled and ``"bilinear"`` otherwise.
        min_overlap: see :func:`check_alignable`.

    Returns:
        ``(student_map, teacher_map, grid)``: ``(B, C_S, H, W)``, ``(B, C_T, H, W)`` on
        ``grid``; a map already on ``grid`` is returned as is (same object).

    Raises:
        AlignmentError: a tap is not a BEV map or has no grid (naming its kind), the batch
            sizes differ, the grids do not overlap enough, or the policy is unknown.
    """
    s_grid, t_grid = _bev_tap(student, "student"), _bev_tap(teacher, "teacher")
    if policy not in ALIGN_POLICIES:
        raise AlignmentError(f"unknown alignment policy {policy!r}; valid: {', '.join(ALIGN_POLICIES)}")
    if student.tensor.shape[0] != teacher.tensor.shape[0]:
        raise AlignmentError(f"batch sizes differ: student {student.tensor.shape[0]}, "
                             f"teacher {teacher.tensor.shape[0]}")
    grid = _target_grid(s_grid, t_grid, policy)
    s_map = resample_bev(student.tensor, s_grid, grid, mode or _auto_mode(s_grid, grid), min_overlap=min_overlap)
    t_map = resample_bev(teacher.tensor, t_grid, grid, mode or _auto_mode(t_grid, grid), min_overlap=min_overlap)
    return s_map, t_map, grid
