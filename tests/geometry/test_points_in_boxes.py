"""Tests for distill3d.geometry.points against a brute-force per-point loop."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from distill3d.geometry import count_points_in_boxes, points_in_boxes, points_in_boxes_indices
from distill3d.geometry import points as points_module

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ----------------------------------------------------------------------------- reference


def _brute_force(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Pure-Python double loop: inclusive |dx| <= l/2, |dy| <= w/2, |dz| <= h/2."""
    out = np.zeros((len(points), len(boxes)), dtype=bool)
    for m, (x, y, z, l, w, h, yaw) in enumerate(boxes[:, :7].tolist()):
        c, s = math.cos(yaw), math.sin(yaw)
        for p, (px, py, pz) in enumerate(points[:, :3].tolist()):
            dx = (px - x) * c + (py - y) * s
            dy = -(px - x) * s + (py - y) * c
            out[p, m] = abs(dx) <= l / 2 and abs(dy) <= w / 2 and abs(pz - z) <= h / 2
    return out


def _margin(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Vectorised signed distance-like margin ``(P, M)``: > 0 inside, < 0 outside."""
    d = points[:, None, :3] - boxes[None, :, :3]
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    u = d[..., 0] * c + d[..., 1] * s
    v = -d[..., 0] * s + d[..., 1] * c
    return np.minimum.reduce(
        [boxes[:, 3] / 2 - np.abs(u), boxes[:, 4] / 2 - np.abs(v), boxes[:, 5] / 2 - np.abs(d[..., 2])]
    )


def _first_index(mask: np.ndarray) -> np.ndarray:
    return np.where(mask.any(1), mask.argmax(1), -1)


def _scene(seed: int, num_points: int, num_boxes: int, spread: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """Random boxes (some nested / overlapping, some thin) and points, half near boxes."""
    rng = np.random.default_rng(seed)
    boxes = np.empty((num_boxes, 9))
    boxes[:, :2] = rng.uniform(-spread, spread, (num_boxes, 2))
    boxes[:, 2] = rng.uniform(-1, 1, num_boxes)
    boxes[:, 3] = rng.uniform(0.5, 8, num_boxes)
    boxes[:, 4] = rng.uniform(0.3, 3, num_boxes)
    boxes[:, 5] = rng.uniform(0.5, 3, num_boxes)
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, num_boxes)
    boxes[:, 7:] = np.nan  # velocities are ignored
    boxes[::7, 4] = 0.01  # thin boxes
    nested = np.arange(1, num_boxes, 5)
    boxes[nested, :3] = boxes[nested - 1, :3]  # overlapping neighbours: "first box" matters
    near = rng.integers(0, num_boxes, num_points // 2)
    pts_near = boxes[near, :3] + rng.uniform(-0.6, 0.6, (len(near), 3)) * boxes[near, 3:6]
    pts_far = np.column_stack(
        [
            rng.uniform(-spread - 5, spread + 5, (num_points - len(near), 2)),
            rng.uniform(-2, 2, num_points - len(near)),
        ]
    )
    points = np.concatenate([pts_near, pts_far])
    points = np.column_stack([points, rng.random(len(points))])  # intensity column
    return points, boxes


# ----------------------------------------------------------------------------- tests


def test_matches_brute_force_float64() -> None:
    points, boxes = _scene(seed=0, num_points=600, num_boxes=30)
    ref = _brute_force(points, boxes)
    tp, tb = torch.from_numpy(points), torch.from_numpy(boxes)
    ours = points_in_boxes(tp, tb)
    assert ours.dtype == torch.bool and ours.shape == (600, 30)
    np.testing.assert_array_equal(ours.numpy(), ref)
    np.testing.assert_array_equal(points_in_boxes_indices(tp, tb).numpy(), _first_index(ref))
    np.testing.assert_array_equal(count_points_in_boxes(tp, tb).numpy(), ref.sum(0))
    assert ref.sum() > 100 and (ref.sum(1) > 1).any()  # inside points and multi-box points exist


def test_matches_brute_force_float32_away_from_faces() -> None:
    points, boxes = _scene(seed=1, num_points=800, num_boxes=25)
    tp, tb = torch.from_numpy(points).float(), torch.from_numpy(boxes).float()
    p64, b64 = tp.double().numpy(), tb.double().numpy()  # the exact values the test sees
    ref = _brute_force(p64, b64)
    clear = np.abs(_margin(p64, b64)) > 1e-4  # float32 rounding cannot flip these
    ours = points_in_boxes(tp, tb).numpy()
    np.testing.assert_array_equal(ours[clear], ref[clear])
    assert clear.mean() > 0.99


def test_inclusive_faces_edges_and_corners() -> None:
    box = torch.tensor([[1.0, 2.0, 3.0, 4.0, 2.0, 1.5, 0.0]], dtype=torch.float64)
    inside = [
        [1.0, 2.0, 3.0],  # centre
        [3.0, 2.0, 3.0],  # front face
        [-1.0, 2.0, 3.0],  # rear face
        [1.0, 3.0, 3.0],  # left face
        [1.0, 2.0, 2.25],  # bottom face
        [3.0, 3.0, 3.75],  # corner
        [-1.0, 1.0, 2.25],  # opposite corner
    ]
    outside = [
        [3.0 + 1e-9, 2.0, 3.0],
        [1.0, 1.0 - 1e-9, 3.0],
        [1.0, 2.0, 3.75 + 1e-9],
        [-1.0 - 1e-9, 1.0, 2.25],
    ]
    pts = torch.tensor(inside + outside, dtype=torch.float64)
    expected = torch.tensor([True] * len(inside) + [False] * len(outside))
    assert torch.equal(points_in_boxes(pts, box)[:, 0], expected)
    # Same box rotated by 180 degrees: the same set (cos = -1 exactly).
    flipped = box.clone()
    flipped[0, 6] = -math.pi
    assert torch.equal(points_in_boxes(pts[:7], flipped)[:, 0], torch.ones(7, dtype=torch.bool))


def test_rotated_box_hand_example() -> None:
    # Box along +y (yaw 90 deg), 4 long, 1 wide: (0, 1.9) inside, (0.6, 0) outside.
    box = torch.tensor([[0.0, 0.0, 0.0, 4.0, 1.0, 1.0, math.pi / 2]])
    pts = torch.tensor([[0.0, 1.9, 0.0], [0.6, 0.0, 0.0], [0.4, -1.9, 0.4], [1.9, 0.0, 0.0]])
    assert points_in_boxes(pts, box)[:, 0].tolist() == [True, False, True, False]


def test_empty_inputs_and_misses() -> None:
    points, boxes = _scene(seed=2, num_points=50, num_boxes=5)
    tp, tb = torch.from_numpy(points), torch.from_numpy(boxes)
    assert points_in_boxes(tp[:0], tb).shape == (0, 5)
    assert points_in_boxes(tp, tb[:0]).shape == (50, 0)
    assert torch.equal(points_in_boxes_indices(tp, tb[:0]), torch.full((50,), -1))
    assert count_points_in_boxes(tp, tb[:0]).shape == (0,)
    assert count_points_in_boxes(tp[:0], tb).tolist() == [0] * 5
    far = tb.clone()
    far[:, 0] += 1000.0  # all boxes beyond the points
    assert not bool(points_in_boxes(tp, far).any())
    single = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
    giant = torch.tensor([[0.0, 0.0, 0.0, 100.0, 100.0, 100.0, 0.3]], dtype=torch.float64)
    assert bool(points_in_boxes(single, giant)[0, 0])


def test_chunking_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    points, boxes = _scene(seed=3, num_points=3000, num_boxes=40)
    tp, tb = torch.from_numpy(points), torch.from_numpy(boxes)
    full = points_in_boxes(tp, tb)
    counts = count_points_in_boxes(tp, tb)
    monkeypatch.setattr(points_module, "_PAIR_CHUNK", 97)
    monkeypatch.setattr(points_module, "_MAX_QUERIES", 60)
    monkeypatch.setattr(points_module, "_MAX_CELLS", 64)
    assert torch.equal(points_in_boxes(tp, tb), full)
    assert torch.equal(count_points_in_boxes(tp, tb), counts)
    assert int(counts.sum()) > 0


def test_large_200k_points_500_boxes_subsample() -> None:
    rng = np.random.default_rng(4)
    num_points, num_boxes = 200_000, 500
    _, boxes = _scene(seed=4, num_points=2, num_boxes=num_boxes, spread=50.0)
    radius = 1.0 + 69.0 * rng.random(num_points) ** 2  # LiDAR-like: dense near the sensor
    theta = rng.uniform(-np.pi, np.pi, num_points)
    points = np.column_stack([radius * np.cos(theta), radius * np.sin(theta), rng.uniform(-2, 2, num_points)])
    hit = rng.integers(0, num_boxes, 20_000)  # and points on objects
    points[:20_000] = boxes[hit, :3] + rng.uniform(-0.6, 0.6, (20_000, 3)) * boxes[hit, 3:6]
    tp, tb = torch.from_numpy(points).float(), torch.from_numpy(boxes).float()
    mask = points_in_boxes(tp, tb)
    assert mask.shape == (num_points, num_boxes) and mask.dtype == torch.bool
    index = points_in_boxes_indices(tp, tb)
    counts = count_points_in_boxes(tp, tb)
    assert torch.equal(counts, mask.sum(0))
    first = torch.where(mask.any(1), mask.int().argmax(1), -1)
    assert torch.equal(index, first)
    rows = rng.choice(num_points, 3000, replace=False)
    rows[:500] = rng.choice(20_000, 500, replace=False)
    p64, b64 = tp.double().numpy()[rows], tb.double().numpy()
    margin = _margin(p64, b64)
    clear = np.abs(margin) > 1e-4
    np.testing.assert_array_equal(mask.numpy()[rows][clear], (margin > 0)[clear])
    assert int(mask.sum()) > 10_000


def test_peak_memory_is_bounded() -> None:
    """200k x 500 in a fresh process: temporaries stay within ~256 MB beyond the output."""
    code = textwrap.dedent(
        """
        import resource, torch
        from distill3d.geometry import count_points_in_boxes, points_in_boxes
        torch.manual_seed(0)
        pts = (torch.rand(200_000, 4) - 0.5) * 20.0   # dense: all points near the boxes
        pts[:, 2] = pts[:, 2] / 5.0
        boxes = torch.rand(500, 7)
        boxes[:, :2] = (boxes[:, :2] - 0.5) * 16.0
        boxes[:, 3:6] = 2.0 + 4.0 * boxes[:, 3:6]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        counts = count_points_in_boxes(pts, boxes)
        after_count = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        mask = points_in_boxes(pts, boxes)
        after_mask = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert int(counts.sum()) == int(mask.sum()) > 2_000_000
        print((after_count - before) // 1024, (after_mask - before) // 1024)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    count_mb, mask_mb = (int(v) for v in result.stdout.split())
    assert count_mb < 300, f"count_points_in_boxes peak grew by {count_mb} MB"
    assert mask_mb < 300 + 100, f"points_in_boxes peak grew by {mask_mb} MB (output is 100 MB)"


@pytest.mark.parametrize(
    ("points", "boxes", "error", "match"),
    [
        (torch.zeros(5, 2), torch.ones(1, 7), ValueError, r"^points must have shape \(P, >=3\)"),
        (torch.zeros(5), torch.ones(1, 7), ValueError, r"^points must have shape"),
        (torch.tensor([[0.0, float("nan"), 0.0]]), torch.ones(1, 7), ValueError, r"^points has NaN"),
        (torch.zeros(5, 3, dtype=torch.long), torch.ones(1, 7), ValueError, r"^points must be a floating"),
        (torch.zeros(5, 3), torch.ones(1, 6), ValueError, r"^boxes must have shape"),
        (torch.zeros(5, 3), torch.zeros(1, 7), ValueError, r"^boxes has non-positive"),
        (np.zeros((5, 3)), torch.ones(1, 7), TypeError, r"^points must be a torch.Tensor"),
    ],
)
def test_bad_inputs(points: torch.Tensor, boxes: torch.Tensor, error: type, match: str) -> None:
    for fn in (points_in_boxes, points_in_boxes_indices, count_points_in_boxes):
        with pytest.raises(error, match=match):
            fn(points, boxes)


@CUDA
def test_cuda_matches_cpu() -> None:
    points, boxes = _scene(seed=5, num_points=20_000, num_boxes=60)
    tp, tb = torch.from_numpy(points).float(), torch.from_numpy(boxes).float()
    for fn in (points_in_boxes, points_in_boxes_indices, count_points_in_boxes):
        gpu = fn(tp.cuda(), tb.cuda())
        assert gpu.device.type == "cuda"
        assert torch.equal(gpu.cpu(), fn(tp, tb))
    with pytest.raises(ValueError, match="same device"):
        points_in_boxes(tp.cuda(), tb)
