"""Small rigid-transform helpers (rotations, quaternions, 4x4 homogeneous transforms).

Conventions used throughout ``distill3d``:

* A quaternion is stored **scalar first**, ``(w, x, y, z)``, as nuScenes and pyquaternion
  store it. It represents the rotation ``R(q)`` that maps a vector expressed in the
  *child* (rotated) frame to the *parent* frame: ``v_parent = R(q) @ v_child``.
* A transform ``T`` is a ``(4, 4)`` homogeneous matrix ``[[R, t], [0, 0, 0, 1]]`` mapping
  column vectors: ``p_dst = R @ p_src + t``. ``T_a_from_b`` (or "b->a") takes points of
  frame ``b`` to frame ``a``; transforms compose by matrix product,
  ``T_a_from_c = T_a_from_b @ T_b_from_c``.
* Every function is batched over leading dimensions, keeps the input's device and
  floating dtype (float64 stays float64), and accepts numpy arrays or sequences, which
  are converted with :func:`torch.as_tensor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Pose",
    "as_float_tensor",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "quaternion_multiply",
    "yaw_to_quaternion",
    "yaw_to_matrix",
    "make_transform",
    "invert_transform",
    "transform_points",
    "rotate_vectors",
]


def as_float_tensor(value: Any, name: str, dtype: torch.dtype | None = None) -> Tensor:
    """Convert ``value`` (tensor, numpy array, sequence) to a floating-point tensor.

    Floating-point tensors and arrays keep their dtype (and tensors their device) unless
    ``dtype`` is given. Python sequences go through :func:`numpy.asarray` first, so Python
    floats become float64 (no silent rounding to float32); integer data becomes
    :func:`torch.get_default_dtype`.

    Args:
        value: the data to convert.
        name: argument name used in error messages.
        dtype: optional dtype to cast to.

    Raises:
        TypeError: ``value`` cannot be converted to a tensor.
    """
    try:
        if not isinstance(value, (Tensor, np.ndarray)):
            value = np.asarray(value)
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a tensor or array-like of numbers: {exc}") from exc
    if dtype is not None:
        return tensor.to(dtype)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def _check_last_dims(tensor: Tensor, name: str, shape: tuple[int, ...], what: str) -> None:
    """Raise ``ValueError`` unless ``tensor``'s trailing dimensions equal ``shape``."""
    k = len(shape)
    if tensor.dim() < k or tuple(tensor.shape[-k:]) != shape:
        raise ValueError(f"{name} must have shape {what}, got {tuple(tensor.shape)}")


def quaternion_to_matrix(q: Any) -> Tensor:
    """Rotation matrices from quaternions ``(w, x, y, z)``.

    The quaternion is normalised first (as pyquaternion does for ``rotation_matrix``),
    so ``q`` and ``-q`` and any positive multiple give the same matrix.

    Args:
        q: ``(..., 4)`` quaternions, scalar first.

    Returns:
        ``(..., 3, 3)`` rotation matrices, same dtype and device.

    Raises:
        ValueError: wrong shape, or a quaternion with (near) zero norm.
    """
    q = as_float_tensor(q, "q")
    _check_last_dims(q, "q", (4,), "(..., 4) as (w, x, y, z)")
    norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    if q.numel() and bool((norm <= torch.finfo(q.dtype).eps).any()):
        raise ValueError("q contains a zero-norm quaternion, which is not a rotation")
    w, x, y, z = (q / norm).unbind(-1)
    row0 = torch.stack((1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)), -1)
    row1 = torch.stack((2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)), -1)
    row2 = torch.stack((2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)), -1)
    return torch.stack((row0, row1, row2), dim=-2)


def matrix_to_quaternion(matrix: Any) -> Tensor:
    """Quaternions ``(w, x, y, z)`` of rotation matrices, sign-normalised to ``w >= 0``.

    Uses the numerically stable branch selection (largest of ``|w|, |x|, |y|, |z|``) per
    matrix, so it is accurate for every rotation, including 180 degree ones. When
    ``w == 0`` (a half turn) the first non-zero of ``x, y, z`` is made positive so that
    the result is unique.

    Args:
        matrix: ``(..., 3, 3)`` rotation matrices (orthonormal, det +1).

    Returns:
        ``(..., 4)`` unit quaternions, same dtype and device.
    """
    m = as_float_tensor(matrix, "matrix")
    _check_last_dims(m, "matrix", (3, 3), "(..., 3, 3)")
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4 * (w^2, x^2, y^2, z^2), clamped against rounding.
    sq = torch.stack(
        (
            1 + m00 + m11 + m22,
            1 + m00 - m11 - m22,
            1 - m00 + m11 - m22,
            1 - m00 - m11 + m22,
        ),
        dim=-1,
    ).clamp_min(0.0)
    # Candidate i is computed from the component whose magnitude is sq[i]; all four are
    # 4 * q_i * q, only the best-conditioned one is kept.
    cand = torch.stack(
        (
            torch.stack((sq[..., 0], m21 - m12, m02 - m20, m10 - m01), -1),
            torch.stack((m21 - m12, sq[..., 1], m10 + m01, m02 + m20), -1),
            torch.stack((m02 - m20, m10 + m01, sq[..., 2], m12 + m21), -1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, sq[..., 3]), -1),
        ),
        dim=-2,
    )  # (..., 4 candidates, 4 components)
    best = sq.argmax(dim=-1, keepdim=True)  # (..., 1)
    q = torch.gather(cand, -2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return _canonical_sign(q)


def _canonical_sign(q: Tensor) -> Tensor:
    """Flip quaternions so that ``w > 0``, or for ``w == 0`` the first non-zero is > 0."""
    if q.numel() == 0:
        return q
    first_nonzero = torch.where(q[..., 1] != 0, q[..., 1], torch.where(q[..., 2] != 0, q[..., 2], q[..., 3]))
    key = torch.where(q[..., 0] != 0, q[..., 0], first_nonzero)
    sign = torch.where(key < 0, -torch.ones_like(key), torch.ones_like(key))
    return q * sign[..., None]


def quaternion_multiply(a: Any, b: Any) -> Tensor:
    """Hamilton product ``a * b`` of quaternions ``(w, x, y, z)``.

    ``R(a * b) = R(a) @ R(b)``. Shapes broadcast.

    Args:
        a: ``(..., 4)`` quaternions.
        b: ``(..., 4)`` quaternions.

    Returns:
        ``(..., 4)`` product (not re-normalised, not sign-normalised).
    """
    a = as_float_tensor(a, "a")
    b = as_float_tensor(b, "b", dtype=a.dtype)
    _check_last_dims(a, "a", (4,), "(..., 4)")
    _check_last_dims(b, "b", (4,), "(..., 4)")
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def yaw_to_quaternion(yaw: Any) -> Tensor:
    """Quaternions ``(w, x, y, z)`` of rotations by ``yaw`` about +z (counter-clockwise).

    The result is ``(cos(yaw/2), 0, 0, sin(yaw/2))`` sign-normalised to ``w >= 0`` (so
    ``yaw`` and ``yaw + 2 pi`` give the same quaternion).

    Args:
        yaw: ``(...)`` angles in radians.

    Returns:
        ``(..., 4)`` unit quaternions.
    """
    yaw = as_float_tensor(yaw, "yaw")
    half = 0.5 * yaw
    zeros = torch.zeros_like(half)
    q = torch.stack((torch.cos(half), zeros, zeros, torch.sin(half)), dim=-1)
    return _canonical_sign(q)


def yaw_to_matrix(yaw: Any) -> Tensor:
    """Rotation matrices about +z by ``yaw`` (counter-clockwise seen from above).

    Args:
        yaw: ``(...)`` angles in radians.

    Returns:
        ``(..., 3, 3)`` matrices ``[[c, -s, 0], [s, c, 0], [0, 0, 1]]``.
    """
    yaw = as_float_tensor(yaw, "yaw")
    c, s = torch.cos(yaw), torch.sin(yaw)
    zeros, ones = torch.zeros_like(yaw), torch.ones_like(yaw)
    return torch.stack(
        (
            torch.stack((c, -s, zeros), -1),
            torch.stack((s, c, zeros), -1),
            torch.stack((zeros, zeros, ones), -1),
        ),
        dim=-2,
    )


def make_transform(rotation: Any, translation: Any) -> Tensor:
    """Homogeneous transforms ``[[R, t], [0, 0, 0, 1]]``.

    Args:
        rotation: ``(..., 3, 3)`` rotation matrices.
        translation: ``(..., 3)`` translations (broadcast against ``rotation``'s batch).

    Returns:
        ``(..., 4, 4)`` transforms in ``rotation``'s dtype and device.
    """
    r = as_float_tensor(rotation, "rotation")
    _check_last_dims(r, "rotation", (3, 3), "(..., 3, 3)")
    t = as_float_tensor(translation, "translation", dtype=r.dtype).to(r.device)
    _check_last_dims(t, "translation", (3,), "(..., 3)")
    batch = torch.broadcast_shapes(r.shape[:-2], t.shape[:-1])
    out = torch.zeros(*batch, 4, 4, dtype=r.dtype, device=r.device)
    out[..., :3, :3] = r
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def invert_transform(transform: Any) -> Tensor:
    """Inverse of rigid transforms, computed as ``[[R^T, -R^T t], [0, 1]]``.

    Only valid for rigid transforms (orthonormal ``R``); for general affine matrices
    (e.g. KITTI's slightly non-orthonormal ``Tr_velo_to_cam``) use
    :func:`torch.linalg.inv`.

    Args:
        transform: ``(..., 4, 4)`` rigid transforms.

    Returns:
        ``(..., 4, 4)`` inverses.
    """
    t = as_float_tensor(transform, "transform")
    _check_last_dims(t, "transform", (4, 4), "(..., 4, 4)")
    r_inv = t[..., :3, :3].transpose(-1, -2)
    trans = -(r_inv @ t[..., :3, 3:4])[..., 0]
    return make_transform(r_inv, trans)


def transform_points(transform: Any, points: Any) -> Tensor:
    """Apply homogeneous transforms to points, keeping extra feature columns.

    ``out[..., :3] = R @ p + t``; columns 3.. of ``points`` (intensity, time, ...) are
    copied unchanged. The computation runs in ``points``' dtype and device.

    Args:
        transform: ``(4, 4)`` or ``(..., 4, 4)`` transforms (batch broadcast against the
            leading dimensions of ``points``).
        points: ``(N, C)`` or ``(..., N, C)`` with ``C >= 3``; ``x, y, z`` first.

    Returns:
        Tensor with the shape of ``points``.
    """
    pts = as_float_tensor(points, "points")
    if pts.dim() < 2 or pts.shape[-1] < 3:
        raise ValueError(f"points must have shape (..., N, >=3), got {tuple(pts.shape)}")
    t = as_float_tensor(transform, "transform", dtype=pts.dtype).to(pts.device)
    _check_last_dims(t, "transform", (4, 4), "(..., 4, 4)")
    xyz = pts[..., :3] @ t[..., :3, :3].transpose(-1, -2) + t[..., None, :3, 3]
    if pts.shape[-1] == 3:
        return xyz
    extra = pts[..., 3:].expand(*xyz.shape[:-1], pts.shape[-1] - 3)
    return torch.cat((xyz, extra), dim=-1)


def rotate_vectors(rotation: Any, vectors: Any) -> Tensor:
    """Rotate (do not translate) vectors: ``out = R @ v``, e.g. velocities or headings.

    Args:
        rotation: ``(3, 3)`` / ``(..., 3, 3)`` rotation matrices, or ``(4, 4)`` /
            ``(..., 4, 4)`` transforms of which only the rotation block is used.
        vectors: ``(..., 3)`` vectors.

    Returns:
        ``(..., 3)`` rotated vectors in ``vectors``' dtype.
    """
    v = as_float_tensor(vectors, "vectors")
    _check_last_dims(v, "vectors", (3,), "(..., 3)")
    r = as_float_tensor(rotation, "rotation", dtype=v.dtype).to(v.device)
    if r.dim() >= 2 and tuple(r.shape[-2:]) == (4, 4):
        r = r[..., :3, :3]
    _check_last_dims(r, "rotation", (3, 3), "(..., 3, 3) or (..., 4, 4)")
    return (r @ v[..., None])[..., 0]


@dataclass(frozen=True, eq=False)
class Pose:
    """A rigid pose: rotation (quaternion ``(w, x, y, z)``) and translation.

    It maps points of a child frame into a parent frame,
    ``p_parent = R(rotation) @ p_child + translation``, exactly like a nuScenes
    ``ego_pose`` record (ego->global) or ``calibrated_sensor`` record (sensor->ego).

    Fields are stored as float64 tensors (numpy arrays and lists are accepted); the
    quaternion is normalised on construction.

    Attributes:
        translation: ``(3,)`` metres, in the parent frame.
        rotation: ``(4,)`` unit quaternion ``(w, x, y, z)``.
    """

    translation: Tensor
    rotation: Tensor

    def __post_init__(self) -> None:
        t = as_float_tensor(self.translation, "translation", dtype=torch.float64)
        q = as_float_tensor(self.rotation, "rotation", dtype=torch.float64)
        if tuple(t.shape) != (3,):
            raise ValueError(f"Pose.translation must have shape (3,), got {tuple(t.shape)}")
        if tuple(q.shape) != (4,):
            raise ValueError(
                f"Pose.rotation must have shape (4,) as (w, x, y, z), got {tuple(q.shape)}"
            )
        norm = torch.linalg.vector_norm(q)
        if not bool(torch.isfinite(norm)) or float(norm) < 1e-12:
            raise ValueError(f"Pose.rotation must be a non-zero quaternion, got {q.tolist()}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"Pose.translation must be finite, got {t.tolist()}")
        object.__setattr__(self, "translation", t)
        object.__setattr__(self, "rotation", q / norm)

    def rotation_matrix(self) -> Tensor:
        """``(3, 3)`` float64 rotation matrix ``R`` (child->parent)."""
        return quaternion_to_matrix(self.rotation)

    def matrix(self) -> Tensor:
        """``(4, 4)`` float64 homogeneous transform child->parent."""
        return make_transform(self.rotation_matrix(), self.translation)

    def inverse(self) -> "Pose":
        """The pose parent->child."""
        return Pose.from_matrix(invert_transform(self.matrix()))

    def __matmul__(self, other: "Pose") -> "Pose":
        """Compose: ``(a @ b).matrix() == a.matrix() @ b.matrix()``."""
        if not isinstance(other, Pose):
            return NotImplemented
        return Pose.from_matrix(self.matrix() @ other.matrix())

    @classmethod
    def from_matrix(cls, matrix: Any) -> "Pose":
        """Build a pose from a ``(4, 4)`` rigid transform (or ``(3, 4)`` ``[R | t]``)."""
        m = as_float_tensor(matrix, "matrix", dtype=torch.float64)
        if m.dim() != 2 or tuple(m.shape) not in ((4, 4), (3, 4)):
            raise ValueError(f"matrix must have shape (4, 4) or (3, 4), got {tuple(m.shape)}")
        return cls(translation=m[:3, 3].clone(), rotation=matrix_to_quaternion(m[:3, :3]))

    @classmethod
    def identity(cls) -> "Pose":
        """The identity pose."""
        return cls(translation=torch.zeros(3), rotation=torch.tensor([1.0, 0.0, 0.0, 0.0]))
