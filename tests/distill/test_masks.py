"""Tests of distill3d.distill.masks against hand-made cases and independent references
(shapely polygons, numpy brute force, CenterPoint's build_targets)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from shapely.geometry import Point, Polygon
from shapely.geometry import box as shapely_box

from distill3d.distill import masks
from distill3d.models.heads.centerpoint import build_targets
from distill3d.structures import BEVGrid


def _box(x: float, y: float, l: float, w: float, yaw: float = 0.0, z: float = 0.0, h: float = 1.5) -> list[float]:
    return [x, y, z, l, w, h, yaw, 0.0, 0.0]


def _boxes(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).view(-1, 9)


def _centres(grid: BEVGrid) -> np.ndarray:
    """(H, W, 2) cell centres computed here, independently of BEVGrid.cell_centers."""
    cx = (grid.x_max - grid.x_min) / grid.width
    cy = (grid.y_max - grid.y_min) / grid.height
    xs = grid.x_min + (np.arange(grid.width) + 0.5) * cx
    ys = grid.y_min + (np.arange(grid.height) + 0.5) * cy
    return np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1)  # [row, col] -> (x, y)


def _polygon(b: list[float] | np.ndarray) -> Polygon:
    x, y, _, l, w, _, yaw = (float(v) for v in b[:7])
    c, s = math.cos(yaw), math.sin(yaw)
    pts = [(x + u * c - v * s, y + u * s + v * c)
           for u, v in ((l / 2, w / 2), (-l / 2, w / 2), (-l / 2, -w / 2), (l / 2, -w / 2))]
    return Polygon(pts)


def _shapely_inside(geom: Polygon, grid: BEVGrid) -> np.ndarray:
    c = _centres(grid)
    return np.array([[geom.covers(Point(*c[i, j])) for j in range(grid.width)] for i in range(grid.height)])


# ----------------------------------------------------------------------------------------- box_cell_mask


def test_axis_aligned_box_covers_known_cells() -> None:
    # 1 m columns along x, 0.5 m rows along y; box x in [1, 5], y in [-1, 1].
    grid = BEVGrid(0.0, -3.0, 8.0, 3.0, height=12, width=8)
    mask, index = masks.box_cell_mask([_boxes(_box(3.0, 0.0, 4.0, 2.0))], grid)
    expected = torch.zeros(1, 12, 8, dtype=torch.bool)
    expected[0, 4:8, 1:5] = True  # rows (y) 4..7, columns (x) 1..4
    assert mask.dtype == torch.bool and index.dtype == torch.int64
    assert torch.equal(mask, expected)
    assert torch.equal(index, torch.where(expected, 0, -1))
    # The same footprint as a box turned by 90 degrees with l and w swapped.
    mask90, _ = masks.box_cell_mask([_boxes(_box(3.0, 0.0, 2.0, 4.0, yaw=math.pi / 2))], grid)
    assert torch.equal(mask90, expected)


@pytest.mark.parametrize("yaw", [math.pi / 4, -0.7, 2.9])
def test_rotated_box_matches_shapely(yaw: float) -> None:
    grid = BEVGrid(-8.0, -6.0, 8.0, 6.0, height=24, width=32)
    b = _box(0.37, -1.21, 7.3, 2.1, yaw=yaw)
    mask, index = masks.box_cell_mask([_boxes(b)], grid)
    ref = _shapely_inside(_polygon(b), grid)
    assert ref.sum() > 20
    assert np.array_equal(mask[0].numpy(), ref)
    assert np.array_equal(index[0].numpy(), np.where(ref, 0, -1))


def test_overlapping_boxes_smallest_area_wins_and_ties_lower_index() -> None:
    grid = BEVGrid(0.0, 0.0, 10.0, 10.0, height=10, width=10)
    big = _box(5.0, 5.0, 8.0, 8.0)     # columns/rows 1..8
    small = _box(6.0, 6.0, 2.0, 2.0)   # columns/rows 5..6
    twin_a = _box(2.0, 2.0, 2.0, 2.0)  # rows/cols 1..2, same area as twin_b
    twin_b = _box(2.0, 2.0, 2.0, 2.0)
    mask, index = masks.box_cell_mask([_boxes(big, small, twin_b, twin_a)], grid)
    idx = index[0]
    assert mask[0, 1:9, 1:9].all() and int(mask[0].sum()) == 64
    assert (idx[5:7, 5:7] == 1).all()          # small box wins its cells
    assert (idx[1:3, 1:3] == 2).all()          # identical boxes: lower index
    assert int((idx == 0).sum()) == 64 - 4 - 4


def test_tiny_box_marks_its_centre_cell() -> None:
    grid = BEVGrid(0.0, 0.0, 8.0, 8.0, height=8, width=8)
    # A 0.2 m box near a cell corner contains no cell centre; a tiny box inside a big box too.
    tiny = _box(3.05, 5.9, 0.2, 0.2, yaw=0.4)
    big = _box(6.0, 2.0, 4.0, 4.0)
    tiny_in_big = _box(6.1, 1.2, 0.3, 0.1)
    off_grid = _box(-3.0, 1.0, 0.2, 0.2)
    mask, index = masks.box_cell_mask([_boxes(tiny, big, tiny_in_big, off_grid)], grid)
    assert int(index[0, 5, 3]) == 0
    assert int(index[0, 1, 6]) == 2            # the tiny box wins against the big one
    assert int((index[0] == 1).sum()) == 15
    assert int(mask[0].sum()) == 17            # off-grid tiny box marks nothing


def test_random_boxes_match_bruteforce_ownership() -> None:
    gen = torch.Generator().manual_seed(3)
    grid = BEVGrid(-10.0, -8.0, 10.0, 8.0, height=32, width=40)
    boxes = []
    for n in (25, 0, 7):
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([24.0, 20.0]) - torch.tensor([12.0, 10.0])
        lw = torch.rand(n, 2, generator=gen) * 5.0 + 0.1
        yaw = torch.rand(n, 1, generator=gen) * 6.28 - 3.14
        boxes.append(torch.cat([xy, torch.zeros(n, 1), lw, torch.ones(n, 1), yaw], dim=1))
    mask, index = masks.box_cell_mask(boxes, grid)
    scale = masks.box_area_scale(boxes, grid, power=0.5)
    c = _centres(grid).reshape(-1, 2)
    for b, bx in enumerate(boxes):
        g = bx.double().numpy()
        ref = np.full(c.shape[0], -1)
        if len(g):
            d = c[None] - g[:, None, :2]
            cos, sin = np.cos(g[:, 6])[:, None], np.sin(g[:, 6])[:, None]
            u, v = d[..., 0] * cos + d[..., 1] * sin, d[..., 1] * cos - d[..., 0] * sin
            inside = (np.abs(u) <= g[:, 3:4] / 2) & (np.abs(v) <= g[:, 4:5] / 2)  # (M, HW)
            for k in range(len(g)):  # tiny rule
                col = math.floor((g[k, 0] - grid.x_min) / 0.5)
                row = math.floor((g[k, 1] - grid.y_min) / 0.5)
                if not inside[k].any() and 0 <= col < grid.width and 0 <= row < grid.height:
                    inside[k, row * grid.width + col] = True
            area = g[:, 3] * g[:, 4]
            prio = np.where(inside, area[:, None] * 1000 + np.arange(len(g))[:, None] * 1e-6, np.inf)
            ref = np.where(inside.any(0), prio.argmin(0), -1)
        assert np.array_equal(index[b].flatten().numpy(), ref)
        counts = np.bincount(ref[ref >= 0], minlength=max(len(g), 1))
        ref_scale = np.where(ref >= 0, 1.0 / np.sqrt(np.maximum(counts[np.maximum(ref, 0)], 1)), 0.0)
        assert np.allclose(scale[b].flatten().numpy(), ref_scale)
    assert torch.equal(mask, index >= 0)


def test_empty_inputs() -> None:
    grid = BEVGrid(0.0, 0.0, 4.0, 4.0, height=4, width=4)
    empty = [torch.zeros(0, 9), torch.zeros(0, 7)]
    mask, index = masks.box_cell_mask(empty, grid)
    assert mask.shape == (2, 4, 4) and not mask.any() and (index == -1).all()
    assert masks.box_area_scale(empty, grid).abs().sum() == 0
    assert masks.box_region_weights(empty, grid).abs().sum() == 0
    assert masks.gaussian_mask(empty, grid).abs().sum() == 0
    assert all(t.numel() == 0 for t in masks.gt_center_indices(empty, grid))
    assert masks.box_cell_mask([], grid)[0].shape == (0, 4, 4)


def test_invalid_inputs_raise() -> None:
    grid = BEVGrid(0.0, 0.0, 4.0, 4.0, height=4, width=4)
    with pytest.raises(ValueError, match="boxes\\[0\\]"):
        masks.box_cell_mask([torch.zeros(2, 5)], grid)
    with pytest.raises(ValueError, match="NaN"):
        masks.box_cell_mask([_boxes(_box(float("nan"), 0.0, 1.0, 1.0))], grid)
    with pytest.raises(TypeError, match="list"):
        masks.box_cell_mask(_boxes(_box(1.0, 1.0, 1.0, 1.0)), grid)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BEVGrid"):
        masks.gaussian_mask([_boxes(_box(1.0, 1.0, 1.0, 1.0))], (4, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must match"):
        masks.false_positive_mask(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="share B, H and W"):
        masks.heatmap_scores([{"heatmap": torch.zeros(1, 1, 4, 4)}, {"heatmap": torch.zeros(1, 2, 4, 5)}])
    with pytest.raises(ValueError, match="\\(M, >=7\\)"):
        masks.box_keypoints(torch.zeros(3, 6))


# ----------------------------------------------------------------------------------------- weights


def test_box_area_scale_values() -> None:
    grid = BEVGrid(0.0, 0.0, 10.0, 10.0, height=10, width=10)
    big, small = _box(5.0, 5.0, 8.0, 8.0), _box(6.0, 6.0, 2.0, 2.0)
    scale1 = masks.box_area_scale([_boxes(big, small)], grid)
    scale_half = masks.box_area_scale([_boxes(big, small)], grid, power=0.5)
    assert scale1.dtype == torch.float32
    assert torch.allclose(scale1[0, 5, 5], torch.tensor(1 / 4))
    assert torch.allclose(scale1[0, 2, 2], torch.tensor(1 / 60))  # 64 cells minus the 4 of small
    assert torch.allclose(scale_half[0, 2, 2], torch.tensor(1 / math.sqrt(60)))
    assert scale1[0, 0, 0] == 0 and scale1[0, 9, 9] == 0


def test_box_region_weights_each_box_sums_to_one() -> None:
    grid = BEVGrid(-8.0, -8.0, 8.0, 8.0, height=32, width=32)
    boxes = [_boxes(_box(0.3, 0.2, 4.0, 2.0, yaw=0.6), _box(1.1, 0.7, 3.0, 1.6, yaw=-0.3),
                    _box(-5.0, 4.0, 0.1, 0.1)),  # overlapping boxes and a tiny one
             _boxes(_box(3.0, -3.0, 5.0, 2.5, yaw=1.2))]
    for axis_aligned in (True, False):
        w = masks.box_region_weights(boxes, grid, axis_aligned=axis_aligned)
        assert w.dtype == torch.float32 and w.shape == (2, 32, 32)
        assert torch.allclose(w[0].sum(), torch.tensor(3.0)) and torch.allclose(w[1].sum(), torch.tensor(1.0))
    # Against shapely: the bounding rectangle (or the footprint) weighted 1 / covered cells.
    for axis_aligned in (True, False):
        ref = np.zeros((32, 32))
        for b in boxes[0][:2].tolist():
            poly = _polygon(b)
            inside = _shapely_inside(shapely_box(*poly.bounds) if axis_aligned else poly, grid)
            ref += inside / inside.sum()
        w = masks.box_region_weights([boxes[0][:2]], grid, axis_aligned=axis_aligned)
        assert np.allclose(w[0].numpy(), ref, atol=1e-6)


# ----------------------------------------------------------------------------------------- gaussians


def test_gaussian_mask_equals_centerpoint_targets() -> None:
    grid = BEVGrid(-12.8, -12.8, 12.8, 12.8, height=32, width=32)
    b0 = _boxes(_box(1.3, 2.2, 4.5, 1.9, 0.3), _box(-6.1, 3.3, 0.8, 0.7, -1.0),
                _box(2.0, 3.0, 10.0, 2.9, 1.4), _box(30.0, 0.0, 4.0, 2.0))  # the last is off the grid
    b1 = _boxes(_box(11.9, -12.5, 1.7, 0.6, 2.0))
    labels = [torch.tensor([0, 2, 1, 0]), torch.tensor([2])]
    padded = torch.zeros(2, 4, 9)
    padded[0], padded[1, :1] = b0, b1
    lab = torch.full((2, 4), -1, dtype=torch.long)
    lab[0], lab[1, :1] = labels[0], labels[1]
    box_mask = lab >= 0
    for overlap, radius in ((0.1, 2), (0.7, 1)):
        targets = build_targets(padded, lab, box_mask, [(0,), (1, 2)], grid,
                                gaussian_overlap=overlap, min_radius=radius)
        ref = torch.cat([t["heatmap"] for t in targets], dim=1).amax(dim=1)
        got = masks.gaussian_mask([b0, b1], grid, min_overlap=overlap, min_radius=radius)
        assert got.dtype == torch.float32
        assert torch.equal(got, ref)
    assert (got == 1).sum() == 4


def test_gt_center_indices_skips_off_grid_boxes() -> None:
    grid = BEVGrid(0.0, 0.0, 8.0, 4.0, height=8, width=16)  # 0.5 m cells
    b0 = _boxes(_box(1.2, 3.7, 1.0, 1.0), _box(9.0, 1.0, 1.0, 1.0), _box(7.99, 0.01, 1.0, 1.0))
    b1 = _boxes(_box(-0.1, 1.0, 1.0, 1.0), _box(0.0, 0.0, 1.0, 1.0))
    b_idx, flat, k = masks.gt_center_indices([b0, b1], grid)
    # (1.2, 3.7) -> col 2, row 7; (7.99, 0.01) -> col 15, row 0; (0, 0) -> col 0, row 0.
    assert b_idx.tolist() == [0, 0, 1]
    assert flat.tolist() == [7 * 16 + 2, 15, 0]
    assert k.tolist() == [0, 2, 1]
    assert flat.dtype == b_idx.dtype == k.dtype == torch.int64


def test_box_keypoints_of_rotated_box_by_hand() -> None:
    boxes = _boxes(_box(1.0, 2.0, 4.0, 2.0, yaw=math.pi / 2), _box(0.0, 0.0, 2.0, 2.0, yaw=math.pi / 4))
    kp = masks.box_keypoints(boxes)
    assert kp.shape == (2, 9, 2)
    # Heading +y: front is +y, left is -x.
    expected = [(0.0, 4.0), (0.0, 0.0), (2.0, 0.0), (2.0, 4.0), (1.0, 2.0),
                (1.0, 4.0), (0.0, 2.0), (1.0, 0.0), (2.0, 2.0)]
    assert torch.allclose(kp[0], torch.tensor(expected), atol=1e-6)
    r = math.sqrt(2.0)
    expected45 = [(0.0, r), (-r, 0.0), (0.0, -r), (r, 0.0), (0.0, 0.0),
                  (r / 2, r / 2), (-r / 2, r / 2), (-r / 2, -r / 2), (r / 2, -r / 2)]
    assert torch.allclose(kp[1], torch.tensor(expected45), atol=1e-6)


# ----------------------------------------------------------------------------------------- scores


def test_heatmap_scores_and_teacher_score_map() -> None:
    heads = [{"heatmap": torch.tensor([[[[0.0, 20.0], [-20.0, 1.0]]]])},
             {"heatmap": torch.tensor([[[[2.0, -1.0], [-30.0, -2.0]], [[-1.0, 0.0], [-3.0, 3.0]]]]).half()}]
    scores = masks.heatmap_scores(heads)
    assert scores.shape == (1, 3, 2, 2) and scores.dtype == torch.float32
    assert torch.isclose(scores[0, 0, 0, 1], torch.tensor(1 - 1e-4))
    assert torch.isclose(scores[0, 1, 1, 0], torch.tensor(1e-4))
    smap = masks.teacher_score_map(heads)
    logits = np.array([[[0, 20], [-20, 1]], [[2, -1], [-30, -2]], [[-1, 0], [-3, 3]]], dtype=np.float64)
    ref = (1 / (1 + np.exp(-logits))).max(0)
    assert smap.shape == (1, 2, 2)
    assert np.allclose(smap[0].numpy(), ref, atol=1e-6)


def test_false_positive_mask() -> None:
    score = torch.tensor([[[0.9, 0.31], [0.3, 0.05]], [[0.5, 0.5], [0.5, 0.5]]])
    positive = torch.tensor([[[True, False], [False, False]], [[False, True], [False, False]]])
    fp = masks.false_positive_mask(score, positive)
    assert fp.tolist() == [[[False, True], [False, False]], [[True, False], [True, True]]]
    fp_float = masks.false_positive_mask(score, positive.float(), threshold=0.6)
    assert fp_float.tolist() == [[[False, False], [False, False]], [[False, False], [False, False]]]
