"""SynthDrive pinhole cameras: the nuScenes six-camera rig, a KITTI-like front camera,
and a fast z-buffered rasteriser of the SynthDrive world.

Frames (see :mod:`distill3d.synth.types`):

* **world**: scene frame, z up, ground plane z = 0.
* **ego**: x forward, y left, z up, origin on the ground below the rear axle.
* **camera** (sensor) frame: OpenCV, x right, y down, z forward (the optical axis).
  ``CameraConfig.sensor_to_ego`` maps camera coordinates to ego coordinates.
* **pixels**: ``(u, v)`` = (column, row); the centre of pixel ``(row, col)`` is at
  ``u = col, v = row`` (the OpenCV / nuScenes-devkit convention), so
  ``[u, v, 1]^T ~ K @ p_cam`` and the image covers ``u in [-0.5, W - 0.5]``.

Rendering (:func:`render_camera`, :func:`render_cameras`) works like a GPU rasteriser,
vectorised with numpy:

1. per frame: box corners, face normals and Lambertian face colours (sun + sky
   ambient, so the faces of a box differ in brightness), and a top-down sun-shadow
   raster of all primitives (drawn with PIL);
2. per camera: frustum culling of the boxes (bounding spheres), back-face culling
   (a convex box shows at most three faces), then *homogeneous* rasterisation
   (Olano & Greer 1997) of each remaining face: a pixel ray ``d = K^-1 [u, v, 1]``
   hits the face iff it lies inside the four planes through the camera centre and
   the face's edges. This needs no clipping, so faces partly behind the camera are
   exact; only the pixel bounding rectangle uses the face clipped to the near plane.
   Each (face, row) gives a pixel span from the four edge inequalities; every
   covered pixel gets an inverse depth (affine in ``u, v`` for a plane); a z-buffer
   ``np.minimum.at`` on a packed ``(depth, face)`` int64 key keeps the nearest face
   (ties broken by face index, so it is deterministic), pixels nearer than
   ``CameraConfig.near`` are clipped;
3. the ground plane is intersected per pixel analytically and wins wherever it is
   nearer than the boxes (parts of primitives below z = 0 are hidden); its colour
   comes from the :class:`~distill3d.synth.types.GroundMap` material under the pixel,
   a procedural texture and the shadow raster;
4. sky gradient, contact darkening near the ground, distance haze, vignetting and
   sensor noise (near-Gaussian read noise plus shot noise, drawn from the caller's rng;
   the rng is the only randomness, so the same inputs give identical bytes).

Cost: about 0.1 s for the six 704x256 nuScenes cameras of a ~1500-primitive street on
one core (``benchmarks/synth_camera.py``), split roughly evenly between the geometry
pass and shading/noise.

Annotated-object visibility (:func:`object_visibility`) comes from the same pass:
the silhouette of an object is the union of the pixels its faces cover before the
z-test, its visible pixels those it wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from distill3d.synth.types import FrameState, GroundMap, Material

__all__ = [
    "CameraConfig",
    "Lighting",
    "RenderOptions",
    "RenderResult",
    "NUSCENES_ORIGINAL_SIZE",
    "nuscenes_camera_rig",
    "kitti_front_camera",
    "kitti_lidar_to_ego",
    "kitti_calibration",
    "format_kitti_calib",
    "project_points",
    "render_camera",
    "render_cameras",
    "object_visibility",
    "visibility_from_renders",
    "camera_pose",
    "rotation_to_quaternion",
]

#: Size (width, height) of the real nuScenes camera images.
NUSCENES_ORIGINAL_SIZE: tuple[int, int] = (1600, 900)

# Rounded from the nuScenes calibrated_sensor table (one vehicle of v1.0-test):
# channel, translation in ego (m), yaw (deg, counter-clockwise from ego +x; rounded to
# the nominal rig angles), focal length and principal point (px) at 1600x900.
_NUSCENES_RIG: tuple[tuple[str, tuple[float, float, float], float, float, float, float], ...] = (
    ("CAM_FRONT", (1.70, 0.02, 1.51), 0.0, 1266.0, 816.0, 491.0),
    ("CAM_FRONT_RIGHT", (1.55, -0.49, 1.50), -55.0, 1261.0, 808.0, 495.0),
    ("CAM_FRONT_LEFT", (1.52, 0.49, 1.51), 55.0, 1273.0, 827.0, 480.0),
    ("CAM_BACK", (0.03, 0.00, 1.58), 180.0, 809.0, 829.0, 482.0),
    ("CAM_BACK_LEFT", (1.04, 0.49, 1.59), 110.0, 1257.0, 792.0, 493.0),
    ("CAM_BACK_RIGHT", (1.02, -0.48, 1.56), -110.0, 1260.0, 807.0, 501.0),
)

# KITTI object benchmark P2 (image_2) intrinsics for 1242x375 images.
_KITTI_SIZE: tuple[int, int] = (1242, 375)
_KITTI_F, _KITTI_CX, _KITTI_CY = 721.54, 609.56, 172.85
# Stereo rig: camera x offset of cam1, cam2, cam3 from the reference cam0, metres
# (camera x is right: cam2/cam3 are the colour cameras, cam2 ~6 cm left of cam0).
_KITTI_CAM_OFFSETS: tuple[float, float, float, float] = (0.0, 0.54, -0.06, 0.47)


# --------------------------------------------------------------------------- configs


@dataclass(eq=False)
class CameraConfig:
    """A pinhole camera mounted on the ego vehicle.

    Attributes:
        name: channel name, e.g. ``"CAM_FRONT"`` (nuScenes ``sensor.channel``).
        width, height: image size in pixels.
        intrinsics: (3, 3) float64 ``K`` of *this* image (after any resize and crop):
            ``[u, v, 1]^T ~ K @ p_cam``, pixel centres at integer ``(u, v)``.
        sensor_to_ego: (4, 4) float64 camera(OpenCV: x right, y down, z forward)->ego.
        near: near clipping distance along the optical axis, metres.
        far: primitives whose bounding sphere lies beyond this depth are culled.
        modality: nuScenes ``sensor.modality``.
        original_size: (width, height) of the sensor image the intrinsics derive from.
        original_intrinsics: (3, 3) ``K`` at ``original_size``.
        resize: scale applied to the original image.
        crop: ``(left, top, right, bottom)`` crop of the resized image, pixels; the
            output image is ``resized[top:bottom, left:right]``.
    """

    name: str
    width: int
    height: int
    intrinsics: np.ndarray
    sensor_to_ego: np.ndarray
    near: float = 0.1
    far: float = 300.0
    modality: str = "camera"
    original_size: tuple[int, int] | None = None
    original_intrinsics: np.ndarray | None = None
    resize: float = 1.0
    crop: tuple[int, int, int, int] | None = None

    @property
    def translation(self) -> np.ndarray:
        """(3,) camera centre in the ego frame (nuScenes ``calibrated_sensor.translation``)."""
        return np.asarray(self.sensor_to_ego[:3, 3], dtype=np.float64).copy()

    @property
    def rotation(self) -> np.ndarray:
        """(4,) quaternion ``(w, x, y, z)`` of the camera->ego rotation (nuScenes order)."""
        return rotation_to_quaternion(self.sensor_to_ego[:3, :3])

    @property
    def horizontal_fov_deg(self) -> float:
        """Full horizontal field of view in degrees (pixel edges, both sides)."""
        fx, cx = self.intrinsics[0, 0], self.intrinsics[0, 2]
        left = np.arctan((cx + 0.5) / fx)
        right = np.arctan((self.width - 0.5 - cx) / fx)
        return float(np.degrees(left + right))


@dataclass(frozen=True)
class Lighting:
    """Scene lighting, world frame.

    Attributes:
        sun_azimuth_deg: direction *towards* the sun, counter-clockwise from world +x.
        sun_elevation_deg: sun height above the horizon.
        ambient: sky (ambient) light on an upward surface; vertical faces get 80 %,
            downward faces 60 %.
        diffuse: direct sun light on a surface facing the sun.
        shadows: cast sun shadows of all primitives onto the ground.
    """

    sun_azimuth_deg: float = 135.0
    sun_elevation_deg: float = 50.0
    ambient: float = 0.52
    diffuse: float = 0.62
    shadows: bool = True

    @property
    def sun_direction(self) -> np.ndarray:
        """(3,) unit vector from the scene towards the sun, world frame."""
        az, el = np.radians(self.sun_azimuth_deg), np.radians(self.sun_elevation_deg)
        return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


@dataclass(frozen=True)
class RenderOptions:
    """Appearance and sensor model of :func:`render_camera` (colours are RGB in [0, 1]).

    Attributes:
        lighting: sun and ambient light.
        sky_zenith, sky_horizon: sky gradient colours; the haze colour is the horizon's.
        haze_distance: e-folding distance of the haze, metres.
        contact_shadow: darkening of primitives at ground level (ambient occlusion).
        contact_height: height over which the contact darkening fades, metres.
        ground_texture: strength of the procedural ground texture.
        shadow_range: half-size of the square around the ego where shadows are drawn, m.
        shadow_resolution: cell size of the shadow raster, metres.
        read_noise: std of the Gaussian read noise, in 8-bit levels.
        shot_noise: shot noise std is ``sqrt(shot_noise * level)`` 8-bit levels.
        vignetting: relative darkening in the image corners (0 disables).
    """

    lighting: Lighting = field(default_factory=Lighting)
    sky_zenith: tuple[float, float, float] = (0.30, 0.50, 0.82)
    sky_horizon: tuple[float, float, float] = (0.78, 0.82, 0.86)
    haze_distance: float = 220.0
    contact_shadow: float = 0.35
    contact_height: float = 0.35
    ground_texture: float = 1.0
    shadow_range: float = 90.0
    shadow_resolution: float = 0.2
    read_noise: float = 1.6
    shot_noise: float = 0.12
    vignetting: float = 0.18


@dataclass
class RenderResult:
    """One rendered camera image.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        instance_map: (H, W) int32, index into ``FrameState.objects`` of the object seen
            at each pixel, -1 for scenery, ground and sky.
        depth: (H, W) float32, depth along the optical axis (camera z) of the surface
            seen at each pixel, metres; ``inf`` for sky.
        visible_pixels: (num_objects,) int64, pixels of each object in ``instance_map``.
        silhouette_pixels: (num_objects,) int64, pixels of this image each object would
            cover with nothing occluding it (the union of its faces' pixels).
    """

    image: np.ndarray
    instance_map: np.ndarray
    depth: np.ndarray
    visible_pixels: np.ndarray
    silhouette_pixels: np.ndarray


# --------------------------------------------------------------------------- rig helpers


def rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) -> unit quaternion (4,) ``(w, x, y, z)`` with ``w >= 0``."""
    m = np.asarray(rotation, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0.0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    out = np.asarray(q, dtype=np.float64)
    out /= np.linalg.norm(out)
    return -out if out[0] < 0 else out


def camera_pose(
    translation: tuple[float, float, float] | np.ndarray, yaw_deg: float, pitch_deg: float = 0.0
) -> np.ndarray:
    """Camera(OpenCV)->ego (4, 4) for a camera at ``translation`` (ego frame, metres)
    looking horizontally at azimuth ``yaw_deg`` (counter-clockwise from ego +x), tilted
    down by ``pitch_deg`` (positive = towards the ground), no roll."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    z_axis = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), -np.sin(pitch)])
    x_axis = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    y_axis = np.cross(z_axis, x_axis)
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2] = x_axis, y_axis, z_axis
    out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


def _intrinsics(f: float, cx: float, cy: float, fy: float | None = None) -> np.ndarray:
    return np.array([[f, 0.0, cx], [0.0, f if fy is None else fy, cy], [0.0, 0.0, 1.0]])


def nuscenes_camera_rig(image_size: tuple[int, int] = (704, 256)) -> list[CameraConfig]:
    """The six nuScenes cameras, in the order CAM_FRONT, CAM_FRONT_RIGHT, CAM_FRONT_LEFT,
    CAM_BACK, CAM_BACK_LEFT, CAM_BACK_RIGHT.

    Positions, yaws and 1600x900 intrinsics are rounded from a real nuScenes vehicle
    calibration (yaws to the nominal 0, -55, 55, 180, 110, -110 degrees; no pitch or
    roll). The image is derived from the 1600x900 sensor image as BEVDepth does:

    * resize by ``s = width / 1600`` (0.44 for 704) to ``width x round(900 s)``
      (704x396), with ``K' = diag(s, s, 1) @ K`` (focal length and principal point
      multiplied by ``s``);
    * crop the *top* ``round(900 s) - height`` rows (140 for 704x256), keeping the
      bottom ``height`` rows and the full width: ``cy' = s * cy - top``.

    ``CameraConfig.crop`` records ``(0, top, width, round(900 s))`` in resized pixels.

    Args:
        image_size: (width, height) of the output images; ``height`` may not exceed
            ``round(900 * width / 1600)``.
    """
    width, height = int(image_size[0]), int(image_size[1])
    ow, oh = NUSCENES_ORIGINAL_SIZE
    scale = width / ow
    resized_h = int(round(oh * scale))
    top = resized_h - height
    if width <= 0 or height <= 0 or top < 0:
        raise ValueError(
            f"image_size {image_size}: height must be in 1..{resized_h} for width {width}"
        )
    rig = []
    for name, trans, yaw, f, cx, cy in _NUSCENES_RIG:
        k_orig = _intrinsics(f, cx, cy)
        k = _intrinsics(f * scale, cx * scale, cy * scale - top)
        rig.append(
            CameraConfig(
                name=name,
                width=width,
                height=height,
                intrinsics=k,
                sensor_to_ego=camera_pose(trans, yaw),
                original_size=(ow, oh),
                original_intrinsics=k_orig,
                resize=scale,
                crop=(0, top, width, resized_h),
            )
        )
    return rig


def kitti_lidar_to_ego() -> np.ndarray:
    """(4, 4) KITTI-like Velodyne HDL-64 mount -> ego: 1.73 m above the ground, 0.81 m
    ahead of and 0.32 m right of the ego origin (KITTI's ``Tr_imu_to_velo`` offsets, the
    same mount as ``lidar_preset("kitti64")``), axes as the ego (x forward, y left, z up)
    like KITTI's velodyne frame."""
    out = np.eye(4)
    out[:3, 3] = (0.81, -0.32, 1.73)
    return out


def kitti_front_camera(
    image_size: tuple[int, int] = _KITTI_SIZE, lidar_to_ego: np.ndarray | None = None
) -> CameraConfig:
    """KITTI's left colour camera (``image_2``), looking forward at 1.65 m.

    As in KITTI, the reference camera ``cam0`` is 0.27 m ahead of and 0.08 m below the
    Velodyne, and ``cam2`` (the one rendered) is 6 cm to the left of ``cam0``. The
    intrinsics are KITTI's ``P2`` (f = 721.54, principal point (609.56, 172.85)) at
    1242x375, scaled per axis for another ``image_size``.

    Args:
        image_size: (width, height) of the image.
        lidar_to_ego: (4, 4) LiDAR mount the camera is placed relative to; default
            :func:`kitti_lidar_to_ego`.
    """
    width, height = int(image_size[0]), int(image_size[1])
    sx, sy = width / _KITTI_SIZE[0], height / _KITTI_SIZE[1]
    velo = kitti_lidar_to_ego() if lidar_to_ego is None else np.asarray(lidar_to_ego, float)
    cam0_pos = velo[:3, 3] + velo[:3, :3] @ np.array([0.27, 0.0, -0.08])
    yaw = float(np.degrees(np.arctan2(velo[1, 0], velo[0, 0])))
    cam0_to_ego = camera_pose(cam0_pos, yaw)
    cam2_to_ego = cam0_to_ego.copy()
    cam2_to_ego[:3, 3] = cam0_to_ego[:3, :3] @ np.array([_KITTI_CAM_OFFSETS[2], 0, 0]) + cam0_pos
    k_orig = _intrinsics(_KITTI_F, _KITTI_CX, _KITTI_CY)
    return CameraConfig(
        name="CAM2",
        width=width,
        height=height,
        intrinsics=_intrinsics(_KITTI_F * sx, _KITTI_CX * sx, _KITTI_CY * sy, _KITTI_F * sy),
        sensor_to_ego=cam2_to_ego,
        original_size=_KITTI_SIZE,
        original_intrinsics=k_orig,
        resize=sx,
        crop=(0, 0, width, height),
    )


def kitti_calibration(camera: CameraConfig, lidar_to_ego: np.ndarray) -> dict[str, np.ndarray]:
    """KITTI ``calib/*.txt`` matrices for a :func:`kitti_front_camera` and a LiDAR.

    The rectified reference frame ``cam0`` is ``camera`` (cam2) moved 6 cm to its right
    with the same orientation, so ``R0_rect`` is the identity and, for a point ``X`` in
    the LiDAR frame, ``P2 @ R0_rect @ Tr_velo_to_cam @ X`` (homogeneous) gives the pixel
    of ``X`` in this camera's image exactly as :func:`project_points` does. KITTI labels
    (location, rotation_y) are expressed in ``cam0`` (use ``Tr_velo_to_cam``).
    ``Tr_imu_to_velo`` treats the ego frame as KITTI's IMU frame.

    Returns:
        ``{"P0", "P1", "P2", "P3"}``: (3, 4); ``"R0_rect"``: (3, 3);
        ``"Tr_velo_to_cam"``, ``"Tr_imu_to_velo"``: (3, 4) float64.
    """
    k = np.asarray(camera.intrinsics, dtype=np.float64)
    b2 = _KITTI_CAM_OFFSETS[2]
    cam0_to_cam2 = np.eye(4)
    cam0_to_cam2[0, 3] = -b2  # p_cam2 = p_cam0 - (b2, 0, 0); cam2 sits at x = b2 in cam0
    cam0_to_ego = camera.sensor_to_ego @ cam0_to_cam2
    velo = np.asarray(lidar_to_ego, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for i, b in enumerate(_KITTI_CAM_OFFSETS):
        t = np.array([-b, 0.0, 0.0])
        out[f"P{i}"] = np.concatenate([k, (k @ t)[:, None]], axis=1)
    out["R0_rect"] = np.eye(3)
    out["Tr_velo_to_cam"] = (np.linalg.inv(cam0_to_ego) @ velo)[:3]
    out["Tr_imu_to_velo"] = np.linalg.inv(velo)[:3]
    return out


def format_kitti_calib(calib: dict[str, np.ndarray]) -> str:
    """Text of a KITTI object ``calib/XXXXXX.txt`` file from :func:`kitti_calibration`."""
    lines = []
    for key in ("P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo"):
        vals = np.asarray(calib[key], dtype=np.float64).reshape(-1) + 0.0  # no "-0"
        lines.append(f"{key}: " + " ".join(f"{v:.12e}" for v in vals))
    return "\n".join(lines) + "\n"


def project_points(points_ego: np.ndarray, camera: CameraConfig) -> tuple[np.ndarray, np.ndarray]:
    """Project ego-frame points into a camera image.

    Args:
        points_ego: (N, 3) points in the ego frame, metres.
        camera: the camera.

    Returns:
        uv: (N, 2) float64 pixel coordinates ``(u, v)`` (pixel centres at integers);
            NaN for points with depth <= 0.
        depth: (N,) float64 depth along the optical axis (camera z), metres.
    """
    pts = np.asarray(points_ego, dtype=np.float64).reshape(-1, 3)
    ego_to_cam = np.linalg.inv(camera.sensor_to_ego)
    p = pts @ ego_to_cam[:3, :3].T + ego_to_cam[:3, 3]
    depth = p[:, 2]
    uvw = p @ np.asarray(camera.intrinsics, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[:, :2] / depth[:, None]
    uv[depth <= 0] = np.nan
    return uv, depth


# --------------------------------------------------------------------------- geometry

# Corner c of a box: local offsets (sx l/2, sy w/2, sz h/2); bottom 0..3 then top 4..7.
_CORNER_SIGNS = np.array(
    [[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1],
     [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]], dtype=np.float64
)  # fmt: skip
# Faces (+x, -x, +y, -y, +z, -z) as corner cycles.
_FACE_CORNERS = np.array(
    [[0, 3, 7, 4], [1, 2, 6, 5], [0, 1, 5, 4], [3, 2, 6, 7], [4, 5, 6, 7], [0, 1, 2, 3]]
)
_FACE_AXIS = np.array([0, 0, 1, 1, 2, 2])
_FACE_SIGN = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
_KEY_EMPTY = np.iinfo(np.int64).max
_INF_BITS = 0x7F800000  # float32 +inf bit pattern

# Ground albedo (RGB in [0, 1]) and texture strength per Material.
_GROUND_ALBEDO = np.full((len(Material), 3), 0.47, dtype=np.float32)
_GROUND_TEXTURE = np.full(len(Material), 0.08, dtype=np.float32)
for _mat, _rgb, _tex in (
    (Material.ROAD, (0.30, 0.31, 0.32), 0.10),
    (Material.SIDEWALK, (0.58, 0.56, 0.53), 0.07),
    (Material.GRASS, (0.29, 0.42, 0.19), 0.30),
    (Material.LANE_MARKING, (0.88, 0.87, 0.82), 0.04),
    (Material.CURB, (0.68, 0.67, 0.64), 0.05),
    (Material.CONCRETE, (0.52, 0.52, 0.50), 0.08),
    (Material.VEGETATION, (0.24, 0.36, 0.15), 0.30),
):
    _GROUND_ALBEDO[_mat] = _rgb
    _GROUND_TEXTURE[_mat] = _tex
_GROUND_ALBEDO.flags.writeable = False
_GROUND_TEXTURE.flags.writeable = False
del _mat, _rgb, _tex


@dataclass
class _ShadowMap:
    """Top-down raster (rows: world y, cols: world x) of sun shadows on the ground."""

    mask: np.ndarray  # (S, S) uint8, 1 = in shadow
    x_min: float
    y_min: float
    resolution: float


@dataclass
class _FramePrep:
    """Camera-independent data of one frame, shared by all cameras."""

    boxes: np.ndarray  # (M, 7) world
    corners: np.ndarray  # (M, 8, 3) world
    radius: np.ndarray  # (M,) bounding sphere radius
    instance: np.ndarray  # (M,) int32
    num_objects: int
    ego_to_world: np.ndarray  # (4, 4)
    # (3, M * 6) float32 planar shaded colour of face f of primitive m at 6 m + f;
    # None for a geometry-only pass
    palette: np.ndarray | None
    texture: np.ndarray | None  # (T * T,) float32 ground texture in ~[-1, 1], T = _TEX_SIZE
    ground: GroundMap | None
    shadow: _ShadowMap | None


@dataclass
class _Raster:
    """Output of the geometry pass of one camera (flat pixel index ``row * W + col``)."""

    face: np.ndarray  # (HW,) int32 index of the nearest face (into face_prim), -1 none
    face_prim: np.ndarray  # (F,) int64 primitive of each rasterised face
    face_num: np.ndarray  # (F,) int64 face number 0..5 (+x, -x, +y, -y, +z, -z)
    box_depth: np.ndarray  # (HW,) float32 depth of the nearest box surface, inf none
    silhouette: np.ndarray  # (num_objects,) int64


def _box_corners(boxes: np.ndarray) -> np.ndarray:
    """(M, 7) boxes -> (M, 8, 3) world corners (order of ``_CORNER_SIGNS``)."""
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    local = _CORNER_SIGNS[None] * (0.5 * boxes[:, None, 3:6])
    x = local[..., 0] * c[:, None] - local[..., 1] * s[:, None]
    y = local[..., 0] * s[:, None] + local[..., 1] * c[:, None]
    return np.stack([x, y, local[..., 2]], axis=-1) + boxes[:, None, :3]


def _face_normals(boxes: np.ndarray) -> np.ndarray:
    """(M, 7) boxes -> (M, 6, 3) outward unit face normals, world frame."""
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    m = boxes.shape[0]
    n = np.zeros((m, 6, 3))
    n[:, 0, 0], n[:, 0, 1] = c, s
    n[:, 2, 0], n[:, 2, 1] = -s, c
    n[:, 4, 2] = 1.0
    n[:, 1], n[:, 3], n[:, 5] = -n[:, 0], -n[:, 2], -n[:, 4]
    return n


def _face_colours(state: FrameState, boxes: np.ndarray, options: RenderOptions) -> np.ndarray:
    """Lambertian face colours (M, 6, 3) float32 in [0, 1+] (albedo x light)."""
    light = options.lighting
    normals = _face_normals(boxes)
    sun = light.sun_direction
    lambert = np.clip(normals @ sun, 0.0, None)
    hemi = 0.8 + 0.2 * normals[..., 2]  # sky light: up 1.0, sides 0.8, down 0.6
    shade = light.ambient * hemi + light.diffuse * lambert  # (M, 6)
    albedo = state.primitives.color.astype(np.float32) / 255.0
    rgb = albedo[:, None, :] * shade[..., None].astype(np.float32)
    mat = np.asarray(state.primitives.material)
    glass = mat == Material.GLASS
    if glass.any():  # glass reflects the sky a little
        sky = np.asarray(options.sky_horizon, dtype=np.float32)
        refl = (0.25 * np.clip(hemi[glass] - 0.5, 0.0, None))[..., None].astype(np.float32)
        rgb[glass] = rgb[glass] * 0.8 + refl * sky
    retro = mat == Material.RETROREFLECTOR
    if retro.any():
        rgb[retro] *= 1.35
    return rgb.astype(np.float32)


def _shadow_map(prep_boxes: np.ndarray, ego_xy: np.ndarray, options: RenderOptions) -> _ShadowMap:
    """Rasterise the ground shadows of all boxes near the ego (PIL polygons)."""
    res = options.shadow_resolution
    half = options.shadow_range
    size = int(np.ceil(2 * half / res))
    x_min, y_min = float(ego_xy[0] - half), float(ego_xy[1] - half)
    img = Image.new("L", (size, size), 0)
    sun = options.lighting.sun_direction
    if sun[2] > 1e-3 and prep_boxes.shape[0]:
        step = -sun[:2] / sun[2]  # ground displacement of a shadow per metre of height
        b = prep_boxes
        bottom = b[:, 2] - 0.5 * b[:, 5]
        top = b[:, 2] + 0.5 * b[:, 5]
        keep = (
            (top > 0.02)
            & (np.abs(b[:, 0] - ego_xy[0]) < half + 30)
            & (np.abs(b[:, 1] - ego_xy[1]) < half + 30)
        )
        b, bottom, top = b[keep], np.clip(bottom[keep], 0.0, None), top[keep]
        c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
        # Shadow = footprint swept from height `bottom` to `top` along `step`: in the box
        # frame, a rectangle (half sizes hl, hw) Minkowski-summed with segment (dx, dy).
        sx = (step[0] * c + step[1] * s)[:, None]
        sy = (-step[0] * s + step[1] * c)[:, None]
        off_x, off_y = sx * bottom[:, None], sy * bottom[:, None]
        dx, dy = sx * (top - bottom)[:, None], sy * (top - bottom)[:, None]
        hl, hw = 0.5 * b[:, 3:4], 0.5 * b[:, 4:5]
        gx, gy = np.sign(dx) + (dx == 0), np.sign(dy) + (dy == 0)
        adx, ady = np.abs(dx), np.abs(dy)
        hx = np.concatenate([-hl, hl, hl + adx, hl + adx, -hl + adx, -hl], axis=1) * gx
        hy = np.concatenate([-hw, -hw, -hw + ady, hw + ady, hw + ady, hw], axis=1) * gy
        hx, hy = hx + off_x, hy + off_y
        wx = b[:, 0:1] + hx * c[:, None] - hy * s[:, None]
        wy = b[:, 1:2] + hx * s[:, None] + hy * c[:, None]
        px = (wx - x_min) / res - 0.5
        py = (wy - y_min) / res - 0.5
        draw = ImageDraw.Draw(img)
        poly = np.stack([px, py], axis=-1).tolist()
        for p in poly:
            draw.polygon([tuple(q) for q in p], fill=1)
    return _ShadowMap(np.asarray(img), x_min, y_min, res)


def _prepare_frame(state: FrameState, options: RenderOptions | None) -> _FramePrep:
    """Per-frame data; ``options=None`` skips colours and shadows (geometry only)."""
    prims = state.primitives
    boxes = np.asarray(prims.boxes, dtype=np.float64).reshape(-1, 7)
    ego = np.asarray(state.ego_to_world, dtype=np.float64)
    palette = shadow = texture = None
    if options is not None:
        palette = np.ascontiguousarray(_face_colours(state, boxes, options).reshape(-1, 3).T)
        texture = _ground_texture()
        if options.lighting.shadows:
            shadow = _shadow_map(boxes, ego[:2, 3], options)
    return _FramePrep(
        boxes=boxes,
        corners=_box_corners(boxes),
        radius=0.5 * np.linalg.norm(boxes[:, 3:6], axis=1),
        instance=np.asarray(prims.instance, dtype=np.int64).reshape(-1),
        num_objects=len(state.objects),
        ego_to_world=ego,
        palette=palette,
        texture=texture,
        ground=state.ground,
        shadow=shadow,
    )


@dataclass
class _View:
    """A camera placed in the world for one frame."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    centre: np.ndarray  # (3,) camera centre, world
    world_to_cam: np.ndarray  # (3, 3) rotation world->camera
    near: float
    far: float
    # Per-pixel world direction of the ray d_cam = ((u - cx)/fx, (v - cy)/fy, 1): a point
    # at depth z along the pixel is centre + z * ray.
    ray: np.ndarray  # (3, HW) float64
    ray_norm: np.ndarray  # (HW,) float32 length of ``ray`` (distance per metre of depth)


def _make_view(camera: CameraConfig, ego_to_world: np.ndarray) -> _View:
    cam_to_world = ego_to_world @ np.asarray(camera.sensor_to_ego, dtype=np.float64)
    k = np.asarray(camera.intrinsics, dtype=np.float64)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    w, h = int(camera.width), int(camera.height)
    xs = (np.arange(w) - cx) / fx
    ys = (np.arange(h) - cy) / fy
    r = cam_to_world[:3, :3]
    ray = np.empty((3, h, w))
    for i in range(3):
        ray[i] = r[i, 0] * xs[None, :] + r[i, 1] * ys[:, None] + r[i, 2]
    return _View(
        width=w, height=h, fx=fx, fy=fy, cx=cx, cy=cy,
        centre=cam_to_world[:3, 3].copy(), world_to_cam=r.T.copy(),
        near=float(camera.near), far=float(camera.far), ray=ray.reshape(3, h * w),
        ray_norm=np.sqrt(1.0 + xs[None, :] ** 2 + ys[:, None] ** 2).astype(np.float32).ravel(),
    )  # fmt: skip


def _rasterize(prep: _FramePrep, view: _View) -> _Raster:
    """Z-buffered homogeneous rasterisation of all box faces into one camera."""
    w, h = view.width, view.height
    hw = w * h
    empty = _Raster(
        face=np.full(hw, -1, np.int32),
        face_prim=np.zeros(0, np.int64),
        face_num=np.zeros(0, np.int64),
        box_depth=np.full(hw, np.inf, np.float32),
        silhouette=np.zeros(prep.num_objects, np.int64),
    )
    if prep.boxes.shape[0] == 0:
        return empty
    rot, centre = view.world_to_cam, view.centre

    # ---- frustum culling with bounding spheres (planes through the pixel-edge rays)
    ctr = (prep.boxes[:, :3] - centre) @ rot.T  # (M, 3) camera frame
    rad = prep.radius
    x0, x1 = (-0.5 - view.cx) / view.fx, (w - 0.5 - view.cx) / view.fx
    y0, y1 = (-0.5 - view.cy) / view.fy, (h - 0.5 - view.cy) / view.fy
    keep = (ctr[:, 2] > view.near - rad) & (ctr[:, 2] < view.far + rad)
    for sgn, t in ((1.0, x0), (-1.0, x1)):
        keep &= sgn * (ctr[:, 0] - t * ctr[:, 2]) / np.hypot(1.0, t) > -rad
    for sgn, t in ((1.0, y0), (-1.0, y1)):
        keep &= sgn * (ctr[:, 1] - t * ctr[:, 2]) / np.hypot(1.0, t) > -rad
    prim = np.flatnonzero(keep)
    if prim.size == 0:
        return empty

    # ---- back-face culling: camera centre in each box frame
    b = prep.boxes[prim]
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    d = centre - b[:, :3]
    q = np.stack([d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c, d[:, 2]], axis=1)
    half = 0.5 * b[:, 3:6]
    qa = q[:, _FACE_AXIS] * _FACE_SIGN  # (P, 6) distance of camera beyond each face plane
    vis = qa > half[:, _FACE_AXIS] + 1e-9
    # degenerate faces (zero area) are dropped
    area_ok = np.stack(
        [half[:, 1] * half[:, 2], half[:, 1] * half[:, 2], half[:, 0] * half[:, 2],
         half[:, 0] * half[:, 2], half[:, 0] * half[:, 1], half[:, 0] * half[:, 1]], axis=1
    ) > 1e-12  # fmt: skip
    pi, fi = np.nonzero(vis & area_ok)  # faces: (box in `prim`, face number)
    if pi.size == 0:
        return empty
    corners_cam = (prep.corners[prim] - centre) @ rot.T  # (P, 8, 3)
    verts = corners_cam[pi[:, None], _FACE_CORNERS[fi]]  # (F, 4, 3)
    nxt = np.roll(verts, -1, axis=1)
    edge_n = np.cross(verts, nxt)  # (F, 4, 3): E_i(d) = d . edge_n[i]
    centroid = verts.mean(axis=1)
    e_c = np.einsum("fij,fj->fi", edge_n, centroid)
    sign = np.where(e_c[:, 0] >= 0, 1.0, -1.0)
    edge_n *= sign[:, None, None]
    e_c *= sign[:, None]
    good = (e_c > 0).all(axis=1)  # the face centroid is strictly inside all edge planes

    # ---- pixel bounding rectangle of each face clipped to z >= near
    near = view.near
    pz, qz = verts[..., 2], nxt[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = np.where(pz < near, (near - pz) / (qz - pz), 0.0)
        tb = np.where(qz < near, (near - pz) / (qz - pz), 1.0)
    seg_ok = (pz >= near) | (qz >= near)
    ta, tb = np.where(seg_ok, ta, 0.0), np.where(seg_ok, tb, 0.0)
    ends = np.concatenate(
        [verts + ta[..., None] * (nxt - verts), verts + tb[..., None] * (nxt - verts)], axis=1
    )  # (F, 8, 3)
    ok8 = np.concatenate([seg_ok, seg_ok], axis=1)
    ez = np.maximum(ends[..., 2], near)
    eu = view.fx * ends[..., 0] / ez + view.cx
    ev = view.fy * ends[..., 1] / ez + view.cy
    umin = np.where(ok8, eu, np.inf).min(axis=1)
    umax = np.where(ok8, eu, -np.inf).max(axis=1)
    vmin = np.where(ok8, ev, np.inf).min(axis=1)
    vmax = np.where(ok8, ev, -np.inf).max(axis=1)
    good &= ok8.any(axis=1)
    c0 = np.ceil(np.clip(umin, -1.0, w)).astype(np.int64)
    c1 = np.floor(np.clip(umax, -1.0, w)).astype(np.int64)
    r0 = np.ceil(np.clip(vmin, -1.0, h)).astype(np.int64)
    r1 = np.floor(np.clip(vmax, -1.0, h)).astype(np.int64)
    c0, r0 = np.maximum(c0, 0), np.maximum(r0, 0)
    c1, r1 = np.minimum(c1, w - 1), np.minimum(r1, h - 1)
    good &= (c0 <= c1) & (r0 <= r1)
    sel = np.flatnonzero(good)
    if sel.size == 0:
        return empty
    pi, fi, edge_n, verts = pi[sel], fi[sel], edge_n[sel], verts[sel]
    c0, c1, r0, r1 = c0[sel], c1[sel], r0[sel], r1[sel]
    nf = sel.size

    # face plane n . X = k (camera frame); inverse depth at pixel (u, v) is affine:
    # 1/z = (n_x (u - cx)/fx + n_y (v - cy)/fy + n_z) / k
    n = np.cross(verts[:, 1] - verts[:, 0], verts[:, 2] - verts[:, 0])
    k = np.einsum("fi,fi->f", n, verts[:, 0])
    iu = n[:, 0] / (view.fx * k)
    iv = n[:, 1] / (view.fy * k)
    i0 = n[:, 2] / k - iu * view.cx - iv * view.cy  # 1/z = iu u + iv v + i0

    # ---- spans: one per (face, row)
    nrows = r1 - r0 + 1
    pf = np.repeat(np.arange(nf), nrows)  # face of each pair
    starts = np.cumsum(nrows) - nrows
    v = (np.arange(pf.size) - np.repeat(starts - r0, nrows)).astype(np.float64)
    a = edge_n[:, :, 0] / view.fx  # (F, 4): E_i = a u + bv v + b0
    bv = edge_n[:, :, 1] / view.fy
    b0 = edge_n[:, :, 2] - a * view.cx - bv * view.cy
    ap = a[pf]
    bp = bv[pf] * v[:, None] + b0[pf]
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = -bp / ap
    lo = np.where(ap > 0, bound, -np.inf).max(axis=1)
    hi = np.where(ap < 0, bound, np.inf).min(axis=1)
    blocked = ((ap == 0) & (bp < 0)).any(axis=1)
    ulo = np.maximum(np.ceil(np.clip(lo, -1.0, w)).astype(np.int64), c0[pf])
    uhi = np.minimum(np.floor(np.clip(hi, -1.0, w)).astype(np.int64), c1[pf])
    length = np.where(blocked, 0, np.maximum(uhi - ulo + 1, 0))
    nz = np.flatnonzero(length)
    pf, v, ulo, length = pf[nz], v[nz], ulo[nz], length[nz]

    # ---- candidate pixels of all spans, packed (depth, face) keys, z-buffer
    total = int(length.sum())
    pstart = np.cumsum(length) - length
    off = np.arange(total, dtype=np.int32) - np.repeat(pstart.astype(np.int32), length)
    vi = v.astype(np.int64)
    pix = np.repeat((vi * w + ulo).astype(np.int32), length) + off
    inv0 = iu[pf] * ulo + iv[pf] * v + i0[pf]  # inverse depth at the span start
    inv = np.repeat(inv0.astype(np.float32), length)
    inv += np.repeat(iu[pf].astype(np.float32), length) * off.astype(np.float32)
    np.maximum(inv, np.float32(0.0), out=inv)  # rounding on edge-on faces: 0 = farthest
    # Positive float32 bit patterns are ordered like the values: nearer = larger 1/z
    # = smaller key. The low 32 bits hold the face number (deterministic tie-break).
    key = (_INF_BITS - inv.view(np.int32)).astype(np.int64) << 32
    key |= np.repeat(pf, length)
    crosses = verts[:, :, 2].min(axis=1) < near  # faces reaching in front of the near plane
    if crosses[pf].any():  # per-pixel near clipping, only needed for those faces
        key[inv > np.float32(1.0 / near)] = _KEY_EMPTY
    zbuf = np.full(hw, _KEY_EMPTY, dtype=np.int64)
    np.minimum.at(zbuf, pix, key)

    # ---- silhouettes of annotated objects: union of their spans, row by row
    silhouette = np.zeros(prep.num_objects, np.int64)
    span_inst = prep.instance[prim[pi[pf]]]
    m = span_inst >= 0
    if prep.num_objects and m.any():
        silhouette += _span_union_counts(
            span_inst[m], vi[m], ulo[m], ulo[m] + length[m] - 1, h, w, prep.num_objects
        )

    hit = zbuf != _KEY_EMPTY
    hk = zbuf[hit]
    inv_hit = (_INF_BITS - (hk >> 32)).astype(np.int32).view(np.float32)
    ok = inv_hit > 0  # numerically degenerate (edge-on) hits are dropped
    hit[hit] = ok
    hk, inv_hit = hk[ok], inv_hit[ok]
    box_depth = empty.box_depth
    box_depth[hit] = np.float32(1.0) / inv_hit
    face = empty.face
    face[hit] = (hk & 0xFFFFFFFF).astype(np.int32)
    return _Raster(face, prim[pi], fi, box_depth, silhouette)


def _span_union_counts(
    inst: np.ndarray, row: np.ndarray, lo: np.ndarray, hi: np.ndarray, h: int, w: int, n: int
) -> np.ndarray:
    """Pixels (n,) int64 covered by the union of spans ``[lo, hi]`` (inclusive columns)
    of each instance, counted per instance over the rows of the image."""
    group = inst.astype(np.int64) * h + row
    order = np.argsort(group * (w + 1) + lo, kind="stable")
    group, lo, hi, inst = group[order], lo[order], hi[order], inst[order]
    base = group * (w + 2)
    # running max of the span ends, offset by group so it restarts in each group
    run = np.maximum.accumulate(base + hi + 1)
    prev = np.empty_like(run)
    prev[0] = -1
    prev[1:] = run[:-1]
    prev_hi = np.maximum(prev - base - 1, -1)  # last covered column before this span
    new = np.maximum(hi - np.maximum(lo - 1, prev_hi), 0)
    return np.bincount(inst, weights=new, minlength=n)[:n].astype(np.int64)


def _ground_depth(view: _View) -> np.ndarray:
    """(HW,) float32 depth of the ground plane z = 0 along each pixel ray, inf if none."""
    dz = view.ray[2]
    hgt = view.centre[2]
    out = np.full(dz.shape, np.inf, dtype=np.float32)
    if hgt > 0:
        down = dz < -1e-12
        out[down] = -hgt / dz[down]
    return out


_TEX_SIZE = 256  # ground texture tile, cells of 1/12 m (21.3 m period)


def _ground_texture() -> np.ndarray:
    """Deterministic tileable ground texture (T * T,) float32 in ~[-1, 1]: fine grain
    plus blotches ~1.5 m wide (value noise, fixed seed; no global state)."""
    t = _TEX_SIZE
    gen = np.random.default_rng(0x5D2024)
    fine = gen.standard_normal((t, t))
    coarse = gen.standard_normal((t // 16, t // 16))
    for _ in range(2):  # smooth the coarse noise (wrap-around)
        coarse = (coarse + np.roll(coarse, 1, 0) + np.roll(coarse, -1, 0)
                  + np.roll(coarse, 1, 1) + np.roll(coarse, -1, 1)) / 5  # fmt: skip
    coarse /= coarse.std() + 1e-12
    # bilinear upsampling of the coarse noise to the tile
    pos = (np.arange(t) + 0.5) / 16 - 0.5
    i0 = np.floor(pos).astype(np.int64)
    fr = pos - i0
    i0 %= t // 16
    i1 = (i0 + 1) % (t // 16)
    rows = coarse[i0] * (1 - fr)[:, None] + coarse[i1] * fr[:, None]
    up = rows[:, i0] * (1 - fr)[None, :] + rows[:, i1] * fr[None, :]
    up /= up.std() + 1e-12
    tex = 0.55 * fine + 0.45 * up
    return np.clip(tex / 2.0, -1.0, 1.0).astype(np.float32).ravel()


def _shade_ground(
    prep: _FramePrep, view: _View, idx: np.ndarray, depth: np.ndarray, options: RenderOptions
) -> np.ndarray:
    """Colour (3, N) float32 of the ground seen at flat pixel indices ``idx`` (N,) with
    depths ``depth`` (N,)."""
    t = depth.astype(np.float64)
    x = view.ray[0].take(idx)
    x *= t
    x += view.centre[0]
    y = view.ray[1].take(idx)
    y *= t
    y += view.centre[1]
    gm = prep.ground
    if gm is not None:  # same lookup as GroundMap.material_at, without (N, 2) temporaries
        gh, gw = gm.material.shape
        col = np.floor((x - gm.x_min) / gm.resolution).astype(np.int64)
        row = np.floor((y - gm.y_min) / gm.resolution).astype(np.int64)
        inside = (col.view(np.uint64) < gw) & (row.view(np.uint64) < gh)
        flat = row * gw + col
        mat = np.where(inside, gm.material.take(flat, mode="clip"), np.uint8(Material.GRASS))
    else:
        mat = np.full(idx.size, Material.GRASS, dtype=np.uint8)
    light = options.lighting
    lit = light.ambient + light.diffuse * max(float(light.sun_direction[2]), 0.0)
    shade = np.full(idx.size, lit, dtype=np.float32)
    if prep.texture is not None and options.ground_texture > 0:
        tx = np.floor(x * 12.0).astype(np.int64) & (_TEX_SIZE - 1)
        ty = np.floor(y * 12.0).astype(np.int64) & (_TEX_SIZE - 1)
        tex = prep.texture.take(ty * _TEX_SIZE + tx)
        tex *= (options.ground_texture * _GROUND_TEXTURE).astype(np.float32).take(mat)
        shade *= 1.0 + tex
    sm = prep.shadow
    if sm is not None:
        size = sm.mask.shape[0]
        col = np.floor((x - sm.x_min) / sm.resolution).astype(np.int64)
        row = np.floor((y - sm.y_min) / sm.resolution).astype(np.int64)
        inside = (col.view(np.uint64) < size) & (row.view(np.uint64) < size)
        shadowed = inside & (sm.mask.take(row * size + col, mode="clip") > 0)
        shade[shadowed] *= np.float32(light.ambient / lit)
    out = np.empty((3, idx.size), dtype=np.float32)
    for c in range(3):
        np.multiply(_GROUND_ALBEDO[:, c].take(mat), shade, out=out[c])
    return out


def _shade_sky(view: _View, idx: np.ndarray, options: RenderOptions) -> np.ndarray:
    """Colour (3, N) float32 of the sky along the rays of flat pixel indices ``idx``."""
    r = view.ray[:, idx]
    elev = r[2] / np.sqrt((r * r).sum(axis=0))
    s = np.sqrt(np.clip(elev, 0.0, 1.0)).astype(np.float32)[None, :]
    zen = np.asarray(options.sky_zenith, dtype=np.float32)[:, None]
    hor = np.asarray(options.sky_horizon, dtype=np.float32)[:, None]
    return hor + s * (zen - hor)


def _gaussian_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) approximately standard-normal float32 noise: the Irwin-Hall sum of four
    uniform random bytes per value (cheaper than ``standard_normal``; tails cut at
    3.45 std). ``n`` must be even."""
    raw = np.frombuffer(rng.bytes(4 * n), dtype=np.uint64)  # 8 bytes -> 2 values
    m8, m16 = np.uint64(0x00FF00FF00FF00FF), np.uint64(0x0000FFFF0000FFFF)
    pairs = (raw & m8) + ((raw >> np.uint64(8)) & m8)  # four 16-bit sums of 2 bytes
    quads = (pairs & m16) + ((pairs >> np.uint64(16)) & m16)  # two 32-bit sums of 4
    out = quads.view(np.uint32).astype(np.float32)
    out -= np.float32(510.0)
    out *= np.float32(1.0 / 147.80)  # std of a sum of 4 uniform bytes
    return out


def _render_view(
    prep: _FramePrep, view: _View, rng: np.random.Generator, options: RenderOptions
) -> RenderResult:
    """Full render of one camera from the frame data."""
    w, h = view.width, view.height
    hw = w * h
    ras = _rasterize(prep, view)
    ground = _ground_depth(view)
    is_box = ras.box_depth < ground
    depth = np.where(is_box, ras.box_depth, ground)
    finite = np.isfinite(depth)
    rgb = np.empty((3, hw), dtype=np.float32)  # planar colour in [0, 1]

    # primitives: shaded face colour
    assert prep.palette is not None
    bidx = np.flatnonzero(is_box)
    bface = ras.face.take(bidx)
    pal = prep.palette[:, ras.face_prim * 6 + ras.face_num]  # (3, F) colours of the faces
    for c in range(3):
        rgb[c, bidx] = pal[c].take(bface)
    # ground and sky
    gidx = np.flatnonzero(finite & ~is_box)
    rgb[:, gidx] = _shade_ground(prep, view, gidx, depth[gidx], options)
    sidx = np.flatnonzero(~finite)
    rgb[:, sidx] = _shade_sky(view, sidx, options)

    # one per-pixel gain: contact shadow of primitives near the ground, vignetting
    gain = np.full(hw, np.float32(255.0))
    if options.contact_shadow > 0 and bidx.size:
        zw = view.ray[2].take(bidx)
        zw *= depth.take(bidx)
        zw += view.centre[2]
        np.maximum(zw, 0.0, out=zw)
        gain[bidx] -= np.float32(255.0 * options.contact_shadow) * np.exp(
            zw.astype(np.float32) * np.float32(-1.0 / options.contact_height)
        )
    if options.vignetting > 0:
        us = ((np.arange(w) - (w - 1) / 2) / (w / 2)).astype(np.float32)
        vs = ((np.arange(h) - (h - 1) / 2) / (w / 2)).astype(np.float32)
        r2 = us[None, :] ** 2 + vs[:, None] ** 2
        gain *= (1.0 - np.float32(0.5 * options.vignetting) * r2).ravel()
    # distance haze towards the horizon colour (sky: keep = 1)
    keep = np.where(finite, depth, np.float32(0.0))
    keep *= view.ray_norm
    keep *= np.float32(-1.0 / options.haze_distance)
    np.exp(keep, out=keep)
    fog = np.float32(1.0) - keep
    for c in range(3):
        rgb[c] *= keep
        rgb[c] += np.float32(options.sky_horizon[c]) * fog
        rgb[c] *= gain

    # sensor noise: shot (signal-dependent) + read noise, from the caller's rng
    img = rgb.reshape(-1)
    np.clip(img, 0.0, 255.0, out=img)
    sigma = img * np.float32(options.shot_noise)
    sigma += np.float32(options.read_noise**2)
    np.sqrt(sigma, out=sigma)
    sigma *= _gaussian_noise(rng, img.size + img.size % 2)[: img.size]
    img += sigma
    img += np.float32(0.5)
    np.clip(img, 0.0, 255.0, out=img)
    image = np.ascontiguousarray(img.astype(np.uint8).reshape(3, h, w).transpose(1, 2, 0))

    bprim = ras.face_prim.take(bface)
    inst = np.full(hw, -1, dtype=np.int32)
    inst[bidx] = prep.instance.take(bprim)
    visible = np.zeros(prep.num_objects, np.int64)
    seen = inst[inst >= 0]
    if prep.num_objects and seen.size:
        visible += np.bincount(seen, minlength=prep.num_objects)[: prep.num_objects]
    return RenderResult(
        image=image,
        instance_map=inst.reshape(h, w),
        depth=depth.reshape(h, w),
        visible_pixels=visible,
        silhouette_pixels=ras.silhouette,
    )


# --------------------------------------------------------------------------- public API


def render_cameras(
    state: FrameState,
    cameras: list[CameraConfig],
    rng: np.random.Generator,
    options: RenderOptions | None = None,
) -> list[RenderResult]:
    """Render several cameras of one frame, sharing the per-frame work (face colours,
    shadow raster). Gives byte-identical results to calling :func:`render_camera` on
    each camera in order with the same ``rng`` (the rng is used for sensor noise only,
    camera after camera).

    Args:
        state: the frame; primitives and ground in the world frame.
        cameras: cameras mounted on the ego (``sensor_to_ego``).
        rng: source of the sensor noise.
        options: appearance; default :class:`RenderOptions`.
    """
    opts = RenderOptions() if options is None else options
    prep = _prepare_frame(state, opts)
    return [_render_view(prep, _make_view(cam, prep.ego_to_world), rng, opts) for cam in cameras]


def render_camera(
    state: FrameState,
    camera: CameraConfig,
    rng: np.random.Generator,
    options: RenderOptions | None = None,
) -> RenderResult:
    """Render one camera image of a frame: image, instance map and depth.

    Visibility is exact per pixel centre (z-buffer); faces partly behind the camera are
    clipped at ``camera.near``. For several cameras of one frame prefer
    :func:`render_cameras`, which shares the per-frame work.

    Args:
        state: the frame; primitives and ground in the world frame.
        camera: camera mounted on the ego (``sensor_to_ego``).
        rng: source of the sensor noise (the only randomness).
        options: appearance; default :class:`RenderOptions`.
    """
    return render_cameras(state, [camera], rng, options)[0]


def visibility_from_renders(renders: list[RenderResult]) -> np.ndarray:
    """Visibility (num_objects,) float64 in [0, 1] of each annotated object over the
    given renders of one frame: visible pixels / unoccluded silhouette pixels, summed over
    cameras; 0 for objects no camera sees."""
    if not renders:
        return np.zeros(0)
    vis = np.sum([r.visible_pixels for r in renders], axis=0).astype(np.float64)
    sil = np.sum([r.silhouette_pixels for r in renders], axis=0).astype(np.float64)
    out = np.zeros_like(vis)
    np.divide(vis, sil, out=out, where=sil > 0)
    return np.clip(out, 0.0, 1.0)


def object_visibility(
    state: FrameState,
    cameras: list[CameraConfig],
    renders: list[RenderResult] | None = None,
) -> np.ndarray:
    """Fraction (num_objects,) float64 in [0, 1] of each annotated object's pixels that
    are visible, over all ``cameras``: pixels the object wins in the z-buffer divided by
    the pixels its silhouette alone would cover (occlusion by other primitives and by the
    ground counts; parts outside the images count neither way). 0 for objects that no
    camera sees.

    Args:
        state: the frame.
        cameras: the cameras to count over (e.g. the six of :func:`nuscenes_camera_rig`).
        renders: optional results of :func:`render_cameras` for exactly these cameras of
            this frame; they already hold the counts, so nothing is rasterised again.
            Without them only the geometry pass runs (no shading or noise).
    """
    if renders is not None:
        if len(renders) != len(cameras):
            raise ValueError("renders must match cameras one to one")
        return visibility_from_renders(renders)
    prep = _prepare_frame(state, None)
    vis = np.zeros(prep.num_objects, np.int64)
    sil = np.zeros(prep.num_objects, np.int64)
    for cam in cameras:
        view = _make_view(cam, prep.ego_to_world)
        ras = _rasterize(prep, view)
        sil += ras.silhouette
        is_box = ras.box_depth < _ground_depth(view)
        inst = prep.instance[ras.face_prim[ras.face[is_box]]]
        inst = inst[inst >= 0]
        if inst.size:
            vis += np.bincount(inst, minlength=prep.num_objects)[: prep.num_objects]
    out = np.zeros(prep.num_objects)
    np.divide(vis, sil, out=out, where=sil > 0)
    return np.clip(out, 0.0, 1.0)
