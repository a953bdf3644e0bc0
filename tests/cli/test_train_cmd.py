"""``distill3d train`` / ``distill3d test`` end to end: a real (tiny) CenterPoint-Pillar on a
tiny SynthDrive set in the nuScenes layout, the run folder, refusal, resume, the results
file and the metrics; torchrun with 2 processes (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill3d.cli import main
from distill3d.config import load_config
from distill3d.engine import read_checkpoint, read_metrics


@pytest.fixture(scope="module")
def tiny_config(synth_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quarter-width pillar detector on a 64 x 64 BEV grid, 1 epoch of 3 steps."""
    folder = tmp_path_factory.mktemp("configs")
    config = {
        "name": "tiny_pillar",
        "seed": 0,
        "data": {"dataset": "nuscenes", "root": str(synth_nuscenes), "version": "v1.0-mini",
                 "point_cloud_range": [-25.6, -25.6, -5.0, 25.6, 25.6, 3.0]},
        "model": {"type": "centerpoint_pillar", "width_multiplier": 0.25, "voxel_size": [0.8, 0.8, 8.0],
                  "blocks_per_stage": [1, 1, 1]},
        "train": {"epochs": 1, "batch_size": 2, "num_workers": 0, "log_interval": 1, "lr": 0.002,
                  "num_threads": 1},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained_run(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", str(tiny_config), "--work-dir", str(run), "--quiet", "--device", "cpu"]) == 0
    return run


def test_train_writes_the_run_folder(trained_run: Path, tiny_config: Path) -> None:
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "checkpoints", "tensorboard", "metrics.jsonl", "eval", "train.log"} <= names
    resolved = load_config(trained_run / "config.yaml")
    assert resolved == load_config(tiny_config)
    checkpoints = {p.name for p in (trained_run / "checkpoints").iterdir()}
    assert {"last.pth", "epoch_1.pth", "best.pth"} <= checkpoints
    payload = read_checkpoint(trained_run / "checkpoints" / "last.pth")
    assert payload["epochs_done"] == 1 and payload["global_step"] == 3
    assert "name: tiny_pillar" in payload["config"]
    assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    records = read_metrics(trained_run / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 3 and all("loss" in r and "lr" in r for r in train)
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 1 and {"mAP", "NDS", "mATE", "AP/car"} <= set(evals[0])
    eval_dir = trained_run / "eval" / "epoch_1"
    submission = json.loads((eval_dir / "results_nusc.json").read_text())
    assert submission["meta"]["use_lidar"] is True and len(submission["results"]) == 3
    assert json.loads((eval_dir / "metrics.json").read_text())["NDS"] == evals[0]["NDS"]
    assert (eval_dir / "metrics_summary.json").is_file() and (eval_dir / "metrics_by_distance.json").is_file()
    assert read_checkpoint(trained_run / "checkpoints" / "best.pth")["best"]["metric"] == "NDS"


def test_existing_run_folder_is_refused(trained_run: Path, tiny_config: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tiny_config), "--work-dir", str(trained_run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(trained_run) in err and "--resume" in err and "--overwrite" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_resume_continues_the_run(trained_run: Path, tiny_config: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    assert main(["train", str(tiny_config), "--work-dir", str(run), "--resume", "--quiet", "--device", "cpu",
                 "--set", "train.epochs=2"]) == 0
    err = capsys.readouterr().err
    assert "resumed from" in err and "train.epochs: 1 -> 2" in err
    payload = read_checkpoint(run / "checkpoints" / "last.pth")
    assert payload["epochs_done"] == 2 and payload["global_step"] == 6
    epochs = [r["epoch"] for r in read_metrics(run / "metrics.jsonl", kind="epoch")]
    assert epochs == [1, 2]
    assert load_config(run / "config.yaml").train.epochs == 2


def test_test_command_writes_results_and_metrics(trained_run: Path, tiny_config: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "test_out"
    code = main(["test", str(tiny_config), "--ckpt", str(trained_run / "checkpoints" / "last.pth"),
                 "--out", str(out), "--device", "cpu"])
    assert code == 0
    captured = capsys.readouterr()
    assert "NDS:" in captured.out and "mAP:" in captured.out
    submission = json.loads((out / "results_nusc.json").read_text())
    assert len(submission["results"]) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    train_eval = json.loads((trained_run / "eval" / "epoch_1" / "metrics.json").read_text())
    assert metrics["NDS"] == pytest.approx(train_eval["NDS"])  # same weights, same split
    assert (out / "metrics_summary.json").is_file() and (out / "metrics_by_distance.json").is_file()


def test_test_command_errors_are_one_line(tiny_config: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(tiny_config), "--ckpt", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and len(err.strip().splitlines()) == 1


def test_wrong_checkpoint_lists_mismatched_keys(trained_run: Path, tiny_config: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["test", str(tiny_config), "--ckpt", str(trained_run / "checkpoints" / "last.pth"),
                 "--set", "model.width_multiplier=0.5", "--out", str(trained_run.parent / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "shape mismatch" in err


@pytest.mark.slow
def test_torchrun_two_processes(tiny_config: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "distill3d", "train", str(tiny_config), "--work-dir", str(run), "--quiet", "--device", "cpu",
         "--set", "train.batch_size=1"],
        capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes (gloo)" in result.stderr
    payload = read_checkpoint(run / "checkpoints" / "last.pth")
    assert payload["meta"]["world_size"] == 2 and len(payload["rng"]) == 2
    assert payload["global_step"] == 3  # 6 samples / (2 processes x 1)
    assert len(read_metrics(run / "metrics.jsonl", kind="eval")) == 1


# ----------------------------------------------------------------------------- builders


def _gt_predictions(dataset) -> dict:
    """Each sample's GT boxes as detections with score 1 (what a perfect model predicts)."""
    import torch

    from distill3d.engine.trainer import Prediction
    from distill3d.structures import Detections

    out = {}
    for i in range(len(dataset)):
        sample = dataset[i]
        boxes = sample.boxes.clone()
        det = Detections(boxes, torch.ones(len(boxes)), sample.labels.clone())
        out[sample.token] = Prediction(sample.token, det, sample.lidar_to_ego, sample.ego_to_global,
                                       dict(sample.extras))
    return out


def test_nuscenes_evaluator_scores_ground_truth_as_perfect(synth_nuscenes: Path, tmp_path: Path) -> None:
    from distill3d.config.schema import DataConfig, ExperimentConfig
    from distill3d.engine.builders import DatasetEvaluator, build_dataset, build_evaluator, write_results

    cfg = ExperimentConfig(data=DataConfig(dataset="nuscenes", root=str(synth_nuscenes)))
    dataset = build_dataset(cfg, "val", training=False)
    evaluator = build_evaluator(cfg, "val", dataset)
    assert isinstance(evaluator, DatasetEvaluator) and evaluator.primary_metric == "NDS"
    metrics = evaluator(_gt_predictions(dataset), tmp_path)
    assert list(metrics)[:7] == ["mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE"]
    assert set(metrics) == set(list(metrics)[:7]) | {f"AP/{c}" for c in cfg.data.class_names}
    present = [k for k, v in metrics.items() if k.startswith("AP/") and v > 0]
    assert present and all(metrics[k] == pytest.approx(1.0) for k in present)
    summary = json.loads((tmp_path / "metrics_summary.json").read_text())
    for key in present:  # classes without GT count as AP 0 with errors 1, as in the devkit
        errors = summary["label_tp_errors"][key[3:]]
        assert errors["trans_err"] == pytest.approx(0.0, abs=1e-3)
        assert errors["scale_err"] == pytest.approx(0.0, abs=1e-3)
    assert (tmp_path / "results_nusc.json").is_file() and (tmp_path / "metrics_summary.json").is_file()
    assert set(json.loads((tmp_path / "metrics_by_distance.json").read_text())) == {"0-20", "20-30", "30+"}
    # without labels, the results file alone: the same file as the evaluation wrote
    written = write_results(cfg, dataset, _gt_predictions(dataset), tmp_path / "only")
    assert written == tmp_path / "only" / "results_nusc.json"
    assert json.loads(written.read_text()) == json.loads((tmp_path / "results_nusc.json").read_text())


def test_kitti_evaluator_scores_ground_truth_as_perfect(synth_kitti: Path, tmp_path: Path) -> None:
    from distill3d.config.schema import DataConfig, ExperimentConfig
    from distill3d.engine.builders import DatasetEvaluator, build_dataset, build_evaluator, write_results

    cfg = ExperimentConfig(data=DataConfig(dataset="kitti", root=str(synth_kitti),
                                           class_names=["Car", "Pedestrian", "Cyclist"],
                                           point_cloud_range=(0.0, -40.0, -3.0, 70.4, 40.0, 1.0)))
    split = "val"
    dataset = build_dataset(cfg, split, training=False)
    evaluator = build_evaluator(cfg, split, dataset)
    assert isinstance(evaluator, DatasetEvaluator) and evaluator.primary_metric == "mAP_3d_R40_moderate"
    eval_classes = evaluator.prepare().classes
    assert eval_classes == ("Car", "Pedestrian", "Cyclist")
    metrics = evaluator(_gt_predictions(dataset), tmp_path)
    assert set(metrics) == {f"{c}/{m}_R40/{level}" for c in eval_classes for m in ("3d", "bev")
                            for level in ("easy", "moderate", "hard")} | {"mAP_3d_R40_moderate",
                                                                          "mAP_bev_R40_moderate"}
    # the same GT, written as detections directly in the camera frame: our LiDAR -> KITTI
    # conversion of the boxes must score the same
    import numpy as np

    from distill3d.evaluation.kitti import evaluate_kitti, load_kitti_gt

    gt = load_kitti_gt(synth_kitti, split)
    direct = []
    for anno in gt:
        keep = np.isin(anno["name"], ["Car", "Pedestrian", "Cyclist"])
        det = {k: v[keep] for k, v in anno.items() if isinstance(v, np.ndarray)}
        det["score"] = np.ones(int(keep.sum()))
        direct.append(det)
    expected = evaluate_kitti(gt, direct, eval_classes)
    for cls in eval_classes:
        for level, value in zip(("easy", "moderate", "hard"), expected["R40"][cls]["3d"]):
            assert metrics[f"{cls}/3d_R40/{level}"] == pytest.approx(value, abs=1e-6), (cls, level)
    assert metrics["Car/3d_R40/hard"] > 0
    assert metrics["mAP_3d_R40_moderate"] == pytest.approx(
        np.mean([metrics[f"{c}/3d_R40/moderate"] for c in eval_classes]))
    assert len(list((tmp_path / "kitti_results").glob("*.txt"))) == len(dataset)
    assert (tmp_path / "kitti_metrics.json").is_file() and (tmp_path / "metrics_by_distance.json").is_file()
    # without labels, the result files alone: the same files as the evaluation wrote
    again = write_results(cfg, dataset, _gt_predictions(dataset), tmp_path / "again")
    assert again.is_dir()
    files = sorted(p.name for p in (tmp_path / "kitti_results").glob("*.txt"))
    assert sorted(p.name for p in again.glob("*.txt")) == files
    assert all((again / f).read_text() == (tmp_path / "kitti_results" / f).read_text() for f in files)


def test_synthdrive_is_generated_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distill3d.config.schema import DataConfig, ExperimentConfig
    from distill3d.engine.builders import build_dataset, synthdrive_root
    from distill3d.synth import generate

    calls = []
    real = generate.generate_dataset

    def small(format, out_dir, **kwargs):  # the mini preset's names, far fewer samples
        calls.append(Path(out_dir))
        kwargs.update(scenes=3, samples_per_scene=2, image_size=(352, 128), workers=1, progress=False)
        return real(format, out_dir, **kwargs)

    monkeypatch.setattr(generate, "generate_dataset", small)
    monkeypatch.setenv("DISTILL3D_CACHE", str(tmp_path / "cache"))
    data = DataConfig(dataset="synthdrive")
    root = synthdrive_root(data)
    assert root == tmp_path / "cache" / "synthdrive" / "nuscenes_mini_nosweeps"
    assert (root / "v1.0-mini" / "sample.json").is_file()
    assert not list(root.parent.glob(".*tmp*"))
    assert synthdrive_root(data) == root and len(calls) == 1
    dataset = build_dataset(ExperimentConfig(data=data), "train", training=True)
    assert len(dataset) == 4 and dataset[0].points.shape[1] == 4
