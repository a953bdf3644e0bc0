"""BEV grid alignment: resampling by metric position, checks and the pair policies.

Expected values come from first principles: a map whose value is a linear function of the
metric cell centre (bilinear sampling reproduces it exactly away from borders), and 2x2
block means / maxima written out by hand.
"""

from __future__ import annotations

import pytest
import torch

from distill3d.distill.align import (
    AlignmentError,
    align_pair,
    check_alignable,
    grids_equal,
    resample_bev,
)
from distill3d.models.base import Tap
from distill3d.structures import BEVGrid


def f_xy(grid: BEVGrid, channels: int = 1, batch: int = 1) -> torch.Tensor:
    """(batch, channels, H, W) map of f(x, y) = 2x + 3y (+ channel index) at the metric
    cell centres, computed independently of BEVGrid.cell_centers."""
    cx = (grid.x_max - grid.x_min) / grid.width
    cy = (grid.y_max - grid.y_min) / grid.height
    xs = torch.tensor([grid.x_min + (j + 0.5) * cx for j in range(grid.width)], dtype=torch.float64)
    ys = torch.tensor([grid.y_min + (i + 0.5) * cy for i in range(grid.height)], dtype=torch.float64)
    base = 2.0 * xs[None, :] + 3.0 * ys[:, None]  # rows along y, columns along x
    maps = torch.stack([base + c for c in range(channels)])
    return maps.expand(batch, -1, -1, -1).float().contiguous()


SRC = BEVGrid(-4.0, -2.0, 4.0, 6.0, 8, 16)  # cells 0.5 m (x) by 1.0 m (y)


def test_bilinear_finer_grid_matches_f_in_interior() -> None:
    dst = BEVGrid(-4.0, -2.0, 4.0, 6.0, 32, 64)  # 4x finer
    out = resample_bev(f_xy(SRC, channels=2, batch=2), SRC, dst)
    assert out.shape == (2, 2, 32, 64)
    want = f_xy(dst, channels=2, batch=2)
    # interior: destination centres between the outermost source centres (2 cells margin)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], want[..., 2:-2, 2:-2], atol=1e-4, rtol=0)


def test_bilinear_coarser_grid_is_exact() -> None:
    dst = BEVGrid(-4.0, -2.0, 4.0, 6.0, 4, 8)  # 2x coarser: centres between 4 source centres
    out = resample_bev(f_xy(SRC), SRC, dst)
    torch.testing.assert_close(out, f_xy(dst), atol=1e-4, rtol=0)


def test_bilinear_shifted_and_cropped_grids() -> None:
    shifted = BEVGrid(-3.3, -1.1, 2.7, 4.9, 6, 15)  # odd offsets, different cell sizes
    out = resample_bev(f_xy(SRC), SRC, shifted)
    torch.testing.assert_close(out, f_xy(shifted), atol=1e-4, rtol=0)
    crop = BEVGrid(-1.0, 0.0, 2.0, 3.0, 3, 6)  # aligned crop: cells equal to source cells
    out = resample_bev(f_xy(SRC), SRC, crop)
    torch.testing.assert_close(out, f_xy(crop), atol=1e-4, rtol=0)
    # the crop is exactly rows 2..4, columns 6..11 of the source
    torch.testing.assert_close(out, f_xy(SRC)[..., 2:5, 6:12])


def test_outside_source_is_zero_and_edges_hold_border_value() -> None:
    wide = BEVGrid(-8.0, -2.0, 4.0, 6.0, 8, 24)  # extends 4 m past the source on -x
    x = torch.ones(1, 1, 8, 16)
    out = resample_bev(x, SRC, wide, min_overlap=0.5)
    assert torch.all(out[..., :8] == 0)  # centres x < -4
    assert torch.all(out[..., 8:] == 1)  # inside, including the border cells (no blend with 0)


def test_rows_follow_y_and_columns_follow_x() -> None:
    # a single hot source cell at (row 1, col 3) -> centre (x=-2.25, y=-0.5)
    x = torch.zeros(1, 1, 8, 16)
    x[0, 0, 1, 3] = 1.0
    dst = BEVGrid(-4.0, -2.0, 4.0, 6.0, 16, 32)  # 2x finer in both axes
    out = resample_bev(x, SRC, dst, mode="nearest")
    hot = out[0, 0].nonzero().tolist()
    assert hot == [[2, 6], [2, 7], [3, 6], [3, 7]]


def test_nearest_2x_upsample_repeats() -> None:
    g = BEVGrid(0.0, 0.0, 4.0, 3.0, 3, 4)
    x = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    dst = BEVGrid(0.0, 0.0, 4.0, 3.0, 6, 8)
    out = resample_bev(x, g, dst, mode="nearest")
    want = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.equal(out, want)


def test_nearest_keeps_integer_and_bool_dtypes() -> None:
    g = BEVGrid(0.0, 0.0, 2.0, 2.0, 2, 2)
    dst = BEVGrid(0.0, 0.0, 2.0, 2.0, 4, 4)
    m = torch.tensor([[[[True, False], [False, True]]]])
    out = resample_bev(m, g, dst, mode="nearest")
    assert out.dtype == torch.bool and int(out.sum()) == 8
    lab = torch.tensor([[[[3, 1], [0, 2]]]])
    assert resample_bev(lab, g, dst, mode="nearest").dtype == torch.int64


BLOCK = torch.tensor([[1.0, 2.0, 5.0, 0.0],
                      [3.0, 6.0, -1.0, 4.0],
                      [0.0, 0.0, 7.0, 7.0],
                      [2.0, -2.0, 7.0, 9.0]]).reshape(1, 1, 4, 4)
G4 = BEVGrid(0.0, 0.0, 4.0, 4.0, 4, 4)
G2 = BEVGrid(0.0, 0.0, 4.0, 4.0, 2, 2)


def test_area_integer_downsample_is_block_mean() -> None:
    out = resample_bev(BLOCK, G4, G2, mode="area")
    want = torch.tensor([[(1 + 2 + 3 + 6) / 4, (5 + 0 - 1 + 4) / 4],
                         [(0 + 0 + 2 - 2) / 4, (7 + 7 + 7 + 9) / 4]]).reshape(1, 1, 2, 2)
    torch.testing.assert_close(out, want)


def test_max_integer_downsample_is_block_max() -> None:
    out = resample_bev(BLOCK, G4, G2, mode="max")
    want = torch.tensor([[6.0, 5.0], [2.0, 9.0]]).reshape(1, 1, 2, 2)
    torch.testing.assert_close(out, want)


def test_area_and_max_general_grids() -> None:
    # dst cells of 1.5 m on a 1 m source: cell 0 covers x in [0, 1.5): 1 full + half a cell
    src = BEVGrid(0.0, 0.0, 3.0, 1.0, 1, 3)
    dst = BEVGrid(0.0, 0.0, 3.0, 1.0, 1, 2)
    x = torch.tensor([[[[2.0, 4.0, 8.0]]]])
    torch.testing.assert_close(resample_bev(x, src, dst, mode="area"),
                               torch.tensor([[[[(2.0 + 0.5 * 4.0) / 1.5, (0.5 * 4.0 + 8.0) / 1.5]]]]))
    torch.testing.assert_close(resample_bev(x, src, dst, mode="max"), torch.tensor([[[[4.0, 8.0]]]]))
    # a destination half outside the source: the outside half averages as zero
    half_out = BEVGrid(2.0, 0.0, 4.0, 1.0, 1, 1)
    torch.testing.assert_close(resample_bev(x, src, half_out, mode="area", min_overlap=0.0),
                               torch.tensor([[[[8.0 / 2.0]]]]))


def test_area_matches_pooling_on_a_shifted_aligned_crop() -> None:
    # dst = 2x2 pooling of source rows 2..5 and columns 4..11 (aligned, not the same area)
    dst = BEVGrid(-2.0, 0.0, 2.0, 4.0, 2, 4)
    x = torch.randn(2, 3, 8, 16, dtype=torch.float64)
    out = resample_bev(x, SRC, dst, mode="area")
    want = torch.nn.functional.avg_pool2d(x[..., 2:6, 4:12], 2)
    torch.testing.assert_close(out, want)
    out_max = resample_bev(x, SRC, dst, mode="max")
    torch.testing.assert_close(out_max, torch.nn.functional.max_pool2d(x[..., 2:6, 4:12], 2))


def test_identical_grid_returns_same_object() -> None:
    x = torch.randn(1, 2, 8, 16)
    same = BEVGrid(-4.0, -2.0, 4.0, 6.0, 8, 16)
    for mode in ("bilinear", "nearest", "area", "max"):
        assert resample_bev(x, SRC, same, mode=mode) is x


def test_grids_equal() -> None:
    assert grids_equal(SRC, BEVGrid(-4.0 + 1e-8, -2.0, 4.0, 6.0, 8, 16))
    assert not grids_equal(SRC, BEVGrid(-4.0, -2.0, 4.0, 6.0, 8, 8))
    assert not grids_equal(SRC, BEVGrid(-4.1, -2.0, 4.0, 6.0, 8, 16))


def test_non_overlapping_grids_raise_naming_both_ranges() -> None:
    far = BEVGrid(100.0, 100.0, 108.0, 108.0, 8, 8)
    with pytest.raises(AlignmentError) as info:
        check_alignable(SRC, far)
    msg = str(info.value)
    assert "x [-4, 4) y [-2, 6)" in msg and "x [100, 108) y [100, 108)" in msg
    with pytest.raises(AlignmentError):
        resample_bev(torch.zeros(1, 1, 8, 16), SRC, far)


def test_min_overlap_threshold() -> None:
    quarter = BEVGrid(0.0, 2.0, 8.0, 10.0, 8, 8)  # SRC covers x [0,4) y [2,6): 1/4 of it
    check_alignable(SRC, quarter, min_overlap=0.25)
    with pytest.raises(AlignmentError, match="25.0%"):
        check_alignable(SRC, quarter, min_overlap=0.5)


def test_degenerate_grid_raises() -> None:
    bad = BEVGrid(-4.0, -2.0, float("inf"), 6.0, 8, 16)
    with pytest.raises(AlignmentError, match="degenerate"):
        check_alignable(SRC, bad)


def test_shape_mismatch_raises_naming_both() -> None:
    with pytest.raises(AlignmentError, match=r"\(8, 8\).*8x16"):
        resample_bev(torch.zeros(1, 1, 8, 8), SRC, G2)
    with pytest.raises(AlignmentError):
        resample_bev(torch.zeros(8, 16), SRC, G2)
    with pytest.raises(ValueError, match="bilinear"):
        resample_bev(torch.zeros(1, 1, 8, 16), SRC, G2, mode="cubic")


def test_bilinear_is_differentiable() -> None:
    x = torch.randn(1, 2, 8, 16, requires_grad=True)
    dst = BEVGrid(-3.0, -1.0, 3.0, 5.0, 12, 12)
    resample_bev(x, SRC, dst).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def _tap(grid: BEVGrid, channels: int, batch: int = 2) -> Tap:
    return Tap(f_xy(grid, channels, batch), "bev", grid)


def test_align_pair_policies() -> None:
    fine = BEVGrid(-4.0, -2.0, 4.0, 6.0, 16, 32)
    coarse = SRC
    student, teacher = _tap(coarse, 3), _tap(fine, 5)

    s, t, g = align_pair(student, teacher, "teacher")
    assert g == fine and t is teacher.tensor and s.shape == (2, 3, 16, 32)
    torch.testing.assert_close(s[..., 2:-2, 2:-2], f_xy(fine, 3, 2)[..., 2:-2, 2:-2], atol=1e-4, rtol=0)

    s, t, g = align_pair(student, teacher, "student")
    assert g == coarse and s is student.tensor and t.shape == (2, 5, 8, 16)
    torch.testing.assert_close(t, f_xy(coarse, 5, 2), atol=1e-4, rtol=0)  # area of a linear f

    s, t, g = align_pair(student, teacher, "finer")
    assert g == fine and t is teacher.tensor
    s, t, g = align_pair(student, teacher, "coarser")
    assert g == coarse and s is student.tensor
    s2, t2, g2 = align_pair(teacher, student, "coarser")  # roles swapped: still coarse
    assert g2 == coarse and t2 is student.tensor and s2.shape == (2, 5, 8, 16)


def test_align_pair_errors_name_the_tap_kind() -> None:
    good = _tap(SRC, 2)
    with pytest.raises(AlignmentError, match="voxels"):
        align_pair(Tap(torch.zeros(10, 2), "voxels"), good)
    with pytest.raises(AlignmentError, match="no BEV grid"):
        align_pair(good, Tap(torch.zeros(2, 2, 8, 16), "bev", None))
    with pytest.raises(AlignmentError, match="policy"):
        align_pair(good, good, "middle")
    with pytest.raises(AlignmentError, match="batch"):
        align_pair(_tap(SRC, 2, batch=1), good)
