"""SynthDrive cameras: rig geometry, projection, z-buffered rendering, visibility.

All frames are hand-made (no dependency on the world generator); expected values are
computed independently here (pinhole projection, convex hulls, slab ray casting).
"""

from __future__ import annotations

import numpy as np
import pytest

from distill3d.synth.camera import (
    CameraConfig,
    Lighting,
    RenderOptions,
    _span_union_counts,
    camera_pose,
    format_kitti_calib,
    kitti_calibration,
    kitti_front_camera,
    kitti_lidar_to_ego,
    nuscenes_camera_rig,
    object_visibility,
    project_points,
    render_camera,
    render_cameras,
    rotation_to_quaternion,
)
from distill3d.synth.types import AnnotatedObject, FrameState, GroundMap, Material, Primitives

# ----------------------------------------------------------------------------- helpers


def _camera(width: int = 160, height: int = 100, f: float = 90.0, height_m: float = 1.5,
            pitch_deg: float = 0.0, yaw_deg: float = 0.0) -> CameraConfig:  # fmt: skip
    k = np.array([[f, 0, (width - 1) / 2 + 0.3], [0, f, (height - 1) / 2 - 0.2], [0, 0, 1.0]])
    return CameraConfig(
        "CAM_TEST", width, height, k, camera_pose((0.0, 0.0, height_m), yaw_deg, pitch_deg)
    )


def _state(boxes: list[tuple[float, ...]], instance: list[int] | None = None,
           ground: GroundMap | None = None) -> FrameState:  # fmt: skip
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    inst = np.asarray(instance if instance is not None else [-1] * len(b), dtype=np.int32)
    n_obj = int(inst.max()) + 1 if inst.size else 0
    objects = [
        AnnotatedObject(i, "car", "vehicle.car", "vehicle.parked", np.zeros(9))
        for i in range(n_obj)
    ]
    prims = Primitives(
        boxes=b,
        material=np.full(len(b), Material.VEHICLE_PAINT, np.int16),
        color=np.tile(np.array([[180, 60, 40]], np.uint8), (len(b), 1)),
        instance=inst,
    )
    return FrameState(0, np.eye(4), prims, objects, ground)


def _corners(box: tuple[float, ...]) -> np.ndarray:
    x, y, z, ln, w, h, yaw = box
    c, s = np.cos(yaw), np.sin(yaw)
    out = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            for sz in (-1, 1):
                lx, ly = sx * ln / 2, sy * w / 2
                out.append((x + c * lx - s * ly, y + s * lx + c * ly, z + sz * h / 2))
    return np.array(out)


def _pinhole(points_world: np.ndarray, cam: CameraConfig) -> tuple[np.ndarray, np.ndarray]:
    """Independent projection (ego = world here): p_cam = R^T (p - t), uv = K p / z."""
    r, t = cam.sensor_to_ego[:3, :3], cam.sensor_to_ego[:3, 3]
    p = (points_world - t) @ r
    uv = (p @ cam.intrinsics.T)[:, :2] / p[:, 2:3]
    return uv, p[:, 2]


def _hull(pts: np.ndarray) -> np.ndarray:
    """Convex hull (counter-clockwise in (u, v)) by Andrew's monotone chain."""
    pts = sorted(map(tuple, pts))

    def cross(o, a, b):  # noqa: ANN001, ANN202
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    upper: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _signed_distance(hull: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Signed distance bound of points q (N, 2) to a CCW convex polygon: > 0 inside
    (exact), < 0 outside (|d| is a lower bound of the true distance)."""
    d = np.full(len(q), np.inf)
    for i in range(len(hull)):
        a, b = hull[i], hull[(i + 1) % len(hull)]
        e = b - a
        n = np.array([-e[1], e[0]]) / np.linalg.norm(e)  # inward for CCW
        d = np.minimum(d, (q - a) @ n)
    return d


def _raycast(state: FrameState, cam: CameraConfig) -> tuple[np.ndarray, np.ndarray]:
    """Reference: per-pixel slab ray casting against every box and the ground.

    Returns depth (H, W) along the optical axis (inf: sky) and the index (H, W) of the
    hit primitive (-1: ground or sky)."""
    h, w = cam.height, cam.width
    k_inv = np.linalg.inv(cam.intrinsics)
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    d_cam = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1) @ k_inv.T  # z = 1
    r, o = cam.sensor_to_ego[:3, :3], cam.sensor_to_ego[:3, 3]
    d = d_cam @ r.T
    best = np.full(u.size, np.inf)
    which = np.full(u.size, -1)
    for i, b in enumerate(state.primitives.boxes):
        c, s = np.cos(b[6]), np.sin(b[6])
        rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])  # world -> box
        ol, dl = rot @ (o - b[:3]), d @ rot.T
        half = b[3:6] / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-half - ol) / dl, (half - ol) / dl
        tmin = np.nanmax(np.minimum(t1, t2), 1)
        tmax = np.nanmin(np.maximum(t1, t2), 1)
        inside = np.all(np.abs(ol) < half)
        hit = (tmax >= tmin) & (tmin >= cam.near) & ~inside  # entering a front face
        # near clipping: a ray entering before the near plane sees the box's far side
        # from inside, which back-face culling hides (we render closed solids)
        better = hit & (tmin < best)
        best[better], which[better] = tmin[better], i
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = np.where(d[:, 2] < 0, -o[2] / d[:, 2], np.inf)
    ground = tg < best
    best[ground], which[ground] = tg[ground], -1
    return best.reshape(h, w), which.reshape(h, w)


RNG = np.random.default_rng

# ----------------------------------------------------------------------------- rig


def test_rig_order_intrinsics_and_crop() -> None:
    rig = nuscenes_camera_rig()
    assert [c.name for c in rig] == ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT",
                                     "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]  # fmt: skip
    for cam in rig:
        assert (cam.width, cam.height) == (704, 256)
        assert cam.resize == pytest.approx(0.44)
        assert cam.crop == (0, 140, 704, 396)
        k0, k = cam.original_intrinsics, cam.intrinsics
        assert k[0, 0] == pytest.approx(0.44 * k0[0, 0]) and k[1, 1] == pytest.approx(
            0.44 * k0[1, 1]
        )
        assert k[0, 2] == pytest.approx(0.44 * k0[0, 2])
        assert k[1, 2] == pytest.approx(0.44 * k0[1, 2] - 140)
        # same point: project at 1600x900, scale and crop == project at 704x256
        pts = np.array([[12.0, 3.0, 1.0], [-9.0, -4.0, 0.5], [2.0, -15.0, 2.0], [3.0, 20.0, 0.2]])
        uv, z = project_points(pts, cam)
        full = CameraConfig("x", 1600, 900, k0, cam.sensor_to_ego)
        uv0, z0 = project_points(pts, full)
        ok = z > 0
        np.testing.assert_allclose(uv[ok], uv0[ok] * 0.44 - [0, 140], atol=1e-9)
        np.testing.assert_allclose(z, z0)
        f = k0[0, 0]
        assert (f == pytest.approx(809.0)) if cam.name == "CAM_BACK" else (1250 < f < 1280)
        assert 1.45 < cam.translation[2] < 1.65
        q = cam.rotation
        assert q.shape == (4,) and abs(np.linalg.norm(q) - 1) < 1e-12
    fov = {c.name: c.horizontal_fov_deg for c in rig}
    assert 62 < fov["CAM_FRONT"] < 67 and 87 < fov["CAM_BACK"] < 92
    with pytest.raises(ValueError):
        nuscenes_camera_rig((704, 400))
    big = nuscenes_camera_rig((1600, 900))[0]
    np.testing.assert_allclose(big.intrinsics, big.original_intrinsics)


def test_rig_orientation_and_quaternion() -> None:
    yaws = {"CAM_FRONT": 0, "CAM_FRONT_RIGHT": -55, "CAM_FRONT_LEFT": 55,
            "CAM_BACK": 180, "CAM_BACK_LEFT": 110, "CAM_BACK_RIGHT": -110}  # fmt: skip
    for cam in nuscenes_camera_rig():
        r = cam.sensor_to_ego[:3, :3]
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        fwd, down = r[:, 2], r[:, 1]
        assert np.degrees(np.arctan2(fwd[1], fwd[0])) == pytest.approx(
            yaws[cam.name], abs=1e-9
        ) or (
            cam.name == "CAM_BACK" and abs(abs(np.degrees(np.arctan2(fwd[1], fwd[0]))) - 180) < 1e-9
        )
        np.testing.assert_allclose(down, [0, 0, -1], atol=1e-12)
        w, x, y, z = cam.rotation  # quaternion -> matrix must give r back
        qm = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
        np.testing.assert_allclose(qm, r, atol=1e-12)
    rot = np.diag([1.0, -1.0, -1.0])  # 180 deg about x: the trace <= 0 branches
    np.testing.assert_allclose(np.abs(rotation_to_quaternion(rot)), [0, 1, 0, 0], atol=1e-12)


def test_rig_covers_360_degrees_with_overlaps() -> None:
    rig = nuscenes_camera_rig()
    az = np.radians(np.arange(0.0, 360.0, 0.25))
    seen = np.zeros((len(rig), az.size), bool)
    for radius in (15.0, 40.0):
        pts = np.stack([radius * np.cos(az), radius * np.sin(az), np.full(az.size, 1.0)], 1)
        for i, cam in enumerate(rig):
            uv, z = project_points(pts, cam)
            inside = (z > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= cam.width - 0.5)
            inside &= (uv[:, 1] >= -0.5) & (uv[:, 1] <= cam.height - 0.5)
            seen[i] |= inside
        assert seen.any(axis=0).all(), "an azimuth is seen by no camera"
    names = [c.name for c in rig]
    for a, b in [("CAM_FRONT", "CAM_FRONT_LEFT"), ("CAM_FRONT", "CAM_FRONT_RIGHT"),
                 ("CAM_FRONT_LEFT", "CAM_BACK_LEFT"), ("CAM_FRONT_RIGHT", "CAM_BACK_RIGHT"),
                 ("CAM_BACK_LEFT", "CAM_BACK"), ("CAM_BACK_RIGHT", "CAM_BACK")]:  # fmt: skip
        both = (seen[names.index(a)] & seen[names.index(b)]).sum() * 0.25
        assert 4.0 <= both <= 20.0, (a, b, both)  # nuScenes: neighbours overlap by ~5-10 deg


def test_project_points() -> None:
    cam = _camera(pitch_deg=10.0, yaw_deg=30.0)
    rng = RNG(1)
    pts = rng.uniform(-20, 20, (50, 3))
    uv, z = project_points(pts, cam)
    uv_ref, z_ref = _pinhole(pts, cam)
    ok = z > 0
    np.testing.assert_allclose(z, z_ref)
    np.testing.assert_allclose(uv[ok], uv_ref[ok], rtol=1e-10, atol=1e-9)
    assert np.isnan(uv[~ok]).all() and (~ok).any()
    # the principal axis projects to the principal point
    ahead = cam.sensor_to_ego[:3, 3] + 7.0 * cam.sensor_to_ego[:3, 2]
    uv1, z1 = project_points(ahead[None], cam)
    np.testing.assert_allclose(uv1[0], cam.intrinsics[:2, 2], atol=1e-9)
    assert z1[0] == pytest.approx(7.0)


def test_kitti_camera_and_calibration() -> None:
    velo = kitti_lidar_to_ego()
    cam = kitti_front_camera()
    assert (cam.width, cam.height) == (1242, 375)
    assert cam.intrinsics[0, 0] == pytest.approx(721.54)
    assert cam.translation[2] == pytest.approx(1.65)
    calib = kitti_calibration(cam, velo)
    rng = RNG(2)
    x_velo = np.c_[rng.uniform(5, 40, 30), rng.uniform(-10, 10, 30), rng.uniform(-1.5, 1, 30)]
    xh = np.c_[x_velo, np.ones(len(x_velo))]
    p = calib["P2"] @ np.vstack(
        [calib["R0_rect"] @ (calib["Tr_velo_to_cam"] @ xh.T), np.ones(len(xh))]
    )
    uv_kitti = (p[:2] / p[2]).T
    uv, z = project_points(x_velo @ velo[:3, :3].T + velo[:3, 3], cam)
    np.testing.assert_allclose(uv_kitti, uv, atol=1e-6)
    # cam0 (reference) is 6 cm right of cam2; Tr_velo_to_cam maps the velodyne origin
    # 0.27 m behind and 0.08 m above cam0, as in KITTI
    origin_cam0 = calib["Tr_velo_to_cam"][:, 3]
    np.testing.assert_allclose(origin_cam0, [0.0, -0.08, -0.27], atol=1e-9)
    assert calib["P2"][0, 3] == pytest.approx(721.54 * 0.06)
    assert calib["P1"][0, 3] < 0 and calib["P3"][0, 3] < 0
    text = format_kitti_calib(calib)
    lines = text.strip().split("\n")
    assert [ln.split(":")[0] for ln in lines] == [
        "P0",
        "P1",
        "P2",
        "P3",
        "R0_rect",
        "Tr_velo_to_cam",
        "Tr_imu_to_velo",
    ]
    assert [len(ln.split()) - 1 for ln in lines] == [12, 12, 12, 12, 9, 12, 12]
    small = kitti_front_camera((621, 188))
    assert small.intrinsics[0, 0] == pytest.approx(721.54 / 2)


# ----------------------------------------------------------------------------- rendering


def test_box_ahead_matches_projected_hull() -> None:
    cam = _camera()
    box = (9.0, 0.7, 1.0, 4.0, 1.8, 1.6, np.radians(35.0))
    state = _state([box], [0])
    res = render_camera(state, cam, RNG(0))
    assert res.image.shape == (100, 160, 3) and res.image.dtype == np.uint8
    assert res.instance_map.dtype == np.int32 and res.depth.dtype == np.float32
    uv, z = _pinhole(_corners(box), cam)
    assert (z > 0).all()
    hull = _hull(uv)
    u, v = np.meshgrid(np.arange(cam.width), np.arange(cam.height))
    sd = _signed_distance(hull, np.stack([u.ravel(), v.ravel()], 1)).reshape(u.shape)
    mask = res.instance_map == 0
    assert mask[sd > 1.0].all(), "pixels well inside the projected hull must show the box"
    assert not mask[sd < -1.0].any(), "pixels well outside the projected hull must not"
    assert mask.sum() == pytest.approx((sd > 0).sum(), rel=0.05)
    assert res.visible_pixels[0] == mask.sum() == res.silhouette_pixels[0]


def test_depth_matches_analytic_ray_casting() -> None:
    cam = _camera(pitch_deg=4.0)
    boxes = [
        (9.0, 0.7, 1.0, 4.0, 1.8, 1.6, 0.6),
        (15.0, -3.0, 2.0, 2.0, 2.0, 4.0, -0.3),
        (6.0, -0.6, 0.4, 0.8, 0.8, 0.8, 0.0),  # in front of the big box
        (9.0, 0.7, 2.0, 2.0, 1.4, 0.8, 0.6),  # cabin intersecting the body
        (12.0, 4.5, 0.0, 1.0, 1.0, 1.0, 0.2),  # half below the ground
    ]
    state = _state(boxes, list(range(len(boxes))))
    res = render_camera(state, cam, RNG(0))
    ref_depth, ref_which = _raycast(state, cam)
    finite = np.isfinite(ref_depth)
    assert (np.isfinite(res.depth) == finite).all()
    rel = np.abs(res.depth[finite] - ref_depth[finite]) / ref_depth[finite]
    # a pixel centre exactly on a silhouette edge could resolve either way; allow 0.1 %
    assert (rel < 1e-5).mean() > 0.999
    assert (res.instance_map == ref_which).mean() > 0.999
    for i in range(len(boxes)):  # every box, the half-buried one included, is seen
        assert (ref_which == i).sum() > 20
        assert abs(int((res.instance_map == i).sum()) - int((ref_which == i).sum())) <= 2
    # spot check against a closed form: the ground below the horizon in a free column
    col = 150
    assert (ref_which[:, col] == -1).all()
    o, r = cam.sensor_to_ego[:3, 3], cam.sensor_to_ego[:3, :3]
    for row in (60, 75, 99):
        d = r @ (np.linalg.inv(cam.intrinsics) @ [col, row, 1.0])  # camera z = 1
        assert res.depth[row, col] == pytest.approx(-o[2] / d[2], rel=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_random_scenes_match_ray_casting(seed: int) -> None:
    """Random boxes (intersecting, straddling the camera, behind it, below the ground,
    containing it) under random poses and near planes: the z-buffer equals ray casting."""
    rng = RNG(seed)
    n = 40
    boxes = [
        (rng.uniform(-15, 25), rng.uniform(-10, 10), rng.uniform(-0.5, 4), rng.uniform(0.1, 6),
         rng.uniform(0.1, 4), rng.uniform(0.1, 3), rng.uniform(-3, 3))
        for _ in range(n)
    ]  # fmt: skip
    cam = _camera(
        pitch_deg=rng.uniform(-10, 10), yaw_deg=rng.uniform(-30, 30), height_m=rng.uniform(0.5, 3)
    )
    cam.near = float(rng.choice([0.1, 1.0]))
    state = _state(boxes, list(range(n)))
    res = render_camera(state, cam, RNG(0))
    ref_depth, ref_which = _raycast(state, cam)
    assert (res.instance_map == ref_which).mean() > 0.999
    finite = np.isfinite(ref_depth)
    assert (np.isfinite(res.depth) == finite).all()
    rel = np.abs(res.depth[finite] - ref_depth[finite]) / ref_depth[finite]
    assert (rel < 1e-5).mean() > 0.999


def test_ego_pose_is_applied() -> None:
    """Moving the ego and the world by the same rigid motion changes nothing."""
    cam = _camera(pitch_deg=3.0)
    boxes = np.array([(9.0, 0.7, 1.0, 4.0, 1.8, 1.6, 0.6), (15.0, -3.0, 2.0, 2.0, 2.0, 4.0, -0.3)])
    a = render_camera(_state(list(map(tuple, boxes)), [0, 1]), cam, RNG(0))
    yaw, t = 1.1, np.array([120.0, -40.0, 0.0])
    rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    moved = boxes.copy()
    moved[:, :3] = boxes[:, :3] @ rot.T + t
    moved[:, 6] += yaw
    state = _state(list(map(tuple, moved)), [0, 1])
    state.ego_to_world = np.eye(4)
    state.ego_to_world[:3, :3], state.ego_to_world[:3, 3] = rot, t
    b = render_camera(state, cam, RNG(0))
    assert (a.instance_map == b.instance_map).mean() > 0.999
    finite = np.isfinite(a.depth)
    assert (np.isfinite(b.depth) == finite).all()
    np.testing.assert_allclose(b.depth[finite], a.depth[finite], rtol=1e-5)
    # project_points works in the ego frame: a box centre lands on its own pixels
    uv, _ = project_points(boxes[:1, :3], cam)
    u, v = np.round(uv[0]).astype(int)
    assert b.instance_map[v, u] == 0


def test_nearer_box_occludes_farther() -> None:
    cam = _camera()
    far = (20.0, 0.0, 1.5, 2.0, 6.0, 3.0, 0.0)  # front face +-14 px wide, near +-4.7 px
    near = (10.0, 0.0, 1.0, 1.0, 1.0, 2.0, 0.0)
    state = _state([far, near], [0, 1])
    res = render_camera(state, cam, RNG(0))
    vc, uc = int(round(cam.intrinsics[1, 2])), int(round(cam.intrinsics[0, 2]))
    assert res.instance_map[vc, uc] == 1
    assert res.depth[vc, uc] == pytest.approx(9.5, rel=1e-5)
    # the far box is visible around the near one, at its own depth
    assert res.instance_map[vc, uc + 10] == 0
    assert res.depth[vc, uc + 10] == pytest.approx(19.0, rel=1e-5)
    # order of primitives does not matter
    swapped = render_camera(_state([near, far], [1, 0]), cam, RNG(0))
    assert np.array_equal(swapped.instance_map, res.instance_map)
    np.testing.assert_array_equal(swapped.depth, res.depth)


def test_box_partly_behind_camera_is_clipped() -> None:
    cam = _camera()
    # a long wall on the left from 10 m behind to 10 m ahead, and a box straddling the
    # camera plane on the right; a box around the camera and one fully behind it
    boxes = [
        (0.0, 3.0, 2.0, 20.0, 0.4, 4.0, 0.0),
        (0.0, -2.5, 1.0, 6.0, 1.0, 2.0, 0.3),
        (0.0, 0.0, 1.5, 1.0, 1.0, 1.0, 0.0),  # contains the camera: all faces culled
        (-8.0, 0.0, 1.0, 2.0, 2.0, 2.0, 0.0),  # fully behind
    ]
    state = _state(boxes, [0, 1, 2, 3])
    res = render_camera(state, cam, RNG(0))
    ref_depth, ref_which = _raycast(state, cam)
    assert (res.instance_map == 3).sum() == 0 and (res.instance_map == 2).sum() == 0
    assert (res.instance_map == ref_which).mean() > 0.999
    finite = np.isfinite(ref_depth)
    rel = np.abs(res.depth[finite] - ref_depth[finite]) / ref_depth[finite]
    assert (rel < 1e-5).mean() > 0.999
    # the wall reaches the left image border, the straddling box the right one
    assert (res.instance_map[:, 0] == 0).any() and (res.instance_map[:, -1] == 1).any()
    assert res.depth[res.instance_map >= 0].min() >= cam.near


def test_near_plane_clips_pixels() -> None:
    cam = _camera()
    cam.near = 2.0
    # a wide thin plate 1.2 m ahead (inside the near plane) in front of a box at 8 m
    state = _state(
        [(1.7, 0.0, 1.5, 0.2, 6.0, 4.0, 0.0), (8.0, 0.0, 1.5, 1.0, 2.0, 2.0, 0.0)], [0, 1]
    )
    res = render_camera(state, cam, RNG(0))
    assert (res.instance_map == 0).sum() == 0
    vc, uc = int(round(cam.intrinsics[1, 2])), int(round(cam.intrinsics[0, 2]))
    assert res.instance_map[vc, uc] == 1


def test_horizon_row_matches_height_and_pitch() -> None:
    for pitch in (0.0, 6.0, -3.0):
        cam = _camera(height_m=1.6, pitch_deg=pitch)
        res = render_camera(_state([]), cam, RNG(0))
        f, cy = cam.intrinsics[1, 1], cam.intrinsics[1, 2]
        v_h = cy - f * np.tan(np.radians(pitch))
        first_ground = int(np.floor(v_h)) + 1
        assert np.isinf(res.depth[:first_ground]).all()
        assert np.isfinite(res.depth[first_ground:]).all()
        # ground depth along the optical axis: z = h cos(p) ... solved per row
        for v in range(first_ground + 2, cam.height, 17):
            ang = np.arctan((v - cy) / f) + np.radians(pitch)  # ray angle below horizontal
            dist = 1.6 / np.sin(ang)
            z = dist * np.cos(np.arctan((v - cy) / f))  # along the optical axis
            assert res.depth[v, 5] == pytest.approx(z, rel=1e-5)
    # nuScenes rig: the horizon is at cy = 0.44 * 491 - 140 = 76.04 in CAM_FRONT
    front = nuscenes_camera_rig()[0]
    res = render_camera(_state([]), front, RNG(0))
    assert np.isinf(res.depth[:77]).all() and np.isfinite(res.depth[77:]).all()


def test_shading_sky_ground_and_faces() -> None:
    cam = _camera(height_m=3.0, pitch_deg=10.0)
    gm = np.full((200, 400), Material.ROAD, np.uint8)
    gm[95:105, :] = Material.LANE_MARKING  # a 1 m wide marking along x at y = -0.5..0.5
    gm[:40, :] = Material.GRASS
    ground = GroundMap(gm, x_min=0.0, y_min=-10.0, resolution=0.1)
    state = _state([(12.0, -3.0, 1.0, 2.0, 2.0, 2.0, 0.5)], [0], ground)
    opts = RenderOptions(read_noise=0.0, shot_noise=0.0, vignetting=0.0)
    res = render_camera(state, cam, RNG(0), opts)
    img = res.image.astype(float)
    sky = img[np.isinf(res.depth)]
    assert (sky[:, 2] > sky[:, 0]).all(), "sky is blue"
    # marking brighter than the asphalt next to it, both at the same depth band
    uv, z = project_points(np.array([[8.0, 0.0, 0.0], [8.0, 2.0, 0.0], [16.0, -7.5, 0.0]]), cam)
    (um, vm), (ur, vr), (ug, vg) = np.round(uv).astype(int)
    assert img[vm, um].mean() > img[vr, ur].mean() + 60
    assert img[vg, ug, 1] > img[vg, ug, 2] + 20, "grass is green"
    # two faces of the box differ in brightness (sun from the side, sky from above)
    face_vals = {}
    for f in _visible_face_pixels(state, cam, res):
        face_vals[f[0]] = f[1]
    assert len(face_vals) >= 2
    vals = sorted(face_vals.values())
    assert vals[-1] - vals[0] > 15


def _visible_face_pixels(state: FrameState, cam: CameraConfig, res) -> list[tuple[int, float]]:  # noqa: ANN001
    """Mean grey value of the pixels of each visible face of box 0 (by face normal)."""
    b = state.primitives.boxes[0]
    h, w = cam.height, cam.width
    k_inv = np.linalg.inv(cam.intrinsics)
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    d = (np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1) @ k_inv.T) @ cam.sensor_to_ego[
        :3, :3
    ].T
    depth = np.where(np.isfinite(res.depth), res.depth, 0.0).reshape(-1, 1)
    p = cam.sensor_to_ego[:3, 3] + depth * d
    c, s = np.cos(b[6]), np.sin(b[6])
    rel = p - b[:3]
    local = np.stack([rel[:, 0] * c + rel[:, 1] * s, -rel[:, 0] * s + rel[:, 1] * c, rel[:, 2]], 1)
    on_box = res.instance_map.reshape(-1) == 0
    out = []
    grey = res.image.reshape(-1, 3).mean(1)
    for axis in range(3):
        for sign in (-1, 1):
            m = on_box & (np.abs(local[:, axis] - sign * b[3 + axis] / 2) < 1e-3)
            if m.sum() > 20:
                out.append((axis * 2 + (sign > 0), float(grey[m].mean())))
    return out


def test_deterministic_and_camera_order() -> None:
    rig = nuscenes_camera_rig((352, 128))
    boxes = [
        (8.0 * np.cos(a), 8.0 * np.sin(a), 1.0, 4.0, 1.9, 1.6, a) for a in np.linspace(0, 6, 7)
    ]
    ground = GroundMap(np.full((100, 100), Material.ROAD, np.uint8), -50.0, -50.0, 1.0)
    state = _state(boxes, list(range(7)), ground)
    a = render_cameras(state, rig, RNG(7))
    b = render_cameras(state, rig, RNG(7))
    rng = RNG(7)
    c = [render_camera(state, cam, rng) for cam in rig]
    for x, y, z in zip(a, b, c):
        assert x.image.tobytes() == y.image.tobytes() == z.image.tobytes()
        assert x.instance_map.tobytes() == z.instance_map.tobytes()
        assert x.depth.tobytes() == z.depth.tobytes()
    d = render_cameras(state, rig, RNG(8))
    assert any(x.image.tobytes() != y.image.tobytes() for x, y in zip(a, d))  # noise differs
    assert all(np.array_equal(x.depth, y.depth) for x, y in zip(a, d))  # geometry does not
    # mild noise: same scene, noise-free render differs by a few levels only
    clean = render_cameras(state, rig, RNG(7), RenderOptions(read_noise=0.0, shot_noise=0.0))
    diff = np.abs(a[0].image.astype(int) - clean[0].image.astype(int))
    assert 0.5 < diff.mean() < 4.0


def test_object_visibility_lone_and_half_hidden() -> None:
    cam = _camera(height_m=1.0)
    # a lone box: fully visible
    lone = _state([(15.0, 0.0, 1.0, 1.0, 2.0, 2.0, 0.0)], [0])
    assert object_visibility(lone, [cam])[0] == pytest.approx(1.0)
    # the same box with its left half (y > 0) hidden behind a scenery wall at 8 m
    target = (15.0, 0.0, 1.0, 1.0, 2.0, 2.0, 0.0)
    wall = (8.0, 1.5, 1.5, 0.2, 3.0, 4.0, 0.0)  # covers y in [0, 3] at x = 8
    state = _state([target, wall], [0, -1])
    vis = object_visibility(state, [cam])
    assert vis[0] == pytest.approx(0.5, abs=0.04)
    renders = render_cameras(state, [cam], RNG(0))
    np.testing.assert_array_equal(object_visibility(state, [cam], renders), vis)
    # an object that no camera sees gets 0; several cameras are pooled
    behind = _state([target, (-15.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0)], [0, 1])
    assert object_visibility(behind, [cam]).tolist() == [1.0, 0.0]
    back = _camera(height_m=1.0, yaw_deg=180.0)
    np.testing.assert_allclose(object_visibility(behind, [cam, back]), [1.0, 1.0])
    # a composite object (body + overlapping cabin) alone is fully visible
    car = _state(
        [(12.0, 0.0, 0.6, 4.0, 1.8, 0.8, 0.4), (11.8, 0.0, 1.2, 2.0, 1.6, 0.6, 0.4)], [0, 0]
    )
    assert object_visibility(car, [cam])[0] == pytest.approx(1.0)


def test_span_union_counts_brute_force() -> None:
    rng = RNG(3)
    n, h, w = 5, 7, 30
    inst = rng.integers(0, n, 300)
    row = rng.integers(0, h, 300)
    lo = rng.integers(0, w, 300)
    hi = np.minimum(lo + rng.integers(0, 8, 300), w - 1)
    got = _span_union_counts(inst, row, lo, hi, h, w, n)
    want = np.zeros(n, int)
    for k in range(n):
        cells = {(r, c) for i, r, a, b in zip(inst, row, lo, hi) if i == k for c in range(a, b + 1)}
        want[k] = len(cells)
    np.testing.assert_array_equal(got, want)


def test_empty_and_degenerate_inputs() -> None:
    cam = _camera()
    res = render_camera(_state([]), cam, RNG(0), RenderOptions(lighting=Lighting(shadows=False)))
    assert (res.instance_map == -1).all()
    assert res.visible_pixels.shape == (0,)
    # flat (zero-height) and zero-size boxes do not break the rasteriser
    flat = _state(
        [(10.0, 0.0, 0.5, 2.0, 2.0, 0.0, 0.0), (10.0, 3.0, 0.5, 0.0, 0.0, 0.0, 0.0)], [0, 1]
    )
    res = render_camera(flat, cam, RNG(0))
    assert np.isfinite(res.depth[res.instance_map >= 0]).all()
    assert (res.instance_map == 1).sum() == 0
