"""The SynthDrive KITTI writer: layout, calib text, labels that hold the right points, and 2D
boxes equal to the projected 3D boxes, all checked against independent computations."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from distill3d.data.kitti_files import (
    read_kitti_calib,
    read_kitti_labels,
    read_velodyne,
)
from distill3d.geometry import count_points_in_boxes
from distill3d.geometry.convert import kitti_camera_to_lidar_boxes
from distill3d.synth.generate import GenerationReport, generate_dataset
from distill3d.synth.kitti_writer import project_box_2d
from distill3d.synth.lidar import lidar_preset
from distill3d.synth.world import Scene, SceneConfig

SEED = 5
SCENES = 2
SAMPLES = 2
IMAGE_SIZE = (621, 188)  # half of KITTI's 1242x375


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> GenerationReport:
    root = tmp_path_factory.mktemp("synth_kitti")
    return generate_dataset("kitti", root, preset="mini", scenes=SCENES, samples_per_scene=SAMPLES,
                            image_size=IMAGE_SIZE, seed=SEED, workers=1, progress=False)


def _frames(written: GenerationReport):
    for plan, res in zip(written.scenes, written.results):
        for k, frame in enumerate(res.frames):
            yield plan, k, frame


def _wrap(a: np.ndarray | float) -> np.ndarray | float:
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def test_layout_and_image_sets(written: GenerationReport) -> None:
    root = written.out_dir
    ids = [f"{i:06d}" for i in range(SCENES * SAMPLES)]
    for sub, ext in (("velodyne", "bin"), ("image_2", "png"), ("calib", "txt"), ("label_2", "txt")):
        assert sorted(p.name for p in (root / "training" / sub).iterdir()) == [f"{i}.{ext}" for i in ids]
    train = (root / "ImageSets" / "train.txt").read_text().split()
    val = (root / "ImageSets" / "val.txt").read_text().split()
    assert train == ids[:SAMPLES] and val == ids[SAMPLES:]  # whole scenes per split
    for i in ids:
        with Image.open(root / "training" / "image_2" / f"{i}.png") as img:
            assert img.format == "PNG" and img.mode == "RGB" and img.size == IMAGE_SIZE
        velo = read_velodyne(root / "training" / "velodyne" / f"{i}.bin", 4)
        assert velo.shape[0] > 20_000
        assert velo[:, 3].min() >= 0.0 and velo[:, 3].max() <= 1.0
        # x forward: most of the returns ahead of and behind the sensor, z around -1.7 on the road
        assert np.median(velo[:, 2]) < 0.0


def test_calib_text_format(written: GenerationReport) -> None:
    text = (written.out_dir / "training" / "calib" / "000000.txt").read_text()
    keys = [line.split(":")[0] for line in text.splitlines() if line.strip()]
    assert keys == ["P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo"]
    number = r"-?\d\.\d{12}e[+-]\d\d"
    for line in text.splitlines():
        if not line.strip():
            continue
        key, values = line.split(": ")
        count = 9 if key == "R0_rect" else 12
        assert re.fullmatch(rf"{number}( {number}){{{count - 1}}}", values), line
    calib = read_kitti_calib(written.out_dir / "training" / "calib" / "000000.txt")
    p2 = calib.P2.numpy()
    assert p2[0, 0] == pytest.approx(721.54 * IMAGE_SIZE[0] / 1242)
    # P3's baseline to P2 is KITTI's ~0.53 m
    baseline = (p2[0, 3] - calib.P3.numpy()[0, 3]) / p2[0, 0]
    assert 0.4 < baseline < 0.7


def test_labels_hold_the_points_of_their_world_objects(written: GenerationReport) -> None:
    """Each non-DontCare label, converted to the LiDAR frame with the calib read back from
    disk, equals its world object seen from the LiDAR (re-simulated independently) and holds
    the same points of the velodyne file."""
    root = written.out_dir / "training"
    mount = lidar_preset("kitti64").sensor_to_ego
    labelled = with_points = 0
    scenes: dict[int, Scene] = {}
    for plan, k, frame in _frames(written):
        if plan.index not in scenes:
            scenes[plan.index] = Scene(SceneConfig(seed=plan.seed, num_keyframes=SAMPLES,
                                                   scene_index=plan.index))
        scene = scenes[plan.index]
        state = scene.state_at(scene.keyframe_times()[k])
        objects = {o.instance_id: o for o in state.objects}
        world_to_velo = np.linalg.inv(state.ego_to_world @ mount)
        calib = read_kitti_calib(root / "calib" / f"{frame.frame_id}.txt")
        labels = read_kitti_labels(root / "label_2" / f"{frame.frame_id}.txt")
        points = torch.from_numpy(read_velodyne(root / "velodyne" / f"{frame.frame_id}.bin", 4)).double()
        assert [lab.type for lab in labels] == frame.label_types
        label_boxes, truth_boxes, expected = [], [], []
        for i, lab in enumerate(labels):
            if lab.type == "DontCare":
                continue
            label_box = kitti_camera_to_lidar_boxes(
                torch.tensor([lab.location], dtype=torch.float64),
                torch.tensor([lab.dimensions], dtype=torch.float64),
                torch.tensor([lab.rotation_y], dtype=torch.float64), calib).numpy()[0]
            obj = objects[int(frame.label_instance_ids[i])]
            wb = np.asarray(obj.box, dtype=np.float64)
            centre = world_to_velo[:3, :3] @ wb[:3] + world_to_velo[:3, 3]
            heading = world_to_velo[:3, :3] @ np.array([np.cos(wb[6]), np.sin(wb[6]), 0.0])
            truth = np.r_[centre, wb[3:6], np.arctan2(heading[1], heading[0])]
            np.testing.assert_allclose(label_box[:6], truth[:6], atol=1e-9)
            assert abs(_wrap(label_box[6] - truth[6])) < 1e-9
            label_boxes.append(label_box)
            truth_boxes.append(truth)
            expected.append(int(frame.label_num_points[i]))
        if not label_boxes:
            continue
        n_label = count_points_in_boxes(points, torch.from_numpy(np.array(label_boxes))).tolist()
        n_truth = count_points_in_boxes(points, torch.from_numpy(np.array(truth_boxes))).tolist()
        assert n_label == n_truth == expected
        labelled += len(expected)
        with_points += sum(n > 0 for n in n_label)
    assert labelled >= 5 and with_points >= 3


def _kitti_corners(loc: np.ndarray, dims: np.ndarray, ry: float) -> np.ndarray:
    """The KITTI devkit's computeBox3D: (8, 3) corners in the rectified camera frame."""
    h, w, l = dims
    x = np.array([l, l, -l, -l, l, l, -l, -l]) / 2
    y = np.array([0, 0, 0, 0, -h, -h, -h, -h])
    z = np.array([w, -w, -w, w, w, -w, -w, w]) / 2
    rot = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    return (rot @ np.stack([x, y, z])).T + loc


# The 12 edges of the computeBox3D corner order: bottom ring, top ring, verticals.
_KITTI_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4),
                (0, 4), (1, 5), (2, 6), (3, 7))


def _projected_rect(corners: np.ndarray, p2: np.ndarray, near: float = 0.1) -> np.ndarray:
    """Image rectangle ``(u1, v1, u2, v2)`` of the part of a box in front of ``z = near``:
    the corners in front plus the crossings of the edges with that plane."""
    pts = [c for c in corners if c[2] >= near]
    for i, j in _KITTI_EDGES:
        a, b = corners[i], corners[j]
        if (a[2] - near) * (b[2] - near) < 0:
            pts.append(a + (near - a[2]) / (b[2] - a[2]) * (b - a))
    p = np.array(pts)
    uvw = np.c_[p, np.ones(len(p))] @ p2.T
    uv = uvw[:, :2] / uvw[:, 2:]
    return np.r_[uv.min(0), uv.max(0)]


def test_2d_boxes_are_projected_3d_boxes_clipped_to_the_image(written: GenerationReport) -> None:
    root = written.out_dir / "training"
    width, height = IMAGE_SIZE
    checked = 0
    for _plan, _k, frame in _frames(written):
        calib = read_kitti_calib(root / "calib" / f"{frame.frame_id}.txt")
        p2 = calib.P2.numpy()
        for lab in read_kitti_labels(root / "label_2" / f"{frame.frame_id}.txt"):
            x1, y1, x2, y2 = lab.bbox
            assert 0 <= x1 < x2 <= width - 1 and 0 <= y1 < y2 <= height - 1
            if lab.type == "DontCare":
                assert (lab.truncated, lab.occluded, lab.alpha, lab.rotation_y) == (-1, -1, -10, -10)
                assert lab.dimensions == (-1, -1, -1) and lab.location == (-1000, -1000, -1000)
                continue
            corners = _kitti_corners(np.array(lab.location), np.array(lab.dimensions), lab.rotation_y)
            full = _projected_rect(corners, p2)
            clipped = np.clip(full, 0, [width - 1, height - 1, width - 1, height - 1])
            np.testing.assert_allclose(lab.bbox, clipped, atol=1e-6)
            area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
            assert lab.truncated == pytest.approx(1 - area(clipped) / area(full), abs=1e-9)
            assert 0.0 <= lab.truncated <= 1.0 and lab.occluded in (0, 1, 2)
            alpha = _wrap(lab.rotation_y - np.arctan2(lab.location[0], lab.location[2]))
            assert abs(_wrap(lab.alpha - alpha)) < 1e-9
            checked += 1
    assert checked >= 5


def test_dontcare_lines_use_the_official_placeholders(written: GenerationReport) -> None:
    seen = 0
    for path in sorted((written.out_dir / "training" / "label_2").iterdir()):
        lines = path.read_text().splitlines()
        kinds = [line.split()[0] for line in lines]
        # labelled objects first, DontCare regions last (as KITTI's files)
        if "DontCare" in kinds:
            first = kinds.index("DontCare")
            assert all(k == "DontCare" for k in kinds[first:])
        for line in lines:
            cols = line.split()
            assert len(cols) == 15
            if cols[0] == "DontCare":
                assert cols[1:4] == ["-1", "-1", "-10"]
                assert cols[8:] == ["-1", "-1", "-1", "-1000", "-1000", "-1000", "-10"]
                seen += 1
            else:
                assert cols[0] in {"Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist",
                                   "Tram", "Misc"}
    assert seen >= 1


def test_project_box_2d_clips_at_the_near_plane() -> None:
    p2 = np.array([[100.0, 0, 50, 0], [0, 100.0, 40, 0], [0, 0, 1, 0]])
    cube = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (2.0, 4.0)])
    rect = project_box_2d(cube, p2)
    assert rect == pytest.approx((50 - 50, 40 - 50, 50 + 50, 40 + 50))
    straddling = cube.copy()
    straddling[:, 2] -= 3.0  # z in [-1, 1]: the part in front of z = 0.1 projects from there
    rect = project_box_2d(straddling, p2)
    assert rect == pytest.approx((50 - 1000, 40 - 1000, 50 + 1000, 40 + 1000))
    behind = cube.copy()
    behind[:, 2] *= -1
    assert project_box_2d(behind, p2) is None
