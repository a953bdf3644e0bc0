"""``distill3d demo``: knowledge distillation end to end on SynthDrive, on a laptop CPU.

1. The SynthDrive demo set (``configs/_base_/synthdrive_demo.yaml``) is generated into the
   user cache on first use and reused afterwards.
2. The teacher: the CenterPoint-Pillar checkpoint shipped in the package
   (``distill3d/assets/demo_teacher.pth``, trained by this project with
   ``distill3d train synthdrive/demo_teacher``), or ``--teacher-ckpt``.
3. The quarter-width student is trained twice with the same budget (epochs, batches,
   schedule, seed): alone, and distilled from the teacher by ``--method`` (default
   ``sparsekd``: teacher-guided initialisation, pivotal-position logit KD and label KD,
   the preset that gains most at this budget in docs/benchmarks.md).
4. All three are evaluated on the validation split (nuScenes mAP / NDS and mAP by distance
   band) and profiled (parameters, FLOPs, CPU latency of one sample).
5. The run folder gets ``report.md``, ``report.json`` and pictures: BEV plots of GT against
   each model's detections on the same frames, training curves, and what the distillation
   attends to (GT and teacher masks on the BEV grid, and PointDistiller's selected pillars
   with their weights).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distill3d.config import load_config, with_fixed_budget
from distill3d.config.schema import DistillConfig, ExperimentConfig
from distill3d.errors import Distill3DError

__all__ = ["ASSETS_DIR", "DEMO_TEACHER", "run_demo"]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEMO_TEACHER = ASSETS_DIR / "demo_teacher.pth"

TEACHER_CONFIG = "synthdrive/demo_teacher"
STUDENT_CONFIG = "synthdrive/demo_student_x0.25"
DISTILL_CONFIG = "synthdrive/demo_distill_x0.25"
QUICK_EPOCHS = 3


def _log(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda _text: None
    return lambda text: print(text, file=sys.stderr, flush=True)


def _map_by_distance(folder: Path) -> dict[str, float]:
    """``{band: mAP}`` from an evaluation folder's ``metrics_by_distance.json`` (empty if absent)."""
    path = folder / "metrics_by_distance.json"
    if not path.is_file():
        return {}
    return {band: float(summary.get("mean_ap", float("nan")))
            for band, summary in json.loads(path.read_text(encoding="utf-8")).items()}


def _final_metrics(run: Path, epochs: int) -> dict[str, Any]:
    folder = run / "eval" / f"epoch_{epochs}"
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return {"metrics": metrics, "by_distance": _map_by_distance(folder)}


def _profile(model: torch.nn.Module, batch: Any) -> dict[str, float]:
    from distill3d.commands.profile_cmd import profile_detector

    result = profile_detector(model, batch, repeats=5, warmup=1)
    return {"params": result["total"]["params"], "flops": result["total"]["flops"],
            "latency_ms": result["total"]["latency_ms"] / batch.batch_size}


def _student_input(batch: Any, kd_cfg: ExperimentConfig) -> Any:
    """The students' copy of ``batch`` (every n-th beam for beam-gap KD, else ``batch``)."""
    from distill3d.distill.distiller import student_input_batch

    return student_input_batch(batch, kd_cfg.distill.student_input if kd_cfg.distill is not None else None)


def _rename_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A distillation run's records with ``det.*`` keys named as a plain run's."""
    out = []
    for record in records:
        renamed = dict(record)
        for key in ("heatmap", "bbox"):
            if f"det.{key}" in record:
                renamed[key] = record[f"det.{key}"]
        out.append(renamed)
    return out


def run_demo(method: str = "sparsekd", *, quick: bool = False, out: str | Path | None = None,
             teacher_ckpt: str | Path | None = None, device: str | None = None, overwrite: bool = False,
             epochs: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run the demo (see the module docstring) and return ``report.json``'s content.

    Args:
        method: a distillation method preset (``distill3d distill --list-methods``).
        quick: 3 epochs of at most 40 steps instead of the configs' 8 epochs.
        out: the run folder (default ``runs/demo_<method>``; ``_quick`` appended).
        teacher_ckpt: a teacher checkpoint for the ``synthdrive/demo_teacher`` config
            (default: the one shipped in the package).
        device: ``cpu`` or ``cuda`` (default: CUDA when available).
        overwrite: replace an existing run folder.
        epochs: override the budget's epochs (both students).
        quiet: no progress output.

    Raises:
        Distill3DError: an existing run folder without ``overwrite``, a missing teacher.
    """
    from distill3d.commands.distill_cmd import distill_config, run_distillation
    from distill3d.commands.train_cmd import run_training
    from distill3d.engine.builders import build_dataset, build_model
    from distill3d.engine.checkpoint import STUDENT_PREFIX, load_checkpoint
    from distill3d.report import ModelSummary, render_console_table, write_run_report

    say = _log(quiet)
    started = time.perf_counter()
    root = Path(out) if out else Path("runs") / f"demo_{method}{'_quick' if quick else ''}"
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise Distill3DError(f"run folder {root} exists; pass --overwrite to replace it or --out DIR")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    ckpt = Path(teacher_ckpt) if teacher_ckpt else DEMO_TEACHER
    if not ckpt.is_file():
        raise Distill3DError(f"teacher checkpoint {ckpt} not found; train one with 'distill3d train "
                             f"{TEACHER_CONFIG} --work-dir runs/demo_teacher' and pass --teacher-ckpt")

    student_cfg = load_config(STUDENT_CONFIG)
    n_epochs = epochs or (QUICK_EPOCHS if quick else student_cfg.train.epochs)
    max_steps = 40 if quick else None
    student_cfg = with_fixed_budget(student_cfg, n_epochs, max_steps_per_epoch=max_steps)
    kd_cfg = with_fixed_budget(distill_config(DISTILL_CONFIG, [], method=method, teacher_ckpt=str(ckpt)), n_epochs,
                               max_steps_per_epoch=max_steps)
    assert kd_cfg.distill is not None
    if kd_cfg.distill.student_input is not None:
        # the no-KD student sees the same (e.g. beam-downsampled) input as the distilled one
        baseline = DistillConfig(teacher_config=kd_cfg.distill.teacher_config, teacher_checkpoint=str(ckpt),
                                 student_input=kd_cfg.distill.student_input, terms=[])
        student_cfg = dataclasses.replace(student_cfg, distill=baseline)
    say(f"distill3d demo: method {method}, {n_epochs} epochs per student{' (quick)' if quick else ''}, "
        f"teacher {ckpt}, run folder {root}")

    say("[1/4] the student without distillation")
    student_run = root / "student"
    if student_cfg.distill is not None:
        run_distillation(student_cfg, work_dir=str(student_run), quiet=True, device=device)
    else:
        run_training(student_cfg, work_dir=str(student_run), quiet=True, device=device)
    say(f"[2/4] the student distilled with {method}")
    distilled_run = root / "distilled"
    run_distillation(kd_cfg, work_dir=str(distilled_run), quiet=True, device=device)

    say("[3/4] evaluating the teacher")
    teacher_cfg = dataclasses.replace(load_config(TEACHER_CONFIG), data=student_cfg.data)
    teacher_metrics = _evaluate_checkpoint(teacher_cfg, ckpt, root / "teacher", device)

    say("[4/4] profiles, pictures and the report")
    val = build_dataset(student_cfg, student_cfg.data.val_split, training=False)
    from distill3d.data.loader import collate_samples

    frames = [0, len(val) // 2]
    batch = collate_samples([val[i] for i in frames])
    teacher = build_model(teacher_cfg)
    load_checkpoint(ckpt, teacher, weights="auto")
    student = build_model(student_cfg)
    load_checkpoint(student_run / "checkpoints" / "last.pth", student, weights="auto", prefix="auto")
    distilled = build_model(student_cfg)
    load_checkpoint(distilled_run / "checkpoints" / "last.pth", distilled, weights="auto", prefix=STUDENT_PREFIX)
    models = {"teacher": teacher.eval(), "student": student.eval(), "distilled": distilled.eval()}
    one = collate_samples([val[0]])
    # the students run on their own input (beam-gap KD: every n-th beam), as in training and evaluation
    profiles = {name: _profile(model, one if name == "teacher" else _student_input(one, kd_cfg))
                for name, model in models.items()}
    results = {"teacher": teacher_metrics, "student": _final_metrics(student_run, n_epochs),
               "distilled": _final_metrics(distilled_run, n_epochs)}
    summaries = {}
    for name in ("teacher", "student", "distilled"):
        metrics = results[name]["metrics"]
        summaries[name] = ModelSummary(
            name={"teacher": "CenterPoint-Pillar x1.0", "student": "CenterPoint-Pillar x0.25",
                  "distilled": f"CenterPoint-Pillar x0.25 + {method}"}[name],
            mAP=float(metrics["mAP"]), NDS=float(metrics["NDS"]), params=int(profiles[name]["params"]),
            flops=float(profiles[name]["flops"]), latency_ms=float(profiles[name]["latency_ms"]),
            metrics_by_distance=results[name]["by_distance"],
            extra={k: float(v) for k, v in metrics.items() if k.startswith("AP/")})
    figures = _figures(root, models, batch, student_cfg, kd_cfg, student_run, distilled_run, ckpt)
    elapsed = time.perf_counter() - started
    notes = [
        (f"Same budget for both students: {n_epochs} epochs{f' of at most {max_steps} steps' if max_steps else ''}, "
         f"batch {student_cfg.train.batch_size}, lr {student_cfg.train.lr} one-cycle, seed {student_cfg.seed}."),
        (f"Data: SynthDrive demo set ({student_cfg.data.synth_scenes} scenes x "
         f"{student_cfg.data.synth_samples_per_scene} keyframes), validation split; nuScenes metrics over the "
         "10 classes."),
        "Latency: median CPU forward time of one sample (voxelisation included, decoding excluded) on this machine.",
        f"Total demo time: {elapsed / 60:.1f} min.",
    ]
    write_run_report(root, method=method, teacher=summaries["teacher"], student=summaries["student"],
                     distilled=summaries["distilled"], figures=figures, notes=notes)
    report = json.loads((root / "report.json").read_text(encoding="utf-8"))
    if not quiet:
        from rich.console import Console

        Console(stderr=True, width=max(120, shutil.get_terminal_size((120, 40)).columns)).print(render_console_table(method=method, teacher=summaries["teacher"],
                                                        student=summaries["student"],
                                                        distilled=summaries["distilled"]))
        say(f"report: {root / 'report.md'} ({elapsed / 60:.1f} min)")
    return report


def _evaluate_checkpoint(cfg: ExperimentConfig, ckpt: Path, out: Path, device: str | None) -> dict[str, Any]:
    from distill3d.commands.train_cmd import run_test

    metrics = run_test(cfg, ckpt, out=out, device=device, quiet=True, echo=False) or {}
    return {"metrics": metrics, "by_distance": _map_by_distance(out)}


def _figures(root: Path, models: dict[str, torch.nn.Module], batch: Any, student_cfg: ExperimentConfig,
             kd_cfg: ExperimentConfig, student_run: Path, distilled_run: Path, ckpt: Path) -> dict[str, Path]:
    from distill3d.engine.logging import read_metrics
    from distill3d.report import plot_bev_detections, plot_training_curves

    figures: dict[str, Path] = {}
    pcr = student_cfg.data.point_cloud_range
    extent = (pcr[0], pcr[1], pcr[3], pcr[4])
    student_batch = _student_input(batch, kd_cfg)
    with torch.no_grad():
        detections = {name: model.decode(model(batch if name == "teacher" else student_batch))
                      for name, model in models.items()}
    for j in range(batch.batch_size):
        points = batch.points[batch.point_offsets[j]:batch.point_offsets[j + 1]]
        path = root / f"bev_frame{j}.png"
        plot_bev_detections(path, points, batch.boxes_list[j], {n: d[j] for n, d in detections.items()},
                            class_names=student_cfg.data.class_names, score_threshold=0.3, extent=extent,
                            title=f"validation frame {batch.tokens[j][:8]}: GT (green) and detections (score >= 0.3)")
        figures[f"BEV detections, frame {j}"] = path
    curves = {"student": read_metrics(student_run / "metrics.jsonl"),
              "distilled": _rename_records(read_metrics(distilled_run / "metrics.jsonl"))}
    path = root / "training_curves.png"
    plot_training_curves(path, curves, keys=("loss", "heatmap", "bbox", "kd"), title="training losses")
    figures["training curves"] = path
    figures.update(_attention_figures(root, batch, kd_cfg, ckpt, extent))
    return figures


def _attention_figures(root: Path, batch: Any, kd_cfg: ExperimentConfig, ckpt: Path,
                       extent: tuple[float, ...]) -> dict[str, Path]:
    """What the distillation attends to on the first frame: the BEV masks the methods use
    (GT box cells, the GT Gaussian, the teacher's scores, SparseKD's pivotal-position mask)
    and, for PointDistiller, the selected pillars coloured by their weight."""
    from distill3d.distill.build import build_distiller
    from distill3d.distill.losses.pointdistiller import PointDistillerLoss
    from distill3d.distill.masks import box_cell_mask, gaussian_mask, teacher_score_map
    from distill3d.report import plot_bev_heatmaps, plot_importance_points

    figures: dict[str, Path] = {}
    distiller = build_distiller(kd_cfg, ckpt, use_cache=False)
    distiller.eval()
    with torch.no_grad():
        s_batch = distiller.student_batch(batch)
        distiller(batch)  # fills the losses' last selections
        t_out = distiller.teacher(batch)
    grid = t_out.head_grid
    boxes = list(batch.boxes_list)
    mask, _ = box_cell_mask(boxes, grid)
    gaussian = gaussian_mask(boxes, grid)[0]
    score = teacher_score_map(t_out.heads)[0]
    maps = {"GT box cells": mask[0].float(), "GT Gaussian": gaussian, "teacher max score": score,
            "pivotal positions (score x Gaussian)": score * gaussian}
    path = root / "kd_masks.png"
    plot_bev_heatmaps(path, maps, grid, boxes=batch.boxes_list[0], title="BEV masks of the distillation (frame 0)")
    figures["distillation masks"] = path
    for name, loss in distiller.losses.items():
        if isinstance(loss, PointDistillerLoss) and loss.last_importance is not None:
            info = loss.last_importance
            rows = info["index"][info["sample"] == 0]
            weights = info["weight"][info["sample"] == 0]
            tap = t_out.taps["pillars"]
            coords = tap.index[rows]  # (N, 4) b, z, y, x
            cell_x, cell_y = tap.grid.cell_size
            xy = torch.stack([tap.grid.x_min + (coords[:, 3].float() + 0.5) * cell_x,
                              tap.grid.y_min + (coords[:, 2].float() + 0.5) * cell_y], 1)
            points = s_batch.points[s_batch.point_offsets[0]:s_batch.point_offsets[1]]
            path = root / f"kd_importance_{name}.png"
            plot_importance_points(path, xy.cpu().numpy(), weights.cpu().numpy(), points=points[:, :2].cpu().numpy(),
                                   boxes=batch.boxes_list[0], extent=extent,
                                   title=f"PointDistiller: the {len(rows)} pillars distilled, coloured by weight")
            figures[f"PointDistiller selection ({name})"] = path
    return figures
