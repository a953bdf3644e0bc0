"""The generic evaluator (:mod:`distill3d.evaluation.evaluator`) on our Samples and Detections.

It must give exactly the numbers of the file-based path (the results file it writes,
re-evaluated by ``distill3d evaluate``) and of the official nuScenes devkit; augmented
samples (with detections in the augmented frame) must give the metrics of the
un-augmented ones; KITTI info files must give the numbers of the KITTI dataset they
describe; bad detections are clear errors naming the sample, the detection and the field.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distill3d.cli import main
from distill3d.data.errors import DataError
from distill3d.data.kitti import KittiDataset
from distill3d.data.nuscenes import NuScenesDataset
from distill3d.data.sample import Sample
from distill3d.data.transforms import (
    GlobalRotScaleTrans,
    RandomFlip3D,
    apply_bev_transform,
)
from distill3d.errors import Distill3DError
from distill3d.evaluation import (
    EvaluationResult,
    KittiDetectionEvaluator,
    NuScenesDetectionEvaluator,
    boxes_to_original_frame,
    build_evaluator,
)
from distill3d.evaluation.evaluator import sample_metadata
from distill3d.structures import Detections

VERSION = "v1.0-mini"
SPLIT = "train"   # v1.0-mini: the devkit's mini_train scenes
DEVKIT_TOL = 1e-6


# --------------------------------------------------------------------------------------
# detections derived from the GT
# --------------------------------------------------------------------------------------


def noisy_detections(sample: Sample, seed: int, sigma: float, num_classes: int,
                     fp_range: tuple[float, float, float, float]) -> Detections:
    """Float64 detections in the sample's (un-augmented) frame: ~85 % of the GT boxes with
    centre/size/yaw/velocity noise (10 % with a wrong class), 25 % of those duplicated with
    more noise, and a few false positives in ``fp_range`` (x0, x1, y0, y1); random scores,
    mostly lower for duplicates and false positives."""
    rng = np.random.default_rng(seed)
    gt = sample.boxes.to(torch.float64)
    keep = rng.random(gt.shape[0]) < 0.85
    boxes = gt[torch.from_numpy(keep)].clone()
    labels = sample.labels[torch.from_numpy(keep)].clone()
    k = boxes.shape[0]
    boxes[:, :2] += torch.from_numpy(rng.normal(0.0, sigma, (k, 2)))
    boxes[:, 2] += torch.from_numpy(rng.normal(0.0, sigma / 2, k))
    boxes[:, 3:6] *= torch.from_numpy(np.exp(rng.normal(0.0, 0.05, (k, 3))))
    boxes[:, 6] += torch.from_numpy(rng.normal(0.0, 0.1, k))
    boxes[:, 7:9] = torch.nan_to_num(boxes[:, 7:9]) + torch.from_numpy(rng.normal(0.0, 0.4, (k, 2)))
    wrong = torch.from_numpy(rng.random(k) < 0.1)
    labels[wrong] = torch.from_numpy(rng.integers(0, num_classes, int(wrong.sum())))
    dup = torch.from_numpy(rng.random(k) < 0.25)
    extra = boxes[dup].clone()
    extra[:, :2] += torch.from_numpy(rng.normal(0.0, 3 * sigma, (extra.shape[0], 2)))
    n_fp = 3
    fp = torch.zeros(n_fp, 9, dtype=torch.float64)
    fp[:, 0] = torch.from_numpy(rng.uniform(fp_range[0], fp_range[1], n_fp))
    fp[:, 1] = torch.from_numpy(rng.uniform(fp_range[2], fp_range[3], n_fp))
    fp[:, 2] = -1.0
    fp[:, 3:6] = torch.from_numpy(rng.uniform(0.5, 4.0, (n_fp, 3)))
    fp[:, 6] = torch.from_numpy(rng.uniform(-math.pi, math.pi, n_fp))
    all_boxes = torch.cat((boxes, extra, fp))
    all_labels = torch.cat((labels, labels[dup], torch.from_numpy(rng.integers(0, num_classes, n_fp))))
    scores = torch.from_numpy(np.concatenate((rng.uniform(0.3, 1.0, k),     # mostly above the
                                              rng.uniform(0.0, 0.6, all_boxes.shape[0] - k))))  # extras
    order = torch.argsort(scores, descending=True)
    return Detections(all_boxes[order], scores[order], all_labels[order])


def augment(sample: Sample, index: int) -> Sample:
    """A rotated, scaled, translated and (depending on ``index``) flipped copy."""
    rng = np.random.default_rng(100 + index)
    out = GlobalRotScaleTrans((-math.pi, math.pi), (0.9, 1.1), (0.5, 0.5, 0.2))(sample, rng)
    return RandomFlip3D(float(index % 2 == 0), float(index % 3 != 1))(out, rng)


def to_augmented_frame(det: Detections, augmented: Sample) -> Detections:
    """The detections carried into ``augmented``'s frame (what a model sees and predicts)."""
    carrier = Sample(token="carrier", points=torch.zeros(0, 4), boxes=det.boxes, labels=det.labels,
                     class_names=augmented.class_names)
    moved = apply_bev_transform(carrier, augmented.bev_transform)
    assert not torch.equal(augmented.bev_transform, torch.eye(4))
    return Detections(moved.boxes, det.scores, det.labels)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}/{key}"))
        return out
    if isinstance(tree, list) and tree and isinstance(tree[0], (int, float)):
        return {f"{prefix}/{i}": v for i, v in enumerate(tree)}
    return {prefix: tree}


def assert_close(ours: Any, ref: Any, tol: float, skip: tuple[str, ...] = ("eval_time",)) -> float:
    """Same keys, every number within ``tol`` (NaN where the other has NaN); returns the
    largest difference."""
    a, b = _flatten(ours), _flatten(ref)
    assert set(a) == set(b), set(a) ^ set(b)
    worst = 0.0
    for key, expected in b.items():
        if key.rsplit("/", 1)[-1] in skip:
            continue
        got = a[key]
        if isinstance(expected, (int, float)) and not isinstance(expected, bool):
            if math.isnan(expected):
                assert math.isnan(got), key
                continue
            assert abs(got - expected) <= tol, (key, got, expected)
            worst = max(worst, abs(got - expected))
        else:
            assert got == expected, key
    return worst


def without_time(tree: Any) -> Any:
    """A copy of a (nested) summary without its ``eval_time`` entries."""
    if isinstance(tree, dict):
        return {k: without_time(v) for k, v in tree.items() if k != "eval_time"}
    return tree


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------------------
# nuScenes
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nus_case(synth_nuscenes: Path) -> dict[str, Any]:
    """Un-augmented samples of the split, their noisy detections and the evaluation."""
    dataset = NuScenesDataset(synth_nuscenes, VERSION, SPLIT, load_cameras=False)
    samples = [dataset.load_sample(i) for i in range(len(dataset))]
    n = len(dataset.class_names)
    detections = [noisy_detections(s, seed=i, sigma=0.4, num_classes=n, fp_range=(-40, 40, -40, 40))
                  for i, s in enumerate(samples)]
    evaluator = build_evaluator(dataset)
    assert isinstance(evaluator, NuScenesDetectionEvaluator)
    evaluator.add(samples[:2], detections[:2])        # batches, as a validation loop adds them
    evaluator.add(samples[2:], detections[2:], dataset.class_names)
    result = evaluator.evaluate()
    return {"dataset": dataset, "samples": samples, "detections": detections,
            "evaluator": evaluator, "result": result}


def test_nuscenes_evaluator_equals_the_file_based_command(nus_case: dict[str, Any], synth_nuscenes: Path,
                                                         tmp_path: Path) -> None:
    result: EvaluationResult = nus_case["result"]
    metrics = result.metrics
    assert 0.1 < metrics["mean_ap"] < 0.95 and sum(1 for v in metrics["mean_dist_aps"].values() if v > 0) >= 3
    assert result.headline["mAP"] == metrics["mean_ap"] and result.headline["NDS"] == metrics["nd_score"]
    assert result.headline["AP/car"] == metrics["mean_dist_aps"]["car"]
    assert result.headline["mATE"] == metrics["tp_errors"]["trans_err"]
    assert set(result.by_distance) == {"0-20", "20-30", "30+"}
    assert "traffic_cone" not in result.by_distance["30+"]["mean_dist_aps"]
    assert result.distance_headline["0-20"]["mAP"] == result.by_distance["0-20"]["mean_ap"]
    assert "mAP:" in result.table and "Per-class results:" in result.table

    paths = result.write(tmp_path / "eval")
    assert {p.name for p in paths.values()} == {"metrics_summary.json", "results_nusc.json",
                                               "metrics_by_distance.json"}
    assert json.dumps(without_time(json.loads(paths["metrics"].read_text()))) == json.dumps(without_time(metrics))
    out_json = tmp_path / "M.json"
    status, out, err = run_cli(["evaluate", "--dataset", "nuscenes", "--dataroot", str(synth_nuscenes),
                                "--version", VERSION, "--split", SPLIT, "--results", str(paths["results"]),
                                "--out", str(out_json), "--by-distance"])
    assert status == 0, err
    from_file = json.loads(out_json.read_text())
    assert json.dumps(without_time(from_file)) == json.dumps(without_time(metrics))   # bit for bit
    bands = json.loads((tmp_path / "M_by_distance.json").read_text())
    assert json.dumps(without_time(bands)) == json.dumps(without_time(result.by_distance))
    table = [line for line in result.table.splitlines() if not line.startswith("Eval time")]
    printed = out.splitlines()
    assert all(line in printed for line in table)
    assert result.distance_table.splitlines()[1] in printed


@pytest.mark.nuscenes_devkit
def test_nuscenes_evaluator_equals_the_devkit(nus_case: dict[str, Any], synth_nuscenes: Path,
                                              tmp_path: Path) -> None:
    pytest.importorskip("nuscenes")
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    result: EvaluationResult = nus_case["result"]
    paths = result.write(tmp_path / "eval")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        nusc = NuScenes(version=VERSION, dataroot=str(synth_nuscenes), verbose=False)
        DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(paths["results"]), "mini_train",
                      str(tmp_path / "devkit"), verbose=False).main(plot_examples=0, render_curves=False)
    ref = json.loads((tmp_path / "devkit" / "metrics_summary.json").read_text())
    assert list(result.metrics) == list(ref)
    assert assert_close(result.metrics, ref, DEVKIT_TOL) <= DEVKIT_TOL


def test_nuscenes_augmented_samples_give_the_unaugmented_metrics(nus_case: dict[str, Any]) -> None:
    samples, detections = nus_case["samples"], nus_case["detections"]
    evaluator = build_evaluator(nus_case["dataset"])
    augmented = [augment(s, i) for i, s in enumerate(samples)]
    evaluator.add(augmented, [to_augmented_frame(d, a) for d, a in zip(detections, augmented)])
    again = evaluator.evaluate()
    reference: EvaluationResult = nus_case["result"]
    assert assert_close(again.metrics, reference.metrics, 1e-9) <= 1e-9
    assert assert_close(again.by_distance, reference.by_distance, 1e-9) <= 1e-9
    # float32 detections, as a model gives them: the same matches, TP errors within 1e-4
    evaluator.reset()
    assert len(evaluator) == 0
    evaluator.add(augmented, [Detections(d.boxes.float(), d.scores.float(), d.labels)
                              for d in (to_augmented_frame(d, a) for d, a in zip(detections, augmented))])
    single = evaluator.evaluate()
    assert assert_close(single.metrics["label_aps"], reference.metrics["label_aps"], 1e-9) <= 1e-9
    assert assert_close(single.metrics["tp_errors"], reference.metrics["tp_errors"], 1e-4) <= 1e-4


def test_nuscenes_evaluator_errors(nus_case: dict[str, Any], synth_nuscenes: Path) -> None:
    samples, detections = nus_case["samples"], nus_case["detections"]
    evaluator = build_evaluator(nus_case["dataset"], by_distance=False)
    sample, det = samples[0], detections[0]

    def with_box(row: int, column: int, value: float) -> Detections:
        boxes = det.boxes.clone()
        boxes[row, column] = value
        return Detections(boxes, det.scores, det.labels)

    with pytest.raises(DataError, match=rf"sample {sample.token}: detection 1: field 'boxes'.*NaN"):
        evaluator.add([sample], [with_box(1, 0, float("nan"))])
    with pytest.raises(DataError, match=rf"sample {sample.token}: detection 2: field 'boxes'.*> 0"):
        evaluator.add([sample], [with_box(2, 4, -1.0)])
    with pytest.raises(DataError, match="field 'labels'.*out of range"):
        evaluator.add([sample], [Detections(det.boxes, det.scores, det.labels + 100)])
    with pytest.raises(DataError, match="class 'tram' is not a nuScenes detection class"):
        evaluator.add([sample], [det], class_names=["tram"] * 10)
    with pytest.raises(ValueError, match="2 samples but 1 detections"):
        evaluator.add(samples[:2], detections[:1])
    other = NuScenesDataset(synth_nuscenes, VERSION, "val", load_cameras=False).load_sample(0)
    with pytest.raises(DataError, match=rf"sample {other.token} is not in the evaluated split"):
        evaluator.add([other], [Detections.empty()])
    assert len(evaluator) == 0                       # nothing was added by the failed calls
    evaluator.add([sample], [det])
    with pytest.raises(DataError, match="added twice"):
        evaluator.add([sample], [det])
    with pytest.raises(DataError, match=rf"{len(samples) - 1} of {len(samples)} samples .* no detections"):
        evaluator.evaluate()
    assert evaluator.missing_tokens() == [s.token for s in samples[1:]]
    lenient = build_evaluator(nus_case["dataset"], by_distance=False, allow_missing=True)
    lenient.add([sample], [det])
    result = lenient.evaluate()
    assert result.by_distance == {} and 0 < result.metrics["mean_ap"] < nus_case["result"].metrics["mean_ap"]
    # more boxes than the submission format allows: the 500 best are kept
    many = Detections(det.boxes.repeat(700 // len(det) + 1, 1)[:700], torch.linspace(1, 0, 700, dtype=torch.float64),
                      det.labels.repeat(700 // len(det) + 1)[:700])
    lenient.reset()
    lenient.add([sample], [many])
    kept = lenient.evaluate().results
    assert len(kept) == 500 and kept.score.min() == pytest.approx(float(many.scores[499]))


# --------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------


def test_boxes_to_original_frame_inverts_apply_bev_transform() -> None:
    rng = np.random.default_rng(0)
    boxes = torch.from_numpy(np.concatenate((rng.uniform(-50, 50, (20, 3)), rng.uniform(0.5, 5, (20, 3)),
                                             rng.uniform(-math.pi, math.pi, (20, 1)),
                                             rng.normal(0, 3, (20, 2))), axis=1))
    boxes[0, 7:] = float("nan")
    sample = Sample(token="t", points=torch.zeros(0, 4), boxes=boxes, labels=torch.zeros(20, dtype=torch.int64),
                    class_names=("car",))
    for i in range(6):
        matrix = augment(sample, i).bev_transform          # rotation, scale, shift, flips (float32)
        moved = apply_bev_transform(sample, matrix)
        assert torch.equal(moved.bev_transform, matrix)
        back = boxes_to_original_frame(moved.boxes, moved.bev_transform)
        assert np.allclose(back[:, :6], boxes[:, :6].numpy(), rtol=0, atol=1e-9)
        yaw_err = np.angle(np.exp(1j * (back[:, 6] - boxes[:, 6].numpy())))
        assert np.abs(yaw_err).max() < 1e-9 and (back[:, 6] >= -math.pi).all() and (back[:, 6] < math.pi).all()
        assert np.allclose(back[1:, 7:], boxes[1:, 7:].numpy(), rtol=0, atol=1e-9)
        assert np.isnan(back[0, 7:]).all()
    same = boxes_to_original_frame(boxes, torch.eye(4))
    assert np.array_equal(same[1:], boxes[1:].numpy())
    shear = torch.eye(4)
    shear[0, 1] = 0.5
    with pytest.raises(ValueError, match="scaled rotation or reflection"):
        boxes_to_original_frame(boxes, shear)
    tilt = torch.eye(4)
    tilt[0, 2] = 0.3
    with pytest.raises(ValueError, match="no x-y/z mixing"):
        boxes_to_original_frame(boxes, tilt)


# --------------------------------------------------------------------------------------
# KITTI
# --------------------------------------------------------------------------------------

KITTI_FP_RANGE = (5.0, 45.0, -15.0, 15.0)


@pytest.fixture(scope="module")
def kitti_case(synth_kitti: Path) -> dict[str, Any]:
    dataset = KittiDataset(synth_kitti, "train", load_images=False)
    samples = [dataset.load_sample(i) for i in range(len(dataset))]
    detections = [noisy_detections(s, seed=10 + i, sigma=0.08, num_classes=3, fp_range=KITTI_FP_RANGE)
                  for i, s in enumerate(samples)]
    evaluator = build_evaluator(dataset)
    assert isinstance(evaluator, KittiDetectionEvaluator)
    evaluator.add(samples, detections)
    return {"dataset": dataset, "samples": samples, "detections": detections, "result": evaluator.evaluate()}


def test_kitti_evaluator_equals_the_file_based_command(kitti_case: dict[str, Any], synth_kitti: Path,
                                                      tmp_path: Path) -> None:
    result: EvaluationResult = kitti_case["result"]
    metrics = result.metrics
    assert set(metrics) == {"R40", "R11", "loose"} and set(metrics["loose"]) == {"R40", "R11"}
    for table in (metrics["R40"], metrics["R11"], metrics["loose"]["R40"], metrics["loose"]["R11"]):
        assert list(table) == ["Car", "Pedestrian", "Cyclist"]
        for cls in table.values():
            assert set(cls) == {"bbox", "bev", "3d", "aos"} and all(len(v) == 3 for v in cls.values())
    # (few GT boxes of the tiny set are in a difficulty level: small but non-zero APs)
    assert metrics["R40"]["Car"]["3d"][2] > 0 and metrics["R40"]["Pedestrian"]["3d"][1] > 0
    assert result.headline["Car/3d_R40/moderate"] == metrics["R40"]["Car"]["3d"][1]
    assert result.headline["mAP_3d_R40_moderate"] == pytest.approx(
        np.mean([metrics["R40"][c]["3d"][1] for c in ("Car", "Pedestrian", "Cyclist")]))
    assert set(result.by_distance) == {"0-20", "20-30", "30+"}

    paths = result.write(tmp_path / "eval")
    assert paths["results"].is_dir() and len(list(paths["results"].glob("*.txt"))) == len(kitti_case["samples"])
    out_json = tmp_path / "K.json"
    status, out, err = run_cli(["evaluate", "--dataset", "kitti", "--dataroot", str(synth_kitti), "--split",
                                "train", "--results", str(paths["results"]), "--out", str(out_json),
                                "--by-distance"])
    assert status == 0, err
    assert json.dumps(json.loads(out_json.read_text())) == json.dumps(metrics)      # bit for bit
    assert json.loads((tmp_path / "K_by_distance.json").read_text()) == result.by_distance
    assert result.table.strip() in out
    # the folder is replaced whole on a second write (no stale frames)
    (paths["results"] / "999999.txt").write_text("")
    result.write(tmp_path / "eval")
    assert not (paths["results"] / "999999.txt").exists()


def test_kitti_augmented_samples_and_images_give_the_same_metrics(kitti_case: dict[str, Any],
                                                                  synth_kitti: Path) -> None:
    detections = kitti_case["detections"]
    with_images = KittiDataset(synth_kitti, "train", load_images=True)    # image_size from the samples
    evaluator = build_evaluator(with_images)
    augmented = [augment(with_images.load_sample(i), i) for i in range(len(with_images))]
    evaluator.add(augmented, [to_augmented_frame(d, a) for d, a in zip(detections, augmented)])
    again = evaluator.evaluate()
    assert assert_close(again.metrics, kitti_case["result"].metrics, 1e-9) <= 1e-9
    assert assert_close(again.by_distance, kitti_case["result"].by_distance, 1e-9) <= 1e-9


def test_kitti_info_dataset_gives_the_kitti_dataset_metrics(kitti_case: dict[str, Any], synth_kitti: Path,
                                                            tmp_path: Path) -> None:
    from distill3d.data.infos import InfoDataset
    from distill3d.data.kitti_files import read_kitti_calib
    from distill3d.evaluation import load_kitti_gt

    def pad(m: torch.Tensor) -> np.ndarray:
        out = np.eye(4)
        out[: m.shape[0], : m.shape[1]] = m.numpy()
        return out

    entries = []
    for anno in load_kitti_gt(synth_kitti, "train"):      # dimensions (l, h, w), as in the infos
        frame = anno["frame_id"]
        calib = read_kitti_calib(synth_kitti / "training" / "calib" / f"{frame}.txt")
        entries.append({
            "point_cloud": {"num_features": 4, "lidar_idx": frame},
            "image": {"image_idx": frame, "image_shape": np.array([188, 621], np.int32)},
            "calib": {"P2": pad(calib.P2), "R0_rect": pad(calib.R0_rect), "Tr_velo_to_cam": pad(calib.Tr_velo_to_cam)},
            "annos": {k: v for k, v in anno.items() if k != "frame_id"},
        })
    info = tmp_path / "kitti_infos_train.pkl"
    info.write_bytes(pickle.dumps(entries, protocol=4))
    dataset = InfoDataset(info, data_root=synth_kitti, load_points=False, load_cameras=False)
    evaluator = build_evaluator(dataset)
    assert isinstance(evaluator, KittiDetectionEvaluator)
    samples = [dataset.load_sample(i) for i in range(len(dataset))]
    assert [s.token for s in samples] == [s.token for s in kitti_case["samples"]]
    # the detections' labels index the KITTI dataset's classes, not the info's
    evaluator.add(samples, kitti_case["detections"], kitti_case["dataset"].class_names)
    result = evaluator.evaluate()
    assert json.dumps(result.metrics) == json.dumps(kitti_case["result"].metrics)


def test_kitti_evaluator_errors(kitti_case: dict[str, Any], synth_kitti: Path) -> None:
    samples, detections = kitti_case["samples"], kitti_case["detections"]
    evaluator = build_evaluator(kitti_case["dataset"])
    sample, det = samples[0], detections[0]
    with pytest.raises(DataError, match="field 'scores'.*NaN"):
        evaluator.add([sample], [Detections(det.boxes, det.scores * float("nan"), det.labels)])
    with pytest.raises(DataError, match="class 'Bus' is not a KITTI class"):
        evaluator.add([sample], [det], class_names=["Bus", "Bus", "Bus"])
    no_calib = Sample(token=sample.token, points=sample.points, boxes=sample.boxes, labels=sample.labels,
                      class_names=sample.class_names, extras={"image_size": (621, 188)})
    with pytest.raises(DataError, match="calib"):
        evaluator.add([no_calib], [det])
    with pytest.raises(Distill3DError, match="selection of Car, Pedestrian, Cyclist"):
        KittiDetectionEvaluator([], classes=("Van",))
    with pytest.raises(Distill3DError, match="no evaluator for list"):
        build_evaluator([])


# --------------------------------------------------------------------------------------
# detections sent without their samples (what DDP processes gather)
# --------------------------------------------------------------------------------------


def shipped(samples: list[Sample], detections: list[Detections]) -> list[tuple[str, Detections, dict[str, Any]]]:
    """Augmented samples' detections with :func:`sample_metadata`, pickled and unpickled as
    ``all_gather_object`` sends them between processes."""
    out = []
    for i, (sample, det) in enumerate(zip(samples, detections)):
        moved = augment(sample, i)
        out.append((moved.token, to_augmented_frame(det, moved), sample_metadata(moved)))
    return pickle.loads(pickle.dumps(out))


def test_add_detections_with_sample_metadata_equals_add(nus_case: dict[str, Any], kitti_case: dict[str, Any],
                                                       synth_kitti: Path) -> None:
    items = shipped(nus_case["samples"], nus_case["detections"])
    meta = items[0][2]
    assert set(meta) == {"lidar_to_ego", "ego_to_global", "bev_transform", "extras"} and meta["extras"] == {}
    assert not torch.equal(meta["bev_transform"], torch.eye(4))
    evaluator = build_evaluator(nus_case["dataset"])
    for token, det, meta in reversed(items):               # any order, one sample at a time
        evaluator.add_detections(token, det, **meta)
    again = evaluator.evaluate()
    reference: EvaluationResult = nus_case["result"]
    assert assert_close(again.metrics, reference.metrics, 1e-9) <= 1e-9
    assert assert_close(again.by_distance, reference.by_distance, 1e-9) <= 1e-9
    assert again.headline.keys() == reference.headline.keys()

    # KITTI: calib from the extras, the image size from the extras or the image_2 view
    with_images = KittiDataset(synth_kitti, "train", load_images=True)
    samples = [with_images.load_sample(i) for i in range(len(with_images))]
    view_only = Sample(token=samples[0].token, points=samples[0].points, boxes=samples[0].boxes,
                       labels=samples[0].labels, class_names=samples[0].class_names, cameras=samples[0].cameras,
                       extras={"calib": samples[0].extras["calib"], "truncated": torch.zeros(1)})
    assert sample_metadata(view_only)["extras"] == {"calib": samples[0].extras["calib"],
                                                    "image_size": samples[0].cameras[0].original_size}
    items = shipped(samples, kitti_case["detections"])
    assert all(set(meta["extras"]) == {"calib", "image_size"} for _, _, meta in items)
    evaluator = build_evaluator(kitti_case["dataset"])
    for token, det, meta in items:
        evaluator.add_detections(token, det, **meta)
    again = evaluator.evaluate()
    assert assert_close(again.metrics, kitti_case["result"].metrics, 1e-9) <= 1e-9
    assert assert_close(again.by_distance, kitti_case["result"].by_distance, 1e-9) <= 1e-9
    # without extras the image size is read from the image file (the calib is required)
    evaluator.reset()
    for sample, det in zip(kitti_case["samples"], kitti_case["detections"]):
        evaluator.add_detections(sample.token, det, extras={"calib": sample.extras["calib"]})
    assert json.dumps(evaluator.evaluate().metrics) == json.dumps(kitti_case["result"].metrics)


def test_add_detections_errors(nus_case: dict[str, Any], kitti_case: dict[str, Any]) -> None:
    sample, det = nus_case["samples"][0], nus_case["detections"][0]
    evaluator = build_evaluator(nus_case["dataset"], by_distance=False)
    with pytest.raises(DataError, match=rf"sample {sample.token}: nuScenes detections need .*lidar_to_ego"):
        evaluator.add_detections(sample.token, det)
    meta = sample_metadata(sample)
    with pytest.raises(DataError, match="sample nope is not in the evaluated split"):
        evaluator.add_detections("nope", det, **meta)
    with pytest.raises(DataError, match=rf"sample {sample.token}: detection 1: field 'boxes'.*NaN"):
        boxes = det.boxes.clone()
        boxes[1, 0] = float("nan")
        evaluator.add_detections(sample.token, Detections(boxes, det.scores, det.labels), **meta)
    with pytest.raises(DataError, match="class 'tram' is not a nuScenes detection class"):
        evaluator.add_detections(sample.token, det, class_names=["tram"] * 10, **meta)
    assert len(evaluator) == 0
    evaluator.add_detections(sample.token, det, **meta)
    with pytest.raises(DataError, match="added twice"):
        evaluator.add_detections(sample.token, det, **meta)
    kitti = build_evaluator(kitti_case["dataset"])
    ksample, kdet = kitti_case["samples"][0], kitti_case["detections"][0]
    with pytest.raises(DataError, match=rf"sample {ksample.token}: field 'extras\[\"calib\"\]' is missing"):
        kitti.add_detections(ksample.token, kdet)
    bare = KittiDetectionEvaluator(kitti.gt_annos)         # no class names to read labels with
    with pytest.raises(DataError, match=rf"sample {ksample.token}: no class names"):
        bare.add_detections(ksample.token, kdet, extras={"calib": ksample.extras["calib"]})
