"""Augmentation recorded as matrices (``distill3d.data.transforms``).

The invariants checked after every augmentation (and random compositions, several seeds):
every box holds the same points (by a point-id column added here), LiDAR points project to
the same pixels of the transformed images, ``bev_transform`` maps original geometry to the
augmented one and back, yaw stays wrapped, the input Sample is untouched, and the same seed
gives the same result. Image augmentation is checked against explicit pixel arithmetic and
against the warped pixels themselves; beam assignment against SynthDrive's true ring index;
GT sampling for collisions, point ownership and the sample_groups / min_points limits.
"""

from __future__ import annotations

import copy
import glob
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distill3d.data.dataset import DetectionDataset
from distill3d.data.sample import CameraView, Sample
from distill3d.data.transforms import (
    BeamDownsample,
    Compose,
    GlobalRotScaleTrans,
    GTSampling,
    ImageAug,
    ImageAugParams,
    ObjectNameFilter,
    ObjectRangeFilter,
    PointRangeFilter,
    PointShuffle,
    RandomFlip3D,
    apply_bev_transform,
    build_gt_database,
    camera_projection,
    estimate_beam_index,
    original_intrinsics,
)
from distill3d.geometry import box_iou_bev, points_in_boxes

FEATURES = ("x", "y", "z", "intensity", "pid")
CLASSES = ("car", "pedestrian", "cyclist")
PID = FEATURES.index("pid")


# --------------------------------------------------------------------------------------
# hand-made samples
# --------------------------------------------------------------------------------------


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _camera(name: str, yaw: float, g: np.random.Generator, dtype: torch.dtype) -> CameraView:
    """A camera at (0.2, 0, -0.1) looking along the LiDAR direction ``yaw``."""
    # camera axes (x right, y down, z forward) expressed in the LiDAR frame
    fwd = _rot_z(yaw) @ np.array([1.0, 0.0, 0.0])
    right = _rot_z(yaw) @ np.array([0.0, -1.0, 0.0])
    down = np.array([0.0, 0.0, -1.0])
    r_cam_from_lidar = np.stack((right, down, fwd))
    position = np.array([0.2, 0.0, -0.1])
    l2c = np.eye(4)
    l2c[:3, :3] = r_cam_from_lidar
    l2c[:3, 3] = -r_cam_from_lidar @ position
    k = np.array([[300.0, 0.0, 159.5], [0.0, 310.0, 61.0], [0.0, 0.0, 1.0]])
    image = torch.from_numpy(g.integers(0, 256, size=(3, 120, 320), dtype=np.uint8))
    return CameraView(name=name, image=image, intrinsics=torch.tensor(k, dtype=dtype),
                      lidar_to_camera=torch.tensor(l2c, dtype=dtype),
                      image_transform=torch.eye(3, dtype=dtype), original_size=(320, 120))


def make_sample(seed: int, dtype: torch.dtype = torch.float64, n_boxes: int = 6,
                n_background: int = 3000, cameras: bool = True, token: str | None = None) -> Sample:
    """Boxes on a jittered grid (no overlap), 150-250 points inside each box (at least 4 %
    of a size away from every face), background points at least 0.1 m away from every box,
    a ``pid`` column, two cameras, per-box extras and an ``other_boxes`` entry."""
    g = np.random.default_rng(seed)
    cells = [(x, y) for x in range(-24, 25, 12) for y in range(-24, 25, 12) if (x, y) != (0, 0)]
    chosen = g.choice(len(cells), size=n_boxes, replace=False)
    boxes = []
    for c in chosen:
        cx, cy = cells[int(c)]
        l, w, h = g.uniform(3.0, 5.0), g.uniform(1.5, 2.2), g.uniform(1.4, 2.0)
        boxes.append([cx + g.uniform(-1, 1), cy + g.uniform(-1, 1), h / 2 - 1.8, l, w, h,
                      g.uniform(-math.pi, math.pi), g.normal(0, 3), g.normal(0, 3)])
    boxes_np = np.asarray(boxes, dtype=np.float64).reshape(-1, 9)
    if n_boxes:
        boxes_np[0, 7:9] = np.nan
    parts = []
    for b in boxes_np:
        n = int(g.integers(150, 250))
        local = g.uniform(-0.46, 0.46, size=(n, 3)) * b[3:6]
        xyz = local @ _rot_z(b[6]).T + b[:3]
        parts.append(xyz)
    bg = np.column_stack((g.uniform(-40, 40, n_background), g.uniform(-40, 40, n_background),
                          g.uniform(-1.8, 2.0, n_background)))
    if n_boxes:
        grown = torch.tensor(boxes_np[:, :7]).clone()
        grown[:, 3:6] += 0.2
        bg = bg[~points_in_boxes(torch.from_numpy(bg), grown).any(dim=1).numpy()]
    xyz = np.concatenate(parts + [bg])
    n = xyz.shape[0]
    points = np.column_stack((xyz, g.uniform(0, 1, n), np.arange(n, dtype=np.float64)))
    views = [_camera("CAM_A", 0.0, g, dtype), _camera("CAM_B", 2.0, g, dtype)] if cameras else []
    labels = torch.from_numpy(g.integers(0, len(CLASSES), size=n_boxes))
    extras = {
        "difficulty": torch.arange(n_boxes, dtype=torch.int64),
        "instance_tokens": [f"inst{i}" for i in range(n_boxes)],
        "other_boxes": torch.tensor([[35.0, 35.0, -1.0, 4.0, 2.0, 1.6, 0.3]], dtype=dtype),
        "scene_token": "scene-x",
    }
    return Sample(token=token or f"s{seed}", points=torch.tensor(points, dtype=dtype),
                  boxes=torch.tensor(boxes_np, dtype=dtype), labels=labels, class_names=CLASSES,
                  point_features=FEATURES, cameras=views, bev_transform=torch.eye(4, dtype=dtype),
                  extras=extras)


def snapshot(sample: Sample) -> dict:
    """Deep copies of every tensor of a sample, to prove it was not modified."""
    return copy.deepcopy({
        "points": sample.points, "boxes": sample.boxes, "labels": sample.labels,
        "num_points": sample.num_points, "bev": sample.bev_transform,
        "cams": [(c.image, c.intrinsics, c.lidar_to_camera, c.image_transform) for c in sample.cameras],
        "extras": {k: v for k, v in sample.extras.items() if k != "calib"},
        "features": sample.point_features,
    })


def assert_same_snapshot(a: dict, b: dict) -> None:
    for key in ("points", "boxes", "labels", "num_points", "bev"):
        assert torch.equal(a[key].nan_to_num(123.0) if a[key].is_floating_point() else a[key],
                           b[key].nan_to_num(123.0) if b[key].is_floating_point() else b[key]), key
    for ca, cb in zip(a["cams"], b["cams"]):
        for ta, tb in zip(ca, cb):
            assert torch.equal(ta, tb)
    assert a["features"] == b["features"]
    assert a["extras"].keys() == b["extras"].keys()
    for k in a["extras"]:
        va, vb = a["extras"][k], b["extras"][k]
        if isinstance(va, torch.Tensor):
            assert torch.equal(va.nan_to_num(1.0) if va.is_floating_point() else va,
                               vb.nan_to_num(1.0) if vb.is_floating_point() else vb), k
        else:
            assert va == vb, k


def membership(sample: Sample) -> list[set[int]]:
    """For each box, the ids of the points inside it."""
    pid_col = sample.feature_index("pid") if "pid" in sample.point_features else None
    inside = points_in_boxes(sample.points, sample.boxes)
    pids = (sample.points[:, pid_col].round().long() if pid_col is not None
            else torch.arange(sample.points.shape[0]))
    return [set(pids[inside[:, m]].tolist()) for m in range(sample.boxes.shape[0])]


def project(points_xyz: torch.Tensor, proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``(N, 2)`` and depth ``(N,)`` of points through a ``(3, 4)`` projection (float64)."""
    p = points_xyz.to(torch.float64) @ proj[:, :3].to(torch.float64).T + proj[:, 3].to(torch.float64)
    return p[:, :2] / p[:, 2:3], p[:, 2]


def explicit_pixel_aug(uv: torch.Tensor, p: ImageAugParams) -> torch.Tensor:
    """The image augmentation applied to pixel coordinates by explicit arithmetic (pixel
    centres at integers): resize by the actual size ratio, crop, flip, rotate."""
    u = uv[:, 0].clone()
    v = uv[:, 1].clone()
    sx = p.resized_size[0] / p.input_size[0]
    sy = p.resized_size[1] / p.input_size[1]
    u = (u + 0.5) * sx - 0.5
    v = (v + 0.5) * sy - 0.5
    u = u - p.crop[0]
    v = v - p.crop[1]
    fw, fh = p.final_size
    if p.flip:
        u = (fw - 1) - u
    a = math.radians(p.rotate_deg)
    cx, cy = (fw - 1) / 2, (fh - 1) / 2
    du, dv = u - cx, v - cy
    u = cx + math.cos(a) * du + math.sin(a) * dv
    v = cy - math.sin(a) * du + math.cos(a) * dv
    return torch.stack((u, v), dim=1)


# --------------------------------------------------------------------------------------
# the invariant checks
# --------------------------------------------------------------------------------------


def check_bev_invariants(original: Sample, augmented: Sample, pixel_tol: float = 1e-3,
                         point_tol: float = 1e-6, same_membership: bool = True) -> None:
    """Membership, bev_transform forward/back, yaw range and pixel consistency."""
    a = augmented.bev_transform.to(torch.float64)
    # membership: same point ids in every box (boxes are matched by order)
    if same_membership:
        assert membership(original) == membership(augmented)
    # yaw wrapped
    yaw = augmented.boxes[:, 6]
    assert bool(((yaw >= -math.pi) & (yaw < math.pi)).all())
    # bev_transform maps original centres to augmented centres
    centres = original.boxes[:, :3].to(torch.float64) @ a[:3, :3].T + a[:3, 3]
    torch.testing.assert_close(centres, augmented.boxes[:, :3].to(torch.float64),
                               atol=point_tol * 100, rtol=0)
    # inverse(bev_transform) recovers the original points (matched by id)
    pid = original.feature_index("pid")
    ids_o = original.points[:, pid].round().long()
    row_of = torch.full((int(ids_o.max()) + 1,), -1, dtype=torch.long)
    row_of[ids_o] = torch.arange(ids_o.numel())
    rows = row_of[augmented.points[:, pid].round().long()]
    assert bool((rows >= 0).all())
    inv = torch.linalg.inv(a)
    back = augmented.points[:, :3].to(torch.float64) @ inv[:3, :3].T + inv[:3, 3]
    torch.testing.assert_close(back, original.points[rows, :3].to(torch.float64),
                               atol=point_tol * 100, rtol=0)
    # every point projects to the same pixel of every (transformed) image: the original
    # pixel mapped by the image augmentation recorded since (image_transform relative to
    # the original camera's)
    for cam_o, cam_a in zip(original.cameras, augmented.cameras):
        uv_o, depth_o = project(original.points[rows, :3], camera_projection(cam_o))
        uv_a, depth_a = project(augmented.points[:, :3], camera_projection(cam_a))
        since = (cam_a.image_transform.to(torch.float64)
                 @ torch.linalg.inv(cam_o.image_transform.to(torch.float64)))
        expected = uv_o @ since[:2, :2].T + since[:2, 2]
        w, h = cam_o.image.shape[2], cam_o.image.shape[1]
        front = ((depth_o > 1.0) & (uv_o[:, 0] > -0.5) & (uv_o[:, 0] < w - 0.5)
                 & (uv_o[:, 1] > -0.5) & (uv_o[:, 1] < h - 0.5))  # points seen in the image
        assert int(front.sum()) > 20
        torch.testing.assert_close(depth_a[front], depth_o[front], atol=1e-4, rtol=1e-5)
        err = (uv_a[front] - expected[front]).abs().max()
        assert float(err) < pixel_tol, float(err)


BEV_AUGS = {
    "rot_scale_trans": GlobalRotScaleTrans((-math.pi, math.pi), (0.8, 1.25), (1.0, 1.0, 0.3)),
    "flip_x": RandomFlip3D(1.0, 0.0),
    "flip_y": RandomFlip3D(0.0, 1.0),
    "flip_xy": RandomFlip3D(1.0, 1.0),
}


@pytest.mark.parametrize("name", sorted(BEV_AUGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bev_augmentation_keeps_points_boxes_and_pixels(name: str, seed: int) -> None:
    sample = make_sample(seed)
    before = snapshot(sample)
    out = BEV_AUGS[name](sample, np.random.default_rng(seed))
    assert_same_snapshot(before, snapshot(sample))
    check_bev_invariants(sample, out)
    # velocity: mapped by the 2x2 block (rotation/flip times scale), NaN stays NaN
    l2 = out.bev_transform[:2, :2].to(torch.float64)
    torch.testing.assert_close(out.boxes[1:, 7:9], sample.boxes[1:, 7:9] @ l2.T, atol=1e-9, rtol=1e-9)
    assert bool(out.boxes[0, 7:9].isnan().all())
    # sizes scale with s = sqrt|det|, heading follows the matrix
    s = math.sqrt(abs(float(torch.linalg.det(l2))))
    torch.testing.assert_close(out.boxes[:, 3:6], sample.boxes[:, 3:6] * s)
    heading = torch.stack((sample.boxes[:, 6].cos(), sample.boxes[:, 6].sin()), 1) @ (l2 / s).T
    torch.testing.assert_close(torch.stack((out.boxes[:, 6].cos(), out.boxes[:, 6].sin()), 1), heading)
    # other (non-GT) LiDAR boxes follow the scene; per-sensor poses do not change
    a = out.bev_transform.to(torch.float64)
    torch.testing.assert_close(out.extras["other_boxes"][:, :3],
                               sample.extras["other_boxes"][:, :3] @ a[:3, :3].T + a[:3, 3])
    assert torch.equal(out.lidar_to_ego, sample.lidar_to_ego)


def test_rotation_matches_explicit_formula() -> None:
    sample = make_sample(3, cameras=False)
    aug = GlobalRotScaleTrans((0.7, 0.7), (1.1, 1.1), (0.0, 0.0, 0.0))
    out = aug(sample, np.random.default_rng(0))
    c, s = math.cos(0.7), math.sin(0.7)
    x, y = sample.points[:, 0], sample.points[:, 1]
    torch.testing.assert_close(out.points[:, 0], 1.1 * (c * x - s * y))
    torch.testing.assert_close(out.points[:, 1], 1.1 * (s * x + c * y))
    torch.testing.assert_close(out.points[:, 2], 1.1 * sample.points[:, 2])
    expected_yaw = torch.remainder(sample.boxes[:, 6] + 0.7 + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(out.boxes[:, 6], expected_yaw)
    torch.testing.assert_close(out.points[:, 3:], sample.points[:, 3:])


def test_flip_formulas_and_twice_is_identity() -> None:
    sample = make_sample(4)
    fx = RandomFlip3D(1.0, 0.0)(sample, np.random.default_rng(0))
    torch.testing.assert_close(fx.points[:, 1], -sample.points[:, 1])
    torch.testing.assert_close(fx.boxes[:, 8][1:], -sample.boxes[:, 8][1:])
    wrapped = torch.remainder(-sample.boxes[:, 6] + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(fx.boxes[:, 6], wrapped)
    fy = RandomFlip3D(0.0, 1.0)(sample, np.random.default_rng(0))
    torch.testing.assert_close(fy.points[:, 0], -sample.points[:, 0])
    wrapped = torch.remainder(math.pi - sample.boxes[:, 6] + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(fy.boxes[:, 6], wrapped)
    for flip in (RandomFlip3D(1.0, 0.0), RandomFlip3D(0.0, 1.0), RandomFlip3D(1.0, 1.0)):
        twice = flip(flip(sample, np.random.default_rng(0)), np.random.default_rng(1))
        torch.testing.assert_close(twice.points, sample.points)
        torch.testing.assert_close(twice.boxes, sample.boxes, equal_nan=True)
        torch.testing.assert_close(twice.bev_transform, sample.bev_transform)
        for ca, cb in zip(twice.cameras, sample.cameras):
            torch.testing.assert_close(ca.lidar_to_camera, cb.lidar_to_camera)


def test_yaw_stays_wrapped_at_the_seam() -> None:
    sample = make_sample(5, cameras=False)
    boxes = sample.boxes.clone()
    boxes[:, 6] = torch.tensor([-math.pi, math.pi - 1e-12, 0.0, math.pi / 2, -math.pi / 2, 3.0],
                               dtype=boxes.dtype)
    sample = Sample(**{**sample.__dict__, "boxes": boxes})
    for aug in (RandomFlip3D(1.0, 1.0), RandomFlip3D(0.0, 1.0),
                GlobalRotScaleTrans((math.pi, math.pi), (1.0, 1.0))):
        for dtype in (torch.float64, torch.float32):
            s = Sample(**{**sample.__dict__, "boxes": boxes.to(dtype), "points": sample.points.to(dtype)})
            yaw = aug(s, np.random.default_rng(0)).boxes[:, 6]
            assert bool(((yaw >= -math.pi) & (yaw < math.pi)).all()), yaw


def test_apply_bev_transform_rejects_non_bev_matrices() -> None:
    sample = make_sample(6, cameras=False)
    tilt = torch.eye(4, dtype=torch.float64)
    tilt[0, 2] = 0.1
    with pytest.raises(ValueError, match="mixing"):
        apply_bev_transform(sample, tilt)
    shear = torch.eye(4, dtype=torch.float64)
    shear[0, 1] = 0.3
    with pytest.raises(ValueError, match="rotation or reflection"):
        apply_bev_transform(sample, shear)


# --------------------------------------------------------------------------------------
# image augmentation
# --------------------------------------------------------------------------------------

IMAGE_AUGS = {
    "bevdepth_train": ImageAug((256, 96), resize_range=(0.7, 0.95), crop="bottom",
                               crop_x="random", bottom_pct_range=(0.0, 0.1), flip_prob=0.5,
                               rot_range=(-5.4, 5.4)),
    "test_time": ImageAug((256, 96)),
    "random_crop_flip": ImageAug((200, 100), resize_range=(0.9, 1.3), crop="random",
                                 crop_x="random", flip_prob=1.0),
    "center_rotate": ImageAug((320, 120), resize_range=(1.0, 1.0), crop="center",
                              rot_range=(-20.0, 20.0)),
}


@pytest.mark.parametrize("name", sorted(IMAGE_AUGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_aug_matches_explicit_pixel_math(name: str, seed: int) -> None:
    aug = IMAGE_AUGS[name]
    sample = make_sample(10 + seed)
    before = snapshot(sample)
    out = aug(sample, np.random.default_rng(seed))
    assert_same_snapshot(before, snapshot(sample))
    # the documented draws: rng.random(6) per camera, in camera order
    rng = np.random.default_rng(seed)
    params = [aug.sample_params((c.image.shape[2], c.image.shape[1]), rng) for c in sample.cameras]
    for cam_o, cam_a, p in zip(sample.cameras, out.cameras, params):
        assert tuple(cam_a.image.shape) == (3, aug.final_size[1], aug.final_size[0])
        assert cam_a.image.dtype == torch.uint8
        uv_o, depth_o = project(sample.points[:, :3], camera_projection(cam_o))
        uv_a, depth_a = project(out.points[:, :3], camera_projection(cam_a))
        expected = explicit_pixel_aug(uv_o, p)
        front = depth_o > 1.0
        err = (uv_a[front] - expected[front]).abs().max()
        assert float(err) < 1e-3, float(err)
        torch.testing.assert_close(depth_a, depth_o)
        # the rule: intrinsics == image_transform @ K_original
        torch.testing.assert_close(cam_a.intrinsics, cam_a.image_transform @ cam_o.intrinsics)
        torch.testing.assert_close(original_intrinsics(cam_a), cam_o.intrinsics)
        assert torch.equal(cam_a.lidar_to_camera, cam_o.lidar_to_camera)
    # LiDAR side untouched
    assert torch.equal(out.points, sample.points)


@pytest.mark.parametrize("seed", range(6))
def test_image_aug_moves_pixels_where_the_matrix_says(seed: int) -> None:
    """A bright blob's centroid lands where ``image_transform`` sends its centre."""
    g = np.random.default_rng(seed)
    h, w = 120, 320
    u0, v0 = int(g.integers(60, 260)), int(g.integers(35, 85))
    image = torch.zeros((3, h, w), dtype=torch.uint8)
    image[:, v0 - 3:v0 + 4, u0 - 3:u0 + 4] = 255
    view = CameraView("C", image, torch.eye(3), torch.eye(4), torch.eye(3), (w, h))
    aug = ImageAug((300, 110), resize_range=(0.8, 1.2), crop="random", crop_x="random",
                   flip_prob=0.5, rot_range=(-15.0, 15.0))
    params = aug.sample_params((w, h), np.random.default_rng(seed))
    out = aug.apply(view, params)
    img = out.image[0].to(torch.float64)
    ys, xs = torch.meshgrid(torch.arange(img.shape[0], dtype=torch.float64),
                            torch.arange(img.shape[1], dtype=torch.float64), indexing="ij")
    mass = img.sum()
    assert mass > 0
    centroid = torch.stack(((img * xs).sum() / mass, (img * ys).sum() / mass))
    expected = out.image_transform.to(torch.float64) @ torch.tensor([u0, v0, 1.0], dtype=torch.float64)
    assert float((centroid - expected[:2]).abs().max()) < 0.2, (centroid, expected, params)


def test_image_flip_and_crop_are_pixel_exact() -> None:
    g = np.random.default_rng(0)
    image = torch.from_numpy(g.integers(0, 256, size=(3, 60, 90), dtype=np.uint8))
    view = CameraView("C", image, torch.eye(3), torch.eye(4), torch.eye(3), (90, 60))
    flip = ImageAug((90, 60), resize_range=(1.0, 1.0), crop="center", flip_prob=1.0)
    out = flip.apply(view, flip.sample_params((90, 60), np.random.default_rng(0)))
    assert torch.equal(out.image, image.flip(-1))
    crop = ImageAug((50, 30), resize_range=(1.0, 1.0), crop="bottom")
    out = crop.apply(view, crop.sample_params((90, 60), np.random.default_rng(0)))
    assert torch.equal(out.image, image[:, 30:60, 20:70])
    torch.testing.assert_close(out.image_transform,
                               torch.tensor([[1.0, 0, -20], [0, 1, -30], [0, 0, 1]]))


# --------------------------------------------------------------------------------------
# random compositions
# --------------------------------------------------------------------------------------

PCR = (-40.0, -40.0, -3.0, 40.0, 40.0, 3.0)


def random_pipeline(g: np.random.Generator) -> list:
    pool = [
        GlobalRotScaleTrans((-math.pi, math.pi), (0.9, 1.1), (0.5, 0.5, 0.1)),
        RandomFlip3D(0.5, 0.5),
        ImageAug((256, 96), resize_range=(0.7, 1.0), crop="bottom", crop_x="random",
                 flip_prob=0.5, rot_range=(-5.0, 5.0)),
        PointShuffle(),
        PointRangeFilter(PCR),
        GlobalRotScaleTrans((-0.3, 0.3), (1.0, 1.0)),
        ImageAug((200, 80), resize_range=(0.9, 1.1), crop="random", flip_prob=0.5),
    ]
    order = g.permutation(len(pool))[: int(g.integers(2, len(pool) + 1))]
    return [pool[i] for i in order]


@pytest.mark.parametrize("seed", range(6))
def test_random_compositions(seed: int) -> None:
    g = np.random.default_rng(100 + seed)
    sample = make_sample(20 + seed)
    before = snapshot(sample)
    pipeline = Compose(random_pipeline(g))
    out = pipeline(sample, np.random.default_rng(seed))
    assert_same_snapshot(before, snapshot(sample))
    # range filters only remove points; compare memberships on the surviving ids
    kept = set(out.points[:, PID].round().long().tolist())
    mem_o = [m & kept for m in membership(sample)]
    assert mem_o == membership(out)
    check_bev_invariants(sample, out, same_membership=False)
    again = pipeline(sample, np.random.default_rng(seed))
    assert torch.equal(again.points, out.points)
    assert torch.equal(again.boxes.nan_to_num(9.0), out.boxes.nan_to_num(9.0))
    for ca, cb in zip(again.cameras, out.cameras):
        assert torch.equal(ca.image, cb.image)
        assert torch.equal(ca.intrinsics, cb.intrinsics)


# --------------------------------------------------------------------------------------
# filters and shuffle
# --------------------------------------------------------------------------------------


def test_range_and_name_filters() -> None:
    sample = make_sample(30)
    pcr = (-20.0, -15.0, -1.5, 20.0, 15.0, 1.0)
    out = PointRangeFilter(pcr)(sample, np.random.default_rng(0))
    xyz = sample.points[:, :3]
    lo, hi = torch.tensor(pcr[:3], dtype=xyz.dtype), torch.tensor(pcr[3:], dtype=xyz.dtype)
    expected = sample.points[((xyz >= lo) & (xyz < hi)).all(1)]
    assert torch.equal(out.points, expected)
    # half-open: a point exactly on the max face is dropped, on the min face kept
    edge = sample.points[:2].clone()
    edge[0, :3] = torch.tensor([20.0, 0.0, 0.0])
    edge[1, :3] = torch.tensor([-20.0, -15.0, -1.5])
    s2 = Sample(**{**sample.__dict__, "points": edge})
    assert PointRangeFilter(pcr)(s2, None).points[:, PID].tolist() == [edge[1, PID].item()]

    out = ObjectRangeFilter(pcr)(sample, np.random.default_rng(0))
    b = sample.boxes
    keep = (b[:, 0] >= -20) & (b[:, 0] < 20) & (b[:, 1] >= -15) & (b[:, 1] < 15)
    assert torch.equal(out.boxes.nan_to_num(7.0), b[keep].nan_to_num(7.0))
    assert torch.equal(out.labels, sample.labels[keep])
    assert torch.equal(out.extras["difficulty"], sample.extras["difficulty"][keep])
    assert out.extras["instance_tokens"] == [t for t, k in zip(sample.extras["instance_tokens"],
                                                                keep.tolist()) if k]
    assert out.extras["other_boxes"] is sample.extras["other_boxes"]
    assert out.extras["scene_token"] == "scene-x"

    out = ObjectNameFilter(["car", "cyclist"])(sample, np.random.default_rng(0))
    keep = torch.tensor([CLASSES[i] in ("car", "cyclist") for i in sample.labels.tolist()])
    assert torch.equal(out.labels, sample.labels[keep])
    assert out.class_names == sample.class_names
    assert out.names == [n for n in sample.names if n in ("car", "cyclist")]
    assert len(out.extras["instance_tokens"]) == out.boxes.shape[0]


def test_point_shuffle_is_a_permutation() -> None:
    sample = make_sample(31)
    out = PointShuffle()(sample, np.random.default_rng(3))
    assert not torch.equal(out.points, sample.points)
    order = out.points[:, PID].long()
    assert sorted(order.tolist()) == list(range(sample.points.shape[0]))
    assert torch.equal(out.points, sample.points[order])
    assert membership(out) == membership(sample)


# --------------------------------------------------------------------------------------
# beam downsampling
# --------------------------------------------------------------------------------------


def _synth_sweeps(root: Path) -> list[np.ndarray]:
    files = sorted(glob.glob(str(root / "samples" / "LIDAR_TOP" / "*.pcd.bin")))
    assert files
    return [np.fromfile(f, dtype=np.float32).reshape(-1, 5) for f in files]


def test_beam_assignment_recovers_synthdrive_rings(synth_nuscenes: Path) -> None:
    for scan in _synth_sweeps(synth_nuscenes)[:2]:
        truth = scan[:, 4].astype(np.int64)
        for num_beams in (None, 32):
            ring, centres = estimate_beam_index(scan[:, :3], num_beams=num_beams)
            assert centres.size == 32
            assert (ring == truth).mean() > 0.98
        # the elevations are measured in the original frame: augmentation first changes nothing
        pts = np.column_stack((scan[:, :4], np.arange(scan.shape[0], dtype=np.float32)))
        sample = Sample("b", torch.from_numpy(pts), torch.zeros((0, 9)), torch.zeros(0, dtype=torch.long),
                        CLASSES, point_features=FEATURES)
        down = BeamDownsample(keep_every=2)
        direct = down(sample, np.random.default_rng(0))
        kept = set(direct.points[:, PID].long().tolist())
        expected = set(np.flatnonzero(truth % 2 == 0).tolist())
        assert len(kept ^ expected) < 0.02 * scan.shape[0]
        moved = GlobalRotScaleTrans((-1.0, 1.0), (0.9, 1.1), (2.0, 2.0, 0.5))(sample, np.random.default_rng(1))
        after = down(moved, np.random.default_rng(0))
        assert set(after.points[:, PID].long().tolist()) == kept
        # keep every 4th beam, offset 1
        four = BeamDownsample(keep_every=4, offset=1)(sample, None)
        ring_of = truth[four.points[:, PID].long().numpy()]
        assert (ring_of % 4 == 1).mean() > 0.98


def test_beam_assignment_on_real_nuscenes(real_data: Path) -> None:
    """The real LIDAR_TOP sweep of mmdetection3d's nuScenes demo has a true ring column."""
    files = glob.glob(str(real_data / "open-mmlab__mmdetection3d" / "demo" / "data" / "nuscenes"
                          / "*LIDAR_TOP*.pcd.bin"))
    assert len(files) == 1
    scan = np.fromfile(files[0], dtype=np.float32).reshape(-1, 5)
    dist = np.hypot(scan[:, 0], scan[:, 1])
    ring, centres = estimate_beam_index(scan, num_beams=32, fit_mask=dist > 3.0)
    truth = scan[:, 4].astype(np.int64)
    assert centres.size == 32
    assert (ring == truth)[dist > 10.0].mean() > 0.995
    assert (np.abs(ring - truth) <= 1)[dist > 3.0].mean() > 0.99


def test_beam_downsample_uses_a_ring_column_and_tables() -> None:
    g = np.random.default_rng(0)
    n = 2000
    ring = g.integers(0, 16, n)
    elev = np.radians(-15.0 + 2.0 * ring + g.normal(0, 0.01, n))
    az = g.uniform(-math.pi, math.pi, n)
    rng_m = g.uniform(5, 50, n)
    xyz = np.column_stack((rng_m * np.cos(elev) * np.cos(az), rng_m * np.cos(elev) * np.sin(az),
                           rng_m * np.sin(elev)))
    pts = torch.tensor(np.column_stack((xyz, np.zeros(n), ring)), dtype=torch.float32)
    sample = Sample("r", pts, torch.zeros((0, 9)), torch.zeros(0, dtype=torch.long), CLASSES,
                    point_features=("x", "y", "z", "intensity", "ring"))
    out = BeamDownsample(keep_every=3, offset=2)(sample, None)
    assert torch.equal(out.points, pts[torch.from_numpy(ring % 3 == 2)])
    table = [-15.0 + 2.0 * k for k in range(16)]
    r, _ = estimate_beam_index(xyz, elevations_deg=table[::-1])
    assert (r == ring).all()
    # a beam that saw nothing (ring 7) is inserted as a gap, so numbering stays right
    keep = ring != 7
    r, centres = estimate_beam_index(xyz[keep])
    assert centres.size == 16 and (r == ring[keep]).all()


# --------------------------------------------------------------------------------------
# GT sampling
# --------------------------------------------------------------------------------------


class ListDataset(DetectionDataset):
    """A dataset over a fixed list of samples."""

    def __init__(self, samples: list[Sample]):
        super().__init__(CLASSES)
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def load_sample(self, index: int) -> Sample:
        return self.samples[index]

    def sample_tokens(self) -> list[str]:
        return [s.token for s in self.samples]


@pytest.fixture(scope="module")
def gt_database(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ListDataset]:
    dataset = ListDataset([make_sample(200 + i, dtype=torch.float32, n_boxes=8, cameras=False)
                           for i in range(5)])
    out = tmp_path_factory.mktemp("gtdb")
    index = build_gt_database(dataset, out, class_names=("car", "pedestrian", "cyclist"))
    return index, dataset


def test_build_gt_database(gt_database: tuple[Path, ListDataset]) -> None:
    index, dataset = gt_database
    data = np.load(index, allow_pickle=False)
    total = sum(s.boxes.shape[0] for s in dataset.samples)
    assert data["boxes"].shape == (total, 9)
    assert not list(index.parent.glob(".*.tmp"))
    for k in range(0, total, 7):
        pts = np.fromfile(index.parent / str(data["paths"][k]), dtype=np.float32).reshape(-1, len(FEATURES))
        assert pts.shape[0] == data["num_points"][k] > 0
        box = data["boxes"][k]
        # box-centred coordinates, inside the (rotated) box
        c, s = math.cos(box[6]), math.sin(box[6])
        u = pts[:, 0] * c + pts[:, 1] * s
        v = -pts[:, 0] * s + pts[:, 1] * c
        assert (np.abs(u) <= box[3] / 2 + 1e-5).all() and (np.abs(v) <= box[4] / 2 + 1e-5).all()
        assert (np.abs(pts[:, 2]) <= box[5] / 2 + 1e-5).all()
        src = dataset.samples[int(data["sample_index"][k])]
        assert str(data["class_names"][k]) == src.names[int(data["box_index"][k])]


def check_gt_sampling(sample: Sample, out: Sample, sampler: GTSampling, pasted_from: int) -> None:
    m0 = sample.boxes.shape[0]
    m = out.boxes.shape[0]
    assert out.labels.shape == (m,) and out.num_points.shape == (m,)
    flags = out.extras["gt_sampled"]
    assert flags.tolist() == [False] * m0 + [True] * (m - m0)
    # no collisions: BEV IoU 0 between all pairs, and with the other (non-GT) boxes
    iou = box_iou_bev(out.boxes, out.boxes)
    iou.fill_diagonal_(0.0)
    assert m < 2 or float(iou.max()) == 0.0
    if "other_boxes" in out.extras and m > m0:
        assert float(box_iou_bev(out.boxes[m0:], out.extras["other_boxes"]).max()) == 0.0
    # the pasted points are appended last, object after object, and each pasted box holds
    # exactly its own pasted points
    n_pasted = int(out.num_points[m0:].sum())
    start = out.points.shape[0] - n_pasted
    inside = points_in_boxes(out.points, out.boxes[m0:])
    offset = start
    for k in range(m - m0):
        rows = torch.nonzero(inside[:, k]).squeeze(1)
        count = int(out.num_points[m0 + k])
        assert rows.tolist() == list(range(offset, offset + count))
        offset += count
    # the original boxes kept their points
    kept = out.points[:start]
    assert membership(Sample(**{**out.__dict__, "points": kept, "boxes": out.boxes[:m0],
                                "labels": out.labels[:m0], "num_points": out.num_points[:m0],
                                "extras": {}})) == membership(sample)
    # limits
    for cls, limit in sampler.sample_groups.items():
        label = CLASSES.index(cls)
        existing = int((sample.labels == label).sum())
        assert int((out.labels == label).sum()) <= max(limit, existing)
        pasted = out.num_points[m0:][out.labels[m0:] == label]
        assert bool((pasted >= sampler.min_points[cls]).all())
    # per-box extras stay aligned
    assert len(out.extras["instance_tokens"]) == m and out.extras["instance_tokens"][m0:] == [None] * (m - m0)
    assert out.extras["difficulty"][m0:].tolist() == [-1] * (m - m0)


@pytest.mark.parametrize("seed", range(4))
def test_gt_sampling(gt_database: tuple[Path, ListDataset], seed: int) -> None:
    index, _ = gt_database
    sampler = GTSampling(index, sample_groups={"car": 12, "pedestrian": 8, "cyclist": 6},
                         min_points={"car": 200, "pedestrian": 150})
    sample = make_sample(300 + seed, dtype=torch.float32, n_boxes=5, cameras=True)
    before = snapshot(sample)
    out = sampler(sample, np.random.default_rng(seed))
    assert_same_snapshot(before, snapshot(sample))
    assert out.boxes.shape[0] > sample.boxes.shape[0]
    check_gt_sampling(sample, out, sampler, 0)
    again = sampler(sample, np.random.default_rng(seed))
    assert torch.equal(again.points, out.points)
    assert torch.equal(again.boxes.nan_to_num(0.0), out.boxes.nan_to_num(0.0))
    # the images are not touched
    for ca, cb in zip(out.cameras, sample.cameras):
        assert ca.image is cb.image


def test_gt_sampling_after_scene_augmentation(gt_database: tuple[Path, ListDataset]) -> None:
    """Sampling into an augmented sample pastes through its bev_transform."""
    index, _ = gt_database
    sampler = GTSampling(index, sample_groups={"car": 10, "pedestrian": 10})
    sample = make_sample(400, dtype=torch.float32, n_boxes=4, cameras=False)
    aug = GlobalRotScaleTrans((-math.pi, math.pi), (0.9, 1.1), (1.0, 1.0, 0.2))
    moved = aug(sample, np.random.default_rng(5))
    out = sampler(moved, np.random.default_rng(6))
    check_gt_sampling(moved, out, sampler, 0)
    # the same draws without augmentation give the same objects, mapped by the matrix
    plain = sampler(sample, np.random.default_rng(6))
    a = moved.bev_transform.to(torch.float64)
    m0 = sample.boxes.shape[0]
    torch.testing.assert_close(plain.boxes[m0:, :3].to(torch.float64) @ a[:3, :3].T + a[:3, 3],
                               out.boxes[m0:, :3].to(torch.float64), atol=1e-4, rtol=0)


def test_gt_sampling_limits_and_errors(gt_database: tuple[Path, ListDataset], tmp_path: Path) -> None:
    index, _ = gt_database
    sample = make_sample(500, dtype=torch.float32, n_boxes=6, cameras=False)
    counts = {c: int((sample.labels == i).sum()) for i, c in enumerate(CLASSES)}
    # a limit already reached pastes nothing of that class
    sampler = GTSampling(index.parent, sample_groups={c: counts[c] for c in CLASSES})
    out = sampler(sample, np.random.default_rng(0))
    assert out.boxes.shape[0] == sample.boxes.shape[0]
    assert out.extras["gt_sampled"].tolist() == [False] * sample.boxes.shape[0]
    # min_points above every object: the pool is empty
    sampler = GTSampling(index, sample_groups={"car": 20}, min_points={"car": 10_000})
    assert sampler(sample, np.random.default_rng(0)).boxes.shape[0] == sample.boxes.shape[0]
    with pytest.raises(ValueError, match="truck"):
        GTSampling(index, sample_groups={"truck": 3})
    with pytest.raises(Exception, match="not found"):
        GTSampling(tmp_path / "missing.npz", sample_groups={"car": 3})


# --------------------------------------------------------------------------------------
# real loaded samples
# --------------------------------------------------------------------------------------


def _with_pid(sample: Sample) -> Sample:
    n = sample.points.shape[0]
    pid = torch.arange(n, dtype=sample.points.dtype)[:, None]
    assert n < 2 ** 24  # exact in float32
    return Sample(**{**sample.__dict__, "points": torch.cat((sample.points, pid), 1),
                     "point_features": tuple(sample.point_features) + ("pid",)})


def _check_loaded(sample: Sample, seeds: range) -> None:
    """Membership and projections after random pipelines, with float32 tolerances."""
    for seed in seeds:
        g = np.random.default_rng(seed)
        pipeline = Compose([t for t in random_pipeline(g) if not isinstance(t, PointRangeFilter)])
        before = snapshot(sample)
        out = pipeline(sample, np.random.default_rng(seed))
        assert_same_snapshot(before, snapshot(sample))
        # float32 storage: ~1e-5 m per coordinate, ~1e-2 px for points > 1 m away
        check_bev_invariants(sample, out, pixel_tol=2e-2, point_tol=1e-4)


def test_loaded_synth_nuscenes(synth_nuscenes: Path, tmp_path: Path) -> None:
    from distill3d.data.nuscenes import NuScenesDataset

    dataset = NuScenesDataset(synth_nuscenes, "v1.0-mini", "train", sweeps=0)
    sample = dataset.load_sample(0)
    assert len(sample.cameras) == 6
    _check_loaded(_with_pid(sample), range(2))
    # beam assignment on the loaded key sweep = the file's ring column
    files = _synth_sweeps(synth_nuscenes)
    rings = {f.shape[0]: f[:, 4] for f in files}
    truth = rings[sample.points.shape[0]].astype(np.int64)
    ring = BeamDownsample(keep_every=2).beam_index(sample)
    assert (ring == truth).mean() > 0.98
    # GT database from the training split, pasted into a sample
    lidar_only = NuScenesDataset(synth_nuscenes, "v1.0-mini", "train", sweeps=0, load_cameras=False)
    index = build_gt_database(lidar_only, tmp_path / "db", class_names=("car", "pedestrian"),
                              indices=[0, 2, 3])
    sampler = GTSampling(index, sample_groups={"car": 40, "pedestrian": 20},
                         min_points={"car": 5, "pedestrian": 5})
    target = lidar_only.load_sample(1)
    out = sampler(target, np.random.default_rng(0))
    assert out.boxes.shape[0] > target.boxes.shape[0]
    m0 = target.boxes.shape[0]
    iou = box_iou_bev(out.boxes, out.boxes)
    iou.fill_diagonal_(0.0)
    assert float(iou[m0:].max()) == 0.0
    n_pasted = int(out.num_points[m0:].sum())
    inside = points_in_boxes(out.points, out.boxes[m0:]).any(1)
    assert torch.equal(torch.nonzero(inside).squeeze(1),
                       torch.arange(out.points.shape[0] - n_pasted, out.points.shape[0]))
    assert len(out.extras["instance_tokens"]) == out.boxes.shape[0]
    assert out.extras["visibility"].shape == (out.boxes.shape[0],)


def test_loaded_synth_kitti(synth_kitti: Path) -> None:
    from distill3d.data.kitti import KittiDataset

    sample = KittiDataset(synth_kitti, "train").load_sample(0)
    _check_loaded(_with_pid(sample), range(1))


def test_loaded_real_kitti(real_data: Path) -> None:
    from distill3d.data.kitti import KittiDataset

    root = real_data / "kuixu__kitti_object_vis" / "data" / "object"
    dataset = KittiDataset(root, ["000000", "000001"], class_names=("Car", "Pedestrian", "Cyclist"))
    for i in range(len(dataset)):
        _check_loaded(_with_pid(dataset.load_sample(i)), range(i, i + 2))


def test_image_aug_options() -> None:
    sample = make_sample(40)
    shared = ImageAug((256, 96), resize_range=(0.7, 1.0), crop="random", crop_x="random",
                      same_for_all_cameras=True)
    out = shared(sample, np.random.default_rng(0))
    assert torch.equal(out.cameras[0].image_transform, out.cameras[1].image_transform)
    only_b = ImageAug((256, 96), camera_names=["CAM_B"])
    out = only_b(sample, np.random.default_rng(0))
    assert out.cameras[0] is sample.cameras[0]
    assert tuple(out.cameras[1].image.shape) == (3, 96, 256)


def test_gt_sampling_reports_a_corrupt_points_file(tmp_path: Path) -> None:
    from distill3d.data.errors import DataError

    dataset = ListDataset([make_sample(600, dtype=torch.float32, n_boxes=3, cameras=False)])
    index = build_gt_database(dataset, tmp_path)
    for path in (tmp_path / "points").glob("*.bin"):
        path.write_bytes(path.read_bytes()[:-4])
    sampler = GTSampling(index, sample_groups={c: 5 for c in set(dataset.samples[0].names)})
    with pytest.raises(DataError, match="truncated or corrupt"):
        sampler(make_sample(601, dtype=torch.float32, n_boxes=1, cameras=False), np.random.default_rng(0))
