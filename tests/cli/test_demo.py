"""``distill3d demo`` end to end on tiny configs (the shipped demo configs swapped for a
quarter-width student and a half-width teacher on the tiny SynthDrive fixture): the run
folder, ``report.json``'s contract, ``report.md`` and the pictures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

import distill3d.demo as demo
from distill3d.cli import main

RANGE = [-25.6, -25.6, -5.0, 25.6, 25.6, 3.0]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _config(root: Path, width: float, **extra) -> dict:
    return {"name": f"demo_w{width}", "seed": 0,
            "data": {"dataset": "nuscenes", "root": str(root), "version": "v1.0-mini", "point_cloud_range": RANGE},
            "model": {"type": "centerpoint_pillar", "width_multiplier": width, "voxel_size": [0.8, 0.8, 8.0],
                      "blocks_per_stage": [1, 1, 1], "nms_type": "circle"},
            "train": {"epochs": 2, "batch_size": 2, "num_workers": 0, "num_threads": 1, "log_interval": 1},
            **extra}


@pytest.fixture(scope="module")
def tiny_demo(synth_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("demo")
    teacher = folder / "teacher.yaml"
    teacher.write_text(yaml.safe_dump(_config(synth_nuscenes, 0.5)))
    student = folder / "student.yaml"
    student.write_text(yaml.safe_dump(_config(synth_nuscenes, 0.25)))
    distill = folder / "distill.yaml"
    distill.write_text(yaml.safe_dump({"_base_": "student.yaml", "name": "demo_kd",
                                       "distill": {"method": "pointdistiller", "teacher_config": str(teacher)}}))
    run = folder / "teacher_run"
    assert main(["train", str(teacher), "--work-dir", str(run), "--quiet", "--device", "cpu",
                 "--set", "train.epochs=1"]) == 0
    return {"teacher": teacher, "student": student, "distill": distill,
            "ckpt": run / "checkpoints" / "last.pth", "folder": folder}


def test_demo_writes_the_report_with_its_contract(tiny_demo: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "TEACHER_CONFIG", str(tiny_demo["teacher"]))
    monkeypatch.setattr(demo, "STUDENT_CONFIG", str(tiny_demo["student"]))
    monkeypatch.setattr(demo, "DISTILL_CONFIG", str(tiny_demo["distill"]))
    out = tiny_demo["folder"] / "demo_run"
    assert main(["demo", "--method", "pointdistiller", "--teacher-ckpt", str(tiny_demo["ckpt"]), "--out", str(out),
                 "--epochs", "1", "--device", "cpu", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "pointdistiller"
    for role in ("teacher", "student", "distilled"):
        model = report[role]
        assert {"mAP", "NDS", "params", "flops", "latency_ms"} <= set(model)
        assert 0.0 <= model["mAP"] <= 1.0 and 0.0 <= model["NDS"] <= 1.0
        assert model["flops"] > 0 and model["latency_ms"] > 0
    assert report["teacher"]["params"] > 3 * report["student"]["params"]
    assert report["student"]["params"] == report["distilled"]["params"]
    # the students' metrics are their runs' final evaluations, the teacher's a test run
    final = json.loads((out / "distilled" / "eval" / "epoch_1" / "metrics.json").read_text())
    assert report["distilled"]["NDS"] == pytest.approx(final["NDS"])
    assert (out / "teacher" / "metrics.json").is_file()
    text = (out / "report.md").read_text()
    assert "pointdistiller" in text and "gap" in text
    for name in report["figures"].values():
        image = Image.open(out / name)
        assert image.size[0] > 100 and image.size[1] > 100
    names = set(report["figures"].values())
    assert {"bev_frame0.png", "training_curves.png", "kd_masks.png"} <= names
    assert any(n.startswith("kd_importance_") for n in names)


def test_demo_default_method_is_sparsekd_with_teacher_guided_init(tiny_demo: dict[str, Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "TEACHER_CONFIG", str(tiny_demo["teacher"]))
    monkeypatch.setattr(demo, "STUDENT_CONFIG", str(tiny_demo["student"]))
    monkeypatch.setattr(demo, "DISTILL_CONFIG", str(tiny_demo["distill"]))
    out = tiny_demo["folder"] / "demo_default"
    report = demo.run_demo(out=out, teacher_ckpt=tiny_demo["ckpt"], epochs=1, device="cpu", quiet=True, quick=True)
    assert report["method"] == "sparsekd"
    config = (out / "distilled" / "config.yaml").read_text()
    assert "teacher_guided_init: true" in config and "label_kd:" in config


def test_demo_refuses_an_existing_run_folder(tiny_demo: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny_demo["folder"] / "occupied"
    out.mkdir()
    (out / "x").write_text("keep")
    assert main(["demo", "--teacher-ckpt", str(tiny_demo["ckpt"]), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "x").read_text() == "keep"
