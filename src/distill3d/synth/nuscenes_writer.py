"""Write SynthDrive scenes in the exact nuScenes layout (tables, ``samples/``, ``sweeps/``, maps).

Output (``<root>`` is the nuScenes ``dataroot``)::

    <root>/<version>/{scene,sample,sample_data,sample_annotation,instance,category,attribute,
                      visibility,sensor,calibrated_sensor,ego_pose,log,map}.json
    <root>/samples/LIDAR_TOP/<log>__LIDAR_TOP__<timestamp>.pcd.bin   float32 x y z intensity ring
    <root>/samples/CAM_*/<log>__CAM_*__<timestamp>.jpg
    <root>/sweeps/LIDAR_TOP/<log>__LIDAR_TOP__<timestamp>.pcd.bin     the 20 Hz sweeps between keyframes
    <root>/maps/<map token>.png                                       drivable-area mask, 0.1 m/pixel

The work is split in two so that scenes can be simulated in parallel processes:

* :func:`write_nuscenes_scene` (run by a worker) simulates one scene, writes its sensor files
  and map mask, and returns a small picklable :class:`NuScenesSceneResult`;
* :func:`build_nuscenes_tables` (run once, in scene order) turns the results into the 13
  tables, and :func:`write_nuscenes_tables` writes them atomically.

Conventions and decisions (what readers of the output can rely on):

* **Frames.** SynthDrive's world frame *is* the nuScenes ``global`` frame. ``ego_pose`` is the
  world pose of the ego frame (x forward, y left, z up, on the ground below the rear axle);
  ``calibrated_sensor`` holds each sensor's mount in the ego frame (LIDAR_TOP: x right,
  y forward, z up; cameras: x right, y down, z forward) and, for cameras, the intrinsics of
  the written image size (``[]`` for the LiDAR).
* **Timing.** Keyframes at 2 Hz; ``sweeps`` LiDAR-only sample_data between two keyframes,
  evenly spaced (9 gives nuScenes' 20 Hz). Cameras are captured at the keyframe instant, so
  all seven key sample_data of a sample share the sample's timestamp (and each has its own
  ego_pose record, token equal to the sample_data token as in nuScenes). A sweep's
  ``sample_token`` is its nearest keyframe's sample (ties: the later one), as in nuScenes.
* **Annotations.** Objects whose box centre lies within ``annotation_range`` (default 60 m,
  horizontal distance from the LiDAR) of the ego, plus farther objects hit by at least one
  LiDAR point, are annotated, even with 0 points (nuScenes does the same; its evaluation
  filters boxes without points). ``translation`` is the geometric centre, ``size`` is
  ``[w, l, h]``, ``rotation`` the yaw quaternion ``[w, x, y, z]`` (``w >= 0``). Velocities are
  *not* stored: the devkit's ``NuScenes.box_velocity`` derives them from the neighbouring
  annotations of the instance (a centred difference over 1 s). The world moves agents along
  polylines with piecewise-constant acceleration, so that estimate equals the true velocity
  for straight, steady motion and stays within about 0.2 m/s of it when turning, braking or
  walking round a corner (measured; the tests allow 0.3 m/s + 5 %).
  ``num_lidar_pts`` counts the points of that keyframe's ``.pcd.bin`` inside the box (the
  float32 points of the file mapped to the world frame, inclusive test), ``num_radar_pts``
  is 0, ``visibility_token`` bins the share of the object's pixels visible in the six
  cameras (``'1'``: 0-40 %, ``'2'``: 40-60 %, ``'3'``: 60-80 %, ``'4'``: 80-100 %).
* **Boundary guard.** The world's boxes are the tight boxes of their shapes, so LiDAR hits on
  a shape lie on the box faces up to the range noise, and a few points per frame end up
  within float rounding of a face, where "in" or "out" depends on how a tool computes.
  Before a keyframe is written, every point within :data:`BOUNDARY_MARGIN` (1 mm) of an
  object's box surface is moved perpendicular to that face, to 2 mm on the side it already
  was on (about 0.5 % of the points, moved by at most 2 mm, well below the 2 cm range
  noise). Afterwards any exact or float32/float64
  points-in-box test (ours, the devkit's ``points_in_box``, mmdetection3d's) gives the same
  count, and ``num_lidar_pts`` equals the devkit's count on the file.
* **Tokens** are deterministic 32-hex strings: ``md5("synthdrive/<seed>/<table>/<key>")``.
* **Maps.** One ``map`` record per scene (category ``semantic_prior``, the scene's log) whose
  PNG is the drivable-area mask (road and lane markings = 255) at nuScenes' 0.1 m/pixel with
  the origin at global (0, 0) as the devkit's ``MapMask`` expects; parts of the world at
  negative coordinates are not representable there and are left out (the mask is then
  clipped, not shifted). Scenes sit a few kilometres from the origin, so a mask can be tens
  of thousands of pixels a side (like nuScenes' own); it is still about 0.1 MB and takes
  about 0.2 s to write (see :func:`drivable_mask_png`).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from distill3d.atomic_io import atomic_write_bytes
from distill3d.geometry.points import count_points_in_boxes, points_in_boxes_indices
from distill3d.synth.camera import (
    CameraConfig,
    RenderResult,
    nuscenes_camera_rig,
    render_cameras,
    rotation_to_quaternion,
    visibility_from_renders,
)
from distill3d.synth.classes import ATTRIBUTE_NAMES, NUSCENES_CATEGORIES
from distill3d.synth.lidar import LidarConfig, lidar_preset, scan_lidar_detailed
from distill3d.synth.types import FrameState, GroundMap, Material

__all__ = [
    "BOUNDARY_MARGIN",
    "CAMERA_CHANNELS",
    "JPEG_QUALITY",
    "LIDAR_CHANNEL",
    "NUSCENES_TABLES",
    "KeyframeRecord",
    "NuScenesSceneJob",
    "NuScenesSceneResult",
    "SweepRecord",
    "atomic_write_bytes",
    "build_nuscenes_tables",
    "count_points_world",
    "encode_jpeg",
    "make_token",
    "nuscenes_lidar_config",
    "settle_boundary_points",
    "sweep_times",
    "visibility_token",
    "write_nuscenes_scene",
    "write_nuscenes_tables",
]

#: The 13 tables of a nuScenes version folder, in the devkit's loading order.
NUSCENES_TABLES: tuple[str, ...] = (
    "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
    "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map",
)
LIDAR_CHANNEL = "LIDAR_TOP"
#: nuScenes camera channels in the order of :func:`~distill3d.synth.camera.nuscenes_camera_rig`.
CAMERA_CHANNELS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
)
#: Points closer than this (metres) to a box face are moved off it (see the module docstring).
BOUNDARY_MARGIN = 1e-3
#: Fixed JPEG settings: same bytes for the same pixels on every run.
JPEG_QUALITY = 90
#: nuScenes map masks are 0.1 m per pixel (the devkit's MapMask "native resolution").
MAP_RESOLUTION = 0.1

# The lidarseg-era category table: (name, index, description). Indices are nuScenes-lidarseg's.
_CATEGORY_DESCRIPTIONS: dict[str, str] = {
    "noise": "Any lidar return that does not correspond to a physical object.",
    "animal": "All animals, e.g. cats, rats, dogs, deer, birds.",
    "human.pedestrian.adult": "Adult subcategory.",
    "human.pedestrian.child": "Child subcategory.",
    "human.pedestrian.construction_worker": "Construction worker.",
    "human.pedestrian.personal_mobility": "A small electric or self-propelled vehicle, e.g. "
                                          "skateboard, segway, or scooters, on which the person "
                                          "typically travels in a upright position.",
    "human.pedestrian.police_officer": "Police officer.",
    "human.pedestrian.stroller": "Strollers.",
    "human.pedestrian.wheelchair": "Wheelchairs.",
    "movable_object.barrier": "Temporary road barrier placed in the scene in order to redirect "
                              "traffic.",
    "movable_object.debris": "Movable object that is left on the driveable surface.",
    "movable_object.pushable_pullable": "Objects that a pedestrian may push or pull.",
    "movable_object.trafficcone": "All types of traffic cone.",
    "static_object.bicycle_rack": "Area or device intended to park or secure the bicycles in a "
                                  "row.",
    "vehicle.bicycle": "Human or electric powered 2-wheeled vehicle designed to travel at lower "
                       "speeds either on road surface, sidewalks or bike paths.",
    "vehicle.bus.bendy": "Bendy bus subcategory. Annotate each section of the bendy bus "
                         "individually.",
    "vehicle.bus.rigid": "Rigid bus subcategory.",
    "vehicle.car": "Vehicle designed primarily for personal use, e.g. sedans, hatch-backs, "
                   "wagons, vans, mini-vans, SUVs and jeeps.",
    "vehicle.construction": "Vehicles primarily designed for construction. Typically very slow "
                            "moving or stationary.",
    "vehicle.emergency.ambulance": "All types of ambulances.",
    "vehicle.emergency.police": "All types of police vehicles.",
    "vehicle.motorcycle": "Gasoline or electric powered 2-wheeled vehicle designed to move "
                          "rapidly (at the speed of standard cars) on the road surface.",
    "vehicle.trailer": "Any vehicle trailer, both for trucks, cars and bikes.",
    "vehicle.truck": "Vehicles primarily designed to haul cargo including pick-ups, lorrys, "
                     "trucks and semi-tractors.",
    "flat.driveable_surface": "All paved or unpaved surfaces that a car can drive on.",
    "flat.other": "All other forms of horizontal ground-level structures that do not belong "
                  "to any of driveable_surface, curb, sidewalk and terrain.",
    "flat.sidewalk": "Sidewalk, pedestrian walkways, bike paths, etc.",
    "flat.terrain": "Natural horizontal surfaces such as ground level horizontal vegetation "
                    "(< 20 cm tall), grass, rolling hills, soil, sand and gravel.",
    "static.manmade": "Includes man-made structures but not limited to: buildings, walls, "
                      "guard rails, fences, poles, drainages, hydrants, flags, banners, street "
                      "signs, electric circuit boxes, traffic lights, parking meters and "
                      "stairs.",
    "static.other": "Points in the background that are not distinguishable, or objects that "
                    "do not match any of the above labels.",
    "static.vegetation": "Any vegetation in the frame that is higher than the ground, "
                         "including bushes, plants, potted plants, trees, etc.",
    "vehicle.ego": "The vehicle on which the cameras, radar and lidar are mounted, that is "
                   "sometimes visible at the bottom of the image.",
}
_CATEGORY_ORDER: tuple[str, ...] = (
    ("noise",) + tuple(NUSCENES_CATEGORIES)
    + ("flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade",
       "static.other", "static.vegetation", "vehicle.ego")
)
_ATTRIBUTE_DESCRIPTIONS: dict[str, str] = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver/rider in/on it, is currently stationary but has "
                       "an intent to move.",
    "vehicle.parked": "Vehicle is stationary (usually for longer duration) with no immediate "
                      "intent to move.",
    "cycle.with_rider": "There is a rider on the bicycle or motorcycle.",
    "cycle.without_rider": "There is NO rider on the bicycle or motorcycle.",
    "pedestrian.sitting_lying_down": "The human is sitting or lying down.",
    "pedestrian.standing": "The human is standing.",
    "pedestrian.moving": "The human is moving.",
}
_VISIBILITY_LEVELS: tuple[tuple[str, str, str, float], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%", 0.4),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%", 0.6),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%", 0.8),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%", float("inf")),
)
#: Locations of the four nuScenes maps, with the vehicle prefix and UTC offset of their logs.
_LOCATIONS: tuple[tuple[str, str, int], ...] = (
    ("singapore-onenorth", "n015", 8),
    ("boston-seaport", "n008", -4),
    ("singapore-queenstown", "n015", 8),
    ("singapore-hollandvillage", "n015", 8),
)


# --------------------------------------------------------------------------------------
# small shared helpers (also used by the KITTI writer and the orchestrator)
# --------------------------------------------------------------------------------------


def make_token(seed: int, table: str, *key: object) -> str:
    """Deterministic nuScenes token: 32 hex digits from the dataset seed, a table and a key."""
    text = "synthdrive/" + str(int(seed)) + "/" + table + "/" + "/".join(str(k) for k in key)
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encode an ``(H, W, 3) uint8`` RGB image as JPEG with fixed settings (deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(
        buf, format="JPEG", quality=quality, subsampling=2, optimize=False, progressive=False
    )
    return buf.getvalue()


def sweep_times(keyframe_times: Sequence[float], sweeps: int) -> list[list[float]]:
    """Scene times (seconds) of the ``sweeps`` evenly spaced LiDAR sweeps inside each
    keyframe interval.

    Returns one list per interval (``len(keyframe_times) - 1`` lists); sweep ``j`` of the
    interval ``[t0, t1]`` is at ``t0 + j * (t1 - t0) / (sweeps + 1)``, ``j = 1..sweeps`` (9
    sweeps between 2 Hz keyframes: nuScenes' 20 Hz).
    """
    if sweeps < 0:
        raise ValueError(f"sweeps must be >= 0, got {sweeps}")
    out = []
    for t0, t1 in itertools.pairwise(keyframe_times):
        step = (float(t1) - float(t0)) / (sweeps + 1)
        out.append([float(t0) + j * step for j in range(1, sweeps + 1)])
    return out


def _transform(matrix: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to ``(N, 3)`` points, float64."""
    xyz = np.asarray(xyz, dtype=np.float64)
    return xyz @ matrix[:3, :3].T + matrix[:3, 3]


def settle_boundary_points(
    points: np.ndarray,
    sensor_to_world: np.ndarray,
    boxes_world: np.ndarray,
    margin: float = BOUNDARY_MARGIN,
    max_passes: int = 6,
) -> tuple[np.ndarray, int]:
    """Move LiDAR points off the faces of boxes so that in-box tests are unambiguous.

    A point whose box-frame coordinates lie inside the box grown by ``margin`` but not inside
    the box shrunk by ``margin`` is moved, along the normal of each face it is within
    ``margin`` of, to ``2 * margin`` from that face on the side it was on (inside stays
    inside, outside stays outside). This repeats (float32 rounding, neighbouring boxes) until
    no point is within ``margin`` of any face.

    Args:
        points: ``(N, >=3) float32`` points in the sensor frame (other columns are kept).
        sensor_to_world: ``(4, 4)`` sensor->world transform.
        boxes_world: ``(M, >=7)`` yaw-only boxes ``(x, y, z, l, w, h, yaw)``, world frame.
        margin: metres.
        max_passes: give up (``RuntimeError``) after this many passes.

    Returns:
        ``(points, moved)``: a float32 copy with the moved points, and how many moves were made.
    """
    out = np.array(points, dtype=np.float32, copy=True)
    boxes = np.asarray(boxes_world, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] < 7:
        raise ValueError(f"boxes_world must have shape (M, >=7), got {boxes.shape}")
    if out.shape[0] == 0 or boxes.shape[0] == 0:
        return out, 0
    world_to_sensor = np.linalg.inv(sensor_to_world)
    half = 0.5 * boxes[:, 3:6]
    cos, sin = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    reach = np.linalg.norm(half[:, :2], axis=1) + 2 * margin
    grown = torch.from_numpy(np.concatenate([boxes[:, :3], boxes[:, 3:6] + 2 * margin,
                                             boxes[:, 6:7]], axis=1))
    moved_total = 0
    for _ in range(max_passes):
        world_all = _transform(sensor_to_world, out[:, :3].astype(np.float64))
        # Candidates: points inside at least one box grown by the margin (a fast prefilter).
        near = points_in_boxes_indices(torch.from_numpy(world_all), grown).numpy() >= 0
        cand = np.flatnonzero(near)
        world = world_all[cand]
        order = np.argsort(world[:, 0], kind="stable")
        xs = world[order, 0]
        moved_pass = 0
        for b in range(boxes.shape[0]):
            lo = np.searchsorted(xs, boxes[b, 0] - reach[b], side="left")
            hi = np.searchsorted(xs, boxes[b, 0] + reach[b], side="right")
            if hi <= lo:
                continue
            idx = order[lo:hi]
            rel = world[idx] - boxes[b, :3]
            local = np.stack((cos[b] * rel[:, 0] + sin[b] * rel[:, 1],
                              -sin[b] * rel[:, 0] + cos[b] * rel[:, 1], rel[:, 2]), axis=1)
            dist = np.abs(local) - half[b]  # signed distance to each face pair (<0: inside)
            near_box = np.all(dist <= margin, axis=1)
            band = np.abs(dist) < margin  # within margin of that face pair
            hit = near_box & np.any(band, axis=1)
            if not np.any(hit):
                continue
            sel = np.flatnonzero(hit)
            loc = local[sel]
            d = dist[sel]
            bnd = band[sel]
            target = np.where(d <= 0, np.maximum(half[b] - 2 * margin, 0.0), half[b] + 2 * margin)
            new_abs = np.where(bnd, target, np.abs(loc))
            loc = np.where(loc < 0, -new_abs, new_abs)
            new_world = np.stack((cos[b] * loc[:, 0] - sin[b] * loc[:, 1] + boxes[b, 0],
                                  sin[b] * loc[:, 0] + cos[b] * loc[:, 1] + boxes[b, 1],
                                  loc[:, 2] + boxes[b, 2]), axis=1)
            world[idx[sel]] = new_world
            out[cand[idx[sel]], :3] = _transform(world_to_sensor, new_world).astype(np.float32)
            moved_pass += sel.size
        moved_total += moved_pass
        if moved_pass == 0:
            return out, moved_total
    raise RuntimeError(f"could not move LiDAR points off box faces in {max_passes} passes")


def count_points_world(points: np.ndarray, sensor_to_world: np.ndarray,
                       boxes_world: np.ndarray) -> np.ndarray:
    """Points of a sensor-frame cloud (as stored, float32) inside world-frame boxes.

    The stored float32 coordinates are mapped to the world frame in float64 and tested with
    :func:`distill3d.geometry.count_points_in_boxes` (inclusive). Returns ``(M,) int64``.
    """
    boxes = np.asarray(boxes_world, dtype=np.float64)
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    world = _transform(sensor_to_world, np.asarray(points[:, :3], dtype=np.float64))
    counts = count_points_in_boxes(torch.from_numpy(world), torch.from_numpy(boxes[:, :7].copy()))
    return counts.numpy().astype(np.int64)


def visibility_token(fraction: float) -> str:
    """nuScenes visibility token (``'1'`` .. ``'4'``) of a visible fraction in [0, 1]."""
    for token, _level, _desc, upper in _VISIBILITY_LEVELS:
        if fraction < upper:
            return token
    return "4"


def nuscenes_lidar_config(beams: int = 32) -> LidarConfig:
    """The LIDAR_TOP sensor: the beam pattern of the 32/64/16-beam preset, mounted as
    nuScenes' LIDAR_TOP (x right, y forward, z up; the ``nuscenes32`` mount)."""
    presets = {32: "nuscenes32", 64: "kitti64", 16: "vlp16"}
    if beams not in presets:
        raise ValueError(f"beams must be one of {sorted(presets)}, got {beams}")
    config = lidar_preset(presets[beams])
    config.sensor_to_ego = lidar_preset("nuscenes32").sensor_to_ego.copy()
    return config


def _ground_truth_boxes(state: FrameState) -> np.ndarray:
    """``(num_objects, 9)`` world boxes of the state's annotated objects."""
    if not state.objects:
        return np.zeros((0, 9))
    return np.stack([np.asarray(o.box, dtype=np.float64).reshape(9) for o in state.objects])


# --------------------------------------------------------------------------------------
# per-scene simulation (worker side)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NuScenesSceneJob:
    """What a worker needs to simulate and write one nuScenes scene.

    Attributes:
        root: the dataroot.
        scene_index: position of the scene in the dataset (tables are in this order).
        scene_name: e.g. ``"scene-0061"`` (from the official split lists).
        scene_seed: seed of the scene's world.
        token_seed: the dataset seed (tokens, map file name).
        num_keyframes: samples in the scene.
        sweeps: LiDAR sweeps between two keyframes.
        beams: 32, 64 or 16.
        image_size: ``(width, height)`` of the camera images.
        annotation_range: metres, see the module docstring.
    """

    root: str
    scene_index: int
    scene_name: str
    scene_seed: int
    token_seed: int
    num_keyframes: int
    sweeps: int = 9
    beams: int = 32
    image_size: tuple[int, int] = (704, 256)
    annotation_range: float = 60.0


@dataclass
class KeyframeRecord:
    """One sample as written: pose, files and annotations (world frame)."""

    timestamp: int
    ego_to_world: np.ndarray  # (4, 4)
    lidar_file: str
    camera_files: list[str]
    instance_ids: np.ndarray  # (A,) int64
    categories: list[str]
    attributes: list[str]
    boxes: np.ndarray  # (A, 9) world (x, y, z, l, w, h, yaw, vx, vy)
    num_lidar_pts: np.ndarray  # (A,) int64
    visibility: np.ndarray  # (A,) float64 in [0, 1]
    num_points: int = 0


@dataclass
class SweepRecord:
    """One non-key LiDAR sweep as written."""

    timestamp: int
    ego_to_world: np.ndarray
    lidar_file: str


@dataclass
class NuScenesSceneResult:
    """Everything :func:`build_nuscenes_tables` needs about one written scene."""

    scene_index: int
    scene_name: str
    log_name: str
    location: str
    date_captured: str
    vehicle: str
    map_file: str
    description: str
    lidar_mount: np.ndarray  # (4, 4) sensor->ego
    cameras: list[tuple[str, np.ndarray, np.ndarray, int, int]]  # name, mount, K, W, H
    keyframes: list[KeyframeRecord] = field(default_factory=list)
    sweeps: list[list[SweepRecord]] = field(default_factory=list)  # per interval
    timings: dict[str, float] = field(default_factory=dict)


def _scene_location(scene_name: str, drive_side: str) -> tuple[str, str, int]:
    """nuScenes location, vehicle prefix and UTC offset of a scene: Boston for right-hand
    traffic, one of the three Singapore maps (by scene name) for left-hand traffic."""
    if drive_side == "right":
        return _LOCATIONS[1]
    singapore = [loc for loc in _LOCATIONS if loc[0].startswith("singapore")]
    digest = hashlib.md5(scene_name.encode("utf-8")).digest()
    if drive_side == "left":
        return singapore[digest[0] % len(singapore)]
    return _LOCATIONS[digest[0] % len(_LOCATIONS)]


def _scene_description(scene: Any, scene_seed: int) -> str:
    text = str(getattr(scene, "description", "") or "").strip()
    prefix = f"SynthDrive procedural scene (world seed {scene_seed})"
    return f"{prefix}: {text}" if text else prefix


def _log_name(vehicle: str, utc_offset_h: int, timestamp_us: int) -> tuple[str, str]:
    """nuScenes log name ``n015-2018-07-24-11-22-45+0800`` and its date."""
    local = time.gmtime(timestamp_us // 1_000_000 + utc_offset_h * 3600)
    sign = "+" if utc_offset_h >= 0 else "-"
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", local)
    return f"{vehicle}-{stamp}{sign}{abs(utc_offset_h):02d}00", time.strftime("%Y-%m-%d", local)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _deflate_segment(data: bytes, final: bool) -> bytes:
    """Raw deflate of ``data`` by a fresh compressor, ending byte-aligned (a full flush)
    or with the final block: such segments concatenate into one valid deflate stream."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY)
    return comp.compress(data) + comp.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)


def _adler32_zeros(adler: int, count: int) -> int:
    """Adler-32 after appending ``count`` zero bytes (closed form)."""
    s1, s2 = adler & 0xFFFF, adler >> 16
    s2 = (s2 + (count % 65521) * s1) % 65521
    return (s2 << 16) | s1


def drivable_mask_png(ground: GroundMap | None) -> bytes:
    """PNG bytes of a nuScenes map mask: 8-bit grey, 0.1 m/pixel, origin at world (0, 0)
    with image row 0 at the top (the devkit's ``MapMask`` convention), road and lane
    markings 255, everything else 0. Cells at negative world coordinates are left out.
    Without a ground map, a 1x1 black PNG.

    nuScenes' global coordinates run to a few kilometres, so the image can reach tens of
    thousands of pixels a side while the scene's ground raster covers a few hundred metres.
    Only the rows that cross the raster are compressed; the empty rows above and below are
    one precompressed deflate segment repeated, so the cost is that of the raster.
    """
    width = height = 1
    top = 0
    left = 0
    block = np.zeros((0, 1), dtype=np.uint8)
    if ground is not None:
        mat = np.asarray(ground.material)
        drivable = (mat == Material.ROAD) | (mat == Material.LANE_MARKING)
        h, w = mat.shape
        x_max = ground.x_min + w * ground.resolution
        y_max = ground.y_min + h * ground.resolution
        width = max(1, int(np.ceil(max(x_max, 0.0) / MAP_RESOLUTION - 1e-9)))
        height = max(1, int(np.ceil(max(y_max, 0.0) / MAP_RESOLUTION - 1e-9)))
        # Image pixel (row r, col c) has its centre at world x = (c + 0.5) res,
        # y = (height - r - 0.5) res. Only the rows / columns over the raster matter.
        c0 = min(width, max(0, int(np.floor(ground.x_min / MAP_RESOLUTION))))
        r0 = min(height, max(0, int(np.floor(height - y_max / MAP_RESOLUTION))))
        r1 = max(r0, min(height, int(np.ceil(height - ground.y_min / MAP_RESOLUTION)) + 1))
        xs = (np.arange(c0, width) + 0.5) * MAP_RESOLUTION
        ys = (height - np.arange(r0, r1) - 0.5) * MAP_RESOLUTION
        cols = np.floor((xs - ground.x_min) / ground.resolution).astype(np.int64)
        rows = np.floor((ys - ground.y_min) / ground.resolution).astype(np.int64)
        col_ok = (cols >= 0) & (cols < w)
        row_ok = (rows >= 0) & (rows < h)
        block = np.zeros((r1 - r0, width - c0), dtype=np.uint8)
        sub = drivable[np.ix_(rows[row_ok], cols[col_ok])]
        block[np.ix_(np.flatnonzero(row_ok), np.flatnonzero(col_ok))] = np.where(sub, 255, 0)
        top, left = r0, c0
    stride = width + 1  # filter byte + pixels
    # The rows over the raster, with their filter bytes and left padding.
    rows_bytes = np.zeros((block.shape[0], stride), dtype=np.uint8)
    rows_bytes[:, 1 + left:] = block
    data = rows_bytes.tobytes()
    bottom = height - top - block.shape[0]
    zero_rows = 256
    zero_segment = _deflate_segment(bytes(stride * zero_rows), final=False)
    parts: list[bytes] = [b"\x78\x9c"]
    adler = 1

    def empty_rows(count: int) -> None:
        nonlocal adler
        full, rest = divmod(count, zero_rows)
        parts.append(zero_segment * full)
        if rest:
            parts.append(_deflate_segment(bytes(stride * rest), final=False))
        adler = _adler32_zeros(adler, count * stride)

    empty_rows(top)
    parts.append(_deflate_segment(data, final=False))
    adler = zlib.adler32(data, adler)
    empty_rows(bottom)
    parts.append(_deflate_segment(b"", final=True))
    parts.append(struct.pack(">I", adler & 0xFFFFFFFF))
    idat = b"".join(parts)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _make_scene(seed: int, num_keyframes: int, scene_index: int = 0) -> Any:
    """The world of one scene (imported lazily: the world module is heavy to import)."""
    from distill3d.synth.world import Scene, SceneConfig

    return Scene(SceneConfig(seed=int(seed), num_keyframes=int(num_keyframes),
                             scene_index=int(scene_index)))


def _keyframe_times(scene: Any) -> list[float]:
    """Keyframe scene times (seconds) of a world scene."""
    return [float(t) for t in scene.keyframe_times()]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


_RNG_LIDAR_KEY, _RNG_CAMERA, _RNG_LIDAR_SWEEP = 1, 2, 3


def write_nuscenes_scene(
    job: NuScenesSceneJob, progress: Callable[[int], None] | None = None
) -> NuScenesSceneResult:
    """Simulate one scene and write its sensor files and map mask under ``job.root``.

    Args:
        job: the scene to write.
        progress: called with 1 after each keyframe (and its preceding sweeps) is written.

    Returns:
        The scene's metadata for :func:`build_nuscenes_tables`.
    """
    root = Path(job.root)
    timings: dict[str, float] = {"world": 0.0, "lidar": 0.0, "boundary": 0.0, "count": 0.0,
                                 "sweeps": 0.0, "cameras": 0.0, "jpeg": 0.0, "io": 0.0}
    tic = time.perf_counter()
    scene = _make_scene(job.scene_seed, job.num_keyframes, job.scene_index)
    key_times = _keyframe_times(scene)[: job.num_keyframes]
    timings["world"] += time.perf_counter() - tic
    lidar = nuscenes_lidar_config(job.beams)
    cameras = nuscenes_camera_rig(tuple(job.image_size))
    location, vehicle, utc = _scene_location(job.scene_name, getattr(scene, "drive_side", ""))
    log_name, date = _log_name(vehicle, utc, int(scene.timestamp_us(key_times[0])))
    map_token = make_token(job.token_seed, "map", job.scene_name)
    map_file = f"maps/{map_token}.png"

    for sub in [f"samples/{LIDAR_CHANNEL}", f"sweeps/{LIDAR_CHANNEL}", "maps"] + [
        f"samples/{c.name}" for c in cameras
    ]:
        (root / sub).mkdir(parents=True, exist_ok=True)

    result = NuScenesSceneResult(
        scene_index=job.scene_index, scene_name=job.scene_name, log_name=log_name,
        location=location, date_captured=date, vehicle=vehicle, map_file=map_file,
        description=_scene_description(scene, job.scene_seed),
        lidar_mount=lidar.sensor_to_ego.copy(),
        cameras=[(c.name, np.asarray(c.sensor_to_ego, float).copy(),
                  np.asarray(c.intrinsics, float).copy(), int(c.width), int(c.height))
                 for c in cameras],
        timings=timings,
    )
    sweep_plan = sweep_times(key_times, job.sweeps)
    for k, t_key in enumerate(key_times):
        if k > 0:
            records = []
            for j, t in enumerate(sweep_plan[k - 1]):
                tic = time.perf_counter()
                state = scene.state_at(t)
                points = scan_lidar_detailed(
                    state, lidar, _rng(job.scene_seed, _RNG_LIDAR_SWEEP, k - 1, j)).points
                stamp = int(state.timestamp_us)
                name = f"sweeps/{LIDAR_CHANNEL}/{log_name}__{LIDAR_CHANNEL}__{stamp}.pcd.bin"
                (root / name).write_bytes(np.ascontiguousarray(points, dtype="<f4").tobytes())
                timings["sweeps"] += time.perf_counter() - tic
                records.append(SweepRecord(timestamp=stamp,
                                           ego_to_world=np.asarray(state.ego_to_world, float),
                                           lidar_file=name))
            result.sweeps.append(records)
        record, state = _write_keyframe(job, root, scene, t_key, k, lidar, cameras, log_name,
                                        timings)
        result.keyframes.append(record)
        if k == 0:  # the ground is static for a scene
            tic = time.perf_counter()
            atomic_write_bytes(root / map_file, drivable_mask_png(state.ground))
            timings["map"] = time.perf_counter() - tic
        if progress is not None:
            progress(1)
    return result


def _write_keyframe(job: NuScenesSceneJob, root: Path, scene: Any, t_key: float, k: int,
                    lidar: LidarConfig, cameras: list[CameraConfig], log_name: str,
                    timings: dict[str, float]) -> tuple[KeyframeRecord, FrameState]:
    """Simulate, write and annotate keyframe ``k`` of a scene; returns the record and the
    frame's state."""
    tic = time.perf_counter()
    state = scene.state_at(t_key)
    timings["world"] += time.perf_counter() - tic
    timestamp = int(state.timestamp_us)
    ego = np.asarray(state.ego_to_world, dtype=np.float64)
    lidar_to_world = ego @ lidar.sensor_to_ego

    tic = time.perf_counter()
    scan = scan_lidar_detailed(state, lidar, _rng(job.scene_seed, _RNG_LIDAR_KEY, k))
    timings["lidar"] += time.perf_counter() - tic
    gt = _ground_truth_boxes(state)
    tic = time.perf_counter()
    points, _ = settle_boundary_points(scan.points, lidar_to_world, gt[:, :7])
    timings["boundary"] += time.perf_counter() - tic
    tic = time.perf_counter()
    counts = count_points_world(points, lidar_to_world, gt[:, :7])
    timings["count"] += time.perf_counter() - tic

    tic = time.perf_counter()
    lidar_file = f"samples/{LIDAR_CHANNEL}/{log_name}__{LIDAR_CHANNEL}__{timestamp}.pcd.bin"
    (root / lidar_file).write_bytes(np.ascontiguousarray(points, dtype="<f4").tobytes())
    timings["io"] += time.perf_counter() - tic

    tic = time.perf_counter()
    renders: list[RenderResult] = render_cameras(state, cameras, _rng(job.scene_seed, _RNG_CAMERA, k))
    visibility = visibility_from_renders(renders) if state.objects else np.zeros(0)
    timings["cameras"] += time.perf_counter() - tic
    camera_files = []
    for cam, render in zip(cameras, renders):
        tic = time.perf_counter()
        data = encode_jpeg(render.image)
        timings["jpeg"] += time.perf_counter() - tic
        name = f"samples/{cam.name}/{log_name}__{cam.name}__{timestamp}.jpg"
        tic = time.perf_counter()
        (root / name).write_bytes(data)
        timings["io"] += time.perf_counter() - tic
        camera_files.append(name)

    # Which objects to annotate.
    if gt.shape[0]:
        dist = np.hypot(gt[:, 0] - lidar_to_world[0, 3], gt[:, 1] - lidar_to_world[1, 3])
        keep = np.flatnonzero((dist <= job.annotation_range) | (counts > 0))
    else:
        keep = np.zeros(0, dtype=np.int64)
    objects = [state.objects[i] for i in keep]
    record = KeyframeRecord(
        timestamp=timestamp,
        ego_to_world=ego.copy(),
        lidar_file=lidar_file,
        camera_files=camera_files,
        instance_ids=np.array([o.instance_id for o in objects], dtype=np.int64),
        categories=[o.category for o in objects],
        attributes=[o.attribute for o in objects],
        boxes=gt[keep].copy() if keep.size else np.zeros((0, 9)),
        num_lidar_pts=counts[keep].astype(np.int64) if keep.size else np.zeros(0, np.int64),
        visibility=visibility[keep].astype(np.float64) if keep.size else np.zeros(0),
        num_points=int(points.shape[0]),
    )
    return record, state


# --------------------------------------------------------------------------------------
# tables (main process)
# --------------------------------------------------------------------------------------


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _pose_record(token: str, timestamp: int, matrix: np.ndarray) -> dict[str, Any]:
    return {"token": token, "timestamp": int(timestamp),
            "rotation": _floats(rotation_to_quaternion(matrix[:3, :3])),
            "translation": _floats(matrix[:3, 3])}


def _yaw_quaternion(yaw: float) -> list[float]:
    q = [float(np.cos(0.5 * yaw)), 0.0, 0.0, float(np.sin(0.5 * yaw))]
    return [-v for v in q] if q[0] < 0 else q


def _link(records: list[dict[str, Any]]) -> None:
    """Fill ``prev``/``next`` of a chronological chain of records."""
    for i, rec in enumerate(records):
        rec["prev"] = records[i - 1]["token"] if i > 0 else ""
        rec["next"] = records[i + 1]["token"] if i + 1 < len(records) else ""


def build_nuscenes_tables(results: Sequence[NuScenesSceneResult], seed: int) -> dict[str, list]:
    """The 13 nuScenes tables for the written scenes, in scene order.

    Args:
        results: per-scene results of :func:`write_nuscenes_scene`, in dataset order.
        seed: the dataset seed (tokens).

    Returns:
        ``{table name: list of records}``, records in a fixed order (byte-identical JSON for
        the same inputs).
    """
    tok = lambda table, *key: make_token(seed, table, *key)
    tables: dict[str, list] = {name: [] for name in NUSCENES_TABLES}
    tables["category"] = [
        {"token": tok("category", name), "name": name,
         "description": _CATEGORY_DESCRIPTIONS.get(name, name), "index": i}
        for i, name in enumerate(_CATEGORY_ORDER)
    ]
    category_token = {c["name"]: c["token"] for c in tables["category"]}
    tables["attribute"] = [
        {"token": tok("attribute", name), "name": name,
         "description": _ATTRIBUTE_DESCRIPTIONS[name]}
        for name in ATTRIBUTE_NAMES
    ]
    attribute_token = {a["name"]: a["token"] for a in tables["attribute"]}
    tables["visibility"] = [
        {"description": desc, "token": token, "level": level}
        for token, level, desc, _ in _VISIBILITY_LEVELS
    ]
    channels = [LIDAR_CHANNEL] + list(CAMERA_CHANNELS)
    tables["sensor"] = [
        {"token": tok("sensor", ch), "channel": ch,
         "modality": "lidar" if ch == LIDAR_CHANNEL else "camera"}
        for ch in channels
    ]
    sensor_token = {s["channel"]: s["token"] for s in tables["sensor"]}

    for res in results:
        sc = res.scene_name
        log_token = tok("log", sc)
        tables["log"].append({"token": log_token, "logfile": res.log_name, "vehicle": res.vehicle,
                              "date_captured": res.date_captured, "location": res.location})
        tables["map"].append({"category": "semantic_prior",
                              "token": make_token(seed, "map", sc), "filename": res.map_file,
                              "log_tokens": [log_token]})
        # calibrated sensors of this scene
        cs_token = {LIDAR_CHANNEL: tok("calibrated_sensor", sc, LIDAR_CHANNEL)}
        tables["calibrated_sensor"].append({
            "token": cs_token[LIDAR_CHANNEL], "sensor_token": sensor_token[LIDAR_CHANNEL],
            "translation": _floats(res.lidar_mount[:3, 3]),
            "rotation": _floats(rotation_to_quaternion(res.lidar_mount[:3, :3])),
            "camera_intrinsic": []})
        cam_size: dict[str, tuple[int, int]] = {}
        for name, mount, k_mat, width, height in res.cameras:
            cs_token[name] = tok("calibrated_sensor", sc, name)
            cam_size[name] = (width, height)
            tables["calibrated_sensor"].append({
                "token": cs_token[name], "sensor_token": sensor_token[name],
                "translation": _floats(mount[:3, 3]),
                "rotation": _floats(rotation_to_quaternion(mount[:3, :3])),
                "camera_intrinsic": [_floats(row) for row in np.asarray(k_mat)]})

        scene_token = tok("scene", sc)
        sample_tokens = [tok("sample", sc, k) for k in range(len(res.keyframes))]
        samples = [{"token": sample_tokens[k], "timestamp": int(kf.timestamp),
                    "scene_token": scene_token} for k, kf in enumerate(res.keyframes)]
        _link(samples)
        for s in samples:  # field order as in nuScenes
            tables["sample"].append({"token": s["token"], "timestamp": s["timestamp"],
                                     "prev": s["prev"], "next": s["next"],
                                     "scene_token": s["scene_token"]})
        tables["scene"].append({
            "token": scene_token, "log_token": log_token, "nbr_samples": len(samples),
            "first_sample_token": sample_tokens[0] if samples else "",
            "last_sample_token": sample_tokens[-1] if samples else "",
            "name": sc, "description": res.description})

        # sample_data + ego_pose: the LiDAR chain (keyframes and sweeps), then each camera.
        lidar_chain: list[dict[str, Any]] = []
        key_times = [kf.timestamp for kf in res.keyframes]
        for k, kf in enumerate(res.keyframes):
            if k > 0:
                for j, sw in enumerate(res.sweeps[k - 1]):
                    nearest = k if (sw.timestamp - key_times[k - 1]) >= (key_times[k] - sw.timestamp) else k - 1
                    lidar_chain.append(_sample_data(tok("sample_data", sc, LIDAR_CHANNEL, "sweep", k - 1, j),
                                                    sample_tokens[nearest], cs_token[LIDAR_CHANNEL],
                                                    sw.timestamp, "pcd", False, 0, 0, sw.lidar_file,
                                                    sw.ego_to_world))
            lidar_chain.append(_sample_data(tok("sample_data", sc, LIDAR_CHANNEL, "key", k),
                                            sample_tokens[k], cs_token[LIDAR_CHANNEL], kf.timestamp,
                                            "pcd", True, 0, 0, kf.lidar_file, kf.ego_to_world))
        chains = [lidar_chain]
        for c, (name, *_rest) in enumerate(res.cameras):
            width, height = cam_size[name]
            chains.append([
                _sample_data(tok("sample_data", sc, name, "key", k), sample_tokens[k], cs_token[name],
                             kf.timestamp, "jpg", True, width, height, kf.camera_files[c], kf.ego_to_world)
                for k, kf in enumerate(res.keyframes)])
        for chain in chains:
            _link(chain)
            for rec in chain:
                pose = rec.pop("_pose")
                tables["ego_pose"].append(_pose_record(rec["ego_pose_token"], rec["timestamp"], pose))
                tables["sample_data"].append(rec)

        # instances and annotations
        ann_by_instance: dict[int, list[dict[str, Any]]] = {}
        category_of: dict[int, str] = {}
        for k, kf in enumerate(res.keyframes):
            for a in range(len(kf.instance_ids)):
                iid = int(kf.instance_ids[a])
                box = kf.boxes[a]
                attr = kf.attributes[a]
                if kf.categories[a] not in category_token:
                    raise ValueError(f"scene {sc}: unknown nuScenes category {kf.categories[a]!r}")
                if attr and attr not in attribute_token:
                    raise ValueError(f"scene {sc}: unknown nuScenes attribute {attr!r}")
                category_of.setdefault(iid, kf.categories[a])
                rec = {
                    "token": tok("sample_annotation", sc, iid, k),
                    "sample_token": sample_tokens[k],
                    "instance_token": tok("instance", sc, iid),
                    "visibility_token": visibility_token(float(kf.visibility[a])),
                    "attribute_tokens": [attribute_token[attr]] if attr else [],
                    "translation": _floats(box[:3]),
                    "size": _floats(box[[4, 3, 5]]),
                    "rotation": _yaw_quaternion(float(box[6])),
                    "num_lidar_pts": int(kf.num_lidar_pts[a]),
                    "num_radar_pts": 0,
                }
                ann_by_instance.setdefault(iid, []).append(rec)
        annotations: list[dict[str, Any]] = []
        for iid in sorted(ann_by_instance):
            chain = ann_by_instance[iid]
            _link(chain)
            tables["instance"].append({
                "token": tok("instance", sc, iid),
                "category_token": category_token[category_of[iid]],
                "nbr_annotations": len(chain),
                "first_annotation_token": chain[0]["token"],
                "last_annotation_token": chain[-1]["token"]})
            annotations.extend(chain)
        # annotations in sample order, then instance order (as nuScenes lists them per sample)
        order = {t: i for i, t in enumerate(sample_tokens)}
        annotations.sort(key=lambda r: order[r["sample_token"]])
        tables["sample_annotation"].extend(annotations)
    return tables


def _sample_data(token: str, sample_token: str, cs_token: str, timestamp: int, fileformat: str,
                 is_key_frame: bool, width: int, height: int, filename: str,
                 pose: np.ndarray) -> dict[str, Any]:
    return {"token": token, "sample_token": sample_token, "ego_pose_token": token,
            "calibrated_sensor_token": cs_token, "timestamp": int(timestamp),
            "fileformat": fileformat, "is_key_frame": bool(is_key_frame), "height": int(height),
            "width": int(width), "filename": filename, "prev": "", "next": "", "_pose": pose}


def write_nuscenes_tables(root: str | os.PathLike, version: str, tables: dict[str, list]) -> Path:
    """Write the 13 tables as ``<root>/<version>/<table>.json`` (atomically, fixed format:
    ``json.dumps(indent=0)`` as nuScenes' own files). Returns the version folder."""
    folder = Path(root) / version
    folder.mkdir(parents=True, exist_ok=True)
    for name in NUSCENES_TABLES:
        if name not in tables:
            raise ValueError(f"table {name!r} is missing")
        text = json.dumps(tables[name], indent=0, ensure_ascii=True, allow_nan=False)
        atomic_write_bytes(folder / f"{name}.json", text.encode("utf-8"))
    return folder
