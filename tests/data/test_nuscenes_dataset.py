"""NuScenesDataset / NuScenesTables / build_nuscenes_index.

* the tiny SynthDrive nuScenes set (fixture ``synth_nuscenes``): splits, every sample loads,
  boxes and velocities equal the nuscenes-devkit's, points-in-box counts equal
  ``num_lidar_pts``, ego-motion compensated sweeps, camera projections equal the devkit's
  ``view_points`` chain;
* the real nuScenes demo sample (v1.0-test table subset + mmdetection3d's demo files):
  poses and ``lidar2cam`` equal mmdetection3d's info file;
* mmdetection3d's Lyft test tables (all 13 tables, 1 sample): loading, category map, boxes
  by the devkit's formulas;
* corrupt inputs (truncated / NaN LiDAR file, missing image, invalid JSON, missing table,
  dangling token) raise DataError naming the file; the index is cached.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import distill3d.data.nuscenes as nus
from distill3d.data.errors import DataError
from distill3d.data.nuscenes import (
    LYFT_CLASSES,
    NUSCENES_CAMERAS,
    NUSCENES_CATEGORY_TO_DETECTION,
    NUSCENES_DETECTION_CLASSES,
    NuScenesDataset,
    NuScenesTables,
    build_nuscenes_index,
    category_to_detection_name,
    lidar_to_camera_matrix,
    read_nuscenes_points,
    split_scene_names,
)
from distill3d.geometry.points import count_points_in_boxes, points_in_boxes
from distill3d.synth import splits

DEMO_TOKEN = "ca9a282c9e77460f8360f564131a8af5"


@pytest.fixture(autouse=True)
def _private_index_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Indexes of read-only roots go to the user cache: keep it inside the test tmp dir."""
    monkeypatch.setenv("DISTILL3D_CACHE", str(tmp_path_factory.getbasetemp() / "distill3d_cache"))


def angle_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.remainder(np.asarray(a, np.float64) - b + math.pi, 2 * math.pi) - math.pi)


def symlink_copy(src: Path, dst: Path) -> Path:
    """Mirror ``src`` into ``dst``: real folders, files as symlinks (index caches skipped)."""
    for folder, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            (dst / rel / name).symlink_to(Path(folder) / name)
    return dst


def replace_with_copy(path: Path) -> Path:
    """Turn a symlink of :func:`symlink_copy` into a writable real copy."""
    target = path.resolve()
    path.unlink()
    shutil.copyfile(target, path)
    return path


@pytest.fixture(scope="module")
def nusc(synth_nuscenes: Path) -> Any:
    devkit = pytest.importorskip("nuscenes.nuscenes")
    return devkit.NuScenes(version="v1.0-mini", dataroot=str(synth_nuscenes), verbose=False)


@pytest.fixture(scope="module")
def train_set(synth_nuscenes: Path) -> NuScenesDataset:
    return NuScenesDataset(synth_nuscenes, "v1.0-mini", "train", filter_empty=False)


# ---------------------------------------------------------------- mapping and splits


def test_category_mapping_is_the_devkit_mapping() -> None:
    assert len(NUSCENES_CATEGORY_TO_DETECTION) == 23
    assert {v for v in NUSCENES_CATEGORY_TO_DETECTION.values() if v} == set(NUSCENES_DETECTION_CLASSES)
    utils = pytest.importorskip("nuscenes.eval.detection.utils")
    constants = pytest.importorskip("nuscenes.eval.detection.constants")
    assert tuple(constants.DETECTION_NAMES) == NUSCENES_DETECTION_CLASSES
    for name in list(NUSCENES_CATEGORY_TO_DETECTION) + ["unknown.thing"]:
        assert category_to_detection_name(name) == utils.category_to_detection_name(name), name


def test_split_lists_select_the_official_scenes(synth_nuscenes: Path) -> None:
    train = build_nuscenes_index(synth_nuscenes, "v1.0-mini", "train")
    val = build_nuscenes_index(synth_nuscenes, "v1.0-mini", "val")
    train_scenes = {e["scene_name"] for e in train}
    val_scenes = {e["scene_name"] for e in val}
    assert train_scenes == {"scene-0061", "scene-0553"} and train_scenes <= set(splits.MINI_TRAIN)
    assert val_scenes == {"scene-0103"} and val_scenes <= set(splits.MINI_VAL)
    assert len(train) == 6 and len(val) == 3
    assert [e["token"] for e in build_nuscenes_index(synth_nuscenes, "v1.0-mini", "mini_train")] == \
        [e["token"] for e in train]
    assert len(build_nuscenes_index(synth_nuscenes, "v1.0-mini", "all")) == 9
    # samples of a scene in time order
    stamps = [e["timestamp_us"] for e in train if e["scene_name"] == "scene-0061"]
    assert stamps == sorted(stamps)
    with pytest.raises(ValueError, match="valid splits"):
        split_scene_names("v1.0-mini", "test")
    assert split_scene_names("v1.0-trainval", "val") == splits.VAL
    assert split_scene_names("v1.0-test", "test") is None
    with pytest.raises(ValueError, match="'all'"):
        split_scene_names("v1.01-train", "train")


# ---------------------------------------------------------------- SynthDrive samples


def test_every_sample_loads(synth_nuscenes: Path) -> None:
    for split in ("train", "val"):
        ds = NuScenesDataset(synth_nuscenes, split=split)
        assert len(ds) == len(ds.sample_tokens())
        for i in range(len(ds)):
            s = ds[i]
            assert s.token == ds.sample_tokens()[i]
            assert s.points.dtype == torch.float32 and s.points.shape[1] == 4
            assert s.point_features == ("x", "y", "z", "intensity")
            assert s.boxes.shape[1] == 9 and s.labels.dtype == torch.int64
            assert set(s.names) <= set(NUSCENES_DETECTION_CLASSES)
            # filter_empty: every kept box has points (SynthDrive has no radar)
            assert bool((s.num_points + s.extras["num_radar_pts"] > 0).all())
            assert [c.name for c in s.cameras] == list(NUSCENES_CAMERAS)
            for cam in s.cameras:
                assert cam.image.shape == (3, 128, 352) and cam.image.dtype == torch.uint8
                assert cam.original_size == (352, 128)
            n = s.boxes.shape[0]
            assert len(s.extras["attributes"]) == n == len(s.extras["instance_tokens"])
            assert s.extras["visibility"].shape == (n,) and bool(((s.extras["visibility"] >= 1) & (s.extras["visibility"] <= 4)).all())
            assert s.timestamp_us > 0 and s.ego_to_global.dtype == torch.float64


def test_boxes_and_velocities_equal_the_devkit(train_set: NuScenesDataset, nusc: Any) -> None:
    pyquaternion = pytest.importorskip("pyquaternion")
    checked = finite_v = 0
    for i in range(len(train_set)):
        s = train_set.load_sample(i)
        lidar_token = s.extras["lidar_sample_data_token"]
        _, devkit_boxes, _ = nusc.get_sample_data(lidar_token)
        by_token = {b.token: b for b in devkit_boxes}
        sd = nusc.get("sample_data", lidar_token)
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        to_lidar = (pyquaternion.Quaternion(cs["rotation"]).inverse.rotation_matrix
                    @ pyquaternion.Quaternion(pose["rotation"]).inverse.rotation_matrix)
        assert len(s.extras["annotation_tokens"]) == len(devkit_boxes)
        for k, token in enumerate(s.extras["annotation_tokens"]):
            b = by_token[token]
            ours = s.boxes[k].double().numpy()
            np.testing.assert_allclose(ours[:3], b.center, atol=1e-4)
            np.testing.assert_allclose(ours[3:6], b.wlh[[1, 0, 2]], atol=1e-4)
            v = b.orientation.rotation_matrix[:, 0]
            assert angle_diff(ours[6], math.atan2(v[1], v[0])) < 1e-4
            velocity = to_lidar @ nusc.box_velocity(token)
            np.testing.assert_allclose(ours[7:9], velocity[:2], atol=1e-4, equal_nan=True)
            assert s.names[k] == category_to_detection_name(nusc.get("sample_annotation", token)["category_name"])
            checked += 1
            finite_v += int(np.isfinite(velocity[0]))
    assert checked > 100 and finite_v > 100


def test_points_in_boxes_equal_num_lidar_pts(train_set: NuScenesDataset) -> None:
    total = 0
    for i in range(len(train_set)):
        s = train_set.load_sample(i)
        counts = count_points_in_boxes(s.points, s.boxes[:, :7])
        assert torch.equal(counts, s.num_points), s.token
        total += int(counts.sum())
    assert total > 1000


def _sweep_of_box(root: Path, tables: NuScenesTables, sweep: dict, ann: dict) -> np.ndarray:
    """Indices of the raw sweep points (after the ego-radius removal) inside the global box
    ``ann``, the box mapped into the sweep's sensor frame with the sweep's own poses
    (independent of the dataset's chain)."""
    pts = read_nuscenes_points(root / sweep["path"]).astype(np.float64)
    pts = pts[~((np.abs(pts[:, 0]) < 1.0) & (np.abs(pts[:, 1]) < 1.0))]
    sensor_to_global = sweep["ego_to_global"] @ sweep["lidar_to_ego"]
    q = np.asarray(ann["rotation"])
    yaw = 2 * math.atan2(q[3], q[0])
    box_to_global = np.eye(4)
    box_to_global[:3, :3] = [[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]]
    box_to_global[:3, 3] = ann["translation"]
    box_in_sensor = np.linalg.inv(sensor_to_global) @ box_to_global
    u = (pts[:, :3] - box_in_sensor[:3, 3]) @ box_in_sensor[:3, :3]  # box frame
    w, l, h = ann["size"]
    inside = (np.abs(u[:, 0]) <= l / 2) & (np.abs(u[:, 1]) <= w / 2) & (np.abs(u[:, 2]) <= h / 2)
    return np.flatnonzero(inside)


def test_sweeps_are_ego_motion_compensated(synth_nuscenes: Path) -> None:
    ds = NuScenesDataset(synth_nuscenes, split="train", sweeps=2, load_cameras=False)
    assert ds.point_features == ("x", "y", "z", "intensity", "time_lag")
    tables = NuScenesTables(synth_nuscenes, "v1.0-mini")
    i = 2  # third keyframe of scene-0061: two sweeps before it
    entry = ds.index[i]
    s = ds.load_sample(i)
    assert s.points.shape[1] == 5
    lags = sorted(set(s.points[:, 4].tolist()))
    expected = [(entry["lidar"]["timestamp_us"] - sw["timestamp_us"]) * 1e-6 for sw in entry["sweeps"][:2]]
    np.testing.assert_allclose(lags, [0.0] + expected, atol=1e-6)
    # SynthDrive writes 2 sweeps per 0.5 s interval: lags are multiples of 1/6 s
    np.testing.assert_allclose(np.asarray(expected) * 6.0, [1.0, 2.0], atol=1e-4)
    key_count = int((s.points[:, 4] == 0).sum())
    assert key_count == read_nuscenes_points(synth_nuscenes / entry["lidar"]["path"]).shape[0]

    # a parked car with many points: its sweep points land in its key-frame box
    parked = [k for k in range(s.boxes.shape[0]) if s.names[k] == "car"
              and "vehicle.parked" in s.extras["attributes"][k]]
    k = max(parked, key=lambda j: int(s.num_points[j]))
    assert int(s.num_points[k]) > 50
    ann = tables.get("sample_annotation", s.extras["annotation_tokens"][k])
    grown = s.boxes[k, :7].clone()
    grown[3:6] += 0.4  # 0.2 m on every side
    offset = key_count
    moved = 0.0
    for j, sweep in enumerate(entry["sweeps"][:2]):
        lag = expected[j]
        block = s.points[s.points[:, 4] == np.float32(lag)]
        assert torch.equal(block, s.points[offset:offset + block.shape[0]])
        offset += block.shape[0]
        own = _sweep_of_box(synth_nuscenes, tables, sweep, ann)
        assert own.size > 30
        inside = points_in_boxes(block[own], grown[None])[:, 0]
        assert inside.float().mean() > 0.95
        # the ego moved: without compensation the same points would miss the box
        raw = read_nuscenes_points(synth_nuscenes / sweep["path"])
        raw = raw[~((np.abs(raw[:, 0]) < 1.0) & (np.abs(raw[:, 1]) < 1.0))]
        moved = max(moved, float(np.linalg.norm(sweep["ego_to_global"][:3, 3] - entry["lidar"]["ego_to_global"][:3, 3])))
        if moved > 1.0:
            assert points_in_boxes(torch.from_numpy(raw[own]), grown[None])[:, 0].float().mean() < 0.5
    assert moved > 1.0


def test_box_centres_project_like_the_devkit(train_set: NuScenesDataset, nusc: Any) -> None:
    geometry_utils = pytest.importorskip("nuscenes.utils.geometry_utils")
    projected = 0
    for i in (0, 4):
        s = train_set.load_sample(i)
        entry = train_set.index[i]
        for cam in s.cameras:
            cam_token = entry["cameras"][cam.name]["sample_data_token"]
            _, cam_boxes, intrinsic = nusc.get_sample_data(
                cam_token, box_vis_level=geometry_utils.BoxVisibility.NONE)
            by_token = {b.token: b for b in cam_boxes}
            np.testing.assert_allclose(cam.intrinsics.numpy(), intrinsic, rtol=1e-6)
            p = cam.lidar_to_image().double()
            for k, token in enumerate(s.extras["annotation_tokens"]):
                b = by_token[token]
                if b.center[2] < 1.0:
                    continue
                ours = p @ torch.cat((s.boxes[k, :3].double(), torch.ones(1, dtype=torch.float64)))
                ours = (ours[:2] / ours[2]).numpy()
                theirs = geometry_utils.view_points(b.center[:, None], np.asarray(intrinsic), normalize=True)[:2, 0]
                np.testing.assert_allclose(ours, theirs, atol=1e-3)
                projected += 1
    assert projected > 50


# ---------------------------------------------------------------- real nuScenes sample


def _real_tables(real_data: Path) -> Path:
    root = real_data / "SeungHwi0613__ros2_bevfusion_demo" / "data" / "nuscenes"
    if not (root / "v1.0-test" / "sample_data.json").is_file():
        pytest.skip(f"real nuScenes tables not found under {root}")
    return root


def test_real_tables_and_lidar2cam_equal_mmdet3d(real_data: Path, tmp_path: Path) -> None:
    root = _real_tables(real_data)
    demo = real_data / "open-mmlab__mmdetection3d" / "demo" / "data" / "nuscenes"
    with (demo / "n015-2018-07-24-11-22-45+0800.pkl").open("rb") as handle:
        info = pickle.load(handle)["data_list"][0]
    assert info["token"] == DEMO_TOKEN

    tables = NuScenesTables(root, "v1.0-test")  # no sample_annotation/instance: test version
    assert tables.sample_annotations(DEMO_TOKEN) == []
    assert len(tables.category_names()) == 23
    index = build_nuscenes_index(root, "v1.0-test", "test")
    assert [e["token"] for e in index] == [DEMO_TOKEN]
    entry = index[0]
    assert entry["sweeps"] == [] and entry["gt"]["boxes"].shape == (0, 9)
    np.testing.assert_allclose(entry["lidar"]["lidar_to_ego"], info["lidar_points"]["lidar2ego"], atol=1e-6)
    np.testing.assert_allclose(entry["lidar"]["ego_to_global"], info["ego2global"], atol=1e-4)
    assert sorted(entry["cameras"]) == sorted(NUSCENES_CAMERAS)
    for name in NUSCENES_CAMERAS:
        np.testing.assert_allclose(lidar_to_camera_matrix(entry, name), info["images"][name]["lidar2cam"], atol=1e-4)
        np.testing.assert_allclose(entry["cameras"][name]["intrinsics"], info["images"][name]["cam2img"], atol=1e-6)

    # The demo's LiDAR and images are the files this sample references: assemble a dataroot.
    if not (demo / Path(entry["lidar"]["path"]).name).is_file():
        return
    data = tmp_path / "nuscenes"
    (data).mkdir()
    (data / "v1.0-test").symlink_to(root / "v1.0-test", target_is_directory=True)
    for rel in [entry["lidar"]["path"]] + [c["path"] for c in entry["cameras"].values()]:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).symlink_to(demo / Path(rel).name)
    s = NuScenesDataset(data, "v1.0-test", "test", sweeps=1).load_sample(0)
    assert s.points.shape == (34688, 5) and bool((s.points[:, 4] == 0).all())
    for cam in s.cameras:
        assert cam.image.shape == (3, 900, 1600)
        np.testing.assert_allclose(cam.lidar_to_camera.numpy(), info["images"][cam.name]["lidar2cam"], atol=1e-4)
        uvw = s.points[:, :3].double() @ cam.lidar_to_image().double()[:, :3].T + cam.lidar_to_image().double()[:, 3]
        front = uvw[:, 2] > 1.0
        uv = uvw[front, :2] / uvw[front, 2:]
        on_image = (uv[:, 0] >= 0) & (uv[:, 0] < 1600) & (uv[:, 1] >= 0) & (uv[:, 1] < 900)
        assert int(on_image.sum()) > 1000, cam.name


# ---------------------------------------------------------------- Lyft tables


def _lyft_root(real_data: Path) -> Path:
    root = real_data / "open-mmlab__mmdetection3d" / "tests" / "data" / "lyft" / "v1.01-train"
    if not (root / "v1.01-train" / "sample.json").is_file():
        pytest.skip(f"Lyft tables not found under {root}")
    return root


def test_lyft_tables_load_and_convert_like_the_devkit(real_data: Path, tmp_path: Path) -> None:
    root = _lyft_root(real_data)
    tables = NuScenesTables(root, "v1.01-train")
    # the subset is trimmed: chain links point to records that are not there
    assert tables.dangling_links["sample_annotation.prev"] == 4
    assert set(tables.category_names()) == set(LYFT_CLASSES)
    index = build_nuscenes_index(root, "v1.01-train", "all")
    assert len(index) == 1
    entry = index[0]
    gt = entry["gt"]
    assert gt["boxes"].shape == (4, 9)
    assert all(n in LYFT_CLASSES for n in gt["name"]) and gt["name"] == gt["category"]
    assert (gt["num_lidar_pts"] == -1).all() and (gt["num_radar_pts"] == 0).all()
    assert gt["visibility"] == [""] * 4
    assert np.isnan(gt["boxes"][:, 7:]).all()  # neighbours are not in the subset
    assert isinstance(entry["timestamp_us"], int) and sorted(entry["cameras"]) == sorted(
        ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
         "CAM_BACK_RIGHT", "CAM_FRONT_ZOOMED"])

    # boxes by the devkit's Box.translate/rotate sequence on the raw records
    data_classes = pytest.importorskip("nuscenes.utils.data_classes")
    pyquaternion = pytest.importorskip("pyquaternion")
    raw = json.loads((root / "v1.01-train" / "sample_data.json").read_text())
    lidar_sd = next(r for r in raw if r["token"] == entry["lidar"]["sample_data_token"])
    poses = {r["token"]: r for r in json.loads((root / "v1.01-train" / "ego_pose.json").read_text())}
    calibs = {r["token"]: r for r in json.loads((root / "v1.01-train" / "calibrated_sensor.json").read_text())}
    anns = {r["token"]: r for r in json.loads((root / "v1.01-train" / "sample_annotation.json").read_text())}
    pose, cs = poses[lidar_sd["ego_pose_token"]], calibs[lidar_sd["calibrated_sensor_token"]]
    for k, token in enumerate(gt["annotation_tokens"]):
        a = anns[token]
        box = data_classes.Box(a["translation"], a["size"], pyquaternion.Quaternion(a["rotation"]))
        box.translate(-np.array(pose["translation"]))
        box.rotate(pyquaternion.Quaternion(pose["rotation"]).inverse)
        box.translate(-np.array(cs["translation"]))
        box.rotate(pyquaternion.Quaternion(cs["rotation"]).inverse)
        np.testing.assert_allclose(gt["boxes"][k, :3], box.center, atol=1e-6)
        np.testing.assert_allclose(gt["boxes"][k, 3:6], box.wlh[[1, 0, 2]], atol=1e-9)
        v = box.orientation.rotation_matrix[:, 0]
        assert angle_diff(gt["boxes"][k, 6], math.atan2(v[1], v[0])) < 1e-6

    # with the LiDAR file in place (a real 5-point Lyft bin under the referenced name),
    # the sample loads; the category map decides which boxes are kept
    data = symlink_copy(root, tmp_path / "lyft")
    lidar_file = data / entry["lidar"]["path"]
    with pytest.raises(DataError, match=re.escape(lidar_file.name)):
        NuScenesDataset(data, "v1.01-train", "all", class_names=LYFT_CLASSES, load_cameras=False)[0]
    lidar_file.parent.mkdir(parents=True, exist_ok=True)
    lidar_file.symlink_to(root.parent / "lidar" / "host-a017_lidar1_1236118886501000046.bin")
    s = NuScenesDataset(data, "v1.01-train", "all", class_names=LYFT_CLASSES, load_cameras=False)[0]
    assert s.points.shape == (5, 4) and s.boxes.shape[0] == 4  # -1 points: not filtered
    assert sorted(s.names) == sorted(gt["category"])
    only_cars = NuScenesDataset(data, "v1.01-train", "all", class_names=("vehicle",), load_cameras=False,
                                category_map={"car": "vehicle"})[0]
    assert only_cars.names == ["vehicle"] * gt["category"].count("car")


# ---------------------------------------------------------------- corrupt inputs


@pytest.fixture()
def synth_copy(synth_nuscenes: Path, tmp_path: Path) -> Path:
    return symlink_copy(synth_nuscenes, tmp_path / "copy")


def test_corrupt_lidar_and_missing_image_raise_data_error(synth_copy: Path) -> None:
    ds = NuScenesDataset(synth_copy, split="val", load_cameras=True)
    entry = ds.index[0]
    lidar = replace_with_copy(synth_copy / entry["lidar"]["path"])
    good = lidar.read_bytes()
    lidar.write_bytes(good[:-3])
    with pytest.raises(DataError, match=rf"{re.escape(lidar.name)}.*not a multiple of 20"):
        ds[0]
    pts = np.frombuffer(good, dtype=np.float32).copy()
    pts[5 * 7 + 1] = np.nan
    lidar.write_bytes(pts.tobytes())
    with pytest.raises(DataError, match=rf"{re.escape(lidar.name)}: point 7 "):
        ds[0]
    lidar.write_bytes(good)
    ds[0]
    image = synth_copy / entry["cameras"]["CAM_BACK"]["path"]
    image.unlink()
    with pytest.raises(DataError, match=rf"image not found: .*{re.escape(image.name)}"):
        ds[0]
    # a sweep file is read only when sweeps are merged
    sweep = synth_copy / ds.index[2]["sweeps"][0]["path"]
    replace_with_copy(sweep).write_bytes(b"\0" * 7)
    NuScenesDataset(synth_copy, split="val", load_cameras=False)[2]
    with pytest.raises(DataError, match=re.escape(sweep.name)):
        NuScenesDataset(synth_copy, split="val", sweeps=1, load_cameras=False)[2]


def test_bad_tables_raise_data_error_naming_the_table(synth_copy: Path) -> None:
    folder = synth_copy / "v1.0-mini"
    sample_data = replace_with_copy(folder / "sample_data.json")
    good = sample_data.read_text()

    sample_data.write_text(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"sample_data\.json: invalid JSON at line"):
        build_nuscenes_index(synth_copy, "v1.0-mini", "train")

    records = json.loads(good)
    records[3]["ego_pose_token"] = "feedface" * 4
    sample_data.write_text(json.dumps(records))
    with pytest.raises(DataError, match=rf"sample_data\.json: record {records[3]['token']} field "
                                        r"'ego_pose_token' refers to token 'feedfacefeedface.*', "
                                        r"which is not in ego_pose\.json"):
        build_nuscenes_index(synth_copy, "v1.0-mini", "train")

    records = json.loads(good)
    del records[0]["filename"]
    sample_data.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"sample_data\.json: record .* has no field 'filename'"):
        NuScenesTables(synth_copy, "v1.0-mini")

    sample_data.write_text(good)
    (folder / "sensor.json").unlink()
    with pytest.raises(DataError, match=r"table file missing: .*sensor\.json"):
        NuScenesDataset(synth_copy, split="train")
    with pytest.raises(DataError, match="tables folder not found"):
        NuScenesTables(synth_copy, "v1.0-trainval")


# ---------------------------------------------------------------- index cache


def test_index_is_built_once_and_rebuilt_on_change(synth_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_build = nus._build_index

    def counting(tables: NuScenesTables, split: str, max_sweeps: int) -> list[dict]:
        calls.append(split)
        return real_build(tables, split, max_sweeps)

    monkeypatch.delenv("DISTILL3D_INDEX_DIR", raising=False)  # synth_copy is a tmp mirror
    monkeypatch.setattr(nus, "_build_index", counting)
    first = NuScenesDataset(synth_copy, split="train", load_cameras=False)
    second = NuScenesDataset(synth_copy, split="train", load_cameras=False)
    assert calls == ["train"]
    clone = pickle.loads(pickle.dumps(NuScenesDataset(synth_copy, split="train", category_map={"vehicle.car": "car"})))
    assert clone.sample_tokens() == first.sample_tokens() and calls == ["train"]
    assert second.sample_tokens() == first.sample_tokens()
    assert (synth_copy / ".distill3d_index" / "nuscenes-v1.0-mini-train.pkl").is_file()
    torch.testing.assert_close(second[1].boxes, first[1].boxes, equal_nan=True)
    NuScenesDataset(synth_copy, split="val", load_cameras=False)
    assert calls == ["train", "val"]
    NuScenesDataset(synth_copy, split="train", load_cameras=False, rebuild_index=True)
    assert calls == ["train", "val", "train"]
    NuScenesDataset(synth_copy, split="train", load_cameras=False)
    assert len(calls) == 3
    # an edited table (new mtime) invalidates the cache
    replace_with_copy(synth_copy / "v1.0-mini" / "sample_annotation.json")
    NuScenesDataset(synth_copy, split="train", load_cameras=False)
    assert len(calls) == 4
    # more sweeps than the default index holds: a separate index
    NuScenesDataset(synth_copy, split="train", load_cameras=False, sweeps=12)
    assert len(calls) == 5


def test_arguments_are_checked(synth_nuscenes: Path) -> None:
    with pytest.raises(ValueError, match="valid splits"):
        NuScenesDataset(synth_nuscenes, split="test")
    with pytest.raises(ValueError, match="sweeps"):
        NuScenesDataset(synth_nuscenes, sweeps=-1)
    ds = NuScenesDataset(synth_nuscenes, split="val", class_names=("car", "pedestrian"), load_cameras=False)
    s = ds[0]
    assert set(s.names) <= {"car", "pedestrian"} and s.cameras == []
