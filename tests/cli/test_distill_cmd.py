"""``distill3d distill`` and ``distill3d cache-teacher`` end to end: a tiny half-width
CenterPoint-Pillar teacher trained for one epoch, a quarter-width student distilled from it
(the run folder, method presets, ``test`` on the student, resume, the teacher cache) and the
one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from distill3d.cli import main
from distill3d.config import load_config
from distill3d.engine import read_checkpoint, read_metrics

RANGE = [-25.6, -25.6, -5.0, 25.6, 25.6, 3.0]
TRAIN = {"epochs": 1, "batch_size": 2, "num_workers": 0, "num_threads": 1, "log_interval": 1}
TERMS = [
    {"name": "neck", "student": "neck", "teacher": "neck", "loss": "fitnet", "adapter": "conv1x1"},
    {"name": "pp_logit", "student": "heads", "teacher": "heads", "loss": "pp_logit", "weight": 15.0},
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _config(root: Path, width: float, **extra) -> dict:
    return {"name": f"tiny_w{width}", "seed": 0,
            "data": {"dataset": "nuscenes", "root": str(root), "version": "v1.0-mini", "point_cloud_range": RANGE},
            "model": {"type": "centerpoint_pillar", "width_multiplier": width, "voxel_size": [0.8, 0.8, 8.0],
                      "blocks_per_stage": [1, 1, 1], "nms_type": "circle"},
            "train": dict(TRAIN), **extra}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distill_cmd")


@pytest.fixture(scope="module")
def teacher_ckpt(synth_nuscenes: Path, folder: Path) -> Path:
    cfg = folder / "teacher.yaml"
    cfg.write_text(yaml.safe_dump(_config(synth_nuscenes, 0.5)))
    run = folder / "teacher_run"
    assert main(["train", str(cfg), "--work-dir", str(run), "--quiet", "--device", "cpu"]) == 0
    return run / "checkpoints" / "last.pth"


def _student(folder: Path, root: Path, name: str, terms: list[dict]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_config(root, 0.25, distill={"teacher_config": str(folder / "teacher.yaml"),
                                                                "terms": terms})))
    return path


@pytest.fixture(scope="module")
def student(folder: Path, synth_nuscenes: Path, teacher_ckpt: Path) -> Path:
    return _student(folder, synth_nuscenes, "student", TERMS)


@pytest.fixture(scope="module")
def distilled(student: Path, teacher_ckpt: Path, folder: Path) -> Path:
    run = folder / "student_run"
    assert main(["distill", str(student), "--teacher-ckpt", str(teacher_ckpt), "--work-dir", str(run), "--quiet",
                 "--device", "cpu"]) == 0
    return run


def _one_line_error(capsys: pytest.CaptureFixture[str], command: str, *, only: bool = False) -> str:
    """The error line of stderr: the last line, the only error line, no traceback (log lines
    such as ``run folder: ...`` may precede it; ``only``: none may)."""
    lines = capsys.readouterr().err.strip().splitlines()
    text = "\n".join(lines)
    assert lines and "Traceback" not in text, text
    assert [line for line in lines if " error: " in line] == lines[-1:], text
    assert lines[-1].startswith(f"distill3d {command}: error: "), text
    if only:
        assert len(lines) == 1, text
    return lines[-1]


# ----------------------------------------------------------------------------- distill


def test_distill_writes_the_run_folder(distilled: Path, teacher_ckpt: Path) -> None:
    assert {"config.yaml", "checkpoints", "metrics.jsonl", "eval", "train.log"} <= {p.name for p in distilled.iterdir()}
    cfg = load_config(distilled / "config.yaml")
    assert cfg.distill.teacher_checkpoint == str(teacher_ckpt)
    assert [t.name for t in cfg.distill.terms] == ["neck", "pp_logit"]
    payload = read_checkpoint(distilled / "checkpoints" / "last.pth")
    keys = list(payload["model"])
    assert not [k for k in keys if k.startswith("teacher.")]
    assert any(k.startswith("student.") for k in keys) and any(k.startswith("adapters.neck.") for k in keys)
    assert payload["epochs_done"] == 1 and payload["global_step"] == 3
    train = read_metrics(distilled / "metrics.jsonl", kind="train")
    assert len(train) == 3
    for record in train:
        assert {"loss", "kd", "det", "kd.neck", "kd.pp_logit"} <= set(record)
        assert record["loss"] == pytest.approx(record["det"] + record["kd"], rel=1e-4)
    evals = read_metrics(distilled / "metrics.jsonl", kind="eval")
    assert len(evals) == 1 and {"NDS", "mAP"} <= set(evals[0])


def test_method_replaces_the_terms(student: Path, teacher_ckpt: Path, tmp_path: Path) -> None:
    run = tmp_path / "pd"
    assert main(["distill", str(student), "--method", "pointdistiller", "--teacher-ckpt", str(teacher_ckpt),
                 "--work-dir", str(run), "--quiet", "--device", "cpu"]) == 0
    cfg = load_config(run / "config.yaml")
    assert cfg.distill.method == "pointdistiller"
    assert [(t.name, t.student, t.loss) for t in cfg.distill.terms] == [("local", "pillars", "pointdistiller")]
    train = read_metrics(run / "metrics.jsonl", kind="train")
    assert train and all("kd.local" in r and "kd.neck" not in r for r in train)
    assert any(r["kd.local"] > 0 for r in train)


def test_list_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["distill", "--list-methods"]) == 0
    out = capsys.readouterr().out
    methods = next(line for line in out.splitlines() if line.startswith("methods:"))
    losses = next(line for line in out.splitlines() if line.startswith("losses:"))
    assert {"pointdistiller", "fitnet", "sparsekd", "pp_logit"} <= set(methods[8:].replace(",", " ").split())
    assert {"fitnet", "pointdistiller", "pp_logit", "hinton_heatmap"} <= set(losses[7:].replace(",", " ").split())


def test_test_command_evaluates_the_student(distilled: Path, student: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "test_out"
    assert main(["test", str(student), "--ckpt", str(distilled / "checkpoints" / "last.pth"), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "loaded" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "results_nusc.json").is_file()
    during = json.loads((distilled / "eval" / "epoch_1" / "metrics.json").read_text())
    assert metrics["NDS"] == pytest.approx(during["NDS"])  # the same student weights, the same split


def test_test_command_gives_a_beam_gap_student_its_own_input(student: Path, teacher_ckpt: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "beam_gap"
    assert main(["distill", str(student), "--method", "beam_gap", "--teacher-ckpt", str(teacher_ckpt),
                 "--work-dir", str(run), "--quiet", "--device", "cpu"]) == 0
    assert load_config(run / "config.yaml").distill.student_input.beam_keep_every == 2
    capsys.readouterr()
    out = tmp_path / "test_out"
    assert main(["test", str(run / "config.yaml"), "--ckpt", str(run / "checkpoints" / "last.pth"), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "1 beam in 2 of 32" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    during = json.loads((run / "eval" / "epoch_1" / "metrics.json").read_text())
    assert metrics == pytest.approx(during)  # the distillation's own evaluation: the student on every second beam
    # the same weights on all beams (a config without student_input) score otherwise
    full = tmp_path / "full_beams"
    assert main(["test", str(student), "--ckpt", str(run / "checkpoints" / "last.pth"), "--out", str(full),
                 "--device", "cpu"]) == 0
    assert json.loads((full / "metrics.json").read_text()) != pytest.approx(during)


def test_resume_continues_a_distillation_run(distilled: Path, student: Path, teacher_ckpt: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "resumed"
    shutil.copytree(distilled, run)  # a run of 1 epoch, continued to 2
    # the teacher checkpoint comes from the run's config.yaml: --resume needs no --teacher-ckpt
    assert main(["distill", str(student), "--work-dir", str(run), "--resume", "--quiet", "--device", "cpu",
                 "--set", "train.epochs=2"]) == 0
    err = capsys.readouterr().err
    assert "resumed from" in err and "train.epochs: 1 -> 2" in err and "teacher_checkpoint" not in err
    payload = read_checkpoint(run / "checkpoints" / "last.pth")
    assert payload["epochs_done"] == 2 and payload["global_step"] == 6
    assert not [k for k in payload["model"] if k.startswith("teacher.")]
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl", kind="epoch")] == [1, 2]
    train = read_metrics(run / "metrics.jsonl", kind="train")
    assert len(train) == 6 and all("kd.neck" in r for r in train)
    cfg = load_config(run / "config.yaml")
    assert cfg.train.epochs == 2 and cfg.distill.teacher_checkpoint == str(teacher_ckpt)


# ----------------------------------------------------------------------------- errors


def test_missing_teacher_checkpoint(student: Path, teacher_ckpt: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    missing = tmp_path / "nope.pth"
    assert main(["distill", str(student), "--teacher-ckpt", str(missing), "--work-dir", str(run), "--quiet"]) == 2
    err = _one_line_error(capsys, "distill", only=True)
    assert "teacher checkpoint not found" in err and str(missing) in err
    assert main(["distill", str(student), "--work-dir", str(run), "--quiet"]) == 2
    assert "--teacher-ckpt" in _one_line_error(capsys, "distill", only=True)
    # refused before the run folder is made: the corrected command needs no --overwrite
    assert not (run / "config.yaml").exists()


def test_unknown_method_suggests_the_closest(student: Path, teacher_ckpt: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["distill", str(student), "--method", "pointdistill", "--teacher-ckpt", str(teacher_ckpt),
                 "--work-dir", str(tmp_path / "run"), "--quiet"]) == 2
    err = _one_line_error(capsys, "distill", only=True)
    assert "unknown distillation method 'pointdistill'" in err and "did you mean pointdistiller" in err


def test_term_with_an_unknown_tap(folder: Path, synth_nuscenes: Path, teacher_ckpt: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = _student(folder, synth_nuscenes, "bad_tap",
                   [{"name": "neck", "student": "nek", "teacher": "neck", "loss": "fitnet", "adapter": "conv1x1"}])
    assert main(["distill", str(bad), "--teacher-ckpt", str(teacher_ckpt), "--work-dir", str(tmp_path / "run"),
                 "--quiet", "--device", "cpu"]) == 2
    err = _one_line_error(capsys, "distill")
    assert "distill.terms[neck].student" in err and "'nek'" in err
    # the model is built before the run folder is made: the corrected config needs no --overwrite
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- cache-teacher


def test_cache_teacher_then_distil_from_the_cache(student: Path, teacher_ckpt: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    assert main(["cache-teacher", str(student), "--teacher-ckpt", str(teacher_ckpt), "--out", str(cache),
                 "--augmentation-seeds", "1", "--device", "cpu", "--quiet"]) == 0
    assert f"distill.cache_dir={cache}" in capsys.readouterr().out
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["augmentation_seeds"] == 1 and manifest["taps"] == ["neck"]
    assert len(list((cache / "samples").glob("*.npz"))) == manifest["samples"] == 6

    run = tmp_path / "cached_run"
    assert main(["distill", str(student), "--teacher-ckpt", str(teacher_ckpt), "--work-dir", str(run),
                 "--device", "cpu", "--set", f"distill.cache_dir={cache}"]) == 0
    err = capsys.readouterr().err
    assert f"teacher outputs read from the cache {cache} (1 augmentation seed(s))" in err
    assert load_config(run / "config.yaml").distill.cache_dir == str(cache)
    train = read_metrics(run / "metrics.jsonl", kind="train")
    assert len(train) == 3 and all(r["kd.neck"] > 0 for r in train)

    # a stale cache is refused, saying what changed
    assert main(["distill", str(student), "--teacher-ckpt", str(teacher_ckpt), "--work-dir", str(tmp_path / "s"),
                 "--quiet", "--device", "cpu", "--set", f"distill.cache_dir={cache}", "--set", "seed=1"]) == 2
    err = _one_line_error(capsys, "distill")
    assert "stale teacher cache" in err and "the seed changed" in err
    # cache-teacher's own errors
    assert main(["cache-teacher", str(student), "--teacher-ckpt", str(teacher_ckpt), "--quiet"]) == 2
    assert "--out" in _one_line_error(capsys, "cache-teacher")
    assert main(["cache-teacher", str(student), "--teacher-ckpt", str(teacher_ckpt), "--out", str(cache),
                 "--augmentation-seeds", "0", "--quiet"]) == 2
    assert "--augmentation-seeds must be >= 1" in _one_line_error(capsys, "cache-teacher")


@pytest.mark.slow
def test_torchrun_two_processes_distil(folder: Path, synth_nuscenes: Path, teacher_ckpt: Path) -> None:
    """DDP under torchrun (gloo, 2 processes): the distiller's student and adapters train,
    rank 0 writes one run folder, the KD terms are logged."""
    import os
    import subprocess
    import sys

    student = _student(folder, synth_nuscenes, "ddp_student", TERMS)
    run = folder / "ddp_run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "distill3d", "distill", str(student), "--teacher-ckpt", str(teacher_ckpt), "--work-dir", str(run),
         "--quiet", "--device", "cpu", "--set", "train.batch_size=1"],
        capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes (gloo)" in result.stderr
    payload = read_checkpoint(run / "checkpoints" / "last.pth")
    assert payload["meta"]["world_size"] == 2 and payload["global_step"] == 3
    assert any(k.startswith("adapters.neck.") for k in payload["model"])
    assert not any(k.startswith("teacher.") for k in payload["model"])
    train = read_metrics(run / "metrics.jsonl", kind="train")
    assert train and all("kd.neck" in r and "kd.pp_logit" in r for r in train)
