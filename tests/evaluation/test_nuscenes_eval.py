"""nuScenes detection evaluation against the official devkit (``nuscenes-devkit``).

Every metric of the devkit's ``metrics_summary.json`` must equal ours within 1e-6 (NaN where
the devkit has NaN) on SynthDrive data with noisy predictions derived from the GT, on
degenerate inputs, and with bicycle racks; plus the results-file errors, the LiDAR-frame
converter and the distance bands. The devkit is only imported here (skipped when absent).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distill3d.data.errors import DataError
from distill3d.data.nuscenes import NUSCENES_DETECTION_CLASSES, build_nuscenes_index
from distill3d.evaluation import (
    DISTANCE_BANDS,
    NUSCENES_ATTRIBUTE_NAMES,
    NuScenesEvalConfig,
    NuScenesEvaluator,
    NuScenesGT,
    NuScenesResults,
    default_attribute,
    evaluate_nuscenes,
    evaluate_nuscenes_by_distance,
    lidar_detections_to_results,
    load_nuscenes_gt,
    load_nuscenes_results,
    write_nuscenes_metrics,
    write_nuscenes_results,
)

VERSION = "v1.0-mini"
META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
        "use_external": False}
TOL = 1e-6


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 scenes x 5 keyframes (2 mini_train scenes, 1 mini_val scene), no sweeps."""
    from distill3d.synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("nuscenes_eval")
    generate_dataset("nuscenes", root, preset="mini", scenes=3, samples_per_scene=5, sweeps=0,
                     image_size=(64, 32), seed=5, workers=1, progress=False)
    return root


def _load_table(root: Path, name: str) -> list[dict[str, Any]]:
    return json.loads((root / VERSION / f"{name}.json").read_text())


def _save_table(root: Path, name: str, records: list[dict[str, Any]]) -> None:
    (root / VERSION / f"{name}.json").write_text(json.dumps(records))


@pytest.fixture(scope="module")
def edited_root(dataroot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tables of ``dataroot`` with half of the adult pedestrians turned into bicycles and
    motorcycles, bicycle racks around every other of those and at a few empty places, and
    every construction vehicle turned into an animal (a class without GT). Only the tables are copied (neither evaluation reads the sensor files)."""
    root = tmp_path_factory.mktemp("nuscenes_eval_edited")
    shutil.copytree(dataroot / VERSION, root / VERSION)
    (root / "maps").symlink_to(dataroot / "maps", target_is_directory=True)  # the devkit opens them
    categories = _load_table(root, "category")
    cat_token = {c["name"]: c["token"] for c in categories}
    cat_name = {c["token"]: c["name"] for c in categories}
    instances = _load_table(root, "instance")
    inst_cat = {i["token"]: cat_name[i["category_token"]] for i in instances}
    adults = 0
    for inst in instances:
        if inst_cat[inst["token"]] == "vehicle.construction":
            inst_cat[inst["token"]] = "animal"
        elif inst_cat[inst["token"]] == "human.pedestrian.adult":   # more cycles
            adults += 1
            if adults % 2:
                inst_cat[inst["token"]] = ("vehicle.bicycle", "vehicle.motorcycle")[adults % 4 == 1]
        inst["category_token"] = cat_token[inst_cat[inst["token"]]]
    anns = _load_table(root, "sample_annotation")
    rng = np.random.default_rng(0)
    racks: list[dict[str, Any]] = []
    cycles = [a for a in anns if inst_cat[a["instance_token"]] in ("vehicle.bicycle", "vehicle.motorcycle")]
    samples = _load_table(root, "sample")
    for ann in cycles[::2]:
        yaw = float(rng.uniform(-np.pi, np.pi))
        racks.append({"translation": ann["translation"], "size": [1.5, 2.5, 1.5],
                      "rotation": [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)],
                      "sample_token": ann["sample_token"]})
    anchor = {a["sample_token"]: a["translation"] for a in anns}
    for sample in samples:   # racks without bikes, 8 m from an object (predictions may hit them)
        if sample["token"] in anchor:
            racks.append({"translation": list(np.add(anchor[sample["token"]], [8.0, 0.0, 0.0])),
                          "size": [3.0, 6.0, 2.0], "rotation": [1.0, 0.0, 0.0, 0.0],
                          "sample_token": sample["token"]})
    for k, rack in enumerate(racks):
        inst_tok = f"rackinstance{k:020d}"
        ann_tok = f"rackannotation{k:018d}"
        instances.append({"token": inst_tok, "category_token": cat_token["static_object.bicycle_rack"],
                          "nbr_annotations": 1, "first_annotation_token": ann_tok,
                          "last_annotation_token": ann_tok})
        anns.append({"token": ann_tok, "sample_token": rack["sample_token"], "instance_token": inst_tok,
                     "visibility_token": "4", "attribute_tokens": [], "translation": rack["translation"],
                     "size": rack["size"], "rotation": rack["rotation"], "num_lidar_pts": 5,
                     "num_radar_pts": 0, "prev": "", "next": ""})
    _save_table(root, "instance", instances)
    _save_table(root, "sample_annotation", anns)
    return root


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def _box(token: str, translation: Any, size: Any, rotation: Any, velocity: Any, name: str,
         score: float, attribute: str) -> dict[str, Any]:
    return {"sample_token": token, "translation": [float(v) for v in translation],
            "size": [float(v) for v in size], "rotation": [float(v) for v in rotation],
            "velocity": [float(v) for v in velocity], "detection_name": name,
            "detection_score": float(score), "attribute_name": attribute}


def noisy_results(gt: NuScenesGT, seed: int, tie_scores: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Predictions derived from the GT: jittered centres/sizes/yaw/velocity, dropped boxes,
    duplicates, wrong classes and attributes, random scores, false positives (also far away
    and of absent classes)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in gt.sample_tokens}
    attributes = list(NUSCENES_ATTRIBUTE_NAMES) + [""]
    for k in range(len(gt)):
        if rng.random() < 0.2:
            continue
        token = gt.sample_tokens[gt.sample_index[k]]
        for _ in range(1 + int(rng.random() < 0.3)):
            centre = gt.translation[k] + np.r_[rng.normal(0, rng.choice([0.05, 0.4, 1.2, 3.0]), 2),
                                               rng.normal(0, 0.2)]
            size = gt.size[k] * np.exp(rng.normal(0, 0.15, 3))
            dyaw = rng.normal(0, 0.4) + (math.pi if rng.random() < 0.1 else 0.0)
            rotation = _quat_mul(_yaw_quat(dyaw), gt.rotation[k])
            velocity = np.nan_to_num(gt.velocity[k]) + rng.normal(0, 0.6, 2)
            if rng.random() < 0.1:
                velocity = np.array([np.nan, np.nan])
            label = int(gt.label[k]) if rng.random() > 0.1 else int(rng.integers(10))
            name = NUSCENES_DETECTION_CLASSES[label]
            attribute = default_attribute(name, velocity) if rng.random() < 0.7 else str(rng.choice(attributes))
            score = rng.random()
            if tie_scores:
                score = round(score, 1)
            out[token].append(_box(token, centre, size, rotation, velocity, name, score, attribute))
    for i, token in enumerate(gt.sample_tokens):
        for _ in range(int(rng.integers(0, 10))):
            centre = gt.ego_translation[i] + np.r_[rng.uniform(-60, 60, 2), rng.normal(1, 1)]
            name = NUSCENES_DETECTION_CLASSES[int(rng.integers(10))]
            out[token].append(_box(token, centre, rng.uniform(0.3, 5, 3), _yaw_quat(rng.uniform(-3, 3)),
                                   rng.normal(0, 2, 2), name, rng.random() if not tie_scores else 0.5,
                                   default_attribute(name, [0.0, 0.0])))
        order = rng.permutation(len(out[token]))
        out[token] = [out[token][j] for j in order]
    return out


def perfect_results(gt: NuScenesGT, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Every GT box with points exactly, with its attribute, random scores (NaN GT
    velocities become 0)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in gt.sample_tokens}
    for k in np.flatnonzero(gt.num_pts != 0):
        token = gt.sample_tokens[gt.sample_index[k]]
        a = int(gt.attribute[k])
        out[token].append(_box(token, gt.translation[k], gt.size[k], gt.rotation[k],
                               np.nan_to_num(gt.velocity[k]), NUSCENES_DETECTION_CLASSES[gt.label[k]],
                               rng.random(), NUSCENES_ATTRIBUTE_NAMES[a] if a >= 0 else ""))
    return out


# --------------------------------------------------------------------------------------
# the devkit
# --------------------------------------------------------------------------------------


def run_devkit(root: Path, split: str, result_path: Path, out_dir: Path) -> dict[str, Any]:
    """The devkit's ``metrics_summary.json`` for a results file."""
    pytest.importorskip("nuscenes")
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        nusc = NuScenes(version=VERSION, dataroot=str(root), verbose=False)
        DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(result_path), split,
                      str(out_dir), verbose=False).main(plot_examples=0, render_curves=False)
    (out_dir / "printed.txt").write_text(printed.getvalue())
    return json.loads((out_dir / "metrics_summary.json").read_text())


def _without_time(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("Eval time")]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}/{key}"))
        return out
    return {prefix: tree}


def assert_same_summary(ours: dict[str, Any], ref: dict[str, Any]) -> float:
    """Every metric equal within :data:`TOL` (NaN where the devkit has NaN), the same keys;
    returns the largest absolute difference."""
    flat_ours, flat_ref = _flatten(ours), _flatten(ref)
    assert set(flat_ours) == set(flat_ref), set(flat_ours) ^ set(flat_ref)
    assert list(ours) == list(ref)
    worst = 0.0
    for key, expected in flat_ref.items():
        got = flat_ours[key]
        if key == "/eval_time":
            continue
        if isinstance(expected, (str, bool, list)) or expected is None:
            assert got == expected, key
            continue
        if math.isnan(expected):
            assert math.isnan(got), (key, got)
            continue
        assert abs(got - expected) <= TOL, (key, got, expected)
        worst = max(worst, abs(got - expected))
    return worst


def compare(root: Path, split: str, results: dict[str, list[dict[str, Any]]], tmp_path: Path
            ) -> tuple[float, Any]:
    """Write ``results``, evaluate them with ours and the devkit, compare every metric."""
    path = tmp_path / "results.json"
    write_nuscenes_results(path, results, META)
    gt = load_nuscenes_gt(root, VERSION, split)
    metrics = evaluate_nuscenes(gt, load_nuscenes_results(path, gt))
    ref = run_devkit(root, split, path, tmp_path / "devkit")
    worst = assert_same_summary(metrics.to_summary_dict(), ref)
    # the printed summary is the devkit's, line for line (but the time)
    assert _without_time(metrics.format_table()) == _without_time(
        (tmp_path / "devkit" / "printed.txt").read_text())
    return worst, metrics


# --------------------------------------------------------------------------------------
# equality with the devkit
# --------------------------------------------------------------------------------------


@pytest.mark.nuscenes_devkit
@pytest.mark.parametrize(("split", "seed", "ties"), [
    ("mini_train", 0, False), ("mini_train", 1, True), ("mini_train", 2, False),
    ("mini_val", 3, False), ("mini_val", 4, True),
])
def test_noisy_predictions_match_devkit(dataroot: Path, tmp_path: Path, split: str, seed: int,
                                        ties: bool) -> None:
    gt = load_nuscenes_gt(dataroot, VERSION, split)
    worst, metrics = compare(dataroot, split, noisy_results(gt, seed, ties), tmp_path)
    assert worst <= TOL
    assert 0.01 < metrics.mean_ap < 0.95   # a non-trivial case
    assert (metrics.num_gt > 0).sum() >= 5


@pytest.mark.nuscenes_devkit
def test_perfect_predictions_match_devkit(dataroot: Path, tmp_path: Path) -> None:
    gt = load_nuscenes_gt(dataroot, VERSION, "mini_train")
    _, metrics = compare(dataroot, "mini_train", perfect_results(gt, 7), tmp_path)
    summary = metrics.to_summary_dict()
    for i, name in enumerate(metrics.class_names):
        if metrics.num_gt[i]:
            assert summary["mean_dist_aps"][name] == pytest.approx(1.0)
            assert summary["label_tp_errors"][name]["trans_err"] == pytest.approx(0.0, abs=1e-9)
            assert summary["label_tp_errors"][name]["scale_err"] == pytest.approx(0.0, abs=1e-9)
        else:
            assert summary["mean_dist_aps"][name] == 0.0


@pytest.mark.nuscenes_devkit
def test_class_without_predictions_and_empty_results_match_devkit(dataroot: Path, tmp_path: Path) -> None:
    gt = load_nuscenes_gt(dataroot, VERSION, "mini_train")
    results = noisy_results(gt, 11)
    no_cars = {t: [b for b in boxes if b["detection_name"] != "car"] for t, boxes in results.items()}
    _, metrics = compare(dataroot, "mini_train", no_cars, tmp_path / "a")
    assert metrics.mean_dist_aps["car"] == 0.0
    assert metrics.to_summary_dict()["label_tp_errors"]["car"]["trans_err"] == 1.0
    # no box at all: the devkit fails (``_get_box_class_field`` finds no box); ours gives 0
    empty = NuScenesResults.from_submission({t: [] for t in results}, META, gt.sample_tokens)
    metrics = evaluate_nuscenes(gt, empty)
    assert metrics.mean_ap == 0.0 and metrics.nd_score == 0.0
    assert metrics.to_summary_dict()["tp_errors"]["trans_err"] == 1.0
    far = {t: [_box(t, gt.ego_translation[i] + [200.0, 0.0, 0.0], [1, 1, 1], [1, 0, 0, 0], [0, 0],
                    "car", 0.9, "vehicle.parked")] for i, t in enumerate(gt.sample_tokens)}
    _, metrics = compare(dataroot, "mini_train", far, tmp_path / "c")
    assert metrics.num_pred.sum() == 0


@pytest.mark.nuscenes_devkit
def test_bike_racks_and_class_without_gt_match_devkit(edited_root: Path, dataroot: Path,
                                                       tmp_path: Path) -> None:
    split = "mini_train"
    gt = load_nuscenes_gt(edited_root, VERSION, split)
    assert gt.racks.sample_index.size > len(gt.sample_tokens)
    results = noisy_results(gt, 21)
    # bicycles / motorcycles predicted inside the racks without bikes, and construction
    # vehicles (a class with no GT left)
    racks = gt.racks
    for r in range(racks.sample_index.size):
        token = gt.sample_tokens[racks.sample_index[r]]
        for name in ("bicycle", "motorcycle", "construction_vehicle"):
            results[token].append(_box(token, racks.translation[r] + [0.3, -0.2, 0.1], [0.6, 1.7, 1.2],
                                       [1, 0, 0, 0], [0, 0], name, 0.77, default_attribute(name, [0, 0])))
    worst, metrics = compare(edited_root, split, results, tmp_path)
    assert worst <= TOL
    i = metrics.class_names.index("construction_vehicle")
    assert metrics.num_gt[i] == 0 and metrics.num_pred[i] > 0
    # the racks removed GT cycles and predictions
    plain = evaluate_nuscenes(gt, NuScenesResults.from_submission(results, META, gt.sample_tokens))
    no_racks = dataclasses.replace(gt, racks=dataclasses.replace(
        gt.racks, sample_index=gt.racks.sample_index[:0], translation=gt.racks.translation[:0],
        size=gt.racks.size[:0], rotation=gt.racks.rotation[:0]))
    unfiltered = evaluate_nuscenes(no_racks, NuScenesResults.from_submission(results, META, gt.sample_tokens))
    for name in ("bicycle", "motorcycle"):
        j = plain.class_names.index(name)
        assert plain.num_pred[j] < unfiltered.num_pred[j]
    cyc = [plain.class_names.index(n) for n in ("bicycle", "motorcycle")]
    assert plain.num_gt[cyc].sum() < unfiltered.num_gt[cyc].sum()


@pytest.mark.slow
@pytest.mark.nuscenes_devkit
def test_larger_set_matches_devkit(tmp_path_factory: pytest.TempPathFactory) -> None:
    """10 scenes x 10 keyframes (8 mini_train + 2 mini_val scenes), several seeds."""
    from distill3d.synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("nuscenes_eval_large")
    generate_dataset("nuscenes", root, preset="mini", scenes=10, samples_per_scene=10, sweeps=0,
                     image_size=(64, 32), seed=17, workers=1, progress=False)
    for split, seeds in (("mini_train", (0, 1, 2)), ("mini_val", (3, 4))):
        gt = load_nuscenes_gt(root, VERSION, split)
        for seed in seeds:
            out = tmp_path_factory.mktemp(f"devkit_{split}_{seed}")
            worst, _ = compare(root, split, noisy_results(gt, seed, tie_scores=seed % 2 == 1), out)
            assert worst <= TOL


# --------------------------------------------------------------------------------------
# our own API
# --------------------------------------------------------------------------------------


def test_summary_table_and_metrics_file(dataroot: Path, tmp_path: Path) -> None:
    gt = load_nuscenes_gt(dataroot, VERSION, "mini_val")
    metrics = evaluate_nuscenes(gt, NuScenesResults.from_submission(noisy_results(gt, 5), META,
                                                                    gt.sample_tokens))
    summary = metrics.to_summary_dict()
    assert list(summary) == ["label_aps", "mean_dist_aps", "mean_ap", "label_tp_errors", "tp_errors",
                             "tp_scores", "nd_score", "eval_time", "cfg", "meta"]
    assert list(summary["label_aps"]["car"]) == ["0.5", "1.0", "2.0", "4.0"]
    assert math.isnan(summary["label_tp_errors"]["traffic_cone"]["orient_err"])
    table = metrics.format_table()
    for word in ("mAP:", "mATE:", "mASE:", "mAOE:", "mAVE:", "mAAE:", "NDS:", "Eval time:",
                 "Per-class results:", "traffic_cone"):
        assert word in table
    write_nuscenes_metrics(tmp_path / "m" / "metrics_summary.json", metrics)
    loaded = json.loads((tmp_path / "m" / "metrics_summary.json").read_text())
    assert loaded["nd_score"] == summary["nd_score"]
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["metrics_summary.json"]


def test_config_json_and_validation(tmp_path: Path) -> None:
    config = NuScenesEvalConfig()
    assert config.class_names == NUSCENES_DETECTION_CLASSES
    try:
        from nuscenes.eval.common.config import config_factory
    except ImportError:
        pass
    else:
        assert config.to_dict() == config_factory("detection_cvpr_2019").serialize()
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config.to_dict()))
    assert NuScenesEvalConfig.from_json(path) == config
    with pytest.raises(ValueError, match="dist_th_tp"):
        NuScenesEvalConfig(dist_th_tp=3.0)
    with pytest.raises(ValueError, match="missing"):
        NuScenesEvalConfig(class_range={"car": 50})
    bad = config.to_dict()
    bad["typo"] = 1
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match="typo"):
        NuScenesEvalConfig.from_json(path)


def test_distance_bands(dataroot: Path) -> None:
    gt = load_nuscenes_gt(dataroot, VERSION, "mini_train")
    results = NuScenesResults.from_submission(noisy_results(gt, 8), META, gt.sample_tokens)
    bands = evaluate_nuscenes_by_distance(gt, results)
    assert list(bands) == ["0-20", "20-30", "30+"]
    assert "traffic_cone" not in bands["30+"].class_names
    assert bands["0-20"].class_names == NUSCENES_DETECTION_CLASSES
    full = evaluate_nuscenes(gt, results)
    assert sum(b.num_gt.sum() for b in bands.values()) == full.num_gt.sum()
    whole = evaluate_nuscenes(gt, results, distance_band=(0, math.inf))
    assert whole.to_summary_dict()["label_aps"] == full.to_summary_dict()["label_aps"]
    # the band rule: the same as dropping GT and predictions outside [20, 30) beforehand
    lo, hi = 20.0, 30.0
    gdist = np.hypot(*(gt.translation[:, :2] - gt.ego_translation[gt.sample_index, :2]).T)
    gk = (gdist >= lo) & (gdist < hi)
    gt_band = dataclasses.replace(
        gt, sample_index=gt.sample_index[gk], translation=gt.translation[gk], size=gt.size[gk],
        rotation=gt.rotation[gk], velocity=gt.velocity[gk], label=gt.label[gk],
        attribute=gt.attribute[gk], num_pts=gt.num_pts[gk], annotation_tokens=())
    pdist = np.hypot(*(results.translation[:, :2] - gt.ego_translation[results.sample_index, :2]).T)
    pk = (pdist >= lo) & (pdist < hi)
    res_band = dataclasses.replace(
        results, sample_index=results.sample_index[pk], translation=results.translation[pk],
        size=results.size[pk], rotation=results.rotation[pk], velocity=results.velocity[pk],
        label=results.label[pk], score=results.score[pk], attribute=results.attribute[pk],
        num_pts=results.num_pts[pk])
    manual = evaluate_nuscenes(gt_band, res_band)
    band = bands["20-30"]
    for i, name in enumerate(band.class_names):
        j = manual.class_names.index(name)
        np.testing.assert_array_equal(band.label_aps[i], manual.label_aps[j])
        np.testing.assert_array_equal(band.label_tp_errors[i], manual.label_tp_errors[j])
    with pytest.raises(ValueError, match="distance_band"):
        evaluate_nuscenes(gt, results, distance_band=(30, 20))
    assert DISTANCE_BANDS[-1][1] == math.inf


def test_results_round_trip(dataroot: Path, tmp_path: Path) -> None:
    gt = load_nuscenes_gt(dataroot, VERSION, "mini_val")
    submission = noisy_results(gt, 9)
    path = tmp_path / "out" / "results.json"
    write_nuscenes_results(path, submission, META)
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]
    content = json.loads(path.read_text())
    assert content["meta"] == META
    loaded = load_nuscenes_results(path, gt)
    assert loaded.sample_tokens == tuple(submission)
    again = loaded.to_submission()
    for token, boxes in submission.items():
        assert len(again[token]) == len(boxes)
        for a, b in zip(again[token], boxes):
            assert a["detection_name"] == b["detection_name"]
            assert a["attribute_name"] == b["attribute_name"]
            np.testing.assert_array_equal(a["translation"], b["translation"])
            np.testing.assert_array_equal(a["velocity"], b["velocity"])
    # numpy arrays and tuples are accepted in an in-memory submission
    token = gt.sample_tokens[0]
    mixed = dict(submission)
    mixed[token] = [dict(b, translation=np.asarray(b["translation"]), size=tuple(b["size"]))
                    for b in submission[token]]
    same = NuScenesResults.from_submission(mixed, META, gt.sample_tokens)
    np.testing.assert_array_equal(same.translation, loaded.translation)
    np.testing.assert_array_equal(same.size, loaded.size)
    write_nuscenes_results(tmp_path / "again.json", loaded)
    assert json.loads((tmp_path / "again.json").read_text())["meta"] == META


def test_lidar_detections_to_results(dataroot: Path) -> None:
    """GT boxes in the LiDAR frame -> submission -> perfect scores."""
    index = build_nuscenes_index(dataroot, VERSION, "mini_val", max_sweeps=0)
    gt = load_nuscenes_gt(dataroot, VERSION, "mini_val")
    submission = {}
    for entry in index:
        g = entry["gt"]
        keep = [i for i, n in enumerate(g["name"])
                if n is not None and g["num_lidar_pts"][i] + g["num_radar_pts"][i] != 0]
        boxes = np.nan_to_num(g["boxes"][keep])
        names = [g["name"][i] for i in keep]
        attrs = [(g["attributes"][i] or [""])[0] for i in keep]
        submission[entry["token"]] = lidar_detections_to_results(
            boxes, np.linspace(1, 0.1, len(keep)), names, entry["lidar"]["lidar_to_ego"],
            entry["lidar"]["ego_to_global"], entry["token"], attributes=attrs)
    metrics = evaluate_nuscenes(gt, NuScenesResults.from_submission(submission, META, gt.sample_tokens))
    summary = metrics.to_summary_dict()
    for i, name in enumerate(metrics.class_names):
        if metrics.num_gt[i]:
            assert summary["mean_dist_aps"][name] == pytest.approx(1.0)
            assert summary["label_tp_errors"][name]["trans_err"] < 1e-6
            assert summary["label_tp_errors"][name]["scale_err"] < 1e-6
            if name != "traffic_cone":
                assert summary["label_tp_errors"][name]["orient_err"] < 1e-6
                assert summary["label_tp_errors"][name]["attr_err"] == pytest.approx(0.0)
    # integer labels and default attributes
    entry = index[0]
    boxes = np.array([[1.0, 10.0, 0.0, 4.0, 2.0, 1.5, 0.3, 3.0, 0.0],
                      [5.0, 2.0, 0.0, 0.6, 0.6, 1.7, 0.0, 0.0, 0.1]])
    out = lidar_detections_to_results(boxes, [0.9, 0.5], np.array([0, 5]), entry["lidar"]["lidar_to_ego"],
                                      entry["lidar"]["ego_to_global"], entry["token"])
    assert [b["detection_name"] for b in out] == ["car", "pedestrian"]
    assert [b["attribute_name"] for b in out] == ["vehicle.moving", "pedestrian.standing"]
    assert out[0]["size"] == pytest.approx([2.0, 4.0, 1.5])
    assert np.hypot(*out[0]["velocity"]) == pytest.approx(3.0)
    seven = lidar_detections_to_results(boxes[:, :7], [0.9, 0.5], ["car", "barrier"],
                                        entry["lidar"]["lidar_to_ego"], entry["lidar"]["ego_to_global"],
                                        entry["token"])
    assert all(math.isnan(v) for v in seven[0]["velocity"]) and seven[1]["attribute_name"] == ""
    with pytest.raises(ValueError, match="unknown nuScenes detection class"):
        lidar_detections_to_results(boxes, [0.9, 0.5], ["car", "tram"], np.eye(4), np.eye(4), "t")


@pytest.mark.nuscenes_devkit
def test_evaluator_on_samples_matches_file_path_and_devkit(dataroot: Path, tmp_path: Path) -> None:
    from distill3d.data.nuscenes import NuScenesDataset

    dataset = NuScenesDataset(dataroot, VERSION, "mini_val", load_cameras=False)
    gt = load_nuscenes_gt(dataroot, VERSION, "mini_val")
    evaluator = NuScenesEvaluator(gt)
    rng = np.random.default_rng(3)
    for i in range(len(dataset) - 1):   # the last sample has no detections
        sample = dataset.load_sample(i)
        boxes = sample.boxes.double().clone()
        boxes[:, :2] += torch.from_numpy(rng.normal(0, 0.5, (boxes.shape[0], 2)))
        boxes[:, 6] += torch.from_numpy(rng.normal(0, 0.2, boxes.shape[0]))
        boxes[:, 7:] = torch.nan_to_num(boxes[:, 7:]) + torch.from_numpy(rng.normal(0, 0.5, (boxes.shape[0], 2)))
        evaluator.add_sample(sample, boxes, rng.random(boxes.shape[0]), sample.labels)
    with pytest.raises(DataError, match="twice"):
        evaluator.add_sample(dataset.load_sample(0), boxes[:0], [], [])
    with pytest.raises(DataError, match="not in the evaluated split"):
        evaluator.add("no-such-token", boxes[:0], [], [], np.eye(4), np.eye(4))
    metrics = evaluator.evaluate()
    path = tmp_path / "results.json"
    evaluator.write_results(path)
    from_file = evaluate_nuscenes(gt, load_nuscenes_results(path, gt))
    ours, again = metrics.to_summary_dict(), from_file.to_summary_dict()
    ours.pop("eval_time"), again.pop("eval_time")
    assert json.dumps(ours) == json.dumps(again)
    assert assert_same_summary(metrics.to_summary_dict(), run_devkit(dataroot, "mini_val", path,
                                                                     tmp_path / "devkit")) <= TOL
    assert metrics.mean_ap > 0.2


def test_default_attribute() -> None:
    assert default_attribute("car", [1.0, 0.0]) == "vehicle.moving"
    assert default_attribute("car", [0.1, 0.1]) == "vehicle.parked"
    assert default_attribute("bus", [0.0, 0.0]) == "vehicle.stopped"
    assert default_attribute("bus", [0.0, 5.0]) == "vehicle.moving"
    assert default_attribute("bicycle", [1.0, 0.0]) == "cycle.with_rider"
    assert default_attribute("motorcycle", [0.0, 0.0]) == "cycle.without_rider"
    assert default_attribute("pedestrian", [1.0, 0.0]) == "pedestrian.moving"
    assert default_attribute("pedestrian", [0.0, 0.0]) == "pedestrian.standing"
    assert default_attribute("pedestrian", [math.nan, math.nan]) == "pedestrian.standing"
    assert default_attribute("traffic_cone", [3.0, 0.0]) == ""
    assert default_attribute("barrier", None) == ""
    with pytest.raises(ValueError, match="unknown"):
        default_attribute("tram", [0, 0])


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------


def _one_box_results(gt: NuScenesGT) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in gt.sample_tokens}
    token = gt.sample_tokens[1]
    out[token] = [_box(token, gt.ego_translation[1] + [5.0, 0.0, 0.0], [2, 4, 1.5], [1, 0, 0, 0],
                       [0, 0], "car", 0.5, "vehicle.parked") for _ in range(3)]
    return out


@pytest.mark.parametrize(("field", "value", "pattern"), [
    ("translation", [1.0, math.nan, 0.0], "translation.*non-finite"),
    ("size", [2.0, -4.0, 1.5], "size.*positive"),
    ("rotation", [0, 0, 0, 0], "rotation.*zero"),
    ("rotation", [1, 0, 0], "rotation.*4 numbers"),
    ("velocity", [math.inf, 0.0], "velocity.*infinite"),
    ("detection_name", "tram", "detection_name.*'tram'"),
    ("detection_score", math.nan, "detection_score"),
    ("attribute_name", "vehicle.flying", "attribute_name.*'vehicle.flying'"),
    ("sample_token", "elsewhere", "sample_token"),
    ("translation", None, "translation"),
])
def test_bad_box_is_a_clear_error(dataroot: Path, tmp_path: Path, field: str, value: Any,
                                  pattern: str) -> None:
    gt = load_nuscenes_gt(dataroot, VERSION, "mini_val")
    results = _one_box_results(gt)
    token = gt.sample_tokens[1]
    if value is None:
        del results[token][2][field]
    else:
        results[token][2][field] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"meta": META, "results": results}))
    with pytest.raises(DataError, match=pattern) as info:
        load_nuscenes_results(path, gt)
    assert token in str(info.value) and "box 2" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(DataError, match=pattern):   # nothing is written
        write_nuscenes_results(tmp_path / "never.json", results, META)
    assert not (tmp_path / "never.json").exists()


def test_split_coverage_and_box_count_errors(dataroot: Path, tmp_path: Path) -> None:
    gt = load_nuscenes_gt(dataroot, VERSION, "mini_val")
    train = load_nuscenes_gt(dataroot, VERSION, "mini_train")
    path = tmp_path / "r.json"
    results = _one_box_results(gt)
    stranger = train.sample_tokens[0]
    write_nuscenes_results(path, {**results, stranger: []}, META)
    with pytest.raises(DataError, match=f"{stranger} is not in the evaluated split"):
        load_nuscenes_results(path, gt)
    missing = gt.sample_tokens[0]
    write_nuscenes_results(path, {t: b for t, b in results.items() if t != missing}, META)
    with pytest.raises(DataError, match=f"do not cover every sample.*{missing}"):
        load_nuscenes_results(path, gt)
    partial = load_nuscenes_results(path)   # no split given: loads
    with pytest.raises(DataError, match="every sample"):
        evaluate_nuscenes(gt, partial)
    token = gt.sample_tokens[1]
    many = dict(results)
    many[token] = results[token] * 200
    path.write_text(json.dumps({"meta": META, "results": many}))
    with pytest.raises(DataError, match=f"{token} has 600 boxes.*500"):
        load_nuscenes_results(path, gt)
    path.write_text(json.dumps({"results": results}))
    with pytest.raises(DataError, match="meta"):
        load_nuscenes_results(path, gt)
    path.write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON"):
        load_nuscenes_results(path, gt)
    with pytest.raises(DataError, match="not found"):
        load_nuscenes_results(tmp_path / "absent.json", gt)
    with pytest.raises(DataError, match="use_map"):
        write_nuscenes_results(tmp_path / "x.json", results, {k: v for k, v in META.items() if k != "use_map"})
    with pytest.raises(ValueError, match="split"):
        load_nuscenes_gt(dataroot, VERSION, "val_typo")
