"""``distill3d profile``: per-stage parameters, FLOPs and latency, table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill3d.cli import main
from distill3d.commands.profile_cmd import profile_detector, synthetic_batch
from distill3d.config import load_config
from distill3d.models import build_detector

STUDENT = "synthdrive/centerpoint_pillar_student_x0.25"


def test_synthetic_batch_is_lidar_like() -> None:
    batch = synthetic_batch(2, ("car", "pedestrian"), sweeps=1, seed=3)
    assert batch.batch_size == 2 and batch.point_features == ("x", "y", "z", "intensity")
    per_sample = batch.points.shape[0] / 2
    assert 15_000 < per_sample < 40_000  # a 32-beam sweep
    ground = (batch.points[:, 2] - (-1.84)).abs() < 0.1  # the LiDAR is mounted 1.84 m up
    assert 0.3 < float(ground.float().mean()) < 0.95
    labels = batch.labels[batch.box_mask]
    assert labels.numel() > 0 and bool(((labels == 0) | (labels == 1)).all())
    # GT boxes are in the LiDAR frame: a good share of them hold points of the sweep
    from distill3d.geometry import count_points_in_boxes
    first = batch.points[batch.point_batch_index == 0, :3]
    counts = count_points_in_boxes(first, batch.boxes[0][batch.box_mask[0], :7])
    assert float((counts > 0).float().mean()) > 0.3
    swept = synthetic_batch(1, ("car",), sweeps=3)
    assert swept.point_features[-1] == "time_lag"
    assert sorted(set(swept.points[:, 4].tolist())) == pytest.approx([0.0, 0.05, 0.1])
    again = synthetic_batch(2, ("car", "pedestrian"), sweeps=1, seed=3)
    assert torch.equal(again.points, batch.points)


def test_profile_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "prof.json"
    assert main(["profile", STUDENT, "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--json", str(out),
                 "--set", "model.voxel_size=[1.6, 1.6, 8.0]"]) == 0
    table = capsys.readouterr().out
    for word in ("encoder", "backbone", "neck", "head", "total", "GFLOPs"):
        assert word in table
    result = json.loads(out.read_text())
    assert list(result["stages"]) == ["encoder", "backbone", "neck", "head"]
    total = result["total"]
    assert sum(s["params"] for s in result["stages"].values()) == total["params"]
    assert sum(s["flops"] for s in result["stages"].values()) == pytest.approx(total["flops"], rel=1e-6)
    assert all(s["flops"] > 0 and s["latency_ms"] > 0 for s in result["stages"].values())
    assert total["latency_ms"] >= max(s["latency_ms"] for s in result["stages"].values())
    assert result["train_step_ms"] is None and result["batch_size"] == 1 and result["device"] == "cpu"


def test_flops_match_the_convolutions() -> None:
    cfg = load_config(STUDENT, ["model.voxel_size=[1.6, 1.6, 8.0]"])
    model = build_detector(cfg.model, cfg.data)
    batch = synthetic_batch(2, tuple(cfg.data.class_names))
    result = profile_detector(model, batch, repeats=1, warmup=0, train=True)
    h, w = model.encoder.grid.shape  # 64 x 64 pillars
    expected = 0.0
    for block, stride in zip(model.backbone.blocks, model.backbone.strides):
        h_s, w_s = h // stride, w // stride
        for conv in (m for m in block.modules() if isinstance(m, torch.nn.Conv2d)):
            expected += 2 * conv.in_channels * conv.out_channels * 9 * h_s * w_s
    assert result["stages"]["backbone"]["flops"] == pytest.approx(expected)
    assert result["train_step_ms"] > 0
    assert model.training  # the mode is restored


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", STUDENT, "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["profile", STUDENT, "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_profile_on_cuda(tmp_path: Path) -> None:
    out = tmp_path / "prof.json"
    assert main(["profile", STUDENT, "--device", "cuda", "--repeats", "2", "--train", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"].startswith("cuda") and result["train_step_ms"] > 0
