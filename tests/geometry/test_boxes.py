"""Tests for distill3d.geometry.boxes: wrap_angle, corners, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill3d.geometry import box_corners, box_corners_bev, check_boxes, wrap_angle

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ----------------------------------------------------------------------------- wrap_angle


def test_wrap_angle_pi_maps_to_minus_pi() -> None:
    angles = torch.tensor([math.pi, -math.pi, 3 * math.pi, -3 * math.pi], dtype=torch.float64)
    out = wrap_angle(angles)
    assert torch.equal(out, torch.full_like(out, -math.pi))


def test_wrap_angle_float32_pi() -> None:
    pi32 = torch.tensor([math.pi, -math.pi], dtype=torch.float32)
    out = wrap_angle(pi32)
    assert out.dtype == torch.float32
    assert torch.equal(out, -pi32.abs())


def test_wrap_angle_in_range_values_unchanged() -> None:
    angles = torch.linspace(-math.pi, math.pi, 1001, dtype=torch.float64)[:-1]
    assert torch.equal(wrap_angle(angles), angles)


def test_wrap_angle_known_values() -> None:
    f64 = torch.float64
    angles = torch.tensor([2 * math.pi, -2 * math.pi, 7.0, -7.0, 0.5 * math.pi + 4 * math.pi], dtype=f64)
    expected = torch.tensor([0.0, 0.0, 7.0 - 2 * math.pi, -7.0 + 2 * math.pi, 0.5 * math.pi], dtype=f64)
    torch.testing.assert_close(wrap_angle(angles), expected, atol=1e-12, rtol=0)


def test_wrap_angle_random_range_and_congruence() -> None:
    gen = torch.Generator().manual_seed(0)
    angles = (torch.rand(20000, generator=gen, dtype=torch.float64) - 0.5) * 200.0
    # Values just outside the interval on both sides, where rounding is delicate.
    tiny = torch.tensor([1e-15, 1e-12, 1e-9], dtype=torch.float64)
    angles = torch.cat((angles, math.pi + tiny, -math.pi - tiny, math.pi - tiny, -math.pi + tiny))
    out = wrap_angle(angles)
    assert bool((out >= -math.pi).all()) and bool((out < math.pi).all())
    torch.testing.assert_close(torch.cos(out), torch.cos(angles), atol=1e-9, rtol=0)
    torch.testing.assert_close(torch.sin(out), torch.sin(angles), atol=1e-9, rtol=0)


def test_wrap_angle_shape_and_int_input() -> None:
    out = wrap_angle(torch.tensor([[4, -4], [0, 1]]))
    assert out.shape == (2, 2) and out.is_floating_point()
    assert math.isclose(float(out[0, 0]), 4 - 2 * math.pi, abs_tol=1e-6)
    with pytest.raises(TypeError):
        wrap_angle(3.0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- corners


def test_box_corners_axis_aligned_hand_values() -> None:
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0, 2.0, 1.5, 0.0, 9.0, 9.0]], dtype=torch.float64)
    expected = torch.tensor(
        [
            [3.0, 3.0, 2.25],  # 0 front-left-bottom
            [-1.0, 3.0, 2.25],  # 1 rear-left-bottom
            [-1.0, 1.0, 2.25],  # 2 rear-right-bottom
            [3.0, 1.0, 2.25],  # 3 front-right-bottom
            [3.0, 3.0, 3.75],
            [-1.0, 3.0, 3.75],
            [-1.0, 1.0, 3.75],
            [3.0, 1.0, 3.75],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(box_corners(boxes)[0], expected, atol=1e-12, rtol=0)


def test_box_corners_rotated_hand_values() -> None:
    # yaw = 90 deg: the heading is +y, "left" is -x.
    boxes = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 2.0, math.pi / 2]], dtype=torch.float64)
    expected_xy = torch.tensor([[-1.0, 2.0], [-1.0, -2.0], [1.0, -2.0], [1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(box_corners_bev(boxes)[0], expected_xy, atol=1e-12, rtol=0)
    # yaw = 30 deg, centre (10, -5): front-left = centre + R(30) (2, 1).
    c, s = math.sqrt(3) / 2, 0.5
    boxes = torch.tensor([[10.0, -5.0, 1.0, 4.0, 2.0, 2.0, math.pi / 6]], dtype=torch.float64)
    corners = box_corners(boxes)[0]
    torch.testing.assert_close(
        corners[0], torch.tensor([10 + 2 * c - 1 * s, -5 + 2 * s + 1 * c, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        corners[6], torch.tensor([10 - 2 * c + 1 * s, -5 - 2 * s - 1 * c, 2.0], dtype=torch.float64)
    )


def _random_boxes(n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.empty(n, 9, dtype=dtype)
    boxes[:, :3] = (torch.rand(n, 3, generator=gen, dtype=dtype) - 0.5) * 100
    boxes[:, 3:6] = 0.05 + 10 * torch.rand(n, 3, generator=gen, dtype=dtype)
    boxes[:, 6] = (torch.rand(n, generator=gen, dtype=dtype) * 2 - 1) * math.pi
    boxes[:, 7:] = float("nan")  # velocities may be NaN (nuScenes); geometry ignores them
    return boxes


def test_corners_ccw_faces_and_sizes() -> None:
    boxes = _random_boxes(500, seed=1)
    corners = box_corners(boxes).numpy()
    bev = box_corners_bev(boxes).numpy()
    np.testing.assert_allclose(corners[:, :4, :2], bev, atol=1e-12)
    np.testing.assert_allclose(corners[:, 4:, :2], bev, atol=1e-12)
    b = boxes.numpy()
    np.testing.assert_allclose(corners[:, 4:, 2] - corners[:, :4, 2], b[:, 5:6].repeat(4, 1), atol=1e-9)
    # Counter-clockwise: positive signed shoelace area equal to l * w.
    x, y = bev[..., 0], bev[..., 1]
    signed = 0.5 * (x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1)
    np.testing.assert_allclose(signed, b[:, 3] * b[:, 4], rtol=1e-9)
    # Centre, heading direction (0 and 3 are the front) and edge lengths.
    np.testing.assert_allclose(corners.mean(1), b[:, :3], atol=1e-9)
    front = 0.5 * (bev[:, 0] + bev[:, 3]) - b[:, :2]
    np.testing.assert_allclose(
        front, 0.5 * b[:, 3:4] * np.stack([np.cos(b[:, 6]), np.sin(b[:, 6])], 1), atol=1e-9
    )
    np.testing.assert_allclose(np.linalg.norm(bev[:, 0] - bev[:, 1], axis=1), b[:, 3], rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(bev[:, 0] - bev[:, 3], axis=1), b[:, 4], rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_corners_dtype_shape_and_empty(dtype: torch.dtype) -> None:
    boxes = _random_boxes(7, seed=2, dtype=dtype)
    assert box_corners(boxes).shape == (7, 8, 3) and box_corners(boxes).dtype == dtype
    assert box_corners_bev(boxes).shape == (7, 4, 2)
    assert box_corners(boxes[:0]).shape == (0, 8, 3)


# ----------------------------------------------------------------------------- check_boxes


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.zeros(7), r"my_boxes must have shape \(N, >=7\)"),
        (torch.ones(3, 6), r"my_boxes must have shape"),
        (torch.ones(2, 7, 1), r"my_boxes must have shape"),
        (torch.ones(2, 7, dtype=torch.long), r"my_boxes must be a floating-point"),
        (
            torch.tensor([[0, 0, 0, 1, 1, 1, 0.0], [0, float("nan"), 0, 1, 1, 1, 0]]),
            r"my_boxes has NaN or inf.*row: 1",
        ),
        (torch.tensor([[0, 0, 0, 1, 1, 1, float("inf")]]), r"my_boxes has NaN or inf"),
        (torch.tensor([[0, 0, 0, 1, 0.0, 1, 0]]), r"my_boxes has non-positive sizes"),
        (torch.tensor([[0, 0, 0, 1, 1, -2.0, 0]]), r"my_boxes has non-positive sizes"),
    ],
)
def test_check_boxes_errors(bad: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_boxes(bad, "my_boxes")


def test_check_boxes_accepts_valid_and_rejects_non_tensor() -> None:
    check_boxes(_random_boxes(4, seed=3), "boxes")  # NaN velocities are fine
    check_boxes(torch.zeros(0, 7), "boxes")
    with pytest.raises(TypeError, match="boxes must be a torch.Tensor"):
        check_boxes(np.zeros((2, 7)), "boxes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="boxes has non-positive"):
        box_corners(torch.tensor([[0, 0, 0, 0.0, 1, 1, 0]]))


@CUDA
def test_corners_and_wrap_on_cuda() -> None:
    boxes = _random_boxes(50, seed=4)
    torch.testing.assert_close(box_corners(boxes.cuda()).cpu(), box_corners(boxes))
    angles = torch.linspace(-20, 20, 101, dtype=torch.float64)
    torch.testing.assert_close(wrap_angle(angles.cuda()).cpu(), wrap_angle(angles))
