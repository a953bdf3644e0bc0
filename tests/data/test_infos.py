"""Info files of mmdetection3d and OpenPCDet: schema detection, safe loading, and every
schema read into the same Sample, checked on the real sample data."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from distill3d.data.errors import DataError
from distill3d.data.infos import (
    KITTI_CLASSES,
    NUSCENES_CLASSES,
    InfoDataset,
    InfoSchema,
    load_info_file,
)
from distill3d.data.kitti_files import kitti_objects_to_arrays, read_kitti_calib, read_kitti_labels
from distill3d.geometry.points import count_points_in_boxes

MMDET = "open-mmlab__mmdetection3d"
NUS_DEMO = f"{MMDET}/demo/data/nuscenes"
NUS_DEMO_PKL = f"{NUS_DEMO}/n015-2018-07-24-11-22-45+0800.pkl"
NUS_DEMO_LIDAR = "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
KITTI_DEMO_PKL = f"{MMDET}/demo/data/kitti/000008.pkl"
KITTI_TRAIN_PKL = f"{MMDET}/tests/data/kitti/kitti_infos_train.pkl"
KUIXU = "kuixu__kitti_object_vis/data/object/training"
FASTBEV_PKL = "xiaoxiao0725__fastbev21/data/nuscenes/nuscenes_infos_val.pkl"
BEVFUSION_TEST_PKL = "SeungHwi0613__ros2_bevfusion_demo/data/nuscenes/nuscenes_infos_test.pkl"
DEMO_TOKEN = "ca9a282c9e77460f8360f564131a8af5"
VEHICLES = ("car", "truck", "bus", "trailer", "construction_vehicle")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real sample file missing: {path}")
    return path


def raw_info(path: Path) -> dict:
    """The info through our safe loader (same content as pickle.load)."""
    return load_info_file(path)[1]


def wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def project(points: torch.Tensor, camera) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and depth of LiDAR points in a CameraView (float64)."""
    p = camera.lidar_to_image().double().numpy()
    xyz1 = np.c_[points[:, :3].double().numpy(), np.ones(len(points))]
    uvw = xyz1 @ p.T
    return uvw[:, :2] / uvw[:, 2:3], uvw[:, 2]


@pytest.fixture(scope="module")
def nus_demo(real_data: Path) -> InfoDataset:
    """The demo info with every one of its 69 boxes kept (incl. the ignored class and the
    3 marked invalid)."""
    return InfoDataset(need(real_data / NUS_DEMO_PKL),
                       class_names=NUSCENES_CLASSES + ("ignore",), drop_empty=False)


# --------------------------------------------------------------------------------------
# nuScenes v1.0-mini demo sample, mmdetection3d v2 info
# --------------------------------------------------------------------------------------


def test_nuscenes_demo_boxes_hold_num_lidar_pts(nus_demo: InfoDataset) -> None:
    assert nus_demo.schema is InfoSchema.MMDET3D_V2
    assert nus_demo.dataset_kind == "nuscenes" and nus_demo.legacy_boxes is False
    assert nus_demo.sample_tokens() == [DEMO_TOKEN]
    sample = nus_demo[0]
    assert sample.points.shape == (34688, 4)
    assert sample.boxes.shape == (69, 9)
    recorded = sample.num_points
    counted = count_points_in_boxes(sample.points, sample.boxes)
    exact = (counted == recorded).float().mean().item()
    tolerance = torch.clamp((0.1 * recorded.float()).ceil(), min=2).long()
    assert exact >= 0.85, (exact, counted.tolist(), recorded.tolist())
    assert bool(((counted - recorded).abs() <= tolerance).all()), (counted - recorded).tolist()
    # boxes: geometric centre, sizes (l, w, h): a car is longer than wide
    names = sample.names
    cars = sample.boxes[[i for i, n in enumerate(names) if n == "car"]]
    assert len(cars) >= 5 and bool((cars[:, 3] > cars[:, 4]).all())
    assert 3.5 < float(cars[:, 3].median()) < 5.5
    # ego pose and timestamp come from the info
    info = raw_info(nus_demo.info_path)["data_list"][0]
    assert np.allclose(sample.ego_to_global.numpy(), np.array(info["ego2global"]), atol=1e-6)
    assert np.allclose(sample.lidar_to_ego.numpy(),
                       np.array(info["lidar_points"]["lidar2ego"]), atol=1e-6)
    assert sample.timestamp_us == 1532402927647951


def test_nuscenes_demo_defaults_drop_invalid_and_ignored(real_data: Path) -> None:
    ds = InfoDataset(need(real_data / NUS_DEMO_PKL), load_cameras=False)
    sample = ds[0]
    assert ds.class_names == NUSCENES_CLASSES
    info = raw_info(ds.info_path)["data_list"][0]["instances"]
    expected = [i for i, inst in enumerate(info)
                if inst["bbox_3d_isvalid"] and inst["bbox_label_3d"] >= 0]
    assert sample.extras["instance_index"].tolist() == expected
    assert sample.labels.tolist() == [info[i]["bbox_label_3d"] for i in expected]
    assert sample.extras["num_radar_pts"].tolist() == [info[i]["num_radar_pts"] for i in expected]
    assert np.allclose(sample.boxes[:, 7:9].numpy(),
                       np.array([info[i]["velocity"] for i in expected]), rtol=1e-6, atol=1e-6,
                       equal_nan=True)                  # NaN: velocity unknown


def test_nuscenes_demo_points_project_into_all_six_images(nus_demo: InfoDataset) -> None:
    sample = nus_demo[0]
    assert sorted(c.name for c in sample.cameras) == sorted(
        ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
         "CAM_BACK_RIGHT"])
    for cam in sample.cameras:
        assert cam.image.shape == (3, 900, 1600) and cam.image.dtype == torch.uint8
        assert cam.original_size == (1600, 900)
        uv, depth = project(sample.points, cam)
        inside = (depth > 0.5) & (uv[:, 0] >= 0) & (uv[:, 0] < 1600) & (uv[:, 1] >= 0) \
            & (uv[:, 1] < 900)
        assert 1500 < inside.sum() < 15000, (cam.name, inside.sum())
        cols = uv[inside].astype(int)
        colours = cam.image[:, cols[:, 1], cols[:, 0]].float()
        assert float(colours.std(dim=1).min()) > 10.0, cam.name


def test_nuscenes_demo_box_centres_match_cam_instances(nus_demo: InfoDataset) -> None:
    """Every camera-frame instance of the info (``cam_instances``) is one of our LiDAR
    boxes, whose centre projects onto the recorded ``center_2d`` within 1 px."""
    sample = nus_demo[0]
    info = raw_info(nus_demo.info_path)["data_list"][0]
    cams = {c.name: c for c in sample.cameras}
    centres = sample.boxes[:, :3].double().numpy()
    matched = 0
    for cam_name, instances in info["cam_instances"].items():
        cam = cams[cam_name]
        cam_to_lidar = np.linalg.inv(np.array(info["images"][cam_name]["lidar2cam"]))
        for inst in instances:
            centre = cam_to_lidar[:3, :3] @ np.array(inst["bbox_3d"][:3]) + cam_to_lidar[:3, 3]
            dist = np.linalg.norm(centres - centre, axis=1)
            j = int(dist.argmin())
            assert dist[j] < 0.02, (cam_name, dist[j])
            # cam bbox_3d sizes are (l, h, w)
            assert np.allclose(sample.boxes[j, [3, 5, 4]].numpy(), inst["bbox_3d"][3:6],
                               atol=1e-4)
            uv, depth = project(sample.boxes[j:j + 1, :3], cam)
            assert depth[0] > 0
            assert np.abs(uv[0] - np.array(inst["center_2d"])).max() < 1.0
            matched += 1
    assert matched == sum(len(v) for v in info["cam_instances"].values()) == 84


# --------------------------------------------------------------------------------------
# KITTI mmdetection3d v2 infos
# --------------------------------------------------------------------------------------


def test_kitti_demo_000008(real_data: Path) -> None:
    ds = InfoDataset(need(real_data / KITTI_DEMO_PKL))
    assert ds.schema is InfoSchema.MMDET3D_V2 and ds.dataset_kind == "kitti"
    assert ds.class_names == KITTI_CLASSES        # the demo info has no categories
    sample = ds[0]
    assert sample.token == "000008"
    assert sample.names == ["Car"] * 6
    assert sample.extras["dontcare_bbox2d"].shape == (4, 4)
    assert sample.points.shape == (17238, 4)
    assert bool(torch.isnan(sample.boxes[:, 7:]).all())          # KITTI has no velocity
    # the Car boxes hold the points the info records, within the tolerance of points on
    # box faces (mmdetection3d counts in -ry - pi/2 boxes; ours carry the calib rotation)
    counted = count_points_in_boxes(sample.points, sample.boxes)
    recorded = sample.num_points
    assert bool((counted > 0).all())
    assert bool(((counted - recorded).abs() <= torch.clamp(0.1 * recorded, min=2)).all()), \
        (counted.tolist(), recorded.tolist())
    # projection: our camera reproduces the info's lidar2img
    info = raw_info(ds.info_path)["data_list"][0]
    (cam,) = sample.cameras
    assert cam.name == "image_2" and cam.image.shape == (3, 375, 1242)
    lidar2img = np.array(info["images"]["CAM2"]["lidar2img"])
    assert np.allclose(cam.lidar_to_image().double().numpy(), lidar2img[:3], rtol=1e-5,
                       atol=1e-3)
    uv, depth = project(sample.points, cam)
    xyz1 = np.c_[sample.points[:, :3].double().numpy(), np.ones(len(sample.points))]
    ref = xyz1 @ lidar2img[:3].T
    assert np.abs(uv - ref[:, :2] / ref[:, 2:3]).max() < 0.01
    assert np.abs(depth - ref[:, 2]).max() < 1e-3
    # the reduced cloud is the camera's field of view
    assert ((depth > 0) & (uv[:, 0] >= -1) & (uv[:, 0] <= 1243)).mean() > 0.99


def _kitti_layout(tmp_path: Path, real_data: Path) -> Path:
    """``tmp/training/{velodyne,image_2,calib,label_2}/000000.*`` linked to the full
    KITTI frame 000000."""
    for sub, ext in (("velodyne", "bin"), ("image_2", "png"), ("calib", "txt"),
                     ("label_2", "txt")):
        src = need(real_data / KUIXU / sub / f"000000.{ext}")
        (tmp_path / "training" / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / "training" / sub / f"000000.{ext}").symlink_to(src)
    return tmp_path


def test_kitti_infos_train_pedestrian_holds_377_points(tmp_path: Path, real_data: Path) -> None:
    root = _kitti_layout(tmp_path, real_data)
    ds = InfoDataset(need(real_data / KITTI_TRAIN_PKL), data_root=root)
    sample = ds[0]
    assert sample.token == "000000" and sample.names == ["Pedestrian"]
    assert sample.points.shape == (115384, 4)
    assert count_points_in_boxes(sample.points, sample.boxes).tolist() == [377]
    assert sample.num_points.tolist() == [377]
    assert sample.cameras[0].image.shape == (3, 370, 1224)
    # data_prefix is tried first, e.g. mmdetection3d's FOV-reduced clouds (here the
    # mmdetection3d test fixture, truncated to 800 points)
    reduced = need(real_data / f"{MMDET}/tests/data/kitti/training/velodyne_reduced/000000.bin")
    (root / "training" / "velodyne_reduced").mkdir()
    (root / "training" / "velodyne_reduced" / "000000.bin").symlink_to(reduced)
    ds2 = InfoDataset(real_data / KITTI_TRAIN_PKL, data_root=root, load_cameras=False,
                      data_prefix={"pts": "training/velodyne_reduced"})
    assert ds2[0].points.shape == (800, 4)


def test_missing_file_names_entry_and_paths(tmp_path: Path, real_data: Path) -> None:
    ds = InfoDataset(need(real_data / KITTI_TRAIN_PKL), data_root=tmp_path)
    with pytest.raises(DataError) as err:
        ds[0]
    text = str(err.value)
    assert "entry 0 (000000)" in text and "'000000.bin' not found" in text
    assert str(tmp_path / "training" / "velodyne" / "000000.bin") in text


def test_truncated_or_nan_point_file(tmp_path: Path, real_data: Path) -> None:
    (tmp_path / "training" / "velodyne").mkdir(parents=True)
    bad = tmp_path / "training" / "velodyne" / "000000.bin"
    bad.write_bytes(np.zeros(10, np.float32).tobytes() + b"\x00\x00")
    ds = InfoDataset(need(real_data / KITTI_TRAIN_PKL), data_root=tmp_path, load_cameras=False)
    with pytest.raises(DataError, match="not a multiple of the point size"):
        ds[0]
    pts = np.zeros((3, 4), np.float32)
    pts[1, 2] = np.nan
    bad.write_bytes(pts.tobytes())
    with pytest.raises(DataError, match="1 points with NaN"):
        ds[0]


def test_name_map_and_class_names(real_data: Path) -> None:
    ds = InfoDataset(need(real_data / KITTI_DEMO_PKL), class_names=("Vehicle",),
                     name_map={"Car": "Vehicle"}, load_points=False, load_cameras=False)
    sample = ds[0]
    assert sample.names == ["Vehicle"] * 6 and sample.points.shape == (0, 4)
    ds = InfoDataset(real_data / KITTI_DEMO_PKL, class_names=("Pedestrian",),
                     load_points=False, load_cameras=False)
    assert ds[0].boxes.shape == (0, 9)


# --------------------------------------------------------------------------------------
# legacy nuScenes infos ({infos, metadata})
# --------------------------------------------------------------------------------------


def test_legacy_fastbev21_metadata_only(real_data: Path) -> None:
    path = need(real_data / FASTBEV_PKL)
    schema, payload = load_info_file(path)
    assert schema is InfoSchema.MMDET3D_LEGACY_NUSCENES
    ds = InfoDataset(path, load_points=False, load_cameras=False, drop_empty=False)
    assert len(ds) == 81 and ds.legacy_boxes is True     # mmdetection3d 0.16: (w, l, h)
    # the demo sample is from scene-0061 (mini train); these are mini val: no overlap
    assert DEMO_TOKEN not in ds.sample_tokens()
    boxes, names = [], []
    for i in range(len(ds)):
        s = ds[i]
        assert s.points.shape == (0, 4) and not s.cameras
        boxes.append(s.boxes)
        names += s.names
    b = torch.cat(boxes).double().numpy()
    names = np.array(names)
    cars, peds = b[names == "car"], b[names == "pedestrian"]
    assert len(cars) > 1000 and len(peds) > 500
    assert 4.2 < np.median(cars[:, 3]) < 4.9 and 1.7 < np.median(cars[:, 4]) < 2.0
    assert (cars[:, 3] > cars[:, 4]).mean() > 0.99
    assert np.median(peds[:, 5]) > 1.6 and (peds[:, 5] > peds[:, 3]).mean() > 0.95
    # yaw: moving vehicles head along their velocity (legacy yaw is -yaw - pi/2)
    speed = np.hypot(b[:, 7], b[:, 8])
    moving = np.isin(names, VEHICLES) & (speed > 2.0)
    assert moving.sum() > 50
    err = np.abs(wrap(b[moving, 6] - np.arctan2(b[moving, 8], b[moving, 7])))
    assert np.median(err) < 0.05 and np.quantile(err, 0.95) < 0.2
    # z is the geometric centre: the bottoms of nearby boxes lie on the road, ~1.84 m
    # below the LiDAR (its lidar2ego height)
    near = np.isin(names, ("car", "pedestrian")) & (np.hypot(b[:, 0], b[:, 1]) < 20)
    assert -2.1 < np.median(b[near, 2] - b[near, 5] / 2) < -1.5
    # drop_empty follows valid_flag; unknown names (e.g. 'movable_object.debris') drop
    info0 = payload["infos"][0]
    kept = InfoDataset(path, load_points=False, load_cameras=False)[0]
    expected = [i for i, (n, v) in enumerate(zip(info0["gt_names"], info0["valid_flag"]))
                if v and n in NUSCENES_CLASSES]
    assert kept.extras["instance_index"].tolist() == expected
    # its sensor files are not available: a clear error naming the entry
    with pytest.raises(DataError, match=r"entry 0 \(3e8750f3.*\): LiDAR file"):
        InfoDataset(path, load_cameras=False)[0]


def test_legacy_info_of_the_demo_sample_equals_v2(real_data: Path, nus_demo: InfoDataset
                                                  ) -> None:
    """The BEVFusion-demo legacy (test-split) info of the same sample: its
    ``./data/nuscenes/samples/...`` paths resolve into the demo folder, and points,
    cameras and poses equal the mmdetection3d v2 reading."""
    path = need(real_data / BEVFUSION_TEST_PKL)
    ds = InfoDataset(path, data_root=real_data / NUS_DEMO, sweeps=1)
    assert ds.schema is InfoSchema.MMDET3D_LEGACY_NUSCENES
    legacy = ds[0]
    v2 = nus_demo[0]
    assert legacy.token == v2.token == DEMO_TOKEN
    assert legacy.boxes.shape == (0, 9)                       # test split: no GT
    # its only 'sweep' is the key frame itself, which is skipped
    assert legacy.point_features[-1] == "time_lag"
    assert torch.equal(legacy.points[:, :4], v2.points) and bool((legacy.points[:, 4] == 0).all())
    assert legacy.timestamp_us == v2.timestamp_us
    assert np.allclose(legacy.ego_to_global.numpy(), v2.ego_to_global.numpy(), atol=1e-4)
    assert np.allclose(legacy.lidar_to_ego.numpy(), v2.lidar_to_ego.numpy(), atol=1e-6)
    v2_cams = {c.name: c for c in v2.cameras}
    for cam in legacy.cameras:
        other = v2_cams[cam.name]
        assert torch.allclose(cam.intrinsics, other.intrinsics)
        assert torch.allclose(cam.lidar_to_camera, other.lidar_to_camera, atol=1e-5)
        assert torch.equal(cam.image, other.image)


def test_v2_info_with_legacy_boxes_is_detected(real_data: Path) -> None:
    """mmdetection3d's own nuScenes test info stores (w, l, h, -yaw - pi/2) boxes in a v2
    container: detected from the vehicle sizes and confirmed by the velocities."""
    path = need(real_data / f"{MMDET}/tests/data/nuscenes/nus_info.pkl")
    ds = InfoDataset(path, load_points=False, load_cameras=False, drop_empty=False)
    assert ds.schema is InfoSchema.MMDET3D_V2 and ds.legacy_boxes is True
    b = torch.cat([ds[i].boxes for i in range(len(ds))]).double().numpy()
    names = np.array([n for i in range(len(ds)) for n in ds[i].names])
    vehicles = np.isin(names, VEHICLES)
    assert (b[vehicles, 3] > b[vehicles, 4]).mean() > 0.95
    speed = np.hypot(b[:, 7], b[:, 8])
    moving = vehicles & (speed > 0.5)
    assert moving.sum() >= 3
    err = np.abs(wrap(b[moving, 6] - np.arctan2(b[moving, 8], b[moving, 7])))
    assert np.median(err) < 0.1
    forced = InfoDataset(path, load_points=False, load_cameras=False, drop_empty=False,
                         legacy_boxes=False)
    assert forced.legacy_boxes is False
    assert not torch.allclose(forced[0].boxes[:, 3], ds[0].boxes[:, 3])


def test_v2_sweeps_are_merged_with_time_lag(real_data: Path) -> None:
    """The mmdetection3d test info's second sample lists one (truncated, real) sweep."""
    path = need(real_data / f"{MMDET}/tests/data/nuscenes/nus_info.pkl")
    root = path.parent
    ds = InfoDataset(path, load_cameras=False, sweeps=1)
    key_only = InfoDataset(path, load_cameras=False)[1]
    sample = ds[1]
    assert sample.point_features == ("x", "y", "z", "intensity", "time_lag")
    n_key = len(key_only.points)
    sweep_file = (root / "sweeps" / "LIDAR_TOP"
                  / "n015-2018-08-02-17-16-37+0800__LIDAR_TOP__1533201470898274.pcd.bin")
    raw = np.fromfile(sweep_file, np.float32).reshape(-1, 5)
    raw = raw[~((np.abs(raw[:, 0]) < 1) & (np.abs(raw[:, 1]) < 1))]      # ego points
    assert len(raw) > 50
    assert len(sample.points) == n_key + len(raw)
    assert torch.equal(sample.points[:n_key, :4], key_only.points)
    lag = sample.points[n_key:, 4]
    assert bool(torch.allclose(lag, torch.full_like(lag, 1533201470.948018 - 1533201470.847939),
                               atol=1e-5))
    info = raw_info(path)["data_list"][1]
    sweep = info["lidar_sweeps"][0]
    key_to_global = np.array(info["ego2global"]) @ np.array(info["lidar_points"]["lidar2ego"])
    sweep_to_global = np.array(sweep["ego2global"]) @ np.array(sweep["lidar_points"]["lidar2ego"])
    t = np.linalg.inv(key_to_global) @ sweep_to_global
    expected = raw[:, :3].astype(np.float64) @ t[:3, :3].T + t[:3, 3]
    assert np.abs(sample.points[n_key:, :3].numpy() - expected).max() < 1e-3


# --------------------------------------------------------------------------------------
# KITTI-style lists: mmdetection3d legacy and OpenPCDet
# --------------------------------------------------------------------------------------


def test_mmdet3d_legacy_kitti_real(real_data: Path) -> None:
    path = need(real_data / f"{MMDET}/tests/data/kitti/kitti_infos_mono3d.pkl")
    ds = InfoDataset(path, data_root=path.parent, load_points=False)
    assert ds.schema is InfoSchema.MMDET3D_LEGACY_KITTI
    sample = ds[0]
    assert sample.token == "000007"
    assert sample.names == ["Car", "Car", "Car", "Cyclist"]
    assert sample.extras["dontcare_bbox2d"].shape == (2, 4)
    cars = sample.boxes[:3]
    assert bool((cars[:, 3] > cars[:, 4]).all()) and bool((cars[:, 0] > 5).all())
    # training/image_2/000007.png as written in the info
    assert sample.cameras[0].image.shape[1:] == (375, 1242)
    # the boxes project inside their recorded 2-D boxes
    uv, depth = project(sample.boxes[:, :3], sample.cameras[0])
    boxes_2d = sample.extras["bbox2d"].numpy()
    assert bool((depth > 0).all())
    assert bool(((uv >= boxes_2d[:, :2] - 1) & (uv <= boxes_2d[:, 2:] + 1)).all())


def _openpcdet_kitti_entry(real_data: Path) -> dict:
    """An OpenPCDet ``kitti_infos_*.pkl`` entry for KITTI frame 000000, with the keys of
    ``KittiDataset.get_infos`` (no gt_boxes_lidar dependency: we read the camera annos)."""
    calib = read_kitti_calib(need(real_data / KUIXU / "calib/000000.txt"))
    objects = read_kitti_labels(real_data / KUIXU / "label_2/000000.txt")
    arr = kitti_objects_to_arrays(objects)

    def pad(m: torch.Tensor) -> np.ndarray:
        out = np.eye(4)
        out[: m.shape[0], : m.shape[1]] = m.numpy()
        return out

    names = np.array([o.type for o in objects])
    return {
        "point_cloud": {"num_features": 4, "lidar_idx": "000000"},
        "image": {"image_idx": "000000", "image_shape": np.array([370, 1224], np.int32)},
        "calib": {"P2": pad(calib.P2), "R0_rect": pad(calib.R0_rect),
                  "Tr_velo_to_cam": pad(calib.Tr_velo_to_cam)},
        "annos": {
            "name": names,
            "truncated": np.array([o.truncated for o in objects]),
            "occluded": np.array([o.occluded for o in objects]),
            "alpha": np.array([o.alpha for o in objects]),
            "bbox": np.array([o.bbox for o in objects]),
            "dimensions": arr["dimensions"][:, [2, 0, 1]],     # (h, w, l) -> (l, h, w)
            "location": arr["location"],
            "rotation_y": arr["rotation_y"],
            "score": np.zeros(len(objects)),
            "difficulty": np.zeros(len(objects), np.int32),
            "index": np.arange(len(objects), dtype=np.int32),
            "num_points_in_gt": np.array([377] + [-1] * (len(objects) - 1), np.int32),
        },
    }


def test_openpcdet_kitti_built(tmp_path: Path, real_data: Path) -> None:
    root = _kitti_layout(tmp_path / "kitti", real_data)
    entry = _openpcdet_kitti_entry(real_data)
    info = root / "kitti_infos_train.pkl"
    info.write_bytes(pickle.dumps([entry], protocol=4))
    assert load_info_file(info)[0] is InfoSchema.OPENPCDET_KITTI
    sample = InfoDataset(info)[0]                      # data_root: the info's folder
    assert sample.token == "000000" and sample.names == ["Pedestrian"]
    assert count_points_in_boxes(sample.points, sample.boxes).tolist() == [377]
    assert sample.num_points.tolist() == [377]
    assert math.isnan(float(sample.extras["calib"].P0[0, 0]))     # not in the info
    # equal to the mmdetection3d v2 reading of the same frame
    v2 = InfoDataset(real_data / KITTI_TRAIN_PKL, data_root=root)[0]
    assert torch.allclose(sample.boxes[:, :7], v2.boxes[:, :7], atol=1e-4)
    assert torch.allclose(sample.cameras[0].lidar_to_image(), v2.cameras[0].lidar_to_image(),
                          rtol=1e-5, atol=1e-3)
    # mmdetection3d legacy layout of the same entry (velodyne_path, image_path)
    entry["point_cloud"] = {"num_features": 4, "velodyne_path": "training/velodyne/000000.bin"}
    entry["image"] = {"image_idx": 0, "image_path": "training/image_2/000000.png",
                      "image_shape": np.array([370, 1224], np.int32)}
    info.write_bytes(pickle.dumps([entry], protocol=2))
    ds = InfoDataset(info)
    assert ds.schema is InfoSchema.MMDET3D_LEGACY_KITTI
    legacy = ds[0]
    assert legacy.token == "000000"
    assert torch.allclose(legacy.boxes, sample.boxes, equal_nan=True)
    assert torch.equal(legacy.points, sample.points)


def test_openpcdet_nuscenes_built(tmp_path: Path, real_data: Path, nus_demo: InfoDataset
                                  ) -> None:
    """An OpenPCDet nuScenes info (``fill_trainval_infos`` keys, with_cam) of the demo
    sample reads into the same Sample as the v2 info; its sweeps carry transform_matrix
    and time_lag."""
    v2 = nus_demo[0]
    demo = need(real_data / NUS_DEMO)
    root = tmp_path / "v1.0-mini"
    (root / "samples" / "LIDAR_TOP").mkdir(parents=True)
    (root / "sweeps" / "LIDAR_TOP").mkdir(parents=True)
    (root / "samples" / "LIDAR_TOP" / NUS_DEMO_LIDAR).symlink_to(demo / NUS_DEMO_LIDAR)
    # a stand-in 'previous sweep': the same scan, 1 m behind and 0.05 s earlier
    (root / "sweeps" / "LIDAR_TOP" / "prev.pcd.bin").symlink_to(demo / NUS_DEMO_LIDAR)
    info = raw_info(nus_demo.info_path)["data_list"][0]
    cams = {}
    for name, img in info["images"].items():
        (root / "samples" / name).mkdir(parents=True)
        (root / "samples" / name / img["img_path"]).symlink_to(demo / img["img_path"])
        cam_to_lidar = np.linalg.inv(np.array(img["lidar2cam"]))
        cams[name] = {"data_path": f"samples/{name}/{img['img_path']}", "type": name,
                      "sensor2lidar_rotation": cam_to_lidar[:3, :3],
                      "sensor2lidar_translation": cam_to_lidar[:3, 3],
                      "camera_intrinsics": np.array(img["cam2img"])}
    shift = np.eye(4)
    shift[0, 3] = -1.0
    boxes = v2.boxes.double().numpy()
    entry = {
        "lidar_path": f"samples/LIDAR_TOP/{NUS_DEMO_LIDAR}",
        "cam_front_path": cams["CAM_FRONT"]["data_path"],
        "cam_intrinsic": cams["CAM_FRONT"]["camera_intrinsics"],
        "token": DEMO_TOKEN,
        "sweeps": [
            {"lidar_path": "sweeps/LIDAR_TOP/prev.pcd.bin", "sample_data_token": "s1",
             "transform_matrix": shift, "global_from_car": np.eye(4),
             "car_from_current": np.eye(4), "time_lag": 0.05},
            {"lidar_path": f"samples/LIDAR_TOP/{NUS_DEMO_LIDAR}", "sample_data_token": "k",
             "transform_matrix": None, "time_lag": 0.0},          # OpenPCDet padding
        ],
        "ref_from_car": np.linalg.inv(np.array(info["lidar_points"]["lidar2ego"])),
        "car_from_global": np.linalg.inv(np.array(info["ego2global"])),
        "timestamp": info["timestamp"],
        "cams": cams,
        "gt_boxes": boxes,                               # (x, y, z, dx, dy, dz, heading, vx, vy)
        "gt_boxes_velocity": np.c_[boxes[:, 7:9], np.zeros(len(boxes))],
        "gt_names": np.array(v2.names),
        "gt_boxes_token": np.array([f"a{i}" for i in range(len(boxes))]),
        "num_lidar_pts": v2.num_points.numpy(),
        "num_radar_pts": np.zeros(len(boxes), np.int64),
    }
    path = root / "nuscenes_infos_10sweeps_val.pkl"
    path.write_bytes(pickle.dumps([entry], protocol=5))
    ds = InfoDataset(path, class_names=NUSCENES_CLASSES + ("ignore",), sweeps=2)
    assert ds.schema is InfoSchema.OPENPCDET_NUSCENES
    sample = ds[0]
    assert sample.token == DEMO_TOKEN and sample.timestamp_us == v2.timestamp_us
    assert torch.allclose(sample.boxes, v2.boxes, atol=1e-5, equal_nan=True)
    assert sample.names == v2.names and torch.equal(sample.num_points, v2.num_points)
    assert np.allclose(sample.ego_to_global.numpy(), v2.ego_to_global.numpy(), atol=1e-5)
    assert torch.allclose(sample.lidar_to_ego, v2.lidar_to_ego, atol=1e-6)
    n = len(v2.points)
    far = ~((v2.points[:, 0].abs() < 1) & (v2.points[:, 1].abs() < 1))   # ego points drop
    assert sample.points.shape == (n + int(far.sum()), 5)  # the padding entry is skipped
    assert torch.equal(sample.points[:n, :4], v2.points)
    assert torch.allclose(sample.points[n:, 0], v2.points[far, 0] - 1.0, atol=1e-4)
    assert torch.equal(sample.points[n:, 1:4], v2.points[far, 1:4])
    assert bool((sample.points[n:, 4] == 0.05).all()) and bool((sample.points[:n, 4] == 0).all())
    v2_cams = {c.name: c for c in v2.cameras}
    for cam in sample.cameras:
        assert torch.allclose(cam.lidar_to_camera, v2_cams[cam.name].lidar_to_camera, atol=1e-5)
        assert torch.equal(cam.image, v2_cams[cam.name].image)


# --------------------------------------------------------------------------------------
# unknown, outdated and unsafe files
# --------------------------------------------------------------------------------------


def _write(tmp_path: Path, obj: object, name: str = "info.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj))
    return path


def test_unknown_schema(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_info_file(_write(tmp_path, {"foo": 1}))
    text = str(err.value)
    assert "unknown info schema" in text and "{'foo'}" in text
    assert "tools/create_data.py" in text
    with pytest.raises(DataError, match="a list of 2 int objects"):
        load_info_file(_write(tmp_path, [1, 2]))
    with pytest.raises(DataError, match="empty list"):
        load_info_file(_write(tmp_path, []))
    with pytest.raises(DataError, match="info file not found"):
        load_info_file(tmp_path / "absent.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="not a readable info pickle"):
        load_info_file(tmp_path / "junk.pkl")


def test_outdated_schemas(tmp_path: Path, real_data: Path) -> None:
    with pytest.raises(DataError) as err:
        load_info_file(_write(tmp_path, {"data_list": [{"lidar_points": {}}]}))
    assert "without 'metainfo'" in str(err.value)
    assert "update_infos_to_v2.py" in str(err.value)
    second = [{"image_idx": 0, "velodyne_path": "training/velodyne/000000.bin",
               "calib/P2": np.eye(4), "annos": {}}]
    with pytest.raises(DataError, match="outdated SECOND-era KITTI info.*create_kitti_infos"):
        load_info_file(_write(tmp_path, second))
    with pytest.raises(DataError, match="'infos' without 'metadata'"):
        load_info_file(_write(tmp_path, {"infos": []}))
    bevdepth = real_data / "Megvii-BaseDetection__BEVDepth/test/data/nuscenes/infos.pkl"
    if bevdepth.exists():
        with pytest.raises(DataError, match="BEVDepth's own info format"):
            load_info_file(bevdepth)
    dbinfos = real_data / f"{MMDET}/tests/data/kitti/kitti_dbinfos_train.pkl"
    if dbinfos.exists():
        with pytest.raises(DataError, match="ground-truth database"):
            load_info_file(dbinfos)
    v2_waymo = {"metainfo": {"dataset": "waymo"}, "data_list": [{"instances": []}]}
    with pytest.raises(DataError, match="dataset 'waymo'"):
        InfoDataset(_write(tmp_path, v2_waymo))


def test_legacy_boxes_undecidable(tmp_path: Path) -> None:
    entry = {"lidar_path": "x.pcd.bin", "token": "t", "sweeps": [], "cams": {},
             "lidar2ego_translation": [0, 0, 1.8], "lidar2ego_rotation": [1, 0, 0, 0],
             "ego2global_translation": [0, 0, 0], "ego2global_rotation": [1, 0, 0, 0],
             "timestamp": 0, "gt_boxes": np.array([[1.0, 2, 0, 0.6, 0.7, 1.7, 0.1]]),
             "gt_names": np.array(["pedestrian"]), "gt_velocity": np.zeros((1, 2)),
             "num_lidar_pts": np.array([3]), "valid_flag": np.array([True])}
    path = _write(tmp_path, {"infos": [entry], "metadata": {"version": "v1.0-mini"}})
    with pytest.raises(DataError, match="legacy_boxes=True or legacy_boxes=False"):
        InfoDataset(path)
    sample = InfoDataset(path, legacy_boxes=True, load_points=False, load_cameras=False)[0]
    assert np.allclose(sample.boxes[0, :7].numpy(),
                       [1, 2, 0, 0.7, 0.6, 1.7, -0.1 - math.pi / 2], atol=1e-6)


def test_forbidden_global_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # protocol-0 pickle of os.system('touch <marker>')
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    path = tmp_path / "evil.pkl"
    path.write_bytes(evil)
    with pytest.raises(DataError) as err:
        load_info_file(path)
    assert str(err.value) == (f"{path}: this info file references os.system; distill3d "
                              "reads plain info files only")
    assert not marker.exists()
    # a class from another toolbox (a prediction result) is refused the same way
    evil2 = b"\x80\x02cmmdet3d.core.bbox.structures.lidar_box3d\nLiDARInstance3DBoxes\nq\x00."
    path.write_bytes(evil2)
    with pytest.raises(DataError, match="references mmdet3d.core.bbox.structures.lidar_box3d."
                                        "LiDARInstance3DBoxes"):
        load_info_file(path)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_numpy_payloads_load_with_every_protocol(tmp_path: Path, protocol: int) -> None:
    import collections

    entry = {"lidar_path": "x.pcd.bin", "ref_from_car": np.eye(4), "car_from_global": np.eye(4),
             "gt_boxes": np.zeros((0, 9), np.float32), "gt_names": np.array([], dtype="<U10"),
             "num_lidar_pts": np.int64(3), "flag": np.True_, "name": np.str_("a"),
             "od": collections.OrderedDict(a=1), "dd": collections.defaultdict(list),
             "misc": (frozenset({1}), {2}, b"x", 1 + 2j)}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps([entry], protocol=protocol))
    schema, payload = load_info_file(path)
    assert schema is InfoSchema.OPENPCDET_NUSCENES
    assert np.array_equal(payload[0]["ref_from_car"], np.eye(4))
    assert payload[0]["od"] == {"a": 1} and payload[0]["misc"][3] == 1 + 2j


def test_every_real_info_file_loads(real_data: Path) -> None:
    """All real info files load safely; the result files (mmdetection3d box classes)
    are refused."""
    expected = {
        NUS_DEMO_PKL: InfoSchema.MMDET3D_V2,
        KITTI_DEMO_PKL: InfoSchema.MMDET3D_V2,
        KITTI_TRAIN_PKL: InfoSchema.MMDET3D_V2,
        f"{MMDET}/tests/data/nuscenes/nus_info.pkl": InfoSchema.MMDET3D_V2,
        f"{MMDET}/tests/data/lyft/lyft_infos.pkl": InfoSchema.MMDET3D_V2,
        f"{MMDET}/tests/data/lyft/lyft_infos_val.pkl": InfoSchema.MMDET3D_LEGACY_NUSCENES,
        f"{MMDET}/tests/data/kitti/kitti_infos_mono3d.pkl": InfoSchema.MMDET3D_LEGACY_KITTI,
        FASTBEV_PKL: InfoSchema.MMDET3D_LEGACY_NUSCENES,
        BEVFUSION_TEST_PKL: InfoSchema.MMDET3D_LEGACY_NUSCENES,
    }
    for rel, schema in expected.items():
        assert load_info_file(need(real_data / rel))[0] is schema, rel
    results = real_data / f"{MMDET}/tests/data/kitti/mono3d_sample_results.pkl"
    if results.exists():
        with pytest.raises(DataError, match="references mmdet3d.*not info files"):
            load_info_file(results)
    lyft = InfoDataset(real_data / f"{MMDET}/tests/data/lyft/lyft_infos.pkl",
                       load_points=False, load_cameras=False)
    assert lyft.dataset_kind == "lyft" and lyft.legacy_boxes is False
    assert lyft[0].names == ["car", "other_vehicle", "pedestrian"]
