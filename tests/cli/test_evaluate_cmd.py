"""``distill3d evaluate``: the table, the metrics files and their structure, and one-line
errors (exit status 2) for bad results files."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distill3d.cli import main
from distill3d.data.kitti import KittiDataset
from distill3d.data.nuscenes import NuScenesDataset
from distill3d.evaluation import build_evaluator
from distill3d.structures import Detections

VERSION = "v1.0-mini"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def gt_detections(sample: Any, seed: int) -> Detections:
    """The sample's GT boxes with a little noise, as detections."""
    rng = np.random.default_rng(seed)
    boxes = sample.boxes.double().clone()
    boxes[:, :2] += torch.from_numpy(rng.normal(0.0, 0.05, (boxes.shape[0], 2)))
    return Detections(boxes, torch.from_numpy(rng.uniform(0.2, 1.0, boxes.shape[0])), sample.labels)


def write_results(dataset: Any, folder: Path) -> Path:
    """Evaluate GT-derived detections of every sample and write the results file/folder."""
    evaluator = build_evaluator(dataset, by_distance=False)
    samples = [dataset.load_sample(i) for i in range(len(dataset))]
    evaluator.add(samples, [gt_detections(s, i) for i, s in enumerate(samples)])
    return evaluator.evaluate().write(folder)["results"]


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distill3d evaluate: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --------------------------------------------------------------------------------------
# nuScenes
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nus_results(synth_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset = NuScenesDataset(synth_nuscenes, VERSION, "train", load_cameras=False)
    return write_results(dataset, tmp_path_factory.mktemp("nus_results"))


def test_nuscenes_prints_the_table_and_writes_metrics_summary(synth_nuscenes: Path, nus_results: Path,
                                                              tmp_path: Path) -> None:
    out_json = tmp_path / "M.json"
    status, out, err = run_cli(["evaluate", "--dataset", "nuscenes", "--dataroot", str(synth_nuscenes),
                                "--split", "train", "--results", str(nus_results), "--out", str(out_json)])
    assert status == 0, err       # --version found in the dataroot
    for line in ("mAP: ", "mATE: ", "mAAE: ", "NDS: ", "Per-class results:", "Object Class"):
        assert line in out
    summary = json.loads(out_json.read_text())
    for key in ("mean_ap", "nd_score", "tp_errors", "tp_scores", "label_aps", "label_tp_errors",
                "mean_dist_aps", "eval_time", "cfg", "meta"):
        assert key in summary, key
    assert list(summary["label_aps"]["car"]) == ["0.5", "1.0", "2.0", "4.0"]
    assert set(summary["tp_errors"]) == {"trans_err", "scale_err", "orient_err", "vel_err", "attr_err"}
    assert summary["mean_dist_aps"]["car"] > 0.9 and 0 < summary["mean_ap"] <= 1
    assert math.isnan(summary["label_tp_errors"]["traffic_cone"]["orient_err"])
    assert f"{summary['mean_ap']:.4f}" in out and f"{summary['nd_score']:.4f}" in out
    assert not (tmp_path / "M_by_distance.json").exists()


def test_nuscenes_by_distance(synth_nuscenes: Path, nus_results: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "M.json"
    status, out, err = run_cli(["evaluate", "--dataset", "nuscenes", "--dataroot", str(synth_nuscenes),
                                "--version", VERSION, "--split", "train", "--results", str(nus_results),
                                "--out", str(out_json), "--by-distance"])
    assert status == 0, err
    assert "distance band (m)" in out and "AP/car" in out
    bands = json.loads((tmp_path / "M_by_distance.json").read_text())
    assert list(bands) == ["0-20", "20-30", "30+"]
    assert "mean_ap" in bands["30+"] and "traffic_cone" not in bands["30+"]["label_aps"]
    assert "mean_ap" in json.loads(out_json.read_text())     # the main file keeps its structure


def _edit_first_box(key: str, value: Any) -> Callable[[dict[str, Any], str], None]:
    def edit(content: dict[str, Any], token: str) -> None:
        content["results"][token][0][key] = value
    return edit


@pytest.mark.parametrize(("edit", "fragments"), [
    (_edit_first_box("translation", [float("nan"), 1.0, 2.0]), ("box 0", "field 'translation'", "non-finite")),
    (_edit_first_box("size", [1.0, -2.0, 1.5]), ("box 0", "field 'size'", "positive")),
    (_edit_first_box("detection_name", "tram"), ("box 0", "field 'detection_name'", "'tram'")),
    (lambda content, token: content["results"].pop(token), ("do not cover every sample",)),
    (lambda content, token: content["results"].__setitem__("no-such-token", []), ("no-such-token",
                                                                                  "not in the evaluated split")),
], ids=["nan_box", "negative_size", "unknown_class", "missing_sample", "unknown_token"])
def test_nuscenes_bad_results_are_one_line_errors(synth_nuscenes: Path, nus_results: Path, tmp_path: Path,
                                                  edit: Callable[[dict[str, Any], str], None],
                                                  fragments: tuple[str, ...]) -> None:
    content = json.loads(nus_results.read_text())
    token = next(t for t, boxes in content["results"].items() if boxes)
    edit(content, token)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    status, out, err = run_cli(["evaluate", "--dataset", "nuscenes", "--dataroot", str(synth_nuscenes),
                                "--version", VERSION, "--split", "train", "--results", str(bad),
                                "--out", str(tmp_path / "M.json")])
    expected = fragments if "no-such-token" in fragments else (token, *fragments)   # names the sample
    assert_one_line_error(status, err, *expected)
    assert not (tmp_path / "M.json").exists() and out == ""


def test_nuscenes_bad_arguments(synth_nuscenes: Path, nus_results: Path, tmp_path: Path) -> None:
    base = ["evaluate", "--dataset", "nuscenes", "--dataroot", str(synth_nuscenes), "--version", VERSION]
    assert_one_line_error(*run_cli([*base, "--split", "bogus", "--results", str(nus_results)])[::2],
                          "split 'bogus'")
    assert_one_line_error(*run_cli([*base, "--split", "train", "--results", str(tmp_path / "none.json")])[::2],
                          "not found")
    (tmp_path / "broken.json").write_text("{\"results\": ")
    assert_one_line_error(*run_cli([*base, "--split", "train", "--results", str(tmp_path / "broken.json")])[::2],
                          "invalid JSON")
    assert_one_line_error(*run_cli(["evaluate", "--dataset", "nuscenes", "--dataroot", str(tmp_path / "nowhere"),
                                    "--split", "train", "--results", str(nus_results)])[::2], "not found")
    assert_one_line_error(*run_cli([*base, "--split", "train", "--results", str(nus_results),
                                    "--classes", "car"])[::2], "KITTI only")


def test_exit_status_and_single_line_through_the_console_entry_point(synth_nuscenes: Path, nus_results: Path,
                                                                     tmp_path: Path) -> None:
    content = json.loads(nus_results.read_text())
    token = next(t for t, boxes in content["results"].items() if boxes)
    content["results"][token][0]["translation"][2] = float("nan")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    proc = subprocess.run([sys.executable, "-m", "distill3d", "evaluate", "--dataset", "nuscenes", "--dataroot",
                           str(synth_nuscenes), "--version", VERSION, "--split", "train", "--results", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and token in proc.stderr and "translation" in proc.stderr


# --------------------------------------------------------------------------------------
# KITTI
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kitti_results(synth_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_results(KittiDataset(synth_kitti, "train", load_images=False),
                         tmp_path_factory.mktemp("kitti_results"))


def test_kitti_prints_the_table_and_writes_r40_r11_loose(synth_kitti: Path, kitti_results: Path,
                                                         tmp_path: Path) -> None:
    out_json = tmp_path / "K.json"
    status, out, err = run_cli(["evaluate", "--dataset", "kitti", "--dataroot", str(synth_kitti), "--split",
                                "train", "--results", str(kitti_results), "--out", str(out_json), "--by-distance"])
    assert status == 0, err
    assert "AP40 (R40) results" in out and "AP11 (R11) results" in out and "Car AP_R40@0.70, 0.70, 0.70" in out
    metrics = json.loads(out_json.read_text())
    assert list(metrics) == ["R40", "R11", "loose"] and list(metrics["loose"]) == ["R40", "R11"]
    for table in (metrics["R40"], metrics["R11"], metrics["loose"]["R40"], metrics["loose"]["R11"]):
        assert list(table) == ["Car", "Pedestrian", "Cyclist"]
        for entry in table.values():
            assert list(entry) == ["bbox", "bev", "3d", "aos"]
            assert all(len(v) == 3 and all(0 <= x <= 100 for x in v) for v in entry.values())
    assert metrics["R40"]["Pedestrian"]["bbox"][1] > 0     # percent, non-trivial
    bands = json.loads((tmp_path / "K_by_distance.json").read_text())
    assert list(bands) == ["0-20", "20-30", "30+"] and list(bands["30+"]) == ["R40", "R11", "loose"]
    assert "mAP_3d_R40_moderate" in out

    status, out, err = run_cli(["evaluate", "--dataset", "kitti", "--dataroot", str(synth_kitti), "--split",
                                "train", "--results", str(kitti_results), "--classes", "Car",
                                "--out", str(out_json)])
    assert status == 0, err
    assert list(json.loads(out_json.read_text())["R40"]) == ["Car"]


def _copy(folder: Path, target: Path) -> Path:
    target.mkdir()
    for path in folder.glob("*.txt"):
        (target / path.name).write_text(path.read_text())
    return target


def _edit_line(column: int, value: str) -> Callable[[Path], str]:
    def edit(folder: Path) -> str:
        path = next(p for p in sorted(folder.glob("*.txt")) if p.read_text().strip())
        lines = path.read_text().splitlines()
        tokens = lines[0].split()
        tokens[column] = value
        lines[0] = " ".join(tokens)
        path.write_text("\n".join(lines) + "\n")
        return path.stem
    return edit


def _remove_file(folder: Path) -> str:
    path = max(folder.glob("*.txt"))
    path.unlink()
    return path.stem


@pytest.mark.parametrize(("edit", "fragments"), [
    (_edit_line(11, "nan"), ("field 'location'", "NaN")),
    (_edit_line(0, "Bus"), ("field 'name'", "Bus", "unknown class")),
    (_edit_line(8, "-1.5"), ("field 'dimensions'",)),
    (_remove_file, ("no result file",)),
], ids=["nan_box", "unknown_class", "negative_size", "missing_frame"])
def test_kitti_bad_results_are_one_line_errors(synth_kitti: Path, kitti_results: Path, tmp_path: Path,
                                               edit: Callable[[Path], str], fragments: tuple[str, ...]) -> None:
    folder = _copy(kitti_results, tmp_path / "bad")
    frame = edit(folder)
    status, _out, err = run_cli(["evaluate", "--dataset", "kitti", "--dataroot", str(synth_kitti), "--split",
                                "train", "--results", str(folder), "--out", str(tmp_path / "K.json")])
    assert_one_line_error(status, err, f"frame {frame}", *fragments)
    assert not (tmp_path / "K.json").exists()


def test_kitti_bad_arguments(synth_kitti: Path, kitti_results: Path, tmp_path: Path) -> None:
    base = ["evaluate", "--dataset", "kitti", "--dataroot", str(synth_kitti)]
    assert_one_line_error(*run_cli([*base, "--split", "nosuch", "--results", str(kitti_results)])[::2],
                          "split file not found")
    assert_one_line_error(*run_cli([*base, "--split", "train", "--results", str(tmp_path / "none")])[::2],
                          "does not exist")
    assert_one_line_error(*run_cli([*base, "--split", "train", "--results", str(kitti_results),
                                    "--classes", "Van"])[::2], "--classes")
    # result files of frames outside the split
    folder = _copy(kitti_results, tmp_path / "extra")
    (folder / "999999.txt").write_text("")
    assert_one_line_error(*run_cli([*base, "--split", "train", "--results", str(folder)])[::2], "999999")
