"""Converters between our box convention and every outside convention.

**Our box** (``docs/DESIGN.md`` section 2, ``docs/conventions.md``): one tensor row
``(x, y, z, l, w, h, yaw[, vx, vy])`` in the frame of the sample's key LiDAR sensor,
metres, z up, with the sensor's own horizontal axes. ``(x, y, z)`` is the **geometric
centre**, ``l`` runs along the heading, ``w`` across it, ``h`` vertically, ``yaw`` is the
heading measured counter-clockwise from +x (seen from above), wrapped to ``[-pi, pi)``.
``(vx, vy)`` is the velocity in m/s in the same frame.

Outside conventions handled here (nothing else in the code base needs to know them):

========================  =========================================================
KITTI ``label_2``         rectified camera 0 frame (x right, y down, z forward),
                          location = **bottom** centre, dims ``(h, w, l)``,
                          ``rotation_y`` about camera +y; plus ``calib/*.txt``
nuScenes annotations      **global** frame, geometric centre, size ``(w, l, h)``,
                          rotation quaternion ``(w, x, y, z)`` whose local +x is the
                          length/heading axis, velocity global ``(vx, vy, vz)``
mmdetection3d >= 1.0      ``LiDARInstance3DBoxes``: LiDAR frame,
                          ``(x, y, z_bottom, x_size=l, y_size=w, z_size=h, yaw)``
mmdetection3d < 1.0       same frame, ``(x, y, z_bottom, w, l, h, -yaw - pi/2)``
OpenPCDet                 ``(x, y, z_centre, dx=l, dy=w, dz=h, heading)``: ours
========================  =========================================================

All converters accept torch tensors or numpy arrays (converted with
:func:`torch.as_tensor`), are batched (no Python loop over boxes), compute in float64
internally and return torch tensors in the input's floating dtype (integers become the
default float dtype) and device. Wrong shapes raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from distill3d.geometry.boxes import wrap_angle
from distill3d.geometry.transforms import (
    Pose,
    as_float_tensor,
    invert_transform,
    quaternion_to_matrix,
    matrix_to_quaternion,
    transform_points,
    yaw_to_matrix,
    yaw_to_quaternion,
)

__all__ = [
    "KittiCalib",
    "kitti_camera_to_lidar_boxes",
    "lidar_to_kitti_camera_boxes",
    "kitti_alpha",
    "nuscenes_global_to_lidar_boxes",
    "lidar_to_nuscenes_global_boxes",
    "mmdet3d_lidar_to_boxes",
    "boxes_to_mmdet3d_lidar",
    "openpcdet_to_boxes",
    "boxes_to_openpcdet",
]

_F64 = torch.float64
# Below this, an axis that should be (close to) vertical is treated as horizontal.
_DEGENERATE = 1e-6


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _input(value: Any, name: str) -> tuple[Tensor, torch.dtype]:
    """Tensor view of ``value`` in float64 plus the dtype to return results in."""
    tensor = as_float_tensor(value, name)
    return tensor.to(_F64), tensor.dtype


def _check_rows(tensor: Tensor, name: str, widths: tuple[int, ...] | None, what: str,
                min_width: int | None = None) -> None:
    """Require a ``(N, C)`` tensor with ``C`` in ``widths`` (or ``C >= min_width``)."""
    ok = tensor.dim() == 2 and (
        (widths is not None and tensor.shape[1] in widths)
        or (min_width is not None and tensor.shape[1] >= min_width)
    )
    if not ok:
        raise ValueError(f"{name} must have shape {what}, got {tuple(tensor.shape)}")


def _check_same_n(n: int, tensor: Tensor, name: str) -> None:
    if tensor.shape[0] != n:
        raise ValueError(
            f"{name} has {tensor.shape[0]} rows but the other inputs have {n}"
        )


def _vector_1d(value: Any, name: str, n: int) -> Tensor:
    """``(N,)`` (or ``(N, 1)``) float64 tensor."""
    t, _ = _input(value, name)
    if t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(t.shape)}")
    _check_same_n(n, t, name)
    return t


def _pose_matrix(pose: Pose | Any, name: str) -> Tensor:
    """``(4, 4)`` float64 matrix of a :class:`Pose` or of a ``(4, 4)`` rigid transform."""
    if isinstance(pose, Pose):
        return pose.matrix()
    m = as_float_tensor(pose, name, dtype=_F64)
    if tuple(m.shape) != (4, 4):
        raise ValueError(f"{name} must be a Pose or a (4, 4) transform, got {tuple(m.shape)}")
    return m


def _yaw_of(vectors: Tensor) -> Tensor:
    """Wrapped angle of the xy projection of ``(..., >=2)`` vectors."""
    return wrap_angle(torch.atan2(vectors[..., 1], vectors[..., 0]))


def _heading(yaw: Tensor) -> Tensor:
    """``(N, 3)`` unit heading vectors ``(cos yaw, sin yaw, 0)``."""
    return torch.stack((torch.cos(yaw), torch.sin(yaw), torch.zeros_like(yaw)), dim=-1)


def _oblique_to_plane(a: Tensor, up: Tensor, axis: int, what: str) -> Tensor:
    """Slide vectors ``a`` along ``up`` until their ``axis`` component is zero.

    Returns ``a + s * up`` with ``s = -a[axis] / up[axis]``. This is the exact inverse of
    "map back and drop the component along the source frame's own vertical axis", which
    is what makes the yaw conversions below round-trip exactly.
    """
    denom = up[..., axis]
    if bool((denom.abs() < _DEGENERATE).any()):
        raise ValueError(f"{what}: the vertical axis is (nearly) horizontal in the target frame")
    s = -a[..., axis] / denom
    out = a + s[..., None] * up
    out[..., axis] = 0.0
    return out


# --------------------------------------------------------------------------------------
# KITTI
# --------------------------------------------------------------------------------------


def _pad4(matrix: Tensor) -> Tensor:
    """Pad a ``(3, 3)`` or ``(3, 4)`` matrix to ``(4, 4)`` homogeneous form."""
    out = torch.eye(4, dtype=matrix.dtype, device=matrix.device)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


@dataclass(frozen=True, eq=False)
class KittiCalib:
    """KITTI object calibration (``calib/XXXXXX.txt``), stored as float64 tensors.

    Frames: *velodyne* (LiDAR: x forward, y left, z up), *reference camera 0* (x right,
    y down, z forward), *rectified camera* (camera 0 after ``R0_rect``; all label
    locations live here). Image projection of rectified points uses ``P2`` (left colour
    camera, ``image_2``).

    Attributes:
        P0, P1, P2, P3: ``(3, 4)`` projection matrices, rectified camera -> pixels of
            camera 0..3 (homogeneous).
        R0_rect: ``(3, 3)`` rectifying rotation, reference camera 0 -> rectified.
        Tr_velo_to_cam: ``(3, 4)`` ``[R | t]`` velodyne -> reference camera 0.
        Tr_imu_to_velo: optional ``(3, 4)`` ``[R | t]`` IMU -> velodyne.
    """

    P0: Tensor
    P1: Tensor
    P2: Tensor
    P3: Tensor
    R0_rect: Tensor
    Tr_velo_to_cam: Tensor
    Tr_imu_to_velo: Tensor | None = None

    def __post_init__(self) -> None:
        shapes = {"P0": (3, 4), "P1": (3, 4), "P2": (3, 4), "P3": (3, 4),
                  "R0_rect": (3, 3), "Tr_velo_to_cam": (3, 4), "Tr_imu_to_velo": (3, 4)}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "Tr_imu_to_velo":
                continue
            t = as_float_tensor(value, f"KittiCalib.{f.name}", dtype=_F64)
            expected = shapes[f.name]
            if tuple(t.shape) != expected:
                # accept the flat 9/12 numbers of the text file as well
                if t.dim() == 1 and t.numel() == expected[0] * expected[1]:
                    t = t.reshape(expected)
                else:
                    raise ValueError(
                        f"KittiCalib.{f.name} must have shape {expected}, got {tuple(t.shape)}"
                    )
            object.__setattr__(self, f.name, t)

    def lidar_to_rect_matrix(self) -> Tensor:
        """``(4, 4)`` float64 velodyne -> rectified camera: ``R0_rect @ Tr_velo_to_cam``.

        This is mmdetection3d's ``lidar2cam`` for ``CAM2`` in its KITTI infos.
        """
        return _pad4(self.R0_rect) @ _pad4(self.Tr_velo_to_cam)

    def rect_to_lidar_matrix(self) -> Tensor:
        """``(4, 4)`` float64 rectified camera -> velodyne (a true matrix inverse, since
        KITTI's ``Tr_velo_to_cam`` is only approximately orthonormal)."""
        return torch.linalg.inv(self.lidar_to_rect_matrix())

    def lidar_to_image_matrix(self) -> Tensor:
        """``(4, 4)`` float64 velodyne -> ``image_2`` homogeneous pixels:
        ``P2 @ R0_rect @ Tr_velo_to_cam`` (mmdetection3d's ``lidar2img``)."""
        return _pad4(self.P2) @ self.lidar_to_rect_matrix()

    def lidar_to_rect(self, points: Any) -> Tensor:
        """Velodyne points ``(N, >=3)`` -> rectified camera ``(N, C)``, extra columns kept."""
        return transform_points(self.lidar_to_rect_matrix(), _points(points, "points"))

    def rect_to_lidar(self, points: Any) -> Tensor:
        """Rectified camera points ``(N, >=3)`` -> velodyne ``(N, C)``, extra columns kept."""
        return transform_points(self.rect_to_lidar_matrix(), _points(points, "points"))

    def rect_to_image(self, points: Any) -> tuple[Tensor, Tensor]:
        """Project rectified-camera points into ``image_2`` with ``P2``.

        Args:
            points: ``(N, >=3)`` rectified camera coordinates.

        Returns:
            ``(uv, depth)``: ``(N, 2)`` pixel coordinates ``(u, v)`` (u to the right, v
            down, origin at the top-left pixel's corner as in KITTI) and ``(N,)`` depth,
            the third homogeneous coordinate ``(P2 @ [x, y, z, 1])[2]``, i.e. the distance
            along the optical axis of camera 2 (rectified ``z`` plus ``P2[2, 3]``), as
            mmdetection3d's ``points_cam2img(..., with_depth=True)`` returns it. Points
            behind the camera get ``depth <= 0`` and meaningless ``uv``.
        """
        pts = _points(points, "points")
        p2 = self.P2.to(dtype=pts.dtype, device=pts.device)
        uvw = pts[:, :3] @ p2[:, :3].T + p2[:, 3]
        depth = uvw[:, 2]
        return uvw[:, :2] / depth[:, None], depth

    def lidar_to_image(self, points: Any) -> tuple[Tensor, Tensor]:
        """Velodyne points ``(N, >=3)`` -> ``image_2`` ``(uv (N, 2), depth (N,))``; see
        :meth:`rect_to_image`."""
        return self.rect_to_image(self.lidar_to_rect(points))


def _points(points: Any, name: str) -> Tensor:
    pts = as_float_tensor(points, name)
    if pts.dim() != 2 or pts.shape[1] < 3:
        raise ValueError(f"{name} must have shape (N, >=3), got {tuple(pts.shape)}")
    return pts


def kitti_camera_to_lidar_boxes(location: Any, dimensions: Any, rotation_y: Any,
                                calib: KittiCalib) -> Tensor:
    """KITTI ``label_2`` boxes (rectified camera frame) -> our LiDAR boxes.

    KITTI convention: rectified camera 0 frame (x right, y down, z forward);
    ``location`` is the **bottom centre** of the box (the box spans
    ``y - h .. y``); ``dimensions`` are ``(h, w, l)``; ``rotation_y`` in ``[-pi, pi]`` is
    the rotation about camera +y, ``0`` meaning the box's length axis points along
    camera +x, i.e. the heading vector in the camera frame is
    ``(cos ry, 0, -sin ry)`` (so ``ry = -pi/2`` faces camera +z, away from the car).

    Conversion: the geometric centre ``location - (0, h/2, 0)`` is mapped with
    :meth:`KittiCalib.rect_to_lidar`; the heading vector is rotated into the LiDAR frame
    and ``yaw = atan2(y, x)`` of it (its component along LiDAR z is dropped). With the
    usual KITTI axis swap this is ``yaw = -ry - pi/2`` up to the calibration's small
    rotation (~2e-3 rad on frame 000000), whereas mmdetection3d and OpenPCDet use
    ``-ry - pi/2`` exactly (and, for the centre, shift the transformed bottom by h/2 in
    LiDAR z; the two centres differ by ~1 cm).

    Args:
        location: ``(N, 3)`` bottom centres, rectified camera frame, metres.
        dimensions: ``(N, 3)`` KITTI ``(h, w, l)``, metres.
        rotation_y: ``(N,)`` radians.
        calib: the frame's calibration.

    Returns:
        ``(N, 7)`` boxes ``(x, y, z, l, w, h, yaw)`` in the LiDAR frame, geometric centre,
        in ``location``'s dtype and device.
    """
    loc, out_dtype = _input(location, "location")
    _check_rows(loc, "location", (3,), "(N, 3)")
    n = loc.shape[0]
    dims, _ = _input(dimensions, "dimensions")
    _check_rows(dims, "dimensions", (3,), "(N, 3) as (h, w, l)")
    _check_same_n(n, dims, "dimensions")
    ry = _vector_1d(rotation_y, "rotation_y", n).to(loc.device)
    dims = dims.to(loc.device)
    h, w, l = dims.unbind(-1)
    centre_cam = loc.clone()
    centre_cam[:, 1] = centre_cam[:, 1] - 0.5 * h
    rect_to_lidar = calib.rect_to_lidar_matrix().to(loc.device)
    centre = transform_points(rect_to_lidar, centre_cam)
    heading_cam = torch.stack((torch.cos(ry), torch.zeros_like(ry), -torch.sin(ry)), dim=-1)
    heading = heading_cam @ rect_to_lidar[:3, :3].T
    yaw = _yaw_of(heading)
    boxes = torch.cat((centre, torch.stack((l, w, h, yaw), dim=-1)), dim=-1)
    return boxes.to(out_dtype)


def lidar_to_kitti_camera_boxes(boxes: Any, calib: KittiCalib) -> tuple[Tensor, Tensor, Tensor]:
    """Our LiDAR boxes -> KITTI ``label_2`` quantities; exact inverse of
    :func:`kitti_camera_to_lidar_boxes`.

    The centre is mapped with :meth:`KittiCalib.lidar_to_rect` and moved down by ``h/2``
    along camera +y to the bottom centre. ``rotation_y`` is the camera-frame heading in
    the camera's x-z plane whose LiDAR-frame yaw (heading projected on the LiDAR x-y
    plane) equals ``yaw``: the LiDAR heading is slid along the LiDAR z axis (as seen in
    the camera) into the camera x-z plane. Hence ``camera -> lidar -> camera`` and
    ``lidar -> camera -> lidar`` both round-trip exactly for any calibration whose LiDAR
    z axis is not horizontal in the camera frame.

    Args:
        boxes: ``(N, >=7)`` our boxes in the LiDAR frame; columns after 7 (velocity) are
            ignored, KITTI labels have none.
        calib: the frame's calibration.

    Returns:
        ``(location (N, 3), dimensions (N, 3) as (h, w, l), rotation_y (N,))`` in
        ``boxes``' dtype; ``rotation_y`` is wrapped to ``[-pi, pi)``.
    """
    b, out_dtype = _input(boxes, "boxes")
    _check_rows(b, "boxes", None, "(N, >=7) as (x, y, z, l, w, h, yaw, ...)", min_width=7)
    lidar_to_rect = calib.lidar_to_rect_matrix().to(b.device)
    centre_cam = transform_points(lidar_to_rect, b[:, :3])
    l, w, h, yaw = b[:, 3], b[:, 4], b[:, 5], b[:, 6]
    location = centre_cam.clone()
    location[:, 1] = location[:, 1] + 0.5 * h
    rot = lidar_to_rect[:3, :3]
    heading_cam = _heading(yaw) @ rot.T
    up_cam = rot[:, 2].expand_as(heading_cam)
    in_plane = _oblique_to_plane(heading_cam, up_cam, axis=1, what="calib")
    ry = wrap_angle(torch.atan2(-in_plane[:, 2], in_plane[:, 0]))
    dims = torch.stack((h, w, l), dim=-1)
    return location.to(out_dtype), dims.to(out_dtype), ry.to(out_dtype)


def kitti_alpha(location: Any, rotation_y: Any) -> Tensor:
    """KITTI observation angle ``alpha = rotation_y - atan2(x, z)``, wrapped to ``[-pi, pi)``.

    ``alpha`` is the object's heading relative to the ray from the camera to the object
    (``x, z`` of the location in the rectified camera frame); it is what the KITTI label
    column 4 holds.

    Args:
        location: ``(N, 3)`` rectified camera coordinates (bottom centre; only x, z used).
        rotation_y: ``(N,)`` radians.

    Returns:
        ``(N,)`` alpha, in ``location``'s dtype.
    """
    loc, out_dtype = _input(location, "location")
    _check_rows(loc, "location", (3,), "(N, 3)")
    ry = _vector_1d(rotation_y, "rotation_y", loc.shape[0]).to(loc.device)
    alpha = wrap_angle(ry - torch.atan2(loc[:, 0], loc[:, 2]))
    return alpha.to(out_dtype)


# --------------------------------------------------------------------------------------
# nuScenes
# --------------------------------------------------------------------------------------


def _lidar_to_global(ego_pose: Pose | Any, lidar_calib: Pose | Any) -> Tensor:
    """``(4, 4)`` float64 LiDAR -> global: ``ego_pose @ lidar_calib``."""
    return _pose_matrix(ego_pose, "ego_pose") @ _pose_matrix(lidar_calib, "lidar_calib")


def nuscenes_global_to_lidar_boxes(centers: Any, sizes: Any, rotations: Any,
                                   ego_pose: Pose | Any, lidar_calib: Pose | Any,
                                   velocities: Any | None = None) -> Tensor:
    """nuScenes global-frame boxes (``sample_annotation`` records) -> our LiDAR boxes.

    nuScenes convention: ``translation`` is the **geometric centre** in the global
    (map) frame; ``size`` is ``(w, l, h)``; ``rotation`` is a quaternion ``(w, x, y, z)``
    mapping box coordinates to global, whose local +x axis is the length (heading) axis,
    +y the width, +z the height; ``velocity`` (``NuScenes.box_velocity``) is in the global
    frame, m/s, and may be NaN when it cannot be estimated (NaN is passed through).

    Poses: ``ego_pose`` maps ego -> global (the ``ego_pose`` record **at the LiDAR
    sample_data's timestamp**), ``lidar_calib`` maps LiDAR -> ego (the LiDAR's
    ``calibrated_sensor`` record). Each may be a :class:`Pose` or a ``(4, 4)`` matrix.

    Conversion (the devkit's ``box.translate(-ego.t); box.rotate(ego.q.inverse);
    box.translate(-calib.t); box.rotate(calib.q.inverse)``, then mmdetection3d's
    projection to yaw): centres are mapped by the rigid transform; the box rotation
    ``R_lidar_from_global @ R(q)`` is reduced to the yaw of its heading (its +x column)
    projected on the LiDAR x-y plane (pitch and roll are dropped, as mmdetection3d's
    ``yaw_pitch_roll[0]`` and OpenPCDet do); velocities are **rotated only** (2-D input
    gets ``vz = 0``) and their LiDAR x, y components kept.

    Args:
        centers: ``(N, 3)`` global centres.
        sizes: ``(N, 3)`` nuScenes ``(w, l, h)``.
        rotations: ``(N, 4)`` quaternions ``(w, x, y, z)``, box -> global.
        ego_pose: ego -> global.
        lidar_calib: LiDAR -> ego.
        velocities: optional ``(N, 2)`` or ``(N, 3)`` global velocities.

    Returns:
        ``(N, 7)`` boxes, or ``(N, 9)`` with ``(vx, vy)`` when ``velocities`` is given, in
        the LiDAR frame, in ``centers``' dtype and device.
    """
    c, out_dtype = _input(centers, "centers")
    _check_rows(c, "centers", (3,), "(N, 3)")
    n = c.shape[0]
    s, _ = _input(sizes, "sizes")
    _check_rows(s, "sizes", (3,), "(N, 3) as (w, l, h)")
    _check_same_n(n, s, "sizes")
    q, _ = _input(rotations, "rotations")
    _check_rows(q, "rotations", (4,), "(N, 4) as (w, x, y, z)")
    _check_same_n(n, q, "rotations")
    device = c.device
    s, q = s.to(device), q.to(device)
    lidar_from_global = invert_transform(_lidar_to_global(ego_pose, lidar_calib)).to(device)
    rot = lidar_from_global[:3, :3]
    centre = transform_points(lidar_from_global, c)
    heading = quaternion_to_matrix(q)[:, :, 0] @ rot.T  # box +x axis in the LiDAR frame
    yaw = _yaw_of(heading)
    cols = [centre, s[:, 1:2], s[:, 0:1], s[:, 2:3], yaw[:, None]]
    if velocities is not None:
        v, _ = _input(velocities, "velocities")
        _check_rows(v, "velocities", (2, 3), "(N, 2) or (N, 3)")
        _check_same_n(n, v, "velocities")
        v = v.to(device)
        if v.shape[1] == 2:
            v = torch.cat((v, torch.zeros_like(v[:, :1])), dim=-1)
        cols.append((v @ rot.T)[:, :2])
    return torch.cat(cols, dim=-1).to(out_dtype)


def lidar_to_nuscenes_global_boxes(
    boxes: Any, ego_pose: Pose | Any, lidar_calib: Pose | Any, upright: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Our LiDAR boxes -> nuScenes global-frame quantities (for submissions, GT export).

    See :func:`nuscenes_global_to_lidar_boxes` for the nuScenes convention and poses.

    * ``upright=False`` (default; what mmdetection3d's ``lidar_nusc_box_to_global`` and
      the devkit's ``Box.rotate`` give): the box rotation is
      ``R_global_from_lidar @ Rz(yaw)``, so a box level in the LiDAR frame inherits the
      sensor's tilt in the global frame; velocity ``(vx, vy, 0)`` is rotated to a 3-D
      global velocity.
    * ``upright=True``: the global rotation is a pure yaw about global +z (like real
      nuScenes annotations) and the velocity is horizontal (``vz = 0``); the global
      heading is the horizontal direction whose projection on the LiDAR x-y plane is the
      box's heading (and likewise for velocity).

    Round trips (``nuscenes_global_to_lidar_boxes`` after this, or before it):

    * ``lidar -> global -> lidar`` is exact (to rounding) in both modes.
    * ``global -> lidar -> global`` returns centres and sizes exactly. Pitch and roll of
      the global box relative to the LiDAR x-y plane are lost in the LiDAR box. With a
      level sensor everything is exact. With a tilted sensor (nuScenes LIDAR_TOP is off
      by ~1-2 degrees from the global vertical): in the default mode the returned
      rotation is the LiDAR's tilt applied to the box (error in the rotation of the order
      of the tilt, global yaw off by second order); with ``upright=True`` an upright
      annotation (pure yaw, as all nuScenes annotations are) comes back exactly, and so do
      horizontal velocities; a velocity's component along the LiDAR z axis (e.g. the
      devkit's vz) is always lost.

    Args:
        boxes: ``(N, 7)`` or ``(N, 9)`` our boxes in the LiDAR frame.
        ego_pose: ego -> global (:class:`Pose` or ``(4, 4)``).
        lidar_calib: LiDAR -> ego (:class:`Pose` or ``(4, 4)``).
        upright: produce yaw-only global rotations and horizontal velocities.

    Returns:
        ``(centers (N, 3), sizes (N, 3) as (w, l, h), rotations (N, 4) as (w, x, y, z)
        with w >= 0, velocities (N, 3) or None)``, global frame, ``boxes``' dtype.
    """
    b, out_dtype = _input(boxes, "boxes")
    _check_rows(b, "boxes", (7, 9), "(N, 7) or (N, 9) as (x, y, z, l, w, h, yaw[, vx, vy])")
    global_from_lidar = _lidar_to_global(ego_pose, lidar_calib).to(b.device)
    rot = global_from_lidar[:3, :3]
    centres = transform_points(global_from_lidar, b[:, :3])
    sizes = b[:, [4, 3, 5]]
    up = rot[:, 2].expand(b.shape[0], 3)
    if upright:
        heading = _oblique_to_plane(_heading(b[:, 6]) @ rot.T, up, axis=2, what="lidar_calib/ego_pose")
        rotations = yaw_to_quaternion(torch.atan2(heading[:, 1], heading[:, 0]))
    else:
        rotations = matrix_to_quaternion(rot @ yaw_to_matrix(b[:, 6]))
    velocities = None
    if b.shape[1] == 9:
        v = torch.cat((b[:, 7:9], torch.zeros_like(b[:, :1])), dim=-1) @ rot.T
        if upright:
            v = _oblique_to_plane(v, up, axis=2, what="lidar_calib/ego_pose")
        velocities = v.to(out_dtype)
    return centres.to(out_dtype), sizes.to(out_dtype), rotations.to(out_dtype), velocities


# --------------------------------------------------------------------------------------
# mmdetection3d and OpenPCDet
# --------------------------------------------------------------------------------------


def _check_origin_z(origin_z: float) -> float:
    if not isinstance(origin_z, (int, float)) or not 0.0 <= float(origin_z) <= 1.0:
        raise ValueError(f"origin_z must be a number in [0, 1], got {origin_z!r}")
    return float(origin_z)


def mmdet3d_lidar_to_boxes(boxes: Any, legacy: bool = False, origin_z: float = 0.0) -> Tensor:
    """mmdetection3d ``LiDARInstance3DBoxes`` tensor -> our boxes.

    mmdetection3d >= 1.0 (after the coordinate-system refactor, v1.0.0rc0):
    ``(x, y, z, x_size, y_size, z_size, yaw[, vx, vy])`` in the LiDAR frame with
    ``x_size = l`` (along the heading), ``y_size = w``, ``z_size = h``, ``yaw`` counter-
    clockwise from +x (0 = facing +x, pi/2 = facing +y, as ours) and ``z`` the **bottom**
    (the class's default ``origin=(0.5, 0.5, 0)``).

    mmdetection3d < 1.0 (``legacy=True``; also OpenPCDet's "fakelidar" and legacy info
    files' ``gt_boxes``): ``(x, y, z, w, l, h, yaw_legacy)`` with
    ``yaw_legacy = -yaw - pi/2`` (0 = facing -y, growing clockwise), as undone by
    mmdetection3d's ``tools/update_data_coords.py`` (swap sizes 3 and 4, ``-yaw - pi/2``).

    ``origin_z`` is the relative height of the stored ``z`` in the box, like the third
    number of mmdetection3d's ``origin`` argument: ``0.0`` bottom (the box class), ``0.5``
    geometric centre (what mmdetection3d's nuScenes/Lyft info files store in
    ``instances[].bbox_3d`` / ``gt_boxes``: the dataset builds the boxes with
    ``origin=(0.5, 0.5, 0.5)``).

    Args:
        boxes: ``(N, >=7)``; columns from 7 on (velocity, ...) are copied unchanged (the
            frame is the same in both versions).
        legacy: input uses the mmdetection3d < 1.0 convention.
        origin_z: relative z origin of the input, in ``[0, 1]``.

    Returns:
        ``(N, C)`` our boxes, same dtype and device.
    """
    b, out_dtype = _input(boxes, "boxes")
    _check_rows(b, "boxes", None, "(N, >=7) as (x, y, z, dx, dy, dz, yaw, ...)", min_width=7)
    oz = _check_origin_z(origin_z)
    out = b.clone()
    if legacy:
        out[:, 3], out[:, 4] = b[:, 4], b[:, 3]
        out[:, 6] = -b[:, 6] - 0.5 * math.pi
    out[:, 2] = b[:, 2] + (0.5 - oz) * out[:, 5]
    out[:, 6] = wrap_angle(out[:, 6])
    return out.to(out_dtype)


def boxes_to_mmdet3d_lidar(boxes: Any, legacy: bool = False, origin_z: float = 0.0) -> Tensor:
    """Our boxes -> mmdetection3d ``LiDARInstance3DBoxes`` tensor; inverse of
    :func:`mmdet3d_lidar_to_boxes` (see there for both conventions and ``origin_z``).

    Args:
        boxes: ``(N, >=7)`` our boxes; extra columns copied unchanged.
        legacy: produce the mmdetection3d < 1.0 convention ``(x, y, z, w, l, h,
            -yaw - pi/2)``.
        origin_z: relative z origin to produce (``0.0`` bottom centre, the default of
            ``LiDARInstance3DBoxes``).

    Returns:
        ``(N, C)`` boxes, yaw wrapped to ``[-pi, pi)``, same dtype and device.
    """
    b, out_dtype = _input(boxes, "boxes")
    _check_rows(b, "boxes", None, "(N, >=7) as (x, y, z, l, w, h, yaw, ...)", min_width=7)
    oz = _check_origin_z(origin_z)
    out = b.clone()
    out[:, 2] = b[:, 2] - (0.5 - oz) * b[:, 5]
    if legacy:
        out[:, 3], out[:, 4] = b[:, 4], b[:, 3]
        out[:, 6] = -b[:, 6] - 0.5 * math.pi
    out[:, 6] = wrap_angle(out[:, 6])
    return out.to(out_dtype)


def openpcdet_to_boxes(boxes: Any) -> Tensor:
    """OpenPCDet ``(x, y, z, dx, dy, dz, heading[, vx, vy, ...])`` -> our boxes.

    OpenPCDet's LiDAR box is our convention already: geometric ("gravity") centre,
    ``dx`` along the heading, heading counter-clockwise from +x. The only change is that
    the heading is wrapped to ``[-pi, pi)`` (OpenPCDet does not always wrap). Extra
    columns are copied.

    Args:
        boxes: ``(N, >=7)``.

    Returns:
        ``(N, C)`` boxes, same dtype and device.
    """
    b, out_dtype = _input(boxes, "boxes")
    _check_rows(b, "boxes", None, "(N, >=7) as (x, y, z, dx, dy, dz, heading, ...)", min_width=7)
    out = b.clone()
    out[:, 6] = wrap_angle(b[:, 6])
    return out.to(out_dtype)


def boxes_to_openpcdet(boxes: Any) -> Tensor:
    """Our boxes -> OpenPCDet ``(x, y, z, dx, dy, dz, heading[, ...])``: identity up to
    wrapping the heading to ``[-pi, pi)``. See :func:`openpcdet_to_boxes`."""
    b, out_dtype = _input(boxes, "boxes")
    _check_rows(b, "boxes", None, "(N, >=7) as (x, y, z, l, w, h, yaw, ...)", min_width=7)
    out = b.clone()
    out[:, 6] = wrap_angle(b[:, 6])
    return out.to(out_dtype)
