"""The SynthDrive nuScenes writer: the official devkit loads the output, agrees with our
num_lidar_pts and velocities, and every table is consistent with the others and the files."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill3d.synth.generate import GenerationReport, generate_dataset
from distill3d.synth.nuscenes_writer import (
    BOUNDARY_MARGIN,
    NUSCENES_TABLES,
    drivable_mask_png,
    make_token,
    settle_boundary_points,
    sweep_times,
    visibility_token,
)
from distill3d.synth.types import GroundMap, Material

SEED = 11
SCENES = 2
SAMPLES = 3
SWEEPS = 2
IMAGE_SIZE = (352, 128)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> GenerationReport:
    root = tmp_path_factory.mktemp("synth_nuscenes")
    return generate_dataset("nuscenes", root, preset="mini", scenes=SCENES,
                            samples_per_scene=SAMPLES, sweeps=SWEEPS, image_size=IMAGE_SIZE,
                            seed=SEED, workers=1, progress=False)


@pytest.fixture(scope="module")
def tables(written: GenerationReport) -> dict[str, list[dict]]:
    folder = written.out_dir / "v1.0-mini"
    return {name: json.loads((folder / f"{name}.json").read_text()) for name in NUSCENES_TABLES}


@pytest.fixture(scope="module")
def nusc(written: GenerationReport):
    nuscenes = pytest.importorskip("nuscenes.nuscenes")
    return nuscenes.NuScenes(version="v1.0-mini", dataroot=str(written.out_dir), verbose=False)


def _annotation_token(scene_name: str, instance_id: int, k: int) -> str:
    return make_token(SEED, "sample_annotation", scene_name, instance_id, k)


# ----------------------------------------------------------------------------- the devkit


def test_devkit_loads_every_table(nusc, written: GenerationReport) -> None:
    assert len(nusc.scene) == SCENES
    assert len(nusc.sample) == SCENES * SAMPLES
    cams = 6
    assert len(nusc.sample_data) == SCENES * (SAMPLES * (1 + cams) + (SAMPLES - 1) * SWEEPS)
    assert len(nusc.ego_pose) == len(nusc.sample_data)
    assert len(nusc.sensor) == 1 + cams
    assert len(nusc.calibrated_sensor) == SCENES * (1 + cams)
    assert len(nusc.log) == len(nusc.map) == SCENES
    assert len(nusc.visibility) == 4 and len(nusc.attribute) == 8
    assert len(nusc.sample_annotation) > 0
    for sample in nusc.sample:
        assert set(sample["data"]) == {"LIDAR_TOP", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT",
                                       "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"}
    # the map mask loads through the devkit's MapMask
    mask = nusc.map[0]["mask"].mask()
    assert mask.dtype == np.uint8 and mask.max() == 255


def test_scene_names_follow_the_official_splits(nusc) -> None:
    splits = pytest.importorskip("nuscenes.utils.splits")
    official = splits.create_splits_scenes()
    names = [s["name"] for s in nusc.scene]
    assert names[0] in official["mini_train"]
    assert names[1] in official["mini_val"]


def test_num_lidar_pts_equals_devkit_count(nusc) -> None:
    data_classes = pytest.importorskip("nuscenes.utils.data_classes")
    geometry_utils = pytest.importorskip("nuscenes.utils.geometry_utils")
    checked = with_points = 0
    for sample in nusc.sample:
        lidar_token = sample["data"]["LIDAR_TOP"]
        path, boxes, _ = nusc.get_sample_data(lidar_token)
        cloud = data_classes.LidarPointCloud.from_file(path)
        assert len(boxes) == len(sample["anns"])
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            count = int(geometry_utils.points_in_box(box, cloud.points[:3]).sum())
            assert count == ann["num_lidar_pts"], (box.token, count, ann["num_lidar_pts"])
            checked += 1
            with_points += count > 0
    assert checked == len(nusc.sample_annotation)
    assert with_points > 10


def test_devkit_velocity_matches_true_velocity(nusc, written: GenerationReport) -> None:
    compared = 0
    for res in written.results:
        for k, kf in enumerate(res.keyframes):
            for a, iid in enumerate(kf.instance_ids):
                token = _annotation_token(res.scene_name, int(iid), k)
                ann = nusc.get("sample_annotation", token)
                velocity = nusc.box_velocity(token)[:2]
                if not ann["prev"] and not ann["next"]:
                    assert np.isnan(velocity).all()
                    continue
                if not (ann["prev"] and ann["next"]):
                    continue  # one-sided differences lag by a quarter second
                true = kf.boxes[a, 7:9]
                assert np.linalg.norm(velocity - true) <= 0.3 + 0.05 * np.linalg.norm(true), (
                    kf.categories[a], velocity, true)
                compared += 1
    assert compared > 10


def test_boxes_in_lidar_frame_match_world_objects(nusc, written: GenerationReport) -> None:
    """get_sample_data's LiDAR-frame boxes are our world boxes seen from the LiDAR."""
    res = written.results[0]
    kf = res.keyframes[1]
    sample = nusc.get("sample", make_token(SEED, "sample", res.scene_name, 1))
    _, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
    world_to_lidar = np.linalg.inv(kf.ego_to_world @ res.lidar_mount)
    by_token = {b.token: b for b in boxes}
    for a, iid in enumerate(kf.instance_ids):
        box = by_token[_annotation_token(res.scene_name, int(iid), 1)]
        centre = world_to_lidar[:3, :3] @ kf.boxes[a, :3] + world_to_lidar[:3, 3]
        np.testing.assert_allclose(box.center, centre, atol=1e-6)
        np.testing.assert_allclose(box.wlh, kf.boxes[a, [4, 3, 5]], atol=1e-9)
        heading = world_to_lidar[:3, :3] @ np.array([np.cos(kf.boxes[a, 6]), np.sin(kf.boxes[a, 6]), 0.0])
        yaw = box.orientation.yaw_pitch_roll[0]
        assert abs((yaw - np.arctan2(heading[1], heading[0]) + np.pi) % (2 * np.pi) - np.pi) < 1e-6


# ----------------------------------------------------------------------------- tables


def test_every_token_reference_resolves(tables: dict[str, list[dict]]) -> None:
    index = {name: {r["token"]: r for r in recs} for name, recs in tables.items()}
    for name, recs in tables.items():
        assert len(index[name]) == len(recs), f"duplicate tokens in {name}"
        for rec in recs:
            assert re.fullmatch(r"[0-9a-f]{32}|[1-4]", rec["token"]), rec["token"]
    refs = {
        "scene": {"log_token": "log", "first_sample_token": "sample", "last_sample_token": "sample"},
        "sample": {"scene_token": "scene", "prev": "sample", "next": "sample"},
        "sample_data": {"sample_token": "sample", "ego_pose_token": "ego_pose",
                        "calibrated_sensor_token": "calibrated_sensor", "prev": "sample_data",
                        "next": "sample_data"},
        "sample_annotation": {"sample_token": "sample", "instance_token": "instance",
                              "visibility_token": "visibility", "prev": "sample_annotation",
                              "next": "sample_annotation"},
        "instance": {"category_token": "category", "first_annotation_token": "sample_annotation",
                     "last_annotation_token": "sample_annotation"},
        "calibrated_sensor": {"sensor_token": "sensor"},
    }
    for table, fields in refs.items():
        for rec in tables[table]:
            for key, target in fields.items():
                if key in ("prev", "next") and rec[key] == "":
                    continue
                assert rec[key] in index[target], (table, key, rec[key])
    for rec in tables["sample_annotation"]:
        for tok in rec["attribute_tokens"]:
            assert tok in index["attribute"]
    for rec in tables["map"]:
        for tok in rec["log_tokens"]:
            assert tok in index["log"]


def _check_chain(records: list[dict], index: dict[str, dict]) -> None:
    """prev/next links of a chain are mutual, start and end empty, and follow time."""
    assert records[0]["prev"] == "" and records[-1]["next"] == ""
    for a, b in zip(records[:-1], records[1:]):
        assert a["next"] == b["token"] and b["prev"] == a["token"]
        if "timestamp" in a:
            assert a["timestamp"] <= b["timestamp"]


def test_chains_and_counts(tables: dict[str, list[dict]]) -> None:
    index = {name: {r["token"]: r for r in recs} for name, recs in tables.items()}
    samples_of = {s["token"]: [r for r in tables["sample"] if r["scene_token"] == s["token"]]
                  for s in tables["scene"]}
    for scene in tables["scene"]:
        chain = sorted(samples_of[scene["token"]], key=lambda r: r["timestamp"])
        _check_chain(chain, index["sample"])
        assert scene["nbr_samples"] == len(chain) == SAMPLES
        assert scene["first_sample_token"] == chain[0]["token"]
        assert scene["last_sample_token"] == chain[-1]["token"]
    # sample_data: one chain per (scene, channel); keyframes in samples, sweeps in sweeps
    sensor_channel = {cs["token"]: index["sensor"][cs["sensor_token"]]["channel"]
                      for cs in tables["calibrated_sensor"]}
    chains: dict[tuple[str, str], list[dict]] = {}
    for sd in tables["sample_data"]:
        scene = index["sample"][sd["sample_token"]]["scene_token"]
        chains.setdefault((scene, sensor_channel[sd["calibrated_sensor_token"]]), []).append(sd)
    assert len(chains) == SCENES * 7
    for (scene, channel), recs in chains.items():
        recs.sort(key=lambda r: r["timestamp"])
        _check_chain(recs, index["sample_data"])
        keys = [r for r in recs if r["is_key_frame"]]
        assert len(keys) == SAMPLES
        assert len(recs) - len(keys) == (SWEEPS * (SAMPLES - 1) if channel == "LIDAR_TOP" else 0)
        for r in recs:
            folder = "samples" if r["is_key_frame"] else "sweeps"
            ext = "pcd.bin" if channel == "LIDAR_TOP" else "jpg"
            assert re.fullmatch(rf"{folder}/{channel}/n0(08|15)-\d{{4}}(-\d\d){{5}}[+-]\d{{4}}__"
                                rf"{channel}__{r['timestamp']}\.{ext}", r["filename"]), r["filename"]
            assert r["fileformat"] == ("pcd" if channel == "LIDAR_TOP" else "jpg")
            pose = index["ego_pose"][r["ego_pose_token"]]
            assert pose["timestamp"] == r["timestamp"]
            if r["is_key_frame"]:
                assert index["sample"][r["sample_token"]]["timestamp"] == r["timestamp"]
    # instances
    anns_of: dict[str, list[dict]] = {}
    for ann in tables["sample_annotation"]:
        anns_of.setdefault(ann["instance_token"], []).append(ann)
    assert set(anns_of) == set(index["instance"])
    for inst in tables["instance"]:
        recs = sorted(anns_of[inst["token"]], key=lambda r: index["sample"][r["sample_token"]]["timestamp"])
        assert inst["nbr_annotations"] == len(recs)
        assert inst["first_annotation_token"] == recs[0]["token"]
        assert inst["last_annotation_token"] == recs[-1]["token"]
        for a, b in zip(recs[:-1], recs[1:]):
            assert a["next"] == b["token"] and b["prev"] == a["token"]
        assert recs[0]["prev"] == "" and recs[-1]["next"] == ""


def test_fixed_tables_and_annotation_fields(tables: dict[str, list[dict]]) -> None:
    assert [(v["token"], v["level"]) for v in tables["visibility"]] == [
        ("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100")]
    assert {a["name"] for a in tables["attribute"]} == {
        "vehicle.moving", "vehicle.parked", "vehicle.stopped", "cycle.with_rider",
        "cycle.without_rider", "pedestrian.sitting_lying_down", "pedestrian.standing",
        "pedestrian.moving"}
    indices = [c["index"] for c in tables["category"]]
    assert indices == list(range(len(indices)))
    assert "vehicle.car" in {c["name"] for c in tables["category"]}
    for log in tables["log"]:
        assert log["location"] in {"singapore-onenorth", "singapore-hollandvillage",
                                   "singapore-queenstown", "boston-seaport"}
    attribute_name = {a["token"]: a["name"] for a in tables["attribute"]}
    category_name = {c["token"]: c["name"] for c in tables["category"]}
    instance_category = {i["token"]: category_name[i["category_token"]] for i in tables["instance"]}
    for ann in tables["sample_annotation"]:
        assert ann["num_radar_pts"] == 0 and ann["num_lidar_pts"] >= 0
        assert len(ann["size"]) == 3 and min(ann["size"]) > 0
        q = np.array(ann["rotation"])
        assert abs(np.linalg.norm(q) - 1) < 1e-12 and q[0] >= 0 and q[1] == q[2] == 0
        assert "velocity" not in ann
        cat = instance_category[ann["instance_token"]]
        attrs = [attribute_name[t] for t in ann["attribute_tokens"]]
        if cat.startswith(("vehicle.bicycle", "vehicle.motorcycle")):
            assert len(attrs) == 1 and attrs[0].startswith("cycle.")
        elif cat.startswith("vehicle."):
            assert len(attrs) == 1 and attrs[0].startswith("vehicle.")
        elif cat.startswith("human.pedestrian"):
            assert len(attrs) == 1 and attrs[0].startswith("pedestrian.")
        else:
            assert attrs == []


def test_sensor_files_and_calibration(written: GenerationReport, tables: dict[str, list[dict]]) -> None:
    root = written.out_dir
    index = {name: {r["token"]: r for r in recs} for name, recs in tables.items()}
    for sd in tables["sample_data"]:
        path = root / sd["filename"]
        assert path.is_file(), sd["filename"]
        cs = index["calibrated_sensor"][sd["calibrated_sensor_token"]]
        if sd["fileformat"] == "pcd":
            points = np.fromfile(path, dtype="<f4").reshape(-1, 5)
            assert points.shape[0] > 10_000
            assert np.all((points[:, 3] >= 0) & (points[:, 3] <= 255))
            assert np.array_equal(points[:, 3], np.round(points[:, 3]))
            assert set(np.unique(points[:, 4]).astype(int)) <= set(range(32))
            assert cs["camera_intrinsic"] == [] and sd["width"] == sd["height"] == 0
        else:
            with Image.open(path) as img:
                assert img.format == "JPEG" and img.size == IMAGE_SIZE
            assert (sd["width"], sd["height"]) == IMAGE_SIZE
            k = np.array(cs["camera_intrinsic"])
            assert k.shape == (3, 3) and k[2, 2] == 1
            assert 0 < k[0, 2] < IMAGE_SIZE[0] and 0 < k[1, 2] < IMAGE_SIZE[1]
    lidar_cs = [cs for cs in tables["calibrated_sensor"] if cs["camera_intrinsic"] == []]
    # LIDAR_TOP: x right, y forward (rotation of -90 degrees about z)
    q = np.array(lidar_cs[0]["rotation"])
    assert np.allclose(q, [np.cos(-np.pi / 4), 0, 0, np.sin(-np.pi / 4)], atol=1e-9)
    for rec in tables["map"]:
        assert (root / rec["filename"]).is_file()


def test_visibility_tokens_bin_the_visible_fraction(written: GenerationReport,
                                                    tables: dict[str, list[dict]]) -> None:
    assert [visibility_token(f) for f in (0.0, 0.39, 0.4, 0.59, 0.6, 0.79, 0.8, 1.0)] == [
        "1", "1", "2", "2", "3", "3", "4", "4"]
    by_token = {r["token"]: r for r in tables["sample_annotation"]}
    for res in written.results:
        for k, kf in enumerate(res.keyframes):
            for a, iid in enumerate(kf.instance_ids):
                ann = by_token[_annotation_token(res.scene_name, int(iid), k)]
                assert ann["visibility_token"] == visibility_token(kf.visibility[a])
                assert ann["num_lidar_pts"] == kf.num_lidar_pts[a]


# ----------------------------------------------------------------------------- helpers


def test_sweep_times_are_evenly_spaced() -> None:
    assert sweep_times([0.0, 0.5, 1.0], 0) == [[], []]
    nine = sweep_times([0.0, 0.5], 9)[0]
    assert np.allclose(nine, np.arange(1, 10) * 0.05)
    with pytest.raises(ValueError):
        sweep_times([0.0, 0.5], -1)


def test_settle_boundary_points_keeps_sides_and_clears_the_margin() -> None:
    rng = np.random.default_rng(0)
    box = np.array([[10.0, -3.0, 1.0, 4.0, 2.0, 1.5, 0.7]])
    sensor_to_world = np.eye(4)
    sensor_to_world[:3, 3] = (2.0, 1.0, 0.5)
    # points on the faces (+- tiny offsets) and random points around the box
    local = rng.uniform(-1.2, 1.2, size=(4000, 3)) * 0.5 * box[0, 3:6]
    axis = rng.integers(0, 3, size=4000)
    sign = rng.choice([-1.0, 1.0], size=4000)
    local[np.arange(4000), axis] = sign * 0.5 * box[0, 3 + axis] + rng.normal(0, 3e-4, 4000)
    c, s = np.cos(box[0, 6]), np.sin(box[0, 6])
    world = np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], 1)
    world += box[0, :3]
    pts = np.zeros((4000, 5), dtype=np.float32)
    pts[:, :3] = world - sensor_to_world[:3, 3]
    pts[:, 3] = 7.0
    out, moved = settle_boundary_points(pts, sensor_to_world, box)
    assert moved > 1000 and out.dtype == np.float32
    assert np.array_equal(out[:, 3:], pts[:, 3:])

    def local_of(p: np.ndarray) -> np.ndarray:
        rel = p[:, :3].astype(np.float64) + sensor_to_world[:3, 3] - box[0, :3]
        return np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], 1)

    half = 0.5 * box[0, 3:6]
    before = np.all(np.abs(local_of(pts)) <= half, axis=1)
    after_local = local_of(out)
    after = np.all(np.abs(after_local) <= half, axis=1)
    assert np.array_equal(before, after)
    dist = np.abs(after_local) - half
    assert np.all(np.any(dist > BOUNDARY_MARGIN, axis=1) | np.all(dist < -BOUNDARY_MARGIN, axis=1))
    assert np.max(np.abs(out[:, :3] - pts[:, :3])) < 3 * BOUNDARY_MARGIN


def test_map_mask_png_matches_the_ground_raster() -> None:
    mat = np.full((40, 60), Material.GRASS, dtype=np.uint8)
    mat[10:20, :] = Material.ROAD
    mat[14, 5:50] = Material.LANE_MARKING
    ground = GroundMap(mat, x_min=3.0, y_min=1.5, resolution=0.1)
    with Image.open(io.BytesIO(drivable_mask_png(ground))) as img:
        mask = np.array(img)
    assert mask.shape == (55, 90)  # up to y = 5.5 m, x = 9.0 m at 0.1 m/pixel
    # image row r covers world y = (55 - r - 1) * 0.1 .. ; column c covers x = c * 0.1 ..
    expected = np.zeros((55, 90), dtype=np.uint8)
    expected[55 - 15 - 20:55 - 15 - 10, 30:90] = 255
    assert np.array_equal(mask, expected)
    with Image.open(io.BytesIO(drivable_mask_png(None))) as img:
        assert img.size == (1, 1)


def test_tokens_are_deterministic_hex() -> None:
    a = make_token(3, "sample", "scene-0061", 0)
    assert a == make_token(3, "sample", "scene-0061", 0)
    assert a != make_token(4, "sample", "scene-0061", 0)
    assert re.fullmatch(r"[0-9a-f]{32}", a)


def test_written_files_are_what_the_report_says(written: GenerationReport) -> None:
    manifest = json.loads((written.out_dir / "synthdrive.json").read_text())
    assert manifest["format"] == "nuscenes" and manifest["nuscenes_version"] == "v1.0-mini"
    assert manifest["seed"] == SEED and manifest["scenes"] == SCENES
    assert manifest["sweeps"] == SWEEPS
    for res in written.results:
        for kf in res.keyframes:
            assert Path(written.out_dir, kf.lidar_file).stat().st_size == kf.num_points * 20
