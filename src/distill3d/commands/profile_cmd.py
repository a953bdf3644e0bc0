"""``distill3d profile CONFIG``: parameters, FLOPs and latency of a detector, per stage.

Example::

    distill3d profile synthdrive/centerpoint_pillar_teacher
    distill3d profile synthdrive/centerpoint_pillar_student_x0.25 --batch-size 4 --train
    distill3d profile nuscenes/centerpoint_voxel_teacher --device cuda --json prof.json

What is measured
----------------
* **Parameters** of each stage (``encoder``, ``backbone``, ``neck``, ``head``) and in total.
* **FLOPs** of one forward pass per sample, counted by ``torch.utils.flop_counter.
  FlopCounterMode`` (matrix products and convolutions, a multiply-add counted as 2 FLOPs;
  the sparse convolutions count only their real neighbour pairs; gathers, scatters,
  voxelisation and NMS are not FLOPs).
* **Latency** on this machine: the median over ``--repeats`` forward passes (after
  ``--warmup`` passes) in eval mode without gradients, per stage (forward hooks; the
  encoder includes voxelisation) and in total; with ``--train``, also the median of a
  training step (forward, loss, backward) in train mode.

The input is a synthetic LiDAR-like batch (:func:`synthetic_batch`): a 32-beam spinning
LiDAR 1.8 m above a flat ground, with walls and car-sized boxes around it (about 30 000
points per sweep, like SynthDrive and nuScenes), with the configured number of sweeps and
a ``time_lag`` column when the data has sweeps.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill3d.commands.config_cmd import add_set_argument
from distill3d.errors import Distill3DError

if TYPE_CHECKING:  # torch and numpy are imported when the command runs, not when the CLI starts
    import numpy as np
    import torch

__all__ = ["profile_detector", "register", "synthetic_batch"]


# ----------------------------------------------------------------------------- input


def _ray_box_hits(origin: np.ndarray, dirs: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Distance along each ray (``dirs`` (R, 3), unit) to the first yaw-rotated box
    (``boxes`` (K, 7)), ``inf`` when none; slab test in each box's frame."""
    import numpy as np

    best = np.full(dirs.shape[0], np.inf)
    for box in boxes:  # a few tens of boxes
        c, size, yaw = box[:3], box[3:6], box[6]
        cos, sin = math.cos(-yaw), math.sin(-yaw)
        rot = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
        o = rot @ (origin - c)
        d = dirs @ rot.T
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-size / 2 - o) / d
            t2 = (size / 2 - o) / d
        tmin = np.nanmax(np.minimum(t1, t2), axis=1)
        tmax = np.nanmin(np.maximum(t1, t2), axis=1)
        hit = (tmax >= tmin) & (tmin > 0)
        best = np.where(hit & (tmin < best), tmin, best)
    return best


def synthetic_batch(batch_size: int = 1, class_names: tuple[str, ...] | list[str] = ("car",), sweeps: int = 1,
                    seed: int = 0, beams: int = 32, azimuth_steps: int = 1084, max_range: float = 80.0) -> Any:
    """A SynthDrive-like LiDAR batch for profiling (no file is read).

    Each sample: a ``beams``-beam spinning LiDAR (elevations -30 to +10 degrees, nuScenes
    HDL-32E-like) at the origin, 1.8 m above a flat ground (z = -1.8 in the sensor frame),
    surrounded by 24 car-sized boxes and 8 building walls at random places. With
    ``sweeps > 1``, earlier sweeps are the same scene seen 0.5 m further back per sweep,
    with a ``time_lag`` column (0.05 s per sweep). The GT boxes are the cars (label 0).

    Returns:
        A :class:`~distill3d.data.loader.Batch` on the CPU.
    """
    import numpy as np
    import torch

    from distill3d.data.loader import collate_samples
    from distill3d.data.sample import Sample

    rng = np.random.default_rng(seed)
    elev = np.deg2rad(np.linspace(-30.0, 10.0, beams))
    azim = -np.pi + (np.arange(azimuth_steps) + 0.5) * 2 * np.pi / azimuth_steps
    ee, aa = np.meshgrid(elev, azim, indexing="ij")
    dirs = np.stack([np.cos(ee) * np.cos(aa), np.cos(ee) * np.sin(aa), np.sin(ee)], -1).reshape(-1, 3)
    samples = []
    for b in range(batch_size):
        n_cars = 24
        r = rng.uniform(5.0, 50.0, n_cars)
        phi = rng.uniform(-np.pi, np.pi, n_cars)
        cars = np.stack([r * np.cos(phi), r * np.sin(phi), np.full(n_cars, -1.8 + 0.8),
                         rng.uniform(3.8, 5.0, n_cars), rng.uniform(1.7, 2.0, n_cars), np.full(n_cars, 1.6),
                         rng.uniform(-np.pi, np.pi, n_cars)], axis=1)
        walls = []
        for k in range(8):
            phi_w = k * np.pi / 4 + rng.uniform(-0.3, 0.3)
            d = rng.uniform(30.0, 60.0)
            walls.append([d * np.cos(phi_w), d * np.sin(phi_w), 2.0, 3.0, rng.uniform(20.0, 40.0), 8.0, phi_w])
        obstacles = np.concatenate([cars, np.asarray(walls)])
        parts = []
        for s in range(max(1, sweeps)):
            origin = np.array([0.0, -0.5 * s, 0.0])
            t_obj = _ray_box_hits(origin, dirs, obstacles)
            with np.errstate(divide="ignore"):
                t_ground = np.where(dirs[:, 2] < 0, -1.8 / dirs[:, 2], np.inf)
            t = np.minimum(t_obj, t_ground)
            keep = t < max_range
            t = t[keep] * (1.0 + rng.normal(0.0, 0.002, keep.sum()))
            xyz = origin + dirs[keep] * t[:, None]
            intensity = rng.integers(0, 256, xyz.shape[0]).astype(np.float64)
            cols = [xyz, intensity[:, None]]
            if sweeps > 1:
                cols.append(np.full((xyz.shape[0], 1), 0.05 * s))
            parts.append(np.concatenate(cols, axis=1))
        points = torch.from_numpy(np.concatenate(parts)).float()
        features = ("x", "y", "z", "intensity") + (("time_lag",) if sweeps > 1 else ())
        boxes = torch.zeros(n_cars, 9)
        boxes[:, :7] = torch.from_numpy(cars).float()
        samples.append(Sample(token=f"synthetic-{seed}-{b}", points=points, point_features=features, boxes=boxes,
                              labels=torch.zeros(n_cars, dtype=torch.long),
                              num_points=torch.full((n_cars,), -1, dtype=torch.long),
                              class_names=tuple(class_names)))
    return collate_samples(samples)


# ----------------------------------------------------------------------------- measurement


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values) if values else float("nan")


def profile_detector(model: Any, batch: Any, repeats: int = 5, warmup: int = 1, train: bool = False) -> dict[str, Any]:
    """Parameters, FLOPs and latency of a detector with named stages.

    Args:
        model: a detector with ``stages() -> dict[name, module]`` (the CenterPoint
            detectors), on the device of ``batch``.
        batch: the input.
        repeats: timed forward passes (the median is reported).
        warmup: untimed passes first.
        train: also time ``repeats`` training steps (forward, loss, backward).

    Returns:
        ``{"stages": {name: {"params", "flops", "latency_ms"}}, "total": {...},
        "train_step_ms": float | None, "batch_size", "points_per_sample"}``; FLOPs are
        per sample, latencies per batch.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = batch.points.device
    stages: dict[str, torch.nn.Module] = model.stages()
    bsz = batch.batch_size
    was_training = model.training
    result: dict[str, Any] = {"batch_size": bsz, "points_per_sample": batch.points.shape[0] / bsz}

    model.eval()
    with torch.no_grad():
        for _ in range(max(0, warmup)):
            model(batch)
        counter = FlopCounterMode(display=False)
        with counter:
            model(batch)
    counts = counter.get_flop_counts()
    root = type(model).__name__

    times: dict[str, list[float]] = {name: [] for name in stages}
    starts: dict[str, float] = {}
    handles = []

    def pre(name: str) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any) -> None:
            _sync(device)
            starts[name] = time.perf_counter()
        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, _output: Any) -> None:
            _sync(device)
            times[name].append(time.perf_counter() - starts[name])
        return hook

    for name, module in stages.items():
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    total: list[float] = []
    try:
        with torch.no_grad():
            for _ in range(max(1, repeats)):
                _sync(device)
                t0 = time.perf_counter()
                model(batch)
                _sync(device)
                total.append(time.perf_counter() - t0)
    finally:
        for h in handles:
            h.remove()

    result["stages"] = {}
    for name, module in stages.items():
        result["stages"][name] = {
            "params": int(sum(p.numel() for p in module.parameters())),
            "flops": float(sum(counts.get(f"{root}.{name}", {}).values())) / bsz,
            "latency_ms": _median_ms(times[name]),
        }
    result["total"] = {
        "params": int(sum(p.numel() for p in model.parameters())),
        "flops": float(counter.get_total_flops()) / bsz,
        "latency_ms": _median_ms(total),
    }
    result["train_step_ms"] = None
    if train:
        model.train()
        steps: list[float] = []
        for i in range(max(0, warmup) + max(1, repeats)):
            _sync(device)
            t0 = time.perf_counter()
            losses = model.loss(batch, model(batch))
            losses["loss"].backward()
            _sync(device)
            if i >= warmup:
                steps.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        result["train_step_ms"] = _median_ms(steps)
    model.train(was_training)
    return result


# ----------------------------------------------------------------------------- command


def _print_table(title: str, result: dict[str, Any]) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    bsz = result["batch_size"]
    table = Table(title=title, caption=f"batch {bsz}, {result['points_per_sample']:.0f} points/sample, "
                                       f"{torch.get_num_threads()} threads; latency: median per batch")
    table.add_column("stage")
    table.add_column("params (M)", justify="right")
    table.add_column("GFLOPs / sample", justify="right")
    table.add_column("latency (ms)", justify="right")
    table.add_column("share", justify="right")
    total_ms = result["total"]["latency_ms"]
    for name, row in result["stages"].items():
        share = f"{100 * row['latency_ms'] / total_ms:.0f}%" if total_ms > 0 else "-"
        table.add_row(name, f"{row['params'] / 1e6:.3f}", f"{row['flops'] / 1e9:.2f}", f"{row['latency_ms']:.1f}",
                      share)
    t = result["total"]
    table.add_row("total", f"{t['params'] / 1e6:.3f}", f"{t['flops'] / 1e9:.2f}", f"{t['latency_ms']:.1f}", "100%",
                  style="bold")
    if result.get("train_step_ms") is not None:
        table.add_row("train step", "", "", f"{result['train_step_ms']:.1f}", "", style="italic")
    Console().print(table)


def _run(args: argparse.Namespace) -> int:
    import torch

    from distill3d.config import load_config
    from distill3d.models import build_detector

    if args.batch_size < 1:
        raise Distill3DError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.repeats < 1 or args.warmup < 0:
        raise Distill3DError("--repeats must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise Distill3DError("--device cuda: no CUDA device is available here")
    cfg = load_config(args.config, args.overrides)
    device = torch.device(args.device)
    model = build_detector(cfg.model, cfg.data).to(device)
    if not hasattr(model, "stages"):
        raise Distill3DError(f"model type {cfg.model.type!r} has no named stages to profile")
    batch = synthetic_batch(args.batch_size, tuple(cfg.data.class_names), sweeps=cfg.data.sweeps,
                            seed=args.seed).to(device)
    result = profile_detector(model, batch, repeats=args.repeats, warmup=args.warmup, train=args.train)
    result.update({"config": str(args.config), "name": cfg.name, "model_type": cfg.model.type,
                   "device": str(device), "threads": torch.get_num_threads()})
    if not args.quiet:
        _print_table(f"{cfg.name} ({cfg.model.type}) on {device}", result)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile", help="parameters, FLOPs and latency of a detector, per stage",
        description="Parameters, FLOPs (torch's flop counter) and latency on this machine of a detector, per stage "
                    "(encoder, backbone, neck, head), on a synthetic SynthDrive-like LiDAR batch.")
    parser.add_argument("config", help="a YAML file or the name of a shipped config")
    add_set_argument(parser)
    parser.add_argument("--batch-size", type=int, default=1, help="samples per batch (default 1)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the median is reported (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first (default 1)")
    parser.add_argument("--train", action="store_true", help="also time a training step (forward, loss, backward)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic batch")
    parser.add_argument("--json", metavar="OUT", help="write the numbers to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no table (with --json)")
    parser.set_defaults(func=_run)
