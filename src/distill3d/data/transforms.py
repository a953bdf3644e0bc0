"""Augmentation and preprocessing of :class:`~distill3d.data.sample.Sample` s, recorded as matrices.

Every transform is a small class whose ``__call__(sample, rng) -> Sample`` returns a **new**
Sample (the input's tensors are never modified in place; unchanged tensors may be shared)
and draws its randomness only from ``rng`` (a :class:`numpy.random.Generator`, see
:func:`~distill3d.data.dataset.sample_rng`), so the same seed gives the same sample. There
is no global mutable state.

Frames and matrices
-------------------
* **Scene (BEV) augmentation** -- :class:`GlobalRotScaleTrans`, :class:`RandomFlip3D` and
  anything built on :func:`apply_bev_transform` -- is one ``(4, 4)`` matrix ``A`` acting on
  column vectors in the key LiDAR frame: ``p_new = A @ p``. ``A``'s linear part must be a
  similarity in x-y (``s * Q`` with ``Q`` a rotation or a reflection) and a positive scale
  along z, with no x-y/z mixing, which is what every BEV augmentation is. Applying it:

  - points: ``xyz <- A xyz`` (other columns unchanged);
  - boxes: centre ``<- A c``; ``l, w <- s l, s w``; ``h <- s_z h``; yaw: the heading
    ``(cos yaw, sin yaw)`` is mapped by ``Q`` and re-measured, wrapped to ``[-pi, pi)``;
    velocity ``(vx, vy) <- s Q (vx, vy)``. **Velocity is scaled with the scene**, as
    mmdetection3d's ``LiDARInstance3DBoxes.scale`` does: scaling the world at a fixed time
    base scales every speed (NaN velocities stay NaN);
  - ``sample.bev_transform <- A @ bev_transform`` (original frame -> augmented frame);
  - every camera: ``lidar_to_camera <- lidar_to_camera @ inverse(A)``, so that a point and
    its augmented copy land in the same camera coordinates and hence on the same pixel.
    After a scaling or a flip ``lidar_to_camera`` is a similarity / improper transform, no
    longer rigid: invert it with :func:`torch.linalg.inv`, not a rigid-inverse formula;
  - ``extras`` entries listed in :data:`LIDAR_BOX_EXTRAS` (boxes in the LiDAR frame that
    are not GT, e.g. KITTI's ``other_boxes``) are mapped like the boxes.

  ``lidar_to_ego`` and ``ego_to_global`` are **not** changed: they keep describing the
  *original* key LiDAR frame (augmented -> ego is ``lidar_to_ego @ inverse(bev_transform)``).
  Neither are source records in ``extras`` (KITTI's ``calib``, 2D boxes, ``alpha``): they
  describe the data as loaded, for evaluation and export.

* **Image augmentation** (:class:`ImageAug`) is a per-camera ``(3, 3)`` homogeneous 2D
  affine ``M`` on pixel coordinates. Pixel coordinates follow the intrinsics' convention:
  ``(u, v)`` with ``u`` right, ``v`` down and **integer values at pixel centres** (OpenCV's
  convention; the top-left pixel's centre is ``(0, 0)``). The image is warped exactly
  according to ``M`` under that convention (PIL is used with the corresponding half-pixel
  shift), so the matrix and the pixels agree to interpolation accuracy. The one rule
  relating the camera fields is::

      intrinsics == image_transform @ K_original        (always)

  i.e. every image augmentation updates both ``image_transform <- M @ image_transform`` and
  ``intrinsics <- M @ intrinsics``. ``view.lidar_to_image()`` (= :func:`camera_projection`)
  therefore maps augmented LiDAR points straight to augmented pixels, and
  ``image_transform`` must **not** be applied on top of it; it is the record of what was
  done (BEVDepth's ``ida``), with ``K_original = inverse(image_transform) @ intrinsics``
  (:func:`original_intrinsics`). With an image rotation ``intrinsics`` is a general
  ``3 x 3`` projective matrix (no longer upper triangular): code that needs pinhole
  ``fx, fy, cx, cy`` must read :func:`original_intrinsics`.

Boxes and per-box extras
------------------------
Transforms that remove or add boxes keep ``labels``, ``num_points`` and the per-box
``extras`` entries named in :data:`PER_BOX_EXTRAS` aligned with ``boxes``. Boxes added by
:class:`GTSampling` get filler values there (NaN for float tensors, -1 for integer tensors,
False for bool tensors, None in lists) and are flagged in ``extras['gt_sampled']``.
``num_points`` keeps the count recorded by the source (filters and beam downsampling do not
recount).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from distill3d.atomic_io import atomic_write_bytes
from distill3d.data.dataset import SampleTransform
from distill3d.data.errors import DataError
from distill3d.data.sample import CameraView, Sample
from distill3d.geometry.boxes import wrap_angle
from distill3d.geometry.iou import box_iou_bev
from distill3d.geometry.points import points_in_boxes

__all__ = [
    "LIDAR_BOX_EXTRAS",
    "PER_BOX_EXTRAS",
    "BeamDownsample",
    "Compose",
    "GTSampling",
    "GlobalRotScaleTrans",
    "ImageAug",
    "ImageAugParams",
    "ObjectNameFilter",
    "ObjectRangeFilter",
    "PointRangeFilter",
    "PointShuffle",
    "RandomFlip3D",
    "apply_bev_transform",
    "build_gt_database",
    "camera_projection",
    "estimate_beam_index",
    "original_intrinsics",
    "select_boxes",
    "select_points",
]

#: ``extras`` keys holding one entry per GT box (aligned with ``boxes``): KITTI's
#: ``bbox2d``/``truncated``/``occluded``/``alpha``/``difficulty``, nuScenes'
#: ``attributes``/``instance_tokens``/``annotation_tokens``/``category_names``/
#: ``num_radar_pts``/``visibility``, and ``gt_sampled`` (set by :class:`GTSampling`).
#: Values are tensors/arrays with first dimension ``M`` or lists of length ``M``.
PER_BOX_EXTRAS: tuple[str, ...] = (
    "bbox2d", "truncated", "occluded", "alpha", "difficulty",
    "attributes", "instance_tokens", "annotation_tokens", "category_names", "num_radar_pts",
    "visibility", "gt_sampled",
)

#: ``extras`` keys holding ``(J, >=7)`` boxes in the key LiDAR frame that are not GT boxes
#: (KITTI's ``other_boxes``: labelled objects of other classes). BEV transforms map them
#: like the GT boxes; :class:`GTSampling` does not paste objects onto them.
LIDAR_BOX_EXTRAS: tuple[str, ...] = ("other_boxes",)

# Relative tolerance of the structure check of a BEV matrix.
_BEV_TOL = 1e-5


# --------------------------------------------------------------------------------------
# Helpers: copying, selecting and matrix application.
# --------------------------------------------------------------------------------------


def _replace(sample: Sample, **changes: Any) -> Sample:
    """A new Sample with ``changes``; ``extras`` is always a new (shallow) dict."""
    changes.setdefault("extras", dict(sample.extras))
    changes.setdefault("cameras", list(sample.cameras))
    return dataclasses.replace(sample, **changes)


def _index_entry(value: Any, index: np.ndarray, key: str, count: int, token: str) -> Any:
    """``value`` (per-box extras entry of length ``count``) taken at ``index``."""
    length = value.shape[0] if isinstance(value, (Tensor, np.ndarray)) else len(value)
    if length != count:
        raise ValueError(f"sample {token}: extras[{key!r}] has {length} entries but there are "
                         f"{count} boxes (per-box extras must stay aligned with boxes)")
    if isinstance(value, Tensor):
        return value[torch.from_numpy(index).to(value.device)]
    if isinstance(value, np.ndarray):
        return value[index]
    out = [value[i] for i in index.tolist()]
    return tuple(out) if isinstance(value, tuple) else out


def select_boxes(sample: Sample, keep: Tensor | np.ndarray) -> Sample:
    """A new Sample with only the boxes ``keep`` (bool mask ``(M,)`` or indices).

    ``labels``, ``num_points`` and the per-box extras (:data:`PER_BOX_EXTRAS`) follow.
    """
    keep_np = np.asarray(keep.cpu() if isinstance(keep, Tensor) else keep)
    count = sample.boxes.shape[0]
    if keep_np.dtype == bool:
        if keep_np.shape != (count,):
            raise ValueError(f"keep mask must have shape ({count},), got {keep_np.shape}")
        index = np.flatnonzero(keep_np)
    else:
        index = keep_np.astype(np.int64).reshape(-1)
    idx_t = torch.from_numpy(index).to(sample.boxes.device)
    extras = dict(sample.extras)
    for key in PER_BOX_EXTRAS:
        if key in extras:
            extras[key] = _index_entry(extras[key], index, key, count, sample.token)
    assert sample.num_points is not None
    return _replace(sample, boxes=sample.boxes[idx_t], labels=sample.labels[idx_t],
                    num_points=sample.num_points[idx_t], extras=extras)


def select_points(sample: Sample, keep: Tensor | np.ndarray) -> Sample:
    """A new Sample with only the points ``keep`` (bool mask ``(N,)`` or indices, in the
    given order)."""
    if isinstance(keep, np.ndarray):
        keep = torch.from_numpy(keep)
    return _replace(sample, points=sample.points[keep.to(sample.points.device)])


def _bev_parts(matrix: Tensor) -> tuple[Tensor, float, float]:
    """Check the structure of a BEV matrix; return ``(L2 (2, 2), s, s_z)`` in float64.

    ``L2 = s * Q`` is the x-y block, ``s`` its isotropic scale, ``s_z`` the z scale.
    """
    a = matrix.detach().to(torch.float64).cpu()
    if a.shape != (4, 4):
        raise ValueError(f"BEV transform must be (4, 4), got {tuple(a.shape)}")
    scale = float(a[:3, :3].abs().max()) + 1e-12
    bottom = a[3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    mixing = torch.cat((a[2, :2], a[:2, 2]))
    if float(bottom.abs().max()) > _BEV_TOL or float(mixing.abs().max()) > _BEV_TOL * scale:
        raise ValueError("BEV transform must be [[s*Q, 0, t], [0, 0, s_z, t_z], [0, 0, 0, 1]] "
                         f"(no x-y/z mixing), got {a.tolist()}")
    l2 = a[:2, :2]
    s = math.sqrt(abs(float(torch.linalg.det(l2))))
    s_z = float(a[2, 2])
    if s <= 0.0 or s_z <= 0.0:
        raise ValueError(f"BEV transform must have positive scales, got s={s}, s_z={s_z}")
    q = l2 / s
    if float((q.T @ q - torch.eye(2, dtype=torch.float64)).abs().max()) > _BEV_TOL:
        raise ValueError(f"the x-y block of a BEV transform must be a scaled rotation or "
                         f"reflection, got {l2.tolist()}")
    return l2, s, s_z


def _transform_xyz(matrix64: Tensor, xyz: Tensor) -> Tensor:
    """``(N, 3)`` points mapped by a ``(4, 4)`` float64 matrix, computed in float64, returned
    in ``xyz``'s dtype and device."""
    m = matrix64.to(xyz.device)
    out = xyz.to(torch.float64) @ m[:3, :3].T + m[:3, 3]
    return out.to(xyz.dtype)


def _transform_boxes(matrix64: Tensor, l2: Tensor, s: float, s_z: float, boxes: Tensor) -> Tensor:
    """``(M, >=7)`` boxes mapped by a BEV matrix (see the module docstring); velocity
    columns 7-8, when present, are mapped by ``L2``; further columns are copied."""
    if boxes.shape[0] == 0:
        return boxes.clone()
    b = boxes.to(torch.float64)
    out = b.clone()
    m = matrix64.to(b.device)
    out[:, :3] = b[:, :3] @ m[:3, :3].T + m[:3, 3]
    out[:, 3:5] = b[:, 3:5] * s
    out[:, 5] = b[:, 5] * s_z
    q = (l2 / s).to(b.device)
    heading = torch.stack((torch.cos(b[:, 6]), torch.sin(b[:, 6])), dim=1) @ q.T
    out[:, 6] = wrap_angle(torch.atan2(heading[:, 1], heading[:, 0]))
    if b.shape[1] >= 9:
        out[:, 7:9] = b[:, 7:9] @ l2.to(b.device).T
    result = out.to(boxes.dtype)
    # wrap again in the output dtype (float32 rounding can land exactly on +pi)
    result[:, 6] = wrap_angle(result[:, 6])
    return result


def apply_bev_transform(sample: Sample, matrix: Tensor | np.ndarray) -> Sample:
    """Apply a BEV matrix ``A`` to a sample (points, boxes, ``bev_transform``, cameras).

    Args:
        sample: the sample, in its current (possibly already augmented) key LiDAR frame.
        matrix: ``(4, 4)`` ``A`` mapping the current frame to the new one (column
            vectors): ``[[s Q, 0, t_xy], [0, 0, s_z, t_z], [0, 0, 0, 1]]`` with ``Q``
            orthogonal (rotation or reflection) and ``s, s_z > 0``.

    Returns:
        A new Sample: ``points[:, :3] <- A xyz``, boxes mapped (see the module docstring),
        ``bev_transform <- A @ bev_transform``, every camera's
        ``lidar_to_camera <- lidar_to_camera @ inverse(A)``, :data:`LIDAR_BOX_EXTRAS`
        mapped. All arithmetic is float64; every tensor keeps its dtype.
    """
    a = torch.as_tensor(matrix).detach().to(torch.float64).cpu()
    l2, s, s_z = _bev_parts(a)
    a_inv = torch.linalg.inv(a)

    points = sample.points
    if points.shape[0]:
        points = torch.cat((_transform_xyz(a, points[:, :3]), points[:, 3:]), dim=1)
    else:
        points = points.clone()
    boxes = _transform_boxes(a, l2, s, s_z, sample.boxes)
    bev = (a @ sample.bev_transform.to(torch.float64).cpu()).to(sample.bev_transform.dtype)
    bev = bev.to(sample.bev_transform.device)
    cameras = [
        dataclasses.replace(
            view,
            lidar_to_camera=(view.lidar_to_camera.to(torch.float64).cpu() @ a_inv)
            .to(view.lidar_to_camera.dtype).to(view.lidar_to_camera.device))
        for view in sample.cameras
    ]
    extras = dict(sample.extras)
    for key in LIDAR_BOX_EXTRAS:
        value = extras.get(key)
        if isinstance(value, Tensor) and value.ndim == 2 and value.shape[1] >= 7:
            extras[key] = _transform_boxes(a, l2, s, s_z, value)
    return _replace(sample, points=points, boxes=boxes, bev_transform=bev, cameras=cameras,
                    extras=extras)


def camera_projection(view: CameraView) -> Tensor:
    """``(3, 4)`` projection of homogeneous (augmented) LiDAR points to homogeneous
    (augmented) pixels: ``intrinsics @ lidar_to_camera[:3]``, which by the rule of this
    module equals ``image_transform @ K_original @ lidar_to_camera[:3]``. Row 3 is the
    camera depth. Same as ``view.lidar_to_image()``; do not apply ``image_transform``
    again."""
    return view.intrinsics @ view.lidar_to_camera[:3]


def original_intrinsics(view: CameraView) -> Tensor:
    """``(3, 3)`` pinhole matrix of the image as stored on disk:
    ``inverse(image_transform) @ intrinsics`` (computed in float64, returned in the
    intrinsics' dtype)."""
    k = torch.linalg.inv(view.image_transform.to(torch.float64)) @ view.intrinsics.to(torch.float64)
    return k.to(view.intrinsics.dtype)


# --------------------------------------------------------------------------------------
# Composition and scene augmentation.
# --------------------------------------------------------------------------------------


class Compose:
    """Apply ``transforms`` in order, all drawing from the same generator.

    Args:
        transforms: callables ``(sample, rng) -> sample``.
    """

    def __init__(self, transforms: Iterable[SampleTransform]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def _pair(value: Sequence[float] | float, name: str) -> tuple[float, float]:
    """``(lo, hi)`` from a pair (a scalar ``x`` means ``(x, x)``); checks ``lo <= hi``."""
    if isinstance(value, (int, float)):
        lo = hi = float(value)
    else:
        vals = [float(v) for v in value]
        if len(vals) != 2:
            raise ValueError(f"{name} must be a pair (lo, hi), got {value!r}")
        lo, hi = vals
    if not lo <= hi:
        raise ValueError(f"{name} must have lo <= hi, got ({lo}, {hi})")
    return lo, hi


class GlobalRotScaleTrans:
    """Global rotation about z, isotropic scaling and translation of the scene.

    ``A = T(t) @ S(s) @ Rz(theta)`` (rotate, then scale, then translate, as mmdetection3d's
    ``GlobalRotScaleTrans``), applied with :func:`apply_bev_transform`: box sizes and
    velocities scale by ``s``, yaw increases by ``theta``.

    Draws, in this order: ``theta ~ U(rot_range)``, ``s ~ U(scale_range)``,
    ``t ~ N(0, translation_std)`` (3 normals, always drawn).

    Args:
        rot_range: ``(lo, hi)`` radians.
        scale_range: ``(lo, hi)``, both > 0.
        translation_std: ``(sx, sy, sz)`` metres (or one value for all three).
    """

    def __init__(self, rot_range: Sequence[float] = (-math.pi / 4, math.pi / 4),
                 scale_range: Sequence[float] = (0.95, 1.05),
                 translation_std: Sequence[float] | float = (0.0, 0.0, 0.0)):
        self.rot_range = _pair(rot_range, "rot_range")
        self.scale_range = _pair(scale_range, "scale_range")
        if self.scale_range[0] <= 0:
            raise ValueError(f"scale_range must be positive, got {self.scale_range}")
        std = ([float(translation_std)] * 3 if isinstance(translation_std, (int, float))
               else [float(v) for v in translation_std])
        if len(std) != 3 or min(std) < 0:
            raise ValueError(f"translation_std must be 3 non-negative values, got {translation_std!r}")
        self.translation_std = tuple(std)

    def matrix(self, rng: np.random.Generator) -> Tensor:
        """Draw the parameters and return ``A`` ``(4, 4)`` float64."""
        theta = rng.uniform(*self.rot_range)
        scale = rng.uniform(*self.scale_range)
        trans = rng.normal(0.0, 1.0, size=3) * np.asarray(self.translation_std)
        c, s = math.cos(theta), math.sin(theta)
        a = torch.eye(4, dtype=torch.float64)
        a[:2, :2] = scale * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        a[2, 2] = scale
        a[:3, 3] = torch.from_numpy(trans)
        return a

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return apply_bev_transform(sample, self.matrix(rng))

    def __repr__(self) -> str:
        return (f"GlobalRotScaleTrans(rot_range={self.rot_range}, scale_range={self.scale_range}, "
                f"translation_std={self.translation_std})")


class RandomFlip3D:
    """Random BEV flips.

    * ``flip_x_prob``: flip **across the x axis** (``y -> -y``, yaw -> -yaw, vy -> -vy);
      mmdetection3d's ``horizontal`` BEV flip, OpenPCDet's ``random_flip_along_x``.
    * ``flip_y_prob``: flip across the y axis (``x -> -x``, yaw -> pi - yaw, vx -> -vx);
      mmdetection3d's ``vertical`` flip.

    Both are reflections applied with :func:`apply_bev_transform` (cameras keep seeing the
    same pixels; the images are not flipped). Draws two uniforms, always.
    """

    def __init__(self, flip_x_prob: float = 0.5, flip_y_prob: float = 0.5):
        for name, p in (("flip_x_prob", flip_x_prob), ("flip_y_prob", flip_y_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.flip_x_prob = float(flip_x_prob)
        self.flip_y_prob = float(flip_y_prob)

    def matrix(self, rng: np.random.Generator) -> Tensor:
        """Draw the flips and return ``A`` ``(4, 4)`` float64 (a diagonal of +-1)."""
        u = rng.random(2)
        a = torch.eye(4, dtype=torch.float64)
        if u[0] < self.flip_x_prob:
            a[1, 1] = -1.0
        if u[1] < self.flip_y_prob:
            a[0, 0] = -1.0
        return a

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        a = self.matrix(rng)
        if bool((a == torch.eye(4, dtype=torch.float64)).all()):
            return _replace(sample)
        return apply_bev_transform(sample, a)

    def __repr__(self) -> str:
        return f"RandomFlip3D(flip_x_prob={self.flip_x_prob}, flip_y_prob={self.flip_y_prob})"


# --------------------------------------------------------------------------------------
# Filters.
# --------------------------------------------------------------------------------------


def _range6(point_cloud_range: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in point_cloud_range)
    if len(values) != 6 or not all(values[i] < values[i + 3] for i in range(3)):
        raise ValueError("point_cloud_range must be (x_min, y_min, z_min, x_max, y_max, z_max) "
                         f"with min < max, got {point_cloud_range!r}")
    return values


class PointRangeFilter:
    """Keep the points with ``min <= (x, y, z) < max`` (half-open, like the voxel grid: a
    kept point always falls in a voxel ``floor((p - min) / size)`` of the range).

    Args:
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` metres, in the
            (augmented) key LiDAR frame.
    """

    def __init__(self, point_cloud_range: Sequence[float]):
        self.point_cloud_range = _range6(point_cloud_range)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        r = torch.tensor(self.point_cloud_range, dtype=sample.points.dtype, device=sample.points.device)
        xyz = sample.points[:, :3]
        keep = ((xyz >= r[:3]) & (xyz < r[3:])).all(dim=1)
        return select_points(sample, keep)

    def __repr__(self) -> str:
        return f"PointRangeFilter({list(self.point_cloud_range)})"


class ObjectRangeFilter:
    """Keep the boxes whose **BEV centre** lies in ``[x_min, x_max) x [y_min, y_max)``
    (z is not checked), as mmdetection3d's ``ObjectRangeFilter`` (which uses open bounds;
    the half-open rule here matches :class:`PointRangeFilter` and the BEV grid).

    Args:
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``.
    """

    def __init__(self, point_cloud_range: Sequence[float]):
        self.point_cloud_range = _range6(point_cloud_range)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        x0, y0, _, x1, y1, _ = self.point_cloud_range
        b = sample.boxes
        keep = (b[:, 0] >= x0) & (b[:, 0] < x1) & (b[:, 1] >= y0) & (b[:, 1] < y1)
        return select_boxes(sample, keep)

    def __repr__(self) -> str:
        return f"ObjectRangeFilter({list(self.point_cloud_range)})"


class ObjectNameFilter:
    """Keep the boxes of the classes ``class_names`` (labels are **not** renumbered: they
    keep indexing ``sample.class_names``, as mmdetection3d's ``ObjectNameFilter``)."""

    def __init__(self, class_names: Sequence[str]):
        self.class_names = tuple(class_names)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        wanted = torch.tensor([name in self.class_names for name in sample.class_names],
                              dtype=torch.bool)
        keep = (wanted[sample.labels.cpu()] if sample.labels.numel()
                else torch.zeros(0, dtype=torch.bool))
        return select_boxes(sample, keep)

    def __repr__(self) -> str:
        return f"ObjectNameFilter({list(self.class_names)})"


class PointShuffle:
    """Randomly permute the points (one ``rng.permutation(N)``)."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        order = torch.from_numpy(rng.permutation(sample.points.shape[0]))
        return select_points(sample, order)

    def __repr__(self) -> str:
        return "PointShuffle()"


# --------------------------------------------------------------------------------------
# Image augmentation.
# --------------------------------------------------------------------------------------


def _shift(dx: float, dy: float) -> np.ndarray:
    m = np.eye(3)
    m[0, 2], m[1, 2] = dx, dy
    return m


@dataclass(frozen=True)
class ImageAugParams:
    """The drawn image augmentation of one camera (pixel-centre convention, see the module
    docstring).

    Attributes:
        input_size: ``(W, H)`` of the image before this augmentation.
        resized_size: ``(W', H')`` after the resize (whole pixels).
        crop: ``(left, top)`` of the crop window in the resized image (may be negative or
            extend past the image: the outside is filled with black).
        final_size: ``(fW, fH)`` of the output.
        flip: horizontal flip of the cropped image.
        rotate_deg: rotation of the cropped (and flipped) image about its centre, degrees,
            counter-clockwise as displayed (as ``PIL.Image.rotate``).
    """

    input_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop: tuple[int, int]
    final_size: tuple[int, int]
    flip: bool
    rotate_deg: float

    def resize_matrix(self) -> np.ndarray:
        """``(3, 3)`` of the resize alone: ``u' = sx (u + 0.5) - 0.5`` with ``sx = W'/W``
        (and likewise ``v``): exact for PIL's resize, which maps pixel areas."""
        sx = self.resized_size[0] / self.input_size[0]
        sy = self.resized_size[1] / self.input_size[1]
        return _shift(-0.5, -0.5) @ np.diag([sx, sy, 1.0]) @ _shift(0.5, 0.5)

    def post_resize_matrix(self) -> np.ndarray:
        """``(3, 3)`` crop, then flip ``u -> fW - 1 - u``, then rotation about the centre
        ``((fW - 1) / 2, (fH - 1) / 2)``."""
        fw, fh = self.final_size
        m = _shift(-self.crop[0], -self.crop[1])
        if self.flip:
            m = np.array([[-1.0, 0.0, fw - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
        if self.rotate_deg != 0.0:
            a = math.radians(self.rotate_deg)
            rot = np.array([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0],
                            [0.0, 0.0, 1.0]])
            cx, cy = (fw - 1) / 2.0, (fh - 1) / 2.0
            m = _shift(cx, cy) @ rot @ _shift(-cx, -cy) @ m
        return m

    def matrix(self) -> np.ndarray:
        """``(3, 3)`` float64 affine: input pixels -> output pixels."""
        return self.post_resize_matrix() @ self.resize_matrix()


class ImageAug:
    """Per-camera image augmentation as BEVDepth's ``img_transform``: resize, crop,
    horizontal flip, rotation; recorded in ``image_transform`` and folded into
    ``intrinsics`` (the rule ``intrinsics == image_transform @ K_original``, module
    docstring).

    The image is resized with ``PIL.Image.resize`` (bilinear, area-aware when shrinking)
    and then cropped/flipped/rotated in one bilinear affine warp; pixels from outside the
    source are black. Unlike BEVDepth's ``ida`` (``u' = s u``, ``u' = fW - u``), the matrix
    here is the exact map of the warp under the pixel-centre convention (``u' = s (u + 0.5)
    - 0.5``, ``u' = fW - 1 - u``), so pixels and matrix agree.

    Args:
        final_size: ``(fW, fH)`` output size.
        resize_range: ``(lo, hi)`` scale factor range; ``None`` = the fixed scale
            ``max(fW / W, fH / H)`` (BEVDepth's test-time resize). The resized size is
            ``round(W s) x round(H s)``.
        crop: vertical placement of the crop window: ``'bottom'`` (BEVDepth: the bottom of
            the resized image, raised by ``U(bottom_pct_range) * H'`` rows), ``'center'`` or
            ``'random'`` (uniform).
        crop_x: horizontal placement: ``'center'`` or ``'random'`` (uniform, BEVDepth's
            training crop).
        bottom_pct_range: ``(lo, hi)`` fraction of ``H'`` left below the crop with
            ``crop='bottom'``.
        flip_prob: probability of a horizontal flip.
        rot_range: ``(lo, hi)`` rotation, degrees.
        same_for_all_cameras: draw one set of parameters for all cameras (otherwise each
            camera draws its own).
        camera_names: only these cameras are augmented (default: all).

    Draws: ``rng.random(6)`` per augmented camera in ``sample.cameras`` order (once in all
    with ``same_for_all_cameras``), mapped by :meth:`params_from_uniforms`.
    """

    def __init__(self, final_size: Sequence[int], resize_range: Sequence[float] | None = None,
                 crop: Literal["bottom", "center", "random"] = "bottom",
                 crop_x: Literal["center", "random"] = "center",
                 bottom_pct_range: Sequence[float] = (0.0, 0.0), flip_prob: float = 0.0,
                 rot_range: Sequence[float] = (0.0, 0.0), same_for_all_cameras: bool = False,
                 camera_names: Sequence[str] | None = None):
        fw, fh = (int(v) for v in final_size)
        if fw < 1 or fh < 1:
            raise ValueError(f"final_size must be positive (W, H), got {final_size!r}")
        self.final_size = (fw, fh)
        self.resize_range = None if resize_range is None else _pair(resize_range, "resize_range")
        if self.resize_range is not None and self.resize_range[0] <= 0:
            raise ValueError(f"resize_range must be positive, got {self.resize_range}")
        if crop not in ("bottom", "center", "random"):
            raise ValueError(f"crop must be 'bottom', 'center' or 'random', got {crop!r}")
        if crop_x not in ("center", "random"):
            raise ValueError(f"crop_x must be 'center' or 'random', got {crop_x!r}")
        self.crop = crop
        self.crop_x = crop_x
        self.bottom_pct_range = _pair(bottom_pct_range, "bottom_pct_range")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.flip_prob = float(flip_prob)
        self.rot_range = _pair(rot_range, "rot_range")
        self.same_for_all_cameras = bool(same_for_all_cameras)
        self.camera_names = None if camera_names is None else tuple(camera_names)

    def params_from_uniforms(self, image_size: tuple[int, int], u: np.ndarray) -> ImageAugParams:
        """Parameters for an image of ``image_size`` ``(W, H)`` from 6 uniforms in [0, 1):
        resize, bottom fraction, crop top, crop left, flip, rotation."""
        w, h = int(image_size[0]), int(image_size[1])
        fw, fh = self.final_size
        if self.resize_range is None:
            s = max(fw / w, fh / h)
        else:
            lo, hi = self.resize_range
            s = lo + (hi - lo) * float(u[0])
        new_w, new_h = max(1, round(w * s)), max(1, round(h * s))
        if self.crop == "bottom":
            lo, hi = self.bottom_pct_range
            top = new_h - fh - int((lo + (hi - lo) * float(u[1])) * new_h)
        elif self.crop == "center":
            top = (new_h - fh) // 2
        else:
            top = int(float(u[2]) * (max(0, new_h - fh) + 1))
        if self.crop_x == "center":
            left = (new_w - fw) // 2
        else:
            left = int(float(u[3]) * (max(0, new_w - fw) + 1))
        flip = bool(float(u[4]) < self.flip_prob)
        lo, hi = self.rot_range
        rotate = lo + (hi - lo) * float(u[5])
        return ImageAugParams(input_size=(w, h), resized_size=(new_w, new_h), crop=(left, top),
                              final_size=(fw, fh), flip=flip, rotate_deg=float(rotate))

    def sample_params(self, image_size: tuple[int, int], rng: np.random.Generator) -> ImageAugParams:
        """Draw the parameters of one camera (``rng.random(6)``)."""
        return self.params_from_uniforms(image_size, rng.random(6))

    @staticmethod
    def warp_image(image: Tensor, params: ImageAugParams) -> Tensor:
        """Warp a ``(3, H, W)`` uint8 image with ``params``: ``(3, fH, fW)`` uint8."""
        if image.dtype != torch.uint8 or image.ndim != 3:
            raise ValueError(f"camera images must be (C, H, W) uint8, got {tuple(image.shape)} "
                             f"{image.dtype}")
        arr = image.detach().cpu().permute(1, 2, 0).numpy()
        pil = Image.fromarray(np.ascontiguousarray(arr[..., 0] if arr.shape[2] == 1 else arr))
        if params.resized_size != params.input_size:
            pil = pil.resize(params.resized_size, resample=Image.Resampling.BILINEAR)
        post = params.post_resize_matrix()
        if not (np.array_equal(post, np.eye(3)) and params.final_size == params.resized_size):
            # PIL works in corner coordinates (pixel i spans [i, i + 1)) and wants the
            # output -> input map.
            corner = _shift(0.5, 0.5) @ post @ _shift(-0.5, -0.5)
            inv = np.linalg.inv(corner)
            fill = 0 if pil.mode == "L" else (0,) * len(pil.getbands())
            pil = pil.transform(params.final_size, Image.Transform.AFFINE,
                                data=tuple(inv[:2].reshape(-1).tolist()),
                                resample=Image.Resampling.BILINEAR, fillcolor=fill)
        out = np.asarray(pil)
        if out.ndim == 2:
            out = out[..., None]
        return torch.from_numpy(out.copy()).permute(2, 0, 1).contiguous().to(image.device)

    def apply(self, view: CameraView, params: ImageAugParams) -> CameraView:
        """The augmented camera: warped image, ``image_transform <- M @ image_transform``,
        ``intrinsics <- M @ intrinsics``."""
        m = torch.from_numpy(params.matrix())
        image_transform = (m @ view.image_transform.to(torch.float64).cpu()).to(view.image_transform.dtype)
        intrinsics = (m @ view.intrinsics.to(torch.float64).cpu()).to(view.intrinsics.dtype)
        return dataclasses.replace(
            view, image=self.warp_image(view.image, params),
            image_transform=image_transform.to(view.image_transform.device),
            intrinsics=intrinsics.to(view.intrinsics.device))

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        shared = rng.random(6) if self.same_for_all_cameras else None
        cameras = []
        for view in sample.cameras:
            if self.camera_names is not None and view.name not in self.camera_names:
                cameras.append(view)
                continue
            u = shared if shared is not None else rng.random(6)
            size = (int(view.image.shape[2]), int(view.image.shape[1]))
            cameras.append(self.apply(view, self.params_from_uniforms(size, u)))
        return _replace(sample, cameras=cameras)

    def __repr__(self) -> str:
        return (f"ImageAug(final_size={self.final_size}, resize_range={self.resize_range}, "
                f"crop={self.crop!r}, crop_x={self.crop_x!r}, flip_prob={self.flip_prob}, "
                f"rot_range={self.rot_range})")


# --------------------------------------------------------------------------------------
# LiDAR beam downsampling.
# --------------------------------------------------------------------------------------


def _smoothed_histogram(elev: np.ndarray, bin_deg: float) -> tuple[np.ndarray, float]:
    """Histogram of ``elev`` (degrees) with ``bin_deg`` bins, smoothed by a Gaussian of
    one bin; returns ``(counts, first bin centre)``."""
    lo = float(elev.min()) - 4 * bin_deg
    hi = float(elev.max()) + 4 * bin_deg
    nbins = max(1, math.ceil((hi - lo) / bin_deg))
    hist = np.bincount(np.clip(((elev - lo) / bin_deg).astype(np.int64), 0, nbins - 1),
                       minlength=nbins).astype(np.float64)
    kernel = np.exp(-0.5 * np.arange(-3, 4, dtype=np.float64) ** 2)
    kernel /= kernel.sum()
    return np.convolve(hist, kernel, mode="same"), lo + 0.5 * bin_deg


def _nearest_centre(elev: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest of the ascending ``centres`` for each elevation."""
    if centres.size == 1:
        return np.zeros(elev.shape, dtype=np.int64)
    return np.searchsorted(0.5 * (centres[1:] + centres[:-1]), elev).astype(np.int64)


def _refine(elev: np.ndarray, centres: np.ndarray, iterations: int = 5) -> np.ndarray:
    """1-D k-medians (Lloyd) refinement of ascending ring centres."""
    for _ in range(iterations):
        label = _nearest_centre(elev, centres)
        new = centres.copy()
        order = np.argsort(label, kind="stable")
        bounds = np.searchsorted(label[order], np.arange(centres.size + 1))
        for i in range(centres.size):
            members = elev[order[bounds[i]:bounds[i + 1]]]
            if members.size:
                new[i] = float(np.median(members))
        new = np.sort(new)
        if np.allclose(new, centres, atol=1e-9):
            break
        centres = new
    return centres


def _fill_gaps(centres: np.ndarray, gap_factor: float) -> np.ndarray:
    """Insert rings into gaps larger than ``gap_factor`` x the local ring spacing (the
    median of up to 4 neighbouring gaps): beams that saw nothing in this scan."""
    if centres.size < 3:
        return centres
    gaps = np.diff(centres)
    out = [centres[0]]
    for i, gap in enumerate(gaps):
        neighbours = np.r_[gaps[max(0, i - 2):i], gaps[i + 1:i + 3]]
        local = float(np.median(neighbours)) if neighbours.size else gap
        if local > 0 and gap > gap_factor * local:
            missing = round(gap / local) - 1
            out.extend(centres[i] + gap * np.arange(1, missing + 1) / (missing + 1))
        out.append(centres[i + 1])
    return np.asarray(out)


def _ring_centres(elev: np.ndarray, num_beams: int | None, bin_deg: float, valley_ratio: float,
                  gap_factor: float) -> np.ndarray:
    """Ascending ring elevation centres (degrees) found in ``elev``."""
    hist, first = _smoothed_histogram(elev, bin_deg)
    left = np.r_[-np.inf, hist[:-1]]
    right = np.r_[hist[1:], -np.inf]
    min_count = max(2.0, 1e-4 * elev.size)
    peaks = np.flatnonzero((hist > left) & (hist >= right) & (hist >= min_count))
    if peaks.size == 0:
        peaks = np.array([int(np.argmax(hist))])
    kept = [int(peaks[0])]
    for p in peaks[1:].tolist():
        q = kept[-1]
        valley = float(hist[q:p + 1].min())
        if valley > valley_ratio * min(hist[q], hist[p]):  # no clear valley: same ring
            if hist[p] > hist[q]:
                kept[-1] = p
        else:
            kept.append(p)
    centres = _refine(elev, first + bin_deg * np.asarray(kept, dtype=np.float64))
    centres = _fill_gaps(centres, gap_factor)
    if num_beams is not None:
        counts = np.bincount(_nearest_centre(elev, centres), minlength=centres.size).astype(np.float64)
        cs, ws = centres.tolist(), counts.tolist()
        while len(cs) > num_beams:  # merge the closest neighbours
            i = int(np.argmin(np.diff(cs)))
            w = ws[i] + ws[i + 1]
            c = (cs[i] * ws[i] + cs[i + 1] * ws[i + 1]) / w if w > 0 else 0.5 * (cs[i] + cs[i + 1])
            cs[i:i + 2], ws[i:i + 2] = [c], [w]
        while len(cs) < num_beams:  # split the widest gap relative to its neighbours, or extend upwards
            if len(cs) >= 2:
                gaps = np.diff(cs)
                i = int(np.argmax(gaps))
                cs.insert(i + 1, 0.5 * (cs[i] + cs[i + 1]))
                if gaps[i] < 1.5 * float(np.median(gaps)):  # no real gap: undo, extend at the top
                    cs.pop(i + 1)
                    cs.append(cs[-1] + float(np.median(gaps)))
            else:
                cs.append(cs[-1] + 1.0)
            ws.append(0.0)
        centres = _refine(elev, np.asarray(sorted(cs)))
    return centres


def estimate_beam_index(xyz: Tensor | np.ndarray, num_beams: int | None = None,
                        elevations_deg: Sequence[float] | None = None,
                        fit_mask: Tensor | np.ndarray | None = None, bin_deg: float = 0.02,
                        valley_ratio: float = 0.5, gap_factor: float = 1.7
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Assign each LiDAR point a beam (ring) from its elevation angle.

    The elevation ``atan2(z, hypot(x, y))`` is measured from the frame origin, so ``xyz``
    must be in the **sensor's own frame** (the un-augmented key LiDAR frame). Rings are
    numbered from the lowest (0) upwards, the ROS/Velodyne ``ring`` convention.

    Method: with ``elevations_deg`` (the sensor's beam table) each point goes to the nearest
    table entry. Otherwise the ring centres are found in the points themselves: a histogram
    of elevations (``bin_deg`` bins, Gaussian-smoothed over one bin), its peaks (a peak
    counts as a new ring only if the histogram between it and the previous one drops below
    ``valley_ratio`` x the smaller peak), a 1-D k-medians refinement, and interior rings
    inserted where a gap exceeds ``gap_factor`` x the local spacing (beams that hit
    nothing). With ``num_beams`` the closest neighbouring rings are merged (or rings
    inserted) until there are exactly ``num_beams``; missing rings at the ends cannot be
    seen, so the numbering starts at the lowest ring that returned points.

    Accuracy: on SynthDrive (32 beams, 1.33 deg apart) every point is assigned its true
    ring. On the real nuScenes v1.0-mini LIDAR_TOP sweep of mmdetection3d's demo (with
    ``num_beams=32``, fitted beyond 3 m) all 12,287 points beyond 10 m get their true ring,
    76 % of those within 3-10 m (the rest one ring off: the sweep's ego-motion compensation
    moves near-ground returns by up to 1 deg of elevation), and the points within 3 m (ego
    body, no-return placeholders) are meaningless. Without ``num_beams`` the ring count
    found on real data depends on the scene (smeared rings split, unseen rings vanish). Use
    the sensor's ``ring`` column where the source has one (:class:`BeamDownsample` does),
    else pass ``num_beams`` or ``elevations_deg``.

    Args:
        xyz: ``(N, >=3)`` points, sensor frame.
        num_beams: number of beams of the sensor, if known.
        elevations_deg: the sensor's beam elevations (degrees, any order), if known.
        fit_mask: ``(N,)`` bool, the points used to find the ring centres (default: all);
            every point is then assigned to the nearest centre.
        bin_deg, valley_ratio, gap_factor: see Method.

    Returns:
        ``ring`` ``(N,)`` int64 and the ring centres ``(R,)`` float64 degrees, ascending.
    """
    pts = xyz.detach().cpu().numpy() if isinstance(xyz, Tensor) else np.asarray(xyz)
    pts = pts[:, :3].astype(np.float64)
    elev = np.degrees(np.arctan2(pts[:, 2], np.hypot(pts[:, 0], pts[:, 1])))
    if elevations_deg is not None:
        centres = np.sort(np.asarray(elevations_deg, dtype=np.float64))
        return _nearest_centre(elev, centres), centres
    if pts.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    if num_beams is not None and num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    fit = elev
    if fit_mask is not None:
        mask = fit_mask.cpu().numpy() if isinstance(fit_mask, Tensor) else np.asarray(fit_mask)
        if mask.any():
            fit = elev[mask.astype(bool)]
    centres = _ring_centres(fit, num_beams, bin_deg, valley_ratio, gap_factor)
    return _nearest_centre(elev, centres), centres


class BeamDownsample:
    """Keep every ``keep_every``-th LiDAR beam (ring), for beam-gap distillation (teacher
    on all beams, student on the downsampled cloud).

    A point is kept when ``ring % keep_every == offset``. The ring is, in order of
    preference: the point feature ``ring_feature`` when the sample has it (nuScenes'
    ``.pcd.bin`` 5th column, if the reader keeps it); the nearest of ``elevations_deg``;
    otherwise :func:`estimate_beam_index`. Elevations are measured in the **original** key
    LiDAR frame (points mapped back through ``inverse(bev_transform)``), so this transform
    may come before or after scene augmentation. The ring centres are fitted on the key
    sweep's points (``time_lag == 0`` when that feature exists) farther than
    ``fit_min_range`` metres (horizontal), then every point (sweeps included, whose
    elevations are approximate since they were taken from another position) is assigned.
    Pasted :class:`GTSampling` objects sit where they were scanned, so their elevations
    match their source scan.

    Args:
        keep_every: keep one beam in ``keep_every`` (>= 1).
        num_beams: the sensor's number of beams, if known (recommended on real data).
        offset: which beam of each group is kept, ``0 <= offset < keep_every``.
        elevations_deg: the sensor's beam elevation table, if known.
        ring_feature: name of a ring-index point feature to use when present.
        fit_min_range: metres; nearer points (ego body, near ground) do not fit centres.
        bin_deg: histogram bin of :func:`estimate_beam_index`.
    """

    def __init__(self, keep_every: int = 2, num_beams: int | None = None, offset: int = 0,
                 elevations_deg: Sequence[float] | None = None, ring_feature: str = "ring",
                 fit_min_range: float = 3.0, bin_deg: float = 0.02):
        if keep_every < 1:
            raise ValueError(f"keep_every must be >= 1, got {keep_every}")
        if not 0 <= offset < keep_every:
            raise ValueError(f"offset must be in [0, {keep_every}), got {offset}")
        self.keep_every = int(keep_every)
        self.num_beams = None if num_beams is None else int(num_beams)
        self.offset = int(offset)
        self.elevations_deg = None if elevations_deg is None else tuple(float(e) for e in elevations_deg)
        self.ring_feature = ring_feature
        self.fit_min_range = float(fit_min_range)
        self.bin_deg = float(bin_deg)

    def beam_index(self, sample: Sample) -> np.ndarray:
        """``(N,)`` int64 ring of every point of ``sample``."""
        if self.ring_feature in sample.point_features:
            col = sample.points[:, sample.feature_index(self.ring_feature)]
            return np.rint(col.detach().cpu().numpy()).astype(np.int64)
        inv = torch.linalg.inv(sample.bev_transform.to(torch.float64).cpu())
        xyz = sample.points[:, :3].detach().cpu().to(torch.float64)
        xyz = xyz @ inv[:3, :3].T + inv[:3, 3]
        fit = (xyz[:, 0] ** 2 + xyz[:, 1] ** 2) >= self.fit_min_range ** 2
        if "time_lag" in sample.point_features:
            lag = sample.points[:, sample.feature_index("time_lag")].detach().cpu()
            fit &= lag <= float(lag.min())  # the key sweep (time lag 0)
        ring, _ = estimate_beam_index(xyz, self.num_beams, self.elevations_deg, fit, self.bin_deg)
        return ring

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if self.keep_every == 1 or sample.points.shape[0] == 0:
            return _replace(sample)
        ring = self.beam_index(sample)
        keep = torch.from_numpy(ring % self.keep_every == self.offset)
        return select_points(sample, keep)

    def __repr__(self) -> str:
        return (f"BeamDownsample(keep_every={self.keep_every}, num_beams={self.num_beams}, "
                f"offset={self.offset})")


# --------------------------------------------------------------------------------------
# GT sampling (copy-paste of objects from a database).
# --------------------------------------------------------------------------------------

#: Schema name and version of the GT database index.
GT_DATABASE_SCHEMA = "distill3d.gt_database"
GT_DATABASE_VERSION = 1
GT_DATABASE_INDEX = "gt_database.npz"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80] or "x"


def build_gt_database(dataset: Any, out_dir: str | os.PathLike[str],
                      class_names: Sequence[str] | None = None,
                      indices: Sequence[int] | None = None) -> Path:
    """Write a GT-sampling database from a (training) dataset.

    For each sample ``dataset.load_sample(i)`` (no augmentation) and each GT box of a class
    in ``class_names``, the points inside the box (inclusive test,
    :func:`~distill3d.geometry.points_in_boxes`) are written to
    ``out_dir/points/<index>_<token>_<class>_<box>.bin`` as float32 rows with all the
    sample's point columns, ``x, y, z`` **relative to the box centre** (not rotated; the
    box stays at its original place in its source LiDAR frame). The index
    ``out_dir/gt_database.npz`` (numpy arrays, no pickle; written atomically, after all the
    point files) holds per object: ``class_names`` (str), ``boxes`` ``(K, 9)`` float32
    (source LiDAR frame), ``num_points`` ``(K,)``, ``paths`` (relative to ``out_dir``),
    ``tokens``, ``sample_index``, ``box_index``; plus ``point_features`` and a ``meta``
    JSON string with the schema name and version.

    Args:
        dataset: a :class:`~distill3d.data.dataset.DetectionDataset` (``load_sample`` and
            ``len``); use the training split only.
        out_dir: the database folder (created).
        class_names: classes to store (default: the dataset's ``class_names``).
        indices: the samples to read (default: all).

    Returns:
        The path of the index file.
    """
    out = Path(out_dir)
    (out / "points").mkdir(parents=True, exist_ok=True)
    wanted = tuple(class_names) if class_names is not None else tuple(dataset.class_names)
    rows: dict[str, list[Any]] = {k: [] for k in ("class_names", "boxes", "num_points", "paths",
                                                   "tokens", "sample_index", "box_index")}
    features: tuple[str, ...] | None = None
    for i in (range(len(dataset)) if indices is None else indices):
        sample = dataset.load_sample(int(i))
        if features is None:
            features = tuple(sample.point_features)
        elif tuple(sample.point_features) != features:
            raise ValueError(f"sample {sample.token}: point features {sample.point_features} differ "
                             f"from the first sample's {features}")
        names = sample.names
        chosen = [j for j, n in enumerate(names) if n in wanted]
        if not chosen:
            continue
        boxes = sample.boxes[chosen]
        inside = (points_in_boxes(sample.points, boxes) if sample.points.shape[0]
                  else torch.zeros((0, len(chosen)), dtype=torch.bool))
        pts64 = sample.points.detach().cpu().to(torch.float64)
        for k, j in enumerate(chosen):
            obj = pts64[inside[:, k]].clone()
            obj[:, :3] -= boxes[k, :3].to(torch.float64)
            rel = f"points/{int(i):06d}_{_safe_name(sample.token)}_{_safe_name(names[j])}_{j}.bin"
            obj.numpy().astype(np.float32).tofile(out / rel)
            rows["class_names"].append(names[j])
            rows["boxes"].append(boxes[k].detach().cpu().to(torch.float32).numpy())
            rows["num_points"].append(int(obj.shape[0]))
            rows["paths"].append(rel)
            rows["tokens"].append(sample.token)
            rows["sample_index"].append(int(i))
            rows["box_index"].append(int(j))
    meta = {"schema": GT_DATABASE_SCHEMA, "version": GT_DATABASE_VERSION,
            "class_names": list(wanted)}
    arrays = {
        "meta": np.array(json.dumps(meta)),
        "point_features": np.array(list(features or ()), dtype=str),
        "class_names": np.array(rows["class_names"], dtype=str),
        "boxes": (np.stack(rows["boxes"]).astype(np.float32) if rows["boxes"]
                  else np.zeros((0, 9), np.float32)),
        "num_points": np.asarray(rows["num_points"], dtype=np.int64),
        "paths": np.array(rows["paths"], dtype=str),
        "tokens": np.array(rows["tokens"], dtype=str),
        "sample_index": np.asarray(rows["sample_index"], dtype=np.int64),
        "box_index": np.asarray(rows["box_index"], dtype=np.int64),
    }
    index_path = out / GT_DATABASE_INDEX
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(index_path, buffer.getbuffer())
    return index_path


@dataclass(frozen=True)
class _ClassPool:
    """The database objects of one class that pass ``min_points``."""

    indices: np.ndarray  # (K,) rows of the database arrays


def _fill_like(value: Any, count: int) -> Any:
    """Filler of ``count`` per-box entries shaped like ``value`` (see the module docstring)."""
    if isinstance(value, Tensor):
        shape = (count,) + tuple(value.shape[1:])
        if value.dtype == torch.bool:
            return torch.zeros(shape, dtype=torch.bool, device=value.device)
        if value.is_floating_point():
            return torch.full(shape, float("nan"), dtype=value.dtype, device=value.device)
        return torch.full(shape, -1, dtype=value.dtype, device=value.device)
    if isinstance(value, np.ndarray):
        shape = (count,) + value.shape[1:]
        if value.dtype == bool:
            return np.zeros(shape, dtype=bool)
        if np.issubdtype(value.dtype, np.floating):
            return np.full(shape, np.nan, dtype=value.dtype)
        if np.issubdtype(value.dtype, np.integer):
            return np.full(shape, -1, dtype=value.dtype)
        return np.full(shape, None, dtype=object)
    return [None] * count


def _append_entry(value: Any, filler: Any) -> Any:
    if isinstance(value, Tensor):
        return torch.cat((value, filler))
    if isinstance(value, np.ndarray):
        return np.concatenate((value, filler))
    out = list(value) + list(filler)
    return tuple(out) if isinstance(value, tuple) else out


class GTSampling:
    """Paste GT objects from a database (:func:`build_gt_database`) into a sample, as
    mmdetection3d's ``ObjectSample`` / OpenPCDet's ``gt_sampling``.

    For each class of ``sample_groups`` in order: ``n = sample_groups[c] - (boxes of c
    already in the sample)`` objects (if positive, and at most the pool size) are drawn
    without replacement from the database objects of ``c`` with at least ``min_points[c]``
    points (``rng.choice``). Each candidate, in draw order, is rejected if its BEV footprint
    overlaps (``box_iou_bev > 0``) any existing box, any :data:`LIDAR_BOX_EXTRAS` box or
    any object accepted before it. Then the existing points inside the accepted boxes are
    removed and the objects' points appended (after the existing points); boxes, labels and
    ``num_points`` (the pasted count) are appended, per-box extras padded, and
    ``extras['gt_sampled']`` ``(M,)`` bool marks the pasted boxes.

    Placement: an object keeps the box it had in its **source** LiDAR frame (same sensor
    mounting and height convention, as mmdetection3d and OpenPCDet), so it stands on that
    frame's ground; the box and points are then mapped through the sample's
    ``bev_transform``, so sampling may also follow scene augmentation. Point columns are
    matched by name with the database's; a column the database lacks is 0 (e.g.
    ``time_lag`` 0: the object is part of the key sweep). The images are not changed
    (pasted objects are LiDAR-only).

    Args:
        database_path: the index file or the database folder.
        sample_groups: ``{class: max boxes of that class after pasting}``.
        min_points: ``{class: min points}`` (classes not given: 1).
        extra_box_keys: extras entries with boxes to avoid (default
            :data:`LIDAR_BOX_EXTRAS`).

    Raises:
        DataError: the index or a points file is missing or corrupt.
        ValueError: a class of ``sample_groups`` is not in the database.
    """

    def __init__(self, database_path: str | os.PathLike[str], sample_groups: Mapping[str, int],
                 min_points: Mapping[str, int] | None = None,
                 extra_box_keys: Sequence[str] = LIDAR_BOX_EXTRAS):
        path = Path(database_path)
        if path.is_dir():
            path = path / GT_DATABASE_INDEX
        self.index_path = path
        self.root = path.parent
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise DataError(f"{path}: GT database index not found (build it with "
                            f"build_gt_database)") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the GT database index: {exc}") from None
        try:
            meta = json.loads(str(arrays["meta"]))
        except (KeyError, ValueError):
            meta = {}
        if meta.get("schema") != GT_DATABASE_SCHEMA or meta.get("version") != GT_DATABASE_VERSION:
            raise DataError(f"{path}: not a distill3d GT database of version {GT_DATABASE_VERSION} "
                            f"(found {meta.get('schema')!r} version {meta.get('version')!r}); "
                            f"rebuild it with build_gt_database")
        self.point_features = tuple(str(f) for f in arrays["point_features"].tolist())
        self.class_names = arrays["class_names"]
        self.boxes = arrays["boxes"].astype(np.float32)
        self.num_points = arrays["num_points"].astype(np.int64)
        self.paths = arrays["paths"]
        self.sample_groups = {str(k): int(v) for k, v in sample_groups.items()}
        self.min_points = {c: 1 for c in self.sample_groups}
        self.min_points.update({str(k): int(v) for k, v in (min_points or {}).items()})
        self.extra_box_keys = tuple(extra_box_keys)
        available = sorted(set(self.class_names.tolist()))
        self.pools: dict[str, _ClassPool] = {}
        for cls in self.sample_groups:
            if cls not in available:
                raise ValueError(f"GTSampling: class {cls!r} has no objects in {path} "
                                 f"(classes there: {available})")
            ok = (self.class_names == cls) & (self.num_points >= self.min_points[cls])
            self.pools[cls] = _ClassPool(np.flatnonzero(ok))

    def _load_points(self, row: int) -> np.ndarray:
        path = self.root / str(self.paths[row])
        try:
            raw = np.fromfile(path, dtype=np.float32)
        except FileNotFoundError:
            raise DataError(f"{path}: GT database points file not found") from None
        width = len(self.point_features)
        if raw.size % width or raw.size // width != self.num_points[row]:
            raise DataError(f"{path}: {raw.size} floats, expected {self.num_points[row]} points x "
                            f"{width} features {self.point_features} (truncated or corrupt)")
        return raw.reshape(-1, width)

    def _draw(self, sample: Sample, rng: np.random.Generator, bev: Tensor
              ) -> tuple[list[int], list[int], Tensor]:
        """Accepted database rows, their labels, and their boxes in the sample's frame."""
        l2, s, s_z = _bev_parts(bev)
        occupied = [sample.boxes[:, :7].detach().cpu().to(torch.float64)]
        for key in self.extra_box_keys:
            value = sample.extras.get(key)
            if isinstance(value, Tensor) and value.ndim == 2 and value.shape[1] >= 7:
                occupied.append(value[:, :7].detach().cpu().to(torch.float64))
        existing = torch.cat(occupied)
        rows: list[int] = []
        labels: list[int] = []
        accepted: list[Tensor] = []
        sample_labels = sample.labels.cpu()
        for cls, limit in self.sample_groups.items():
            if cls not in sample.class_names:
                raise ValueError(f"GTSampling: class {cls!r} is not in the sample's class_names "
                                 f"{sample.class_names}")
            label = sample.class_names.index(cls)
            pool = self.pools[cls].indices
            count = min(limit - int((sample_labels == label).sum()), pool.size)
            if count <= 0:
                continue
            picks = pool[rng.choice(pool.size, size=count, replace=False)]
            cand = _transform_boxes(bev, l2, s, s_z, torch.from_numpy(self.boxes[picks]).to(torch.float64))
            against = torch.cat([existing] + [b[None, :7] for b in accepted])
            free = (~(box_iou_bev(cand[:, :7], against) > 0).any(dim=1) if against.shape[0]
                    else torch.ones(count, dtype=torch.bool))
            mutual = box_iou_bev(cand[:, :7], cand[:, :7]) > 0
            taken: list[int] = []
            for k in range(count):
                if not bool(free[k]) or any(bool(mutual[k, t]) for t in taken):
                    continue
                taken.append(k)
                rows.append(int(picks[k]))
                labels.append(label)
                accepted.append(cand[k])
        boxes = torch.stack(accepted) if accepted else torch.zeros((0, 9), dtype=torch.float64)
        return rows, labels, boxes

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        bev = sample.bev_transform.detach().to(torch.float64).cpu()
        rows, labels, new_boxes = self._draw(sample, rng, bev)
        if not rows:
            out = _replace(sample)
            if "gt_sampled" not in out.extras:
                out.extras["gt_sampled"] = torch.zeros(sample.boxes.shape[0], dtype=torch.bool)
            return out
        dtype, device = sample.points.dtype, sample.points.device
        pasted = []
        for row in rows:
            obj = self._load_points(row).astype(np.float64)
            cols = np.zeros((obj.shape[0], len(sample.point_features)), dtype=np.float64)
            for c, name in enumerate(sample.point_features):
                if name in self.point_features:
                    cols[:, c] = obj[:, self.point_features.index(name)]
            cols[:, :3] = obj[:, :3] + self.boxes[row, :3].astype(np.float64)
            cols[:, :3] = cols[:, :3] @ bev[:3, :3].numpy().T + bev[:3, 3].numpy()
            pasted.append(cols)
        pasted_t = torch.from_numpy(np.concatenate(pasted)).to(dtype=dtype, device=device)
        box_t = new_boxes.to(dtype=sample.boxes.dtype, device=sample.boxes.device)
        if sample.points.shape[0]:
            inside = points_in_boxes(sample.points, box_t[:, :7]).any(dim=1)
            kept = sample.points[~inside]
        else:
            kept = sample.points
        count = len(rows)
        extras = dict(sample.extras)
        m = sample.boxes.shape[0]
        if "gt_sampled" not in extras:
            extras["gt_sampled"] = torch.zeros(m, dtype=torch.bool)
        for key in PER_BOX_EXTRAS:
            if key in extras:
                value = extras[key]
                length = value.shape[0] if isinstance(value, (Tensor, np.ndarray)) else len(value)
                if length != m:
                    raise ValueError(f"sample {sample.token}: extras[{key!r}] has {length} entries "
                                     f"but there are {m} boxes")
                filler = (torch.ones(count, dtype=torch.bool) if key == "gt_sampled"
                          else _fill_like(value, count))
                extras[key] = _append_entry(value, filler)
        assert sample.num_points is not None
        num = torch.as_tensor(self.num_points[rows], dtype=sample.num_points.dtype)
        return _replace(
            sample,
            points=torch.cat((kept, pasted_t)),
            boxes=torch.cat((sample.boxes, box_t)),
            labels=torch.cat((sample.labels, torch.tensor(labels, dtype=sample.labels.dtype,
                                                          device=sample.labels.device))),
            num_points=torch.cat((sample.num_points, num.to(sample.num_points.device))),
            extras=extras,
        )

    def __repr__(self) -> str:
        return (f"GTSampling({str(self.index_path)!r}, sample_groups={self.sample_groups}, "
                f"min_points={self.min_points})")
