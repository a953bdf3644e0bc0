"""Data model shared by the SynthDrive world, its sensors and its writers.

Frames used throughout SynthDrive:

* **world**: a flat, east-north-up frame of one scene, metres, ground plane at z = 0.
  It plays the role of nuScenes' ``global`` frame.
* **ego**: the vehicle frame, x forward, y left, z up, origin on the ground below the
  rear axle (as nuScenes' ``ego_pose``). ``FrameState.ego_to_world`` maps it to world.
* **sensor** frames (LiDAR, cameras) are given by a 4x4 sensor->ego transform in the
  sensor's config. The nuScenes LIDAR_TOP frame has x right, y forward, z up; a camera
  frame has x right, y down, z forward (OpenCV).

All geometry is represented as yaw-only cuboids ("primitives"): each row of
``Primitives.boxes`` is ``(x, y, z, l, w, h, yaw)`` in the world frame, with ``(x, y, z)``
the geometric centre, ``l`` along the heading, ``yaw`` counter-clockwise from world +x.
Composite objects (a car: body, cabin, wheels) are several primitives sharing an
``instance`` index. The ground is not a primitive: it is the plane z = 0 whose surface
material is given by a :class:`GroundMap`.

Arrays are numpy (float64 for geometry) so that generation is deterministic and
independent of the number of worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class Material(IntEnum):
    """Surface materials; they set LiDAR reflectivity and base camera shading."""

    ROAD = 0
    SIDEWALK = 1
    GRASS = 2
    LANE_MARKING = 3
    CURB = 4
    BUILDING = 5
    WALL = 6
    FENCE = 7
    POLE = 8
    VEGETATION = 9
    TRUNK = 10
    VEHICLE_PAINT = 11
    GLASS = 12
    TIRE = 13
    METAL = 14
    CLOTH = 15
    SKIN = 16
    PLASTIC = 17
    RETROREFLECTOR = 18
    CONCRETE = 19


@dataclass
class Primitives:
    """A soup of yaw-only cuboids in the world frame at one instant.

    Attributes:
        boxes: (M, 7) float64, ``(x, y, z, l, w, h, yaw)`` world frame, geometric centre.
        material: (M,) int16, :class:`Material` values.
        color: (M, 3) uint8, base albedo (RGB) used by the cameras.
        instance: (M,) int32, index into ``FrameState.objects`` for primitives that belong
            to an annotated object, -1 for static scenery and unannotated clutter.
    """

    boxes: np.ndarray
    material: np.ndarray
    color: np.ndarray
    instance: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class GroundMap:
    """Material raster of the ground plane z = 0 in the world frame.

    Cell ``(row, col)`` covers world ``x in [x_min + col * resolution, ...)`` and
    ``y in [y_min + row * resolution, ...)``. Points outside the raster are GRASS.

    Attributes:
        material: (H, W) uint8 :class:`Material` values.
        x_min, y_min: world coordinates of the raster's lower-left corner, metres.
        resolution: cell size, metres.
    """

    material: np.ndarray
    x_min: float
    y_min: float
    resolution: float

    def material_at(self, xy: np.ndarray) -> np.ndarray:
        """Material of the ground at world points ``xy`` (N, 2) -> (N,) uint8."""
        cols = np.floor((xy[:, 0] - self.x_min) / self.resolution).astype(np.int64)
        rows = np.floor((xy[:, 1] - self.y_min) / self.resolution).astype(np.int64)
        h, w = self.material.shape
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        out = np.full(xy.shape[0], Material.GRASS, dtype=np.uint8)
        out[inside] = self.material[rows[inside], cols[inside]]
        return out


@dataclass
class AnnotatedObject:
    """One annotated object (a nuScenes sample_annotation) at one instant.

    Attributes:
        instance_id: stable id of the object across the scene (same object, same id).
        name: nuScenes detection class, e.g. ``"car"`` or ``"traffic_cone"``.
        category: full nuScenes category name, e.g. ``"vehicle.car"``.
        attribute: nuScenes attribute name (``"vehicle.moving"``, ...) or ``""`` for
            classes that have none (cones, barriers).
        box: (9,) float64 ``(x, y, z, l, w, h, yaw, vx, vy)`` in the world frame: the tight
            box of the object's primitives, geometric centre, velocity in m/s.
        subtype: finer kind where a writer needs it (``"van"`` for van-shaped cars, which
            KITTI calls Van; ``"sitting"``, ``"child"``, ``"worker"`` for pedestrians; the
            shape kind for trucks, trailers and construction vehicles), ``""`` otherwise.
            ``distill3d.synth.classes.kitti_class`` maps (name, attribute, subtype) to KITTI.
    """

    instance_id: int
    name: str
    category: str
    attribute: str
    box: np.ndarray
    subtype: str = ""


@dataclass
class FrameState:
    """Everything that exists at one instant of a scene.

    Attributes:
        timestamp_us: microseconds since the epoch (nuScenes style).
        ego_to_world: (4, 4) float64 ego->world transform.
        primitives: all geometry except the ground (world frame).
        objects: annotated objects; ``primitives.instance`` indexes this list.
        ground: the ground material raster (static for a scene).
    """

    timestamp_us: int
    ego_to_world: np.ndarray
    primitives: Primitives
    objects: list[AnnotatedObject] = field(default_factory=list)
    ground: GroundMap | None = None
