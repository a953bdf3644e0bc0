"""report.json / report.md of a distillation run, and the console table."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from distill3d.report.run_report import (
    UNDEFINED_GAP,
    ModelSummary,
    ReportPaths,
    render_console_table,
    write_run_report,
)

BANDS = {"0-20": 0.61, "20-30": 0.42, "30+": 0.18}


def _models(student_map: float = 0.30) -> dict[str, ModelSummary]:
    return {
        "teacher": ModelSummary("centerpoint_pillar_teacher", 0.5, 0.6, 5_260_000, 8.75e10, 41.3,
                                metrics_by_distance=BANDS, extra={"epochs": 20}),
        "student": ModelSummary("centerpoint_pillar_student_x0.25", student_map, 0.45, 1_310_000, 2.2e10, 12.5,
                                metrics_by_distance={"0-20": 0.4, "20-30": 0.25, "30+": 0.1}),
        "distilled": ModelSummary("centerpoint_pillar_student_x0.25", 0.40, 0.52, 1_310_000, 2.2e10, 12.5,
                                  metrics_by_distance={"0-20": 0.5, "20-30": 0.3, "30+": math.nan}),
    }


def _write(tmp_path: Path, student_map: float = 0.30, config: dict | None = None) -> ReportPaths:
    figures = {"BEV detections": tmp_path / "figures" / "bev.png", "training curves": "figures/curves.png"}
    return write_run_report(tmp_path, method="pointdistiller", figures=figures, config=config,
                            notes=["trained on SynthDrive mini", "seed 0"], **_models(student_map))


def test_report_json_round_trip(tmp_path: Path) -> None:
    paths = _write(tmp_path, config={"lr": 1e-3, "path": Path("/data")})
    md_path, json_path = paths
    assert (md_path, json_path) == (tmp_path / "report.md", tmp_path / "report.json")
    report = json.loads(json_path.read_text())
    assert set(report) == {"method", "teacher", "student", "distilled", "gap_closed", "figures", "notes", "config"}
    assert report["method"] == "pointdistiller"
    assert report["teacher"] == {"name": "centerpoint_pillar_teacher", "mAP": 0.5, "NDS": 0.6, "params": 5_260_000,
                                 "flops": 8.75e10, "latency_ms": 41.3, "metrics_by_distance": BANDS, "epochs": 20}
    assert report["distilled"]["metrics_by_distance"]["30+"] is None  # NaN as null
    assert report["gap_closed"]["mAP"] == pytest.approx(0.5)
    assert report["gap_closed"]["NDS"] == pytest.approx((0.52 - 0.45) / (0.6 - 0.45))
    assert report["figures"] == {"BEV detections": "figures/bev.png", "training curves": "figures/curves.png"}
    assert report["notes"] == ["trained on SynthDrive mini", "seed 0"]
    assert report["config"] == {"lr": 1e-3, "path": "/data"}
    for role, model in _models().items():
        back = ModelSummary.from_dict(report[role])
        assert back.name == model.name and back.params == model.params and back.extra == model.extra
        assert back.mAP == pytest.approx(model.mAP) and back.latency_ms == pytest.approx(model.latency_ms)


def test_report_markdown_content(tmp_path: Path) -> None:
    md = _write(tmp_path).markdown.read_text()
    assert md.startswith("# Distillation report: pointdistiller\n")
    header = next(line for line in md.splitlines() if line.startswith("| role"))
    for column in ("model", "mAP", "NDS", "params", "FLOPs", "latency (ms)", "mAP 0-20 m", "mAP 30+ m"):
        assert f"| {column} |" in header
    assert "| --- | --- | ---: |" in md  # role and model left, numbers right
    teacher_row = next(line for line in md.splitlines() if line.startswith("| teacher |"))
    for cell in ("0.5000", "0.6000", "5.26M", "87.50 G", "41.3", "0.6100", "0.4200", "0.1800"):
        assert f" {cell} |" in teacher_row
    distilled_row = next(line for line in md.splitlines() if line.startswith("| student + KD |"))
    assert distilled_row.endswith("| — |")  # the NaN band
    assert "mAP: 50.0% of the gap closed" in md
    assert "NDS: 46.7% of the gap closed" in md
    assert "![BEV detections](figures/bev.png)" in md
    assert "![training curves](figures/curves.png)" in md
    assert "- trained on SynthDrive mini" in md
    assert "## Configuration" not in md


def test_undefined_gap(tmp_path: Path) -> None:
    paths = _write(tmp_path, student_map=0.55)  # the student beats the teacher on mAP
    assert json.loads(paths.json.read_text())["gap_closed"]["mAP"] is None
    assert f"mAP: {UNDEFINED_GAP}" in paths.markdown.read_text()


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    _write(tmp_path)
    _write(tmp_path)  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644


def test_extra_keys_must_not_clash() -> None:
    model = ModelSummary("m", 0.1, 0.2, 1, 1.0, 1.0, extra={"mAP": 0.9})
    with pytest.raises(ValueError, match="clash"):
        model.to_dict()


def test_console_table() -> None:
    table = render_console_table(method="pointdistiller", **_models())
    assert isinstance(table, Table)
    assert len(table.rows) == 3
    assert [c.header for c in table.columns][:3] == ["role", "model", "mAP"]
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(table)
    text = console.file.getvalue()
    assert "5.26M" in text and "0.4000" in text and "50.0% of the gap closed" in text
