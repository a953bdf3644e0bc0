"""KittiDataset: real KITTI frames (boxes on their points, projection into image_2,
difficulty), the SynthDrive KITTI set (every sample, recorded point counts), the reduced
point cloud, index caching, and corrupt inputs that must raise DataError naming the file.

Data is never copied or written in place: every test reads a tmp "mirror" whose folders
hold symlinks to the real / synthetic files (the index is written into the mirror), and
corrupt inputs are small files written into such a mirror.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import distill3d.data.kitti as kitti_module
from distill3d.data.errors import DataError
from distill3d.data.kitti import (
    KittiDataset,
    build_kitti_index,
    kitti_difficulty,
    kitti_index_path,
)
from distill3d.errors import Distill3DError

REAL_KITTI = Path("kuixu__kitti_object_vis/data/object/training")
REAL_IDS = ("000000", "000001", "000002")
SUBDIRS = ("velodyne", "image_2", "calib", "label_2")
# Every KITTI object type but DontCare: with these, every label line is a box.
ALL_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def mirror_kitti(training: Path, dst: Path, ids: tuple[str, ...] | None = None,
                 image_sets: Path | None = None, folder: str = "training") -> Path:
    """``dst/<folder>/<sub>/`` real folders holding per-file symlinks into ``training``
    (only ``ids`` if given), plus a copy of ``image_sets``. Returns ``dst``."""
    for sub in SUBDIRS:
        src = training / sub
        if not src.is_dir() or (folder == "testing" and sub == "label_2"):
            continue
        out = dst / folder / sub
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted(src.iterdir()):
            if ids is None or path.stem in ids:
                (out / path.name).symlink_to(path)
    if image_sets is not None:
        shutil.copytree(image_sets, dst / "ImageSets")
    return dst


def replace_file(path: Path, data: bytes) -> None:
    """Replace a mirrored symlink by a small real file."""
    path.unlink()
    path.write_bytes(data)


def read_calib_matrices(path: Path) -> dict[str, np.ndarray]:
    """Independent calib parse: name -> float64 array (P2 (3, 4), R0_rect (3, 3), ...)."""
    out = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        key, values = line.split(":", 1)
        nums = np.array([float(v) for v in values.split()])
        out[key.strip()] = nums.reshape(3, 3) if key.strip() == "R0_rect" else nums.reshape(3, 4)
    return out


def lidar_to_image_reference(calib_path: Path) -> np.ndarray:
    """(3, 4) ``P2 @ R0_rect @ Tr_velo_to_cam`` in float64, written out by hand."""
    m = read_calib_matrices(calib_path)
    r0 = np.eye(4)
    r0[:3, :3] = m["R0_rect"]
    tr = np.eye(4)
    tr[:3, :] = m["Tr_velo_to_cam"]
    return m["P2"] @ r0 @ tr


def brute_force_counts(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Points inside each box (inclusive faces), one box at a time, float64."""
    counts = []
    for x, y, z, l, w, h, yaw in boxes[:, :7].astype(np.float64):
        d = points[:, :3].astype(np.float64) - (x, y, z)
        u = d[:, 0] * np.cos(yaw) + d[:, 1] * np.sin(yaw)
        v = -d[:, 0] * np.sin(yaw) + d[:, 1] * np.cos(yaw)
        counts.append(int(((np.abs(u) <= l / 2) & (np.abs(v) <= w / 2) & (np.abs(d[:, 2]) <= h / 2)).sum()))
    return np.array(counts, dtype=np.int64)


def fov_reference(points: np.ndarray, proj: np.ndarray, width: int, height: int) -> np.ndarray:
    uvw = points[:, :3].astype(np.float64) @ proj[:, :3].T + proj[:, 3]
    depth = uvw[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = uvw[:, 0] / depth, uvw[:, 1] / depth
    return (depth > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the real user cache (indexes go beside the mirrored data anyway)."""
    monkeypatch.setenv("DISTILL3D_CACHE", str(tmp_path / "user_cache"))
    # these tests read only tmp mirrors of the data, so the default index location
    # (beside the data) is safe to exercise
    monkeypatch.delenv("DISTILL3D_INDEX_DIR", raising=False)


# --------------------------------------------------------------------------------------
# real KITTI frames 000000..000002
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_training(real_data: Path) -> Path:
    path = real_data / REAL_KITTI
    if not path.is_dir():
        pytest.skip(f"real KITTI frames not found at {path}")
    return path


@pytest.fixture(scope="module")
def real_root(real_training: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = mirror_kitti(real_training, tmp_path_factory.mktemp("kitti_real"))
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("".join(f"{i}\n" for i in REAL_IDS))
    return root


@pytest.fixture(scope="module")
def real_samples(real_root: Path) -> list:
    dataset = KittiDataset(real_root, "train", class_names=ALL_TYPES)
    return [dataset[i] for i in range(len(dataset))]


def test_real_every_labelled_object_lands_on_its_points(real_samples: list, real_training: Path) -> None:
    assert [s.token for s in real_samples] == list(REAL_IDS)
    for sample in real_samples:
        lines = (real_training / "label_2" / f"{sample.token}.txt").read_text().split("\n")
        types = [line.split()[0] for line in lines if line.strip()]
        assert sample.names == [t for t in types if t != "DontCare"]
        assert sample.points.shape[1] == 4 and sample.points.dtype == torch.float32
        assert sample.boxes.shape == (len(sample.names), 9)
        assert torch.isnan(sample.boxes[:, 7:]).all()
        assert (sample.num_points > 0).all(), (sample.token, sample.names, sample.num_points)
        expected = brute_force_counts(sample.points.numpy(), sample.boxes.numpy())
        assert sample.num_points.tolist() == expected.tolist()
    first = real_samples[0]
    assert first.names == ["Pedestrian"] and first.num_points.tolist() == [377]


def test_real_points_project_into_image_2(real_samples: list, real_training: Path) -> None:
    for sample in real_samples:
        (camera,) = sample.cameras
        assert camera.name == "image_2"
        with Image.open(real_training / "image_2" / f"{sample.token}.png") as img:
            width, height = img.size
            pixels = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
        assert camera.image.dtype == torch.uint8 and torch.equal(camera.image, pixels)
        assert camera.original_size == (width, height)
        calib_path = real_training / "calib" / f"{sample.token}.txt"
        reference = lidar_to_image_reference(calib_path)
        p2 = read_calib_matrices(calib_path)["P2"]
        np.testing.assert_allclose(camera.intrinsics.double().numpy(), p2[:, :3], rtol=1e-6)
        projection = camera.lidar_to_image().double().numpy()
        np.testing.assert_allclose(projection, reference, rtol=1e-6, atol=1e-3)
        # the same pixels for every point, whichever matrix projects it
        pts = sample.points.numpy().astype(np.float64)
        ours = pts[:, :3] @ projection[:, :3].T + projection[:, 3]
        ref = pts[:, :3] @ reference[:, :3].T + reference[:, 3]
        front = ref[:, 2] > 1.0
        np.testing.assert_allclose(ours[front, :2] / ours[front, 2:], ref[front, :2] / ref[front, 2:],
                                   atol=2e-3)
        # camera z (lidar_to_camera) is the depth P2 gives
        cam = pts[:, :3] @ camera.lidar_to_camera[:3, :3].double().numpy().T \
            + camera.lidar_to_camera[:3, 3].double().numpy()
        np.testing.assert_allclose(cam[:, 2], ref[:, 2], atol=1e-4)
        # KITTI's camera sees roughly a quarter of the 360-degree sweep
        inside = fov_reference(pts, reference, width, height)
        assert 0.1 < inside.mean() < 0.3, inside.mean()
        # and each object's points land inside its labelled 2D box (within a few pixels)
        uv = ref[:, :2] / ref[:, 2:]
        boxes = sample.boxes[:, :7]
        for j in range(boxes.shape[0]):
            d = pts[:, :3] - boxes[j, :3].double().numpy()
            yaw = float(boxes[j, 6])
            u = d[:, 0] * np.cos(yaw) + d[:, 1] * np.sin(yaw)
            v = -d[:, 0] * np.sin(yaw) + d[:, 1] * np.cos(yaw)
            l, w, h = boxes[j, 3:6].double().numpy()
            mask = (np.abs(u) <= l / 2) & (np.abs(v) <= w / 2) & (np.abs(d[:, 2]) <= h / 2) & inside
            assert mask.sum() > 0
            x1, y1, x2, y2 = sample.extras["bbox2d"][j].double().numpy()
            tol = 5.0
            assert (uv[mask, 0] >= x1 - tol).all() and (uv[mask, 0] <= x2 + tol).all()
            assert (uv[mask, 1] >= y1 - tol).all() and (uv[mask, 1] <= y2 + tol).all()


def test_real_difficulty_and_extras_of_000001(real_root: Path) -> None:
    # label_2/000001.txt, by hand (official rules: height = y2 - y1 >= 40/25/25 px,
    # occluded <= 0/1/2, truncated <= 0.15/0.3/0.5):
    #   Truck    trunc 0.00 occ 0, height 189.25 - 156.40 = 32.85 -> not easy (< 40), moderate (1)
    #   Car      trunc 0.00 occ 0, height 203.12 - 181.54 = 21.58 -> < 25: ignored (-1)
    #   Cyclist  trunc 0.00 occ 3, height 193.93 - 163.95 = 29.98 -> occlusion unknown: -1
    sample = KittiDataset(real_root, "train", load_images=False)[1]  # Car, Pedestrian, Cyclist
    assert sample.token == "000001" and sample.cameras == []
    assert sample.names == ["Car", "Cyclist"]
    assert sample.extras["difficulty"].tolist() == [-1, -1]
    assert sample.extras["other_names"] == ["Truck"]
    assert sample.extras["other_difficulty"].tolist() == [1]
    assert sample.extras["other_boxes"].shape == (1, 7)
    assert sample.extras["occluded"].tolist() == [0, 3]
    assert sample.extras["truncated"].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(sample.extras["alpha"].numpy(), [1.85, -1.65], rtol=1e-6)
    np.testing.assert_allclose(sample.extras["bbox2d"].numpy(),
                               [[387.63, 181.54, 423.81, 203.12], [676.60, 163.95, 688.98, 193.93]],
                               rtol=1e-6)
    np.testing.assert_allclose(sample.extras["dontcare_bbox2d"].numpy(), [
        [503.89, 169.71, 590.61, 190.13], [511.35, 174.96, 527.81, 187.45],
        [532.37, 176.35, 542.68, 185.27], [559.62, 175.83, 575.40, 183.15]], rtol=1e-6)
    # 000000: Pedestrian trunc 0 occ 0, height 307.92 - 143.00 = 164.92 -> easy
    assert KittiDataset(real_root, "train", load_images=False)[0].extras["difficulty"].tolist() == [0]


def test_difficulty_rule_boundaries() -> None:
    bbox = np.array([[0, 0, 10, 40.0], [0, 0, 10, 39.5], [0, 0, 10, 25.0], [0, 0, 10, 24.5],
                     [0, 0, 10, 50.0], [0, 0, 10, 50.0], [0, 0, 10, 50.0], [0, 0, 10, 50.0],
                     [0, 0, 10, 50.0], [0, 0, 10, 50.0]])
    truncated = np.array([0, 0, 0, 0, 0.15, 0.16, 0.3, 0.5, 0.51, 0])
    occluded = np.array([0, 0, 0, 0, 0, 0, 1, 2, 0, 3])
    assert kitti_difficulty(bbox, truncated, occluded).tolist() == [0, 1, 1, -1, 0, 1, 1, 2, -1, -1]
    assert kitti_difficulty(np.zeros((0, 4)), np.zeros(0), np.zeros(0)).shape == (0,)


def test_reduced_keeps_exactly_the_in_image_points(real_root: Path, real_training: Path) -> None:
    full = KittiDataset(real_root, "train", load_images=False)[0]
    reduced = KittiDataset(real_root, "train", reduced=True, load_images=False)[0]
    proj = lidar_to_image_reference(real_training / "calib" / "000000.txt")
    with Image.open(real_training / "image_2" / "000000.png") as img:
        width, height = img.size
    keep = fov_reference(full.points.numpy(), proj, width, height)
    assert 0 < keep.sum() < len(keep)
    assert torch.equal(reduced.points, full.points[torch.from_numpy(keep)])
    assert reduced.num_points.tolist() == [377]  # the pedestrian is in view
    assert reduced.extras["image_size"] == (width, height)


def test_explicit_frame_ids_without_image_sets(real_training: Path, tmp_path: Path) -> None:
    root = mirror_kitti(real_training, tmp_path / "kitti")
    assert not (root / "ImageSets").exists()
    dataset = KittiDataset(root, ["000002", "000000"], load_images=False)
    assert dataset.sample_tokens() == ["000002", "000000"] and len(dataset) == 2
    assert dataset[1].token == "000000" and dataset[1].names == ["Pedestrian"]
    assert kitti_index_path(root, ["000002", "000000"]) is not None
    with pytest.raises(DataError, match="split file not found"):
        KittiDataset(root, "train")
    with pytest.raises(ValueError, match="listed twice"):
        KittiDataset(root, ["000000", "000000"])


# --------------------------------------------------------------------------------------
# SynthDrive KITTI
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_records(synth_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The writer's records (points per label line) of the ``synth_kitti`` set: the set is
    regenerated with the parameters of its manifest (SynthDrive is byte-deterministic), and
    checked to be the same files."""
    from distill3d.synth.generate import generate_dataset

    manifest = json.loads((synth_kitti / "synthdrive.json").read_text())
    out = tmp_path_factory.mktemp("synth_kitti_again")
    report = generate_dataset("kitti", out, preset=manifest["preset"], scenes=manifest["scenes"],
                              samples_per_scene=manifest["samples_per_scene"], beams=manifest["beams"],
                              image_size=tuple(manifest["image_size"]), seed=manifest["seed"],
                              workers=1, progress=False)
    records = {f.frame_id: f for result in report.results for f in result.frames}
    for frame_id in records:
        for sub, ext in (("velodyne", ".bin"), ("label_2", ".txt")):
            a = (synth_kitti / "training" / sub / f"{frame_id}{ext}").read_bytes()
            assert a == (out / "training" / sub / f"{frame_id}{ext}").read_bytes()
    return records


@pytest.fixture()
def synth_root(synth_kitti: Path, tmp_path: Path) -> Path:
    return mirror_kitti(synth_kitti / "training", tmp_path / "synth", image_sets=synth_kitti / "ImageSets")


def test_synth_every_sample_loads_and_boxes_hold_the_recorded_points(synth_root: Path,
                                                                     synth_records: dict) -> None:
    seen = []
    for split in ("train", "val"):
        dataset = KittiDataset(synth_root, split, class_names=ALL_TYPES)
        default = KittiDataset(synth_root, split, load_images=False)
        for i in range(len(dataset)):
            sample = dataset[i]
            record = synth_records[sample.token]
            kept = [(t, n) for t, n in zip(record.label_types, record.label_num_points.tolist())
                    if t != "DontCare"]
            assert sample.names == [t for t, _ in kept]
            assert sample.num_points.tolist() == [n for _, n in kept]
            assert sample.extras["dontcare_bbox2d"].shape == (len(record.label_types) - len(kept), 4)
            assert sample.points.shape[0] == record.num_points
            (camera,) = sample.cameras
            assert camera.image.shape[0] == 3 and camera.image.dtype == torch.uint8
            small = default[i]  # Car, Pedestrian, Cyclist only: the rest is in extras
            assert small.names == [t for t, _ in kept if t in default.class_names]
            assert small.num_points.tolist() == [n for t, n in kept if t in default.class_names]
            assert sorted(small.extras["other_names"]) == sorted(
                t for t, _ in kept if t not in default.class_names)
            assert small.labels.dtype == torch.int64
            seen.append(sample.token)
    assert sorted(seen) == sorted(synth_records)


def test_synth_reduced_mode(synth_root: Path, synth_kitti: Path) -> None:
    full = KittiDataset(synth_root, "val", load_images=False)
    reduced = KittiDataset(synth_root, "val", reduced=True, load_images=False)
    for i in range(len(full)):
        a, b = full[i], reduced[i]
        proj = lidar_to_image_reference(synth_kitti / "training" / "calib" / f"{a.token}.txt")
        with Image.open(synth_kitti / "training" / "image_2" / f"{a.token}.png") as img:
            keep = fov_reference(a.points.numpy(), proj, *img.size)
        assert 0 < keep.sum() < len(keep)
        assert torch.equal(b.points, a.points[torch.from_numpy(keep)])


def test_testing_split_without_labels(synth_kitti: Path, tmp_path: Path) -> None:
    root = mirror_kitti(synth_kitti / "training", tmp_path / "kitti", ids=("000000", "000001"),
                        folder="testing")
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "test.txt").write_text("000000\n000001\n")
    dataset = KittiDataset(root, "test")
    assert len(dataset) == 2 and not dataset.index.has_labels
    sample = dataset[1]
    assert sample.boxes.shape == (0, 9) and sample.labels.shape == (0,) and sample.num_points.shape == (0,)
    assert sample.extras["dontcare_bbox2d"].shape == (0, 4) and sample.extras["other_names"] == []
    assert sample.points.shape[0] > 0 and len(sample.cameras) == 1
    assert "no labels" in dataset.index.summary()


# --------------------------------------------------------------------------------------
# index caching
# --------------------------------------------------------------------------------------


@pytest.fixture()
def build_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = kitti_module._build_index

    def counting(root, spec):
        calls.append(spec.name)
        return original(root, spec)

    monkeypatch.setattr(kitti_module, "_build_index", counting)
    return calls


def test_index_is_built_once_and_rebuilt_when_stale(synth_root: Path, build_counter: list[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    first = KittiDataset(synth_root, "train")
    assert build_counter == ["train"]
    assert (synth_root / ".distill3d_index" / "kitti-train.pkl").is_file()
    second = KittiDataset(synth_root, "train")
    assert build_counter == ["train"]  # read back, not rebuilt
    assert second.sample_tokens() == first.sample_tokens()
    KittiDataset(synth_root, "val")
    assert build_counter == ["train", "val"]

    # a changed split file
    split_file = synth_root / "ImageSets" / "train.txt"
    ids = split_file.read_text().split()
    split_file.write_text("".join(f"{i}\n" for i in ids[:-1]))
    third = KittiDataset(synth_root, "train")
    assert build_counter == ["train", "val", "train"] and len(third) == len(ids) - 1

    # a file added to a data folder (its mtime moves; set it back first so that the
    # change is visible whatever the file system's timestamp granularity)
    calib_dir = synth_root / "training" / "calib"
    os.utime(calib_dir, ns=(1_000_000_000, 1_000_000_000))
    KittiDataset(synth_root, "train")
    assert build_counter == ["train", "val", "train", "train"]
    (calib_dir / "999999.txt").write_text("not used\n")
    KittiDataset(synth_root, "train")
    assert build_counter == ["train", "val", "train", "train", "train"]

    # forced, and after a schema change
    KittiDataset(synth_root, "train", rebuild=True)
    assert len(build_counter) == 6
    KittiDataset(synth_root, "train")
    assert len(build_counter) == 6
    monkeypatch.setattr(kitti_module, "INDEX_SCHEMA_VERSION", kitti_module.INDEX_SCHEMA_VERSION + 1)
    KittiDataset(synth_root, "train")
    assert len(build_counter) == 7


def test_read_only_root_caches_in_user_dir(synth_root: Path, tmp_path: Path,
                                           build_counter: list[str]) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    synth_root.chmod(0o555)
    try:
        build_kitti_index(synth_root, "val")
        build_kitti_index(synth_root, "val")
        where = kitti_index_path(synth_root, "val")
    finally:
        synth_root.chmod(0o755)
    assert build_counter == ["val"]
    assert where is not None and str(where).startswith(str(tmp_path / "user_cache"))


# --------------------------------------------------------------------------------------
# corrupt inputs
# --------------------------------------------------------------------------------------


@pytest.fixture()
def tiny_root(synth_kitti: Path, tmp_path: Path) -> Path:
    """Frames 000000 and 000001 of the synth set, mirrored, with an ImageSets/train.txt."""
    root = mirror_kitti(synth_kitti / "training", tmp_path / "tiny", ids=("000000", "000001"))
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000000\n000001\n")
    return root


def _points_bytes(n: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(-10, 10, size=(n, 4)).astype("<f4")


def test_truncated_bin_raises(tiny_root: Path) -> None:
    path = tiny_root / "training" / "velodyne" / "000001.bin"
    replace_file(path, _points_bytes().tobytes()[:-6])
    dataset = KittiDataset(tiny_root, "train")
    dataset[0]  # the other frame is fine
    with pytest.raises(DataError, match="not a multiple") as info:
        dataset[1]
    assert str(path) in str(info.value)


def test_nan_point_raises(tiny_root: Path) -> None:
    points = _points_bytes()
    points[7, 1] = np.nan
    path = tiny_root / "training" / "velodyne" / "000000.bin"
    replace_file(path, points.tobytes())
    with pytest.raises(DataError, match="NaN or inf") as info:
        KittiDataset(tiny_root, "train", load_images=False)[0]
    assert str(path) in str(info.value) and "point 7" in str(info.value)


def test_malformed_label_line_raises_with_file_and_line(tiny_root: Path) -> None:
    path = tiny_root / "training" / "label_2" / "000001.txt"
    good = path.read_text().splitlines()[0]
    replace_file(path, f"{good}\nCar 0.0 0 1.0 10 20 30\n".encode())
    with pytest.raises(DataError, match="malformed") as info:
        KittiDataset(tiny_root, "train")
    assert f"{path}:2" in str(info.value)
    assert isinstance(info.value, Distill3DError) and isinstance(info.value, ValueError)


def test_missing_image_raises(tiny_root: Path) -> None:
    path = tiny_root / "training" / "image_2" / "000000.png"
    path.unlink()
    with pytest.raises(DataError, match="missing image") as info:
        KittiDataset(tiny_root, "train")[0]
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match="missing image"):
        KittiDataset(tiny_root, "train", load_images=False, reduced=True)[0]  # needs its size
    assert KittiDataset(tiny_root, "train", load_images=False)[0].cameras == []


def test_missing_calib_key_raises(tiny_root: Path) -> None:
    path = tiny_root / "training" / "calib" / "000000.txt"
    lines = [line for line in path.read_text().splitlines() if not line.startswith("P2:")]
    replace_file(path, ("\n".join(lines) + "\n").encode())
    with pytest.raises(DataError, match="P2") as info:
        KittiDataset(tiny_root, "train")
    assert str(path) in str(info.value)


def test_split_file_naming_a_frame_without_files_raises(tiny_root: Path) -> None:
    split_file = tiny_root / "ImageSets" / "train.txt"
    split_file.write_text("000000\n424242\n000001\n")
    with pytest.raises(DataError, match="424242") as info:
        KittiDataset(tiny_root, "train")
    message = str(info.value)
    assert str(split_file) in message and "velodyne" in message and "calib" in message
    split_file.write_text("000000 000001\n")
    with pytest.raises(DataError, match=r"train\.txt:1"):
        KittiDataset(tiny_root, "train")


def test_bad_arguments(tiny_root: Path) -> None:
    with pytest.raises(ValueError, match="DontCare"):
        KittiDataset(tiny_root, "train", class_names=("Car", "DontCare"))
    with pytest.raises(DataError, match="not found"):
        KittiDataset(tiny_root / "nope", "train")
    with pytest.raises(IndexError):
        KittiDataset(tiny_root, "train")[2]
