"""Write SynthDrive scenes in the KITTI object-detection layout.

Output::

    <root>/training/velodyne/XXXXXX.bin   float32 x, y, z, reflectance in [0, 1] (velodyne frame)
    <root>/training/image_2/XXXXXX.png    the front colour camera (cam2)
    <root>/training/calib/XXXXXX.txt      P0..P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo
    <root>/training/label_2/XXXXXX.txt    KITTI labels (15 columns)
    <root>/ImageSets/train.txt, val.txt   frame ids, whole scenes per split

One frame per keyframe; frame ids run over the scenes in dataset order. Sensors: the LiDAR
with the beam pattern of the 32/64/16-beam preset mounted as KITTI's Velodyne (x forward,
y left, z up; the ``kitti64`` mount), and :func:`~distill3d.synth.camera.kitti_front_camera`
placed relative to it; the calibration is
:func:`~distill3d.synth.camera.kitti_calibration` (KITTI's stereo rig: ``P2`` carries cam2's
6 cm offset from the rectified reference camera cam0, ``R0_rect`` is the identity), written
with ``%.12e`` as KITTI's files are.

Labels (see the KITTI devkit's ``readme.txt``), computed from the geometry:

* **type**: :func:`~distill3d.synth.classes.kitti_class` of the object (Car, Van, Truck,
  Pedestrian, Person_sitting, Cyclist, Misc; cones, barriers and rider-less cycles are
  DontCare).
* **location, dimensions, rotation_y**: the world box mapped to the velodyne frame, then
  :func:`~distill3d.geometry.convert.lidar_to_kitti_camera_boxes` with the calibration read
  back from the written file (so the files are self-consistent to the last digit);
  **alpha** by :func:`~distill3d.geometry.convert.kitti_alpha`.
* **bbox**: the bounding rectangle of the 3D box projected with ``P2`` (the box is first
  clipped to the plane 0.1 m in front of the camera), clipped to ``[0, W-1] x [0, H-1]``.
* **truncated**: ``1 - area(clipped rectangle) / area(unclipped rectangle)``, in [0, 1].
* **occluded**: from the share of the object's silhouette pixels that are visible in the
  image (occlusion by anything, parts outside the image count neither way): >= 80 % -> 0,
  >= 40 % -> 1, else 2 (3, "unknown", is not used).
* Only objects whose projected box overlaps the image and that have at least one visible
  pixel are written. Objects farther than :data:`MAX_LABEL_DEPTH` (70 m), whose 2D box is
  lower than :data:`MIN_BOX_HEIGHT` (10 px at KITTI's 375 rows, scaled with the image
  height), or with less than 10 % of their silhouette visible, and all objects of a DontCare
  class, are written as ``DontCare`` regions with KITTI's placeholder fields
  (``DontCare -1 -1 -10 x1 y1 x2 y2 -1 -1 -1 -1000 -1000 -1000 -10``), after the labelled
  objects, as in KITTI's files.
* Numbers are written with the shortest text that reads back exactly (KITTI uses 2 decimals;
  readers accept any float), so label boxes hold exactly the points their objects hold.

LiDAR points near box faces are moved off them by
:func:`~distill3d.synth.nuscenes_writer.settle_boundary_points` (1 mm), as in the nuScenes
writer.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from distill3d.data.kitti_files import KittiObject, read_kitti_calib, write_kitti_labels
from distill3d.geometry.convert import (
    KittiCalib,
    kitti_alpha,
    lidar_to_kitti_camera_boxes,
)
from distill3d.synth.camera import (
    CameraConfig,
    format_kitti_calib,
    kitti_calibration,
    kitti_front_camera,
    render_cameras,
)
from distill3d.synth.classes import kitti_class
from distill3d.synth.lidar import LidarConfig, lidar_preset, scan_lidar_detailed
from distill3d.synth.nuscenes_writer import (
    _keyframe_times,
    _make_scene,
    _rng,
    atomic_write_bytes,
    count_points_world,
    settle_boundary_points,
)
from distill3d.synth.types import FrameState

__all__ = [
    "KITTI_IMAGE_SIZE",
    "MAX_LABEL_DEPTH",
    "MIN_BOX_HEIGHT",
    "KittiFrameRecord",
    "KittiSceneJob",
    "KittiSceneResult",
    "encode_png",
    "kitti_lidar_config",
    "project_box_2d",
    "world_boxes_to_lidar",
    "write_image_sets",
    "write_kitti_scene",
]

#: Default image size (KITTI's 1242x375).
KITTI_IMAGE_SIZE: tuple[int, int] = (1242, 375)
#: Objects farther than this (camera depth, metres) become DontCare.
MAX_LABEL_DEPTH = 70.0
#: 2D boxes lower than this many pixels at 375 image rows become DontCare.
MIN_BOX_HEIGHT = 10.0
#: Objects with less than this share of their silhouette visible become DontCare.
MIN_VISIBLE = 0.1
#: PNG compression level (fixed: same bytes on every run).
PNG_COMPRESS_LEVEL = 1
_NEAR = 0.1
_RNG_LIDAR, _RNG_CAMERA = 11, 12
# The 12 edges of a box, as index pairs into the 8 corners of _corners().
_CORNER_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
                         dtype=np.float64)
_EDGES = np.array([(i, j) for i in range(8) for j in range(i + 1, 8)
                   if int(np.sum(_CORNER_SIGNS[i] != _CORNER_SIGNS[j])) == 1])


def kitti_lidar_config(beams: int = 64) -> LidarConfig:
    """The velodyne: beam pattern of the 32/64/16-beam preset, KITTI's mount (``kitti64``)."""
    presets = {32: "nuscenes32", 64: "kitti64", 16: "vlp16"}
    if beams not in presets:
        raise ValueError(f"beams must be one of {sorted(presets)}, got {beams}")
    config = lidar_preset(presets[beams])
    config.sensor_to_ego = lidar_preset("kitti64").sensor_to_ego.copy()
    return config


def encode_png(image: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """Encode an ``(H, W, 3) uint8`` RGB image as PNG with fixed settings (deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(
        buf, format="PNG", compress_level=compress_level, optimize=False)
    return buf.getvalue()


def world_boxes_to_lidar(boxes_world: np.ndarray, world_to_lidar: np.ndarray) -> np.ndarray:
    """Yaw-only world boxes ``(M, >=7)`` -> LiDAR-frame boxes ``(M, 7)``: centre transformed,
    yaw = direction of the transformed heading projected on the LiDAR x-y plane."""
    b = np.asarray(boxes_world, dtype=np.float64)
    out = np.zeros((b.shape[0], 7))
    if b.shape[0] == 0:
        return out
    rot = world_to_lidar[:3, :3]
    out[:, :3] = b[:, :3] @ rot.T + world_to_lidar[:3, 3]
    out[:, 3:6] = b[:, 3:6]
    heading = np.stack((np.cos(b[:, 6]), np.sin(b[:, 6]), np.zeros(b.shape[0])), axis=1) @ rot.T
    yaw = np.arctan2(heading[:, 1], heading[:, 0])
    out[:, 6] = (yaw + np.pi) % (2 * np.pi) - np.pi
    return out


def _corners(boxes: np.ndarray) -> np.ndarray:
    """``(M, 7)`` yaw-only boxes -> ``(M, 8, 3)`` corners."""
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    local = _CORNER_SIGNS[None] * (0.5 * boxes[:, None, 3:6])
    x = local[..., 0] * c[:, None] - local[..., 1] * s[:, None]
    y = local[..., 0] * s[:, None] + local[..., 1] * c[:, None]
    return np.stack((x, y, local[..., 2]), axis=-1) + boxes[:, None, :3]


def project_box_2d(corners_rect: np.ndarray, p2: np.ndarray,
                   near: float = _NEAR) -> tuple[float, float, float, float] | None:
    """Bounding rectangle ``(u1, v1, u2, v2)`` of a 3D box projected with ``P2``.

    Args:
        corners_rect: ``(8, 3)`` corners in the rectified camera frame (a box, so the convex
            hull of the corners is the box).
        p2: ``(3, 4)`` projection matrix.
        near: the box is clipped to ``z >= near`` first (corners in front plus the crossings
            of the 12 edges with that plane).

    Returns:
        The unclipped image rectangle, or ``None`` if the box lies entirely behind ``near``.
    """
    z = corners_rect[:, 2]
    pts = [corners_rect[z >= near]]
    zi, zj = z[_EDGES[:, 0]], z[_EDGES[:, 1]]
    cross = (zi - near) * (zj - near) < 0
    if np.any(cross):
        a, b = corners_rect[_EDGES[cross, 0]], corners_rect[_EDGES[cross, 1]]
        t = (near - a[:, 2]) / (b[:, 2] - a[:, 2])
        pts.append(a + t[:, None] * (b - a))
    p = np.concatenate(pts, axis=0)
    if p.shape[0] == 0:
        return None
    uvw = p @ p2[:, :3].T + p2[:, 3]
    uv = uvw[:, :2] / uvw[:, 2:3]
    return (float(uv[:, 0].min()), float(uv[:, 1].min()), float(uv[:, 0].max()),
            float(uv[:, 1].max()))


@dataclass(frozen=True)
class KittiSceneJob:
    """What a worker needs to simulate and write one scene as KITTI frames.

    Attributes:
        root: output root.
        scene_index: position of the scene in the dataset.
        scene_seed: seed of the scene's world.
        first_frame: frame id of the scene's first keyframe.
        num_keyframes: frames in the scene.
        beams: 64, 32 or 16.
        image_size: ``(width, height)``.
    """

    root: str
    scene_index: int
    scene_seed: int
    first_frame: int
    num_keyframes: int
    beams: int = 64
    image_size: tuple[int, int] = KITTI_IMAGE_SIZE


@dataclass
class KittiFrameRecord:
    """One written frame: id, time, pose and the world objects behind its label lines.

    ``label_instance_ids[i]`` is the world ``instance_id`` of label line ``i`` (DontCare lines
    included, in file order), ``label_boxes_world[i]`` its world box ``(x, y, z, l, w, h, yaw,
    vx, vy)`` and ``label_num_points[i]`` the points of the written cloud inside it.
    """

    frame_id: str
    timestamp: int
    ego_to_world: np.ndarray
    label_types: list[str]
    label_instance_ids: np.ndarray
    label_boxes_world: np.ndarray
    label_num_points: np.ndarray
    num_points: int = 0


@dataclass
class KittiSceneResult:
    """A written scene: its frames, and the velodyne mount used."""

    scene_index: int
    scene_seed: int
    lidar_mount: np.ndarray
    frames: list[KittiFrameRecord] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def write_kitti_scene(job: KittiSceneJob,
                      progress: Callable[[int], None] | None = None) -> KittiSceneResult:
    """Simulate one scene and write its frames (velodyne, image_2, calib, label_2).

    Args:
        job: the scene.
        progress: called with 1 after each frame.
    """
    root = Path(job.root) / "training"
    for sub in ("velodyne", "image_2", "calib", "label_2"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {"world": 0.0, "lidar": 0.0, "boundary": 0.0, "count": 0.0,
                                 "cameras": 0.0, "png": 0.0, "labels": 0.0, "io": 0.0}
    tic = time.perf_counter()
    scene = _make_scene(job.scene_seed, job.num_keyframes, job.scene_index)
    key_times = _keyframe_times(scene)[: job.num_keyframes]
    timings["world"] += time.perf_counter() - tic
    lidar = kitti_lidar_config(job.beams)
    camera = kitti_front_camera(tuple(job.image_size), lidar_to_ego=lidar.sensor_to_ego)
    calib_text = format_kitti_calib(kitti_calibration(camera, lidar.sensor_to_ego))
    result = KittiSceneResult(scene_index=job.scene_index, scene_seed=job.scene_seed,
                              lidar_mount=lidar.sensor_to_ego.copy(), timings=timings)
    for k, t in enumerate(key_times):
        frame_id = f"{job.first_frame + k:06d}"
        calib_path = root / "calib" / f"{frame_id}.txt"
        atomic_write_bytes(calib_path, calib_text.encode("ascii"))
        calib = read_kitti_calib(calib_path)
        result.frames.append(_write_frame(job, root, scene, t, k, frame_id, lidar, camera, calib,
                                          timings))
        if progress is not None:
            progress(1)
    return result


def _write_frame(job: KittiSceneJob, root: Path, scene: Any, t: float, k: int, frame_id: str,
                 lidar: LidarConfig, camera: CameraConfig, calib: KittiCalib,
                 timings: dict[str, float]) -> KittiFrameRecord:
    tic = time.perf_counter()
    state: FrameState = scene.state_at(t)
    timings["world"] += time.perf_counter() - tic
    ego = np.asarray(state.ego_to_world, dtype=np.float64)
    velo_to_world = ego @ lidar.sensor_to_ego
    gt = (np.stack([np.asarray(o.box, np.float64).reshape(9) for o in state.objects])
          if state.objects else np.zeros((0, 9)))

    tic = time.perf_counter()
    scan = scan_lidar_detailed(state, lidar, _rng(job.scene_seed, _RNG_LIDAR, k))
    timings["lidar"] += time.perf_counter() - tic
    tic = time.perf_counter()
    points, _ = settle_boundary_points(scan.points, velo_to_world, gt[:, :7])
    timings["boundary"] += time.perf_counter() - tic
    tic = time.perf_counter()
    counts = count_points_world(points, velo_to_world, gt[:, :7])
    timings["count"] += time.perf_counter() - tic
    velo = np.empty((points.shape[0], 4), dtype="<f4")
    velo[:, :3] = points[:, :3]
    velo[:, 3] = points[:, 3] / np.float32(255.0)
    tic = time.perf_counter()
    (root / "velodyne" / f"{frame_id}.bin").write_bytes(velo.tobytes())
    timings["io"] += time.perf_counter() - tic

    tic = time.perf_counter()
    render = render_cameras(state, [camera], _rng(job.scene_seed, _RNG_CAMERA, k))[0]
    timings["cameras"] += time.perf_counter() - tic
    tic = time.perf_counter()
    png = encode_png(render.image)
    timings["png"] += time.perf_counter() - tic
    tic = time.perf_counter()
    (root / "image_2" / f"{frame_id}.png").write_bytes(png)
    timings["io"] += time.perf_counter() - tic

    tic = time.perf_counter()
    labels, idx = _labels(state, gt, velo_to_world, calib, render.visible_pixels,
                          render.silhouette_pixels, camera.width, camera.height)
    write_kitti_labels(root / "label_2" / f"{frame_id}.txt", labels, precision=None)
    timings["labels"] += time.perf_counter() - tic
    return KittiFrameRecord(
        frame_id=frame_id,
        timestamp=int(state.timestamp_us),
        ego_to_world=ego.copy(),
        label_types=[lab.type for lab in labels],
        label_instance_ids=np.array([state.objects[i].instance_id for i in idx], dtype=np.int64),
        label_boxes_world=gt[idx].copy() if idx else np.zeros((0, 9)),
        label_num_points=counts[idx].astype(np.int64) if idx else np.zeros(0, np.int64),
        num_points=int(points.shape[0]),
    )


def _occlusion(visible: float) -> int:
    if visible >= 0.8:
        return 0
    if visible >= 0.4:
        return 1
    return 2


def _labels(state: FrameState, gt: np.ndarray, velo_to_world: np.ndarray, calib: KittiCalib,
            visible_pixels: np.ndarray, silhouette_pixels: np.ndarray, width: int,
            height: int) -> tuple[list[KittiObject], list[int]]:
    """KITTI label objects of a frame and, for each, the index of its world object."""
    if gt.shape[0] == 0:
        return [], []
    boxes_velo = world_boxes_to_lidar(gt[:, :7], np.linalg.inv(velo_to_world))
    loc, dims, ry = lidar_to_kitti_camera_boxes(torch.from_numpy(boxes_velo), calib)
    alpha = kitti_alpha(loc, ry).numpy()
    loc, dims, ry = loc.numpy(), dims.numpy(), ry.numpy()
    lidar_to_rect = calib.lidar_to_rect_matrix().numpy()
    p2 = calib.P2.numpy()
    corners = _corners(boxes_velo)
    corners_rect = corners @ lidar_to_rect[:3, :3].T + lidar_to_rect[:3, 3]
    depth = boxes_velo[:, :3] @ lidar_to_rect[2, :3] + lidar_to_rect[2, 3]
    min_height = MIN_BOX_HEIGHT * height / 375.0
    kept: list[tuple[KittiObject, int]] = []
    dontcare: list[tuple[KittiObject, int]] = []
    for i, obj in enumerate(state.objects):
        if visible_pixels[i] <= 0:
            continue
        rect = project_box_2d(corners_rect[i], p2)
        if rect is None:
            continue
        u1, v1, u2, v2 = rect
        c1, d1 = min(max(u1, 0.0), width - 1.0), min(max(v1, 0.0), height - 1.0)
        c2, d2 = min(max(u2, 0.0), width - 1.0), min(max(v2, 0.0), height - 1.0)
        if c2 <= c1 or d2 <= d1:
            continue
        full = (u2 - u1) * (v2 - v1)
        truncated = float(np.clip(1.0 - (c2 - c1) * (d2 - d1) / full, 0.0, 1.0)) if full > 0 else 1.0
        vis = float(visible_pixels[i]) / max(float(silhouette_pixels[i]), 1.0)
        cls = kitti_class(obj.name, obj.attribute, getattr(obj, "subtype", ""))
        bbox = (c1, d1, c2, d2)
        if (cls == "DontCare" or depth[i] > MAX_LABEL_DEPTH or (d2 - d1) < min_height
                or vis < MIN_VISIBLE):
            dontcare.append((KittiObject(type="DontCare", truncated=-1, occluded=-1, alpha=-10,
                                         bbox=bbox, dimensions=(-1, -1, -1),
                                         location=(-1000, -1000, -1000), rotation_y=-10), i))
            continue
        kept.append((KittiObject(type=cls, truncated=truncated, occluded=_occlusion(vis),
                                 alpha=float(alpha[i]), bbox=bbox,
                                 dimensions=tuple(float(v) for v in dims[i]),
                                 location=tuple(float(v) for v in loc[i]),
                                 rotation_y=float(ry[i])), i))
    pairs = kept + dontcare
    return [p[0] for p in pairs], [p[1] for p in pairs]


def write_image_sets(root: str | Path, train_ids: Sequence[str], val_ids: Sequence[str]) -> None:
    """Write ``ImageSets/train.txt`` and ``ImageSets/val.txt`` (one frame id per line)."""
    folder = Path(root) / "ImageSets"
    folder.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train", train_ids), ("val", val_ids)):
        atomic_write_bytes(folder / f"{name}.txt", "".join(f"{i}\n" for i in ids).encode("ascii"))
