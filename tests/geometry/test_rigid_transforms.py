"""Rigid-transform helpers: quaternions, rotation matrices, 4x4 transforms, Pose."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill3d.geometry.transforms import (
    Pose,
    invert_transform,
    make_transform,
    matrix_to_quaternion,
    quaternion_multiply,
    quaternion_to_matrix,
    rotate_vectors,
    transform_points,
    yaw_to_matrix,
    yaw_to_quaternion,
)

F64 = torch.float64


def rodrigues(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Independent reference: rotation matrices from axis-angle (Rodrigues' formula)."""
    axis = axis / axis.norm(dim=-1, keepdim=True)
    k = torch.zeros(*axis.shape[:-1], 3, 3, dtype=axis.dtype)
    k[..., 0, 1], k[..., 0, 2] = -axis[..., 2], axis[..., 1]
    k[..., 1, 0], k[..., 1, 2] = axis[..., 2], -axis[..., 0]
    k[..., 2, 0], k[..., 2, 1] = -axis[..., 1], axis[..., 0]
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    eye = torch.eye(3, dtype=axis.dtype).expand_as(k)
    return eye + s * k + (1 - c) * (k @ k)


def axis_angle_quaternion(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    axis = axis / axis.norm(dim=-1, keepdim=True)
    return torch.cat((torch.cos(angle / 2)[..., None], torch.sin(angle / 2)[..., None] * axis), -1)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_quaternion_to_matrix_matches_rodrigues(gen: torch.Generator) -> None:
    axis = torch.randn(200, 3, generator=gen, dtype=F64)
    angle = (torch.rand(200, generator=gen, dtype=F64) * 2 - 1) * math.pi
    q = axis_angle_quaternion(axis, angle)
    r = quaternion_to_matrix(q)
    torch.testing.assert_close(r, rodrigues(axis, angle), atol=1e-12, rtol=0)
    # -q and scaled q are the same rotation
    torch.testing.assert_close(quaternion_to_matrix(-3.0 * q), r, atol=1e-12, rtol=0)
    eye = torch.eye(3, dtype=F64).expand(200, 3, 3)
    torch.testing.assert_close(r @ r.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    assert torch.allclose(torch.linalg.det(r), torch.ones(200, dtype=F64))


def test_quaternion_known_values() -> None:
    # 90 degrees about +z maps +x to +y
    q = torch.tensor([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)], dtype=F64)
    r = quaternion_to_matrix(q)
    torch.testing.assert_close(r @ torch.tensor([1.0, 0, 0], dtype=F64),
                               torch.tensor([0.0, 1, 0], dtype=F64), atol=1e-15, rtol=0)
    torch.testing.assert_close(quaternion_to_matrix(torch.tensor([1.0, 0, 0, 0])), torch.eye(3))


def test_matrix_to_quaternion_round_trip_and_sign(gen: torch.Generator) -> None:
    q = torch.randn(2, 50, 4, generator=gen, dtype=F64)
    q = q / q.norm(dim=-1, keepdim=True)
    q2 = matrix_to_quaternion(quaternion_to_matrix(q))
    assert q2.shape == (2, 50, 4)
    assert bool((q2[..., 0] >= 0).all())
    expected = q * torch.sign(q[..., :1])
    torch.testing.assert_close(q2, expected, atol=1e-12, rtol=0)


def test_matrix_to_quaternion_half_turns_and_near_half_turns() -> None:
    for axis in ([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0], [1.0, -2.0, 3.0]):
        a = torch.tensor(axis, dtype=F64)
        for angle in (math.pi, math.pi - 1e-9, -math.pi + 1e-7, 1e-12):
            r = rodrigues(a, torch.tensor(angle, dtype=F64))
            q = matrix_to_quaternion(r)
            assert float(q[0]) >= 0
            torch.testing.assert_close(quaternion_to_matrix(q), r, atol=1e-12, rtol=0)


def test_matrix_to_quaternion_float32_dtype() -> None:
    r = yaw_to_matrix(torch.tensor([0.3, -2.0], dtype=torch.float32))
    q = matrix_to_quaternion(r)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, yaw_to_quaternion(torch.tensor([0.3, -2.0])), atol=1e-6, rtol=0)


def test_quaternion_multiply_composes_rotations(gen: torch.Generator) -> None:
    a = torch.randn(30, 4, generator=gen, dtype=F64)
    b = torch.randn(30, 4, generator=gen, dtype=F64)
    torch.testing.assert_close(
        quaternion_to_matrix(quaternion_multiply(a, b)),
        quaternion_to_matrix(a) @ quaternion_to_matrix(b), atol=1e-12, rtol=0,
    )


def test_yaw_helpers(gen: torch.Generator) -> None:
    yaw = torch.cat((torch.rand(100, generator=gen, dtype=F64) * 20 - 10,
                     torch.tensor([math.pi, -math.pi, 0.0], dtype=F64)))
    torch.testing.assert_close(quaternion_to_matrix(yaw_to_quaternion(yaw)), yaw_to_matrix(yaw),
                               atol=1e-12, rtol=0)
    assert bool((yaw_to_quaternion(yaw)[:, 0] >= 0).all())
    heading = yaw_to_matrix(yaw)[:, :, 0]
    torch.testing.assert_close(heading, torch.stack((torch.cos(yaw), torch.sin(yaw), 0 * yaw), -1))
    # counter-clockwise: +90 degrees turns +x into +y
    torch.testing.assert_close(yaw_to_matrix(torch.tensor(math.pi / 2, dtype=F64))[:, 0],
                               torch.tensor([0.0, 1.0, 0.0], dtype=F64), atol=1e-15, rtol=0)


def test_make_invert_and_transform_points(gen: torch.Generator) -> None:
    r = rodrigues(torch.randn(3, generator=gen, dtype=F64), torch.tensor(0.7, dtype=F64))
    t = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    tf = make_transform(r, t)
    assert tf.shape == (4, 4)
    torch.testing.assert_close(tf[3], torch.tensor([0.0, 0, 0, 1], dtype=F64))
    torch.testing.assert_close(invert_transform(tf) @ tf, torch.eye(4, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(invert_transform(tf), torch.linalg.inv(tf), atol=1e-12, rtol=0)

    pts = torch.randn(100, 5, generator=gen, dtype=F64)
    out = transform_points(tf, pts)
    assert out.shape == (100, 5) and out.dtype == F64
    torch.testing.assert_close(out[:, :3], pts[:, :3] @ r.T + t)
    torch.testing.assert_close(out[:, 3:], pts[:, 3:])  # extra columns kept
    back = transform_points(invert_transform(tf), out)
    torch.testing.assert_close(back, pts, atol=1e-12, rtol=0)

    # float32 points stay float32; numpy input accepted
    out32 = transform_points(tf, pts.float().numpy())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, out.float(), atol=1e-5, rtol=0)

    # batched transforms
    tfs = torch.stack((tf, torch.eye(4, dtype=F64)))
    outb = transform_points(tfs, pts[None].expand(2, -1, -1))
    torch.testing.assert_close(outb[0], out)
    torch.testing.assert_close(outb[1], pts)

    torch.testing.assert_close(rotate_vectors(tf, pts[:, :3]), pts[:, :3] @ r.T)


def test_transform_errors_name_argument() -> None:
    with pytest.raises(ValueError, match="points"):
        transform_points(torch.eye(4), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="transform"):
        transform_points(torch.eye(3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="q"):
        quaternion_to_matrix(torch.zeros(3))
    with pytest.raises(ValueError, match="zero-norm"):
        quaternion_to_matrix(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="matrix"):
        matrix_to_quaternion(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="translation"):
        make_transform(torch.eye(3), torch.zeros(2))


def test_pose(gen: torch.Generator) -> None:
    axis = torch.randn(3, generator=gen, dtype=F64)
    q = axis_angle_quaternion(axis, torch.tensor(1.1, dtype=F64))
    pose = Pose(translation=[1.0, 2.0, 3.0], rotation=(2.0 * q).numpy())
    assert pose.translation.dtype == F64 and pose.rotation.dtype == F64
    torch.testing.assert_close(pose.rotation, q)  # normalised
    m = pose.matrix()
    torch.testing.assert_close(m[:3, :3], rodrigues(axis, torch.tensor(1.1, dtype=F64)),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(m[:3, 3], torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    torch.testing.assert_close(pose.inverse().matrix(), torch.linalg.inv(m), atol=1e-12, rtol=0)
    other = Pose(translation=np.array([0.0, -1.0, 0.5]), rotation=[0.0, 0.0, 0.0, 1.0])
    torch.testing.assert_close((pose @ other).matrix(), m @ other.matrix(), atol=1e-12, rtol=0)
    again = Pose.from_matrix(m)
    torch.testing.assert_close(again.matrix(), m, atol=1e-12, rtol=0)
    torch.testing.assert_close(Pose.identity().matrix(), torch.eye(4, dtype=F64))
    with pytest.raises(ValueError, match="translation"):
        Pose(translation=[1.0, 2.0], rotation=[1.0, 0, 0, 0])
    with pytest.raises(ValueError, match="rotation"):
        Pose(translation=[1.0, 2.0, 3.0], rotation=[1.0, 0, 0])
    with pytest.raises(ValueError, match="rotation"):
        Pose(translation=[1.0, 2.0, 3.0], rotation=[0.0, 0, 0, 0])
