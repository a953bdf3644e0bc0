"""The one record every dataset yields and every detector and distiller consumes.

Frames: every 3D quantity is in the frame of the sample's key LiDAR sensor (metres, z up,
the sensor's own horizontal axes), after augmentation. ``bev_transform`` maps the
original (un-augmented) key LiDAR frame to the augmented one, and each camera's
``image_transform`` maps original pixel coordinates to augmented ones, so any geometry can
be carried between the two (the way BEVDepth carries ``bda`` and ``ida``).

Boxes follow ``docs/conventions.md``: ``(x, y, z, l, w, h, yaw, vx, vy)``, geometric
centre, yaw counter-clockwise from +x in ``[-pi, pi)``; velocity is NaN where unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

#: Names of the point columns every dataset provides first, in this order.
BASE_POINT_FEATURES: tuple[str, ...] = ("x", "y", "z", "intensity")


@dataclass
class CameraView:
    """One camera image of a sample.

    Attributes:
        name: channel name, e.g. ``"CAM_FRONT"`` or ``"image_2"``.
        image: (3, H, W) uint8 RGB, after any image augmentation.
        intrinsics: (3, 3) float32 pinhole matrix of the (augmented) image.
        lidar_to_camera: (4, 4) float32, key LiDAR frame (augmented) -> camera frame
            (x right, y down, z forward).
        image_transform: (3, 3) float32, original pixel coords (homogeneous) -> augmented
            pixel coords; identity when the image was not augmented.
        original_size: ``(width, height)`` of the image as stored on disk.
    """

    name: str
    image: torch.Tensor
    intrinsics: torch.Tensor
    lidar_to_camera: torch.Tensor
    image_transform: torch.Tensor = field(default_factory=lambda: torch.eye(3))
    original_size: tuple[int, int] = (0, 0)

    def lidar_to_image(self) -> torch.Tensor:
        """(3, 4) projection of homogeneous LiDAR points to homogeneous pixels."""
        return self.intrinsics @ self.lidar_to_camera[:3]


@dataclass
class Sample:
    """One annotated frame.

    Attributes:
        token: unique id of the sample within its dataset (nuScenes sample token,
            KITTI frame id).
        points: (N, C) float32 LiDAR points in the key LiDAR frame; columns named by
            ``point_features`` (x, y, z, intensity first; ``time_lag`` in seconds when
            sweeps are merged).
        point_features: names of the columns of ``points``.
        boxes: (M, 9) float32 GT boxes ``(x, y, z, l, w, h, yaw, vx, vy)``.
        labels: (M,) int64 indices into ``class_names``.
        class_names: the dataset's class list; ``labels`` index it.
        num_points: (M,) int64 LiDAR points in each box as recorded by the source
            (-1 when unknown).
        cameras: camera views (empty for LiDAR-only datasets).
        lidar_to_ego: (4, 4) float32 key LiDAR -> ego at the LiDAR timestamp.
        ego_to_global: (4, 4) float64 ego -> global at the LiDAR timestamp.
        bev_transform: (4, 4) float32 original key LiDAR frame -> augmented frame.
        timestamp_us: LiDAR timestamp in microseconds (0 if unknown).
        extras: dataset-specific annotations (KITTI DontCare 2D boxes, truncation and
            occlusion; nuScenes attributes and instance tokens), keyed by name.
    """

    token: str
    points: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    point_features: tuple[str, ...] = BASE_POINT_FEATURES
    num_points: torch.Tensor | None = None
    cameras: list[CameraView] = field(default_factory=list)
    lidar_to_ego: torch.Tensor = field(default_factory=lambda: torch.eye(4))
    ego_to_global: torch.Tensor = field(default_factory=lambda: torch.eye(4, dtype=torch.float64))
    bev_transform: torch.Tensor = field(default_factory=lambda: torch.eye(4))
    timestamp_us: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.points.ndim != 2 or self.points.shape[1] != len(self.point_features):
            raise ValueError(f"sample {self.token}: points must be (N, {len(self.point_features)}) "
                             f"for features {self.point_features}, got {tuple(self.points.shape)}")
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 9:
            raise ValueError(f"sample {self.token}: boxes must be (M, 9), got {tuple(self.boxes.shape)}")
        if self.labels.shape != (self.boxes.shape[0],):
            raise ValueError(f"sample {self.token}: labels must be ({self.boxes.shape[0]},), "
                             f"got {tuple(self.labels.shape)}")
        if self.num_points is None:
            self.num_points = torch.full((self.boxes.shape[0],), -1, dtype=torch.int64)

    @property
    def names(self) -> list[str]:
        """Class name of each GT box."""
        return [self.class_names[i] for i in self.labels.tolist()]

    def feature_index(self, name: str) -> int:
        """Column of point feature ``name`` in ``points``."""
        try:
            return self.point_features.index(name)
        except ValueError:
            raise KeyError(f"sample {self.token}: no point feature {name!r}; "
                           f"have {self.point_features}") from None
