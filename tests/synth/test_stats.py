"""dataset_statistics on a tiny SynthDrive set agrees with independent computations."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from distill3d.synth.classes import CLASS_NAMES, frequency_targets
from distill3d.synth.stats import (
    DISTANCE_LABELS,
    dataset_statistics,
    format_statistics,
    nuscenes_reference_statistics,
)

VERSION = "v1.0-mini"

# Category -> detection class, written out here independently of the module under test.
_DETECTION = {
    "vehicle.car": "car", "vehicle.truck": "truck", "vehicle.bus.rigid": "bus",
    "vehicle.bus.bendy": "bus", "vehicle.trailer": "trailer",
    "vehicle.construction": "construction_vehicle", "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian", "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian", "vehicle.motorcycle": "motorcycle",
    "vehicle.bicycle": "bicycle", "movable_object.trafficcone": "traffic_cone",
    "movable_object.barrier": "barrier",
}


def _table(root: Path, name: str) -> list[dict]:
    return json.loads((root / VERSION / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def stats(synth_nuscenes: Path) -> dict:
    return dataset_statistics(synth_nuscenes, VERSION)


@pytest.fixture(scope="module")
def annotations(synth_nuscenes: Path) -> list[tuple[str, dict]]:
    """(detection class, record) of every detection-class annotation, straight from JSON."""
    cats = {c["token"]: c["name"] for c in _table(synth_nuscenes, "category")}
    inst = {i["token"]: cats[i["category_token"]] for i in _table(synth_nuscenes, "instance")}
    out = []
    for a in _table(synth_nuscenes, "sample_annotation"):
        name = _DETECTION.get(inst[a["instance_token"]])
        if name is not None:
            out.append((name, a))
    return out


def test_counts_and_frequencies_match_the_annotation_table(stats, annotations):
    counts = Counter(name for name, _ in annotations)
    assert stats["num_annotations"] == len(annotations) > 0
    for name in CLASS_NAMES:
        c = stats["classes"][name]
        assert c["count"] == counts.get(name, 0), name
        assert c["frequency"] == pytest.approx(counts.get(name, 0) / len(annotations))
    assert sum(c["frequency"] for c in stats["classes"].values()) == pytest.approx(1.0)


def test_points_per_keyframe_from_file_sizes(stats, synth_nuscenes):
    samples = _table(synth_nuscenes, "sample")
    lidar_files = [sd["filename"] for sd in _table(synth_nuscenes, "sample_data")
                   if sd["is_key_frame"] and sd["filename"].startswith("samples/LIDAR_TOP/")]
    assert stats["num_keyframes"] == len(samples) == len(lidar_files)
    sizes = np.array([(synth_nuscenes / f).stat().st_size for f in lidar_files])
    assert np.all(sizes % 20 == 0)
    # Loading the files gives the same counts as the sizes.
    pts = np.array([np.fromfile(synth_nuscenes / f, dtype="<f4").reshape(-1, 5).shape[0]
                    for f in lidar_files])
    np.testing.assert_array_equal(pts, sizes // 20)
    ppk = stats["points_per_keyframe"]
    assert ppk["mean"] == pytest.approx(pts.mean())
    assert ppk["median"] == pytest.approx(np.median(pts))
    assert ppk["p5"] == pytest.approx(np.percentile(pts, 5))
    assert ppk["p95"] == pytest.approx(np.percentile(pts, 95))
    assert ppk["min"] == pts.min() and ppk["max"] == pts.max()
    far = np.array([np.count_nonzero(np.linalg.norm(
        np.fromfile(synth_nuscenes / f, dtype="<f4").reshape(-1, 5)[:, :3], axis=1) >= 3.0)
        for f in lidar_files])
    assert stats["points_per_keyframe_beyond_3m"]["mean"] == pytest.approx(far.mean())
    assert dataset_statistics(synth_nuscenes, VERSION, read_points=False)[
        "points_per_keyframe_beyond_3m"] is None


def test_sparse_shares_per_class(stats, annotations):
    for name in CLASS_NAMES:
        pts = np.array([a["num_lidar_pts"] for n, a in annotations if n == name])
        c = stats["classes"][name]
        if pts.size == 0:
            assert c["lt5_share"] is None and c["zero_share"] is None
            continue
        assert c["lt5_share"] == pytest.approx(np.mean(pts < 5))
        assert c["zero_share"] == pytest.approx(np.mean(pts == 0))
    allpts = np.array([a["num_lidar_pts"] for _, a in annotations])
    assert stats["overall"]["lt5_share"] == pytest.approx(np.mean(allpts < 5))


def test_objects_per_keyframe_and_visibility(stats, annotations, synth_nuscenes):
    samples = [s["token"] for s in _table(synth_nuscenes, "sample")]
    per = Counter(a["sample_token"] for _, a in annotations)
    values = np.array([per.get(s, 0) for s in samples])
    assert stats["objects_per_keyframe"]["mean"] == pytest.approx(values.mean())
    assert stats["objects_per_keyframe"]["max"] == values.max()
    levels = {v["token"]: v["level"] for v in _table(synth_nuscenes, "visibility")}
    vis = Counter(levels[a["visibility_token"]] for _, a in annotations)
    for level, share in stats["visibility"].items():
        assert share == pytest.approx(vis.get(level, 0) / len(annotations)), level
    assert sum(stats["visibility"].values()) == pytest.approx(1.0)


def test_points_vs_distance_with_the_devkit(stats, synth_nuscenes):
    """Ego distance from the devkit's box in the ego frame (as its detection evaluation
    computes ``ego_dist``), binned here; medians of num_lidar_pts per class and bin."""
    nuscenes = pytest.importorskip("nuscenes.nuscenes")
    from nuscenes.eval.detection.utils import category_to_detection_name
    from pyquaternion import Quaternion

    nusc = nuscenes.NuScenes(version=VERSION, dataroot=str(synth_nuscenes), verbose=False)
    per: dict[tuple[str, int], list[int]] = {}
    edges = [10, 20, 30, 40, 50]
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            name = category_to_detection_name(ann["category_name"])
            if name is None:
                continue
            box = nusc.get_box(token)
            box.translate(-np.array(pose["translation"]))
            box.rotate(Quaternion(pose["rotation"]).inverse)
            dist = math.hypot(box.center[0], box.center[1])
            b = sum(dist >= e for e in edges)
            per.setdefault((name, b), []).append(ann["num_lidar_pts"])
    assert stats["distance_bins"] == list(DISTANCE_LABELS)
    total = 0
    for name in CLASS_NAMES:
        d = stats["points_vs_distance"][name]
        for b in range(len(DISTANCE_LABELS)):
            values = per.get((name, b), [])
            total += len(values)
            assert d["count"][b] == len(values), (name, b)
            if values:
                assert d["median"][b] == pytest.approx(float(np.median(values))), (name, b)
            else:
                assert d["median"][b] is None
    assert total == stats["num_annotations"]


def test_reference_and_formatting(stats):
    ref = nuscenes_reference_statistics()
    # The class-frequency reference is the one SynthDrive's generator targets.
    for name, share in frequency_targets().items():
        assert ref["class_frequencies"][name] == pytest.approx(share)
    assert set(ref["sources"]) >= {"points_per_keyframe", "class_counts_train"}
    text = format_statistics(stats)
    for name in CLASS_NAMES:
        assert f"| {name} |" in text
    assert "nuScenes" in text and "50+" in text
    plain = format_statistics(stats, with_reference=False)
    assert "nuScenes" not in plain
    json.dumps(stats)  # serialisable
