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

The input is a SynthDrive frame made in memory (:func:`synthetic_batch`): a 32-beam
nuScenes-like sweep of a generated street (about 30 000 points), with the configured number
of sweeps and a ``time_lag`` column when the data has sweeps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill3d.commands.config_cmd import add_set_argument
from distill3d.errors import Distill3DError

if TYPE_CHECKING:  # torch is imported when the command runs, not when the CLI starts
    import torch

__all__ = ["profile_detector", "register", "synthetic_batch"]


# ----------------------------------------------------------------------------- input


def synthetic_batch(batch_size: int = 1, class_names: tuple[str, ...] | list[str] = ("car",), sweeps: int = 1,
                    seed: int = 0, lidar: str = "nuscenes32") -> Any:
    """A SynthDrive LiDAR batch for profiling, made in memory (no file is read or written).

    Sample ``b`` is the first keyframe of SynthDrive scene ``seed * 1000 + b`` scanned by
    the ``lidar`` preset (a 32-beam nuScenes-like sweep by default, about 30 000 points),
    in that sensor's frame. With ``sweeps > 1`` the previous 20 Hz sweeps are scanned at
    their own times and moved into the key frame through the poses, with a ``time_lag``
    column (0.05 s per sweep). GT boxes are the annotated objects of ``class_names``.

    Returns:
        A :class:`~distill3d.data.loader.Batch` on the CPU.
    """
    import numpy as np
    import torch

    from distill3d.data.loader import collate_samples
    from distill3d.data.sample import Sample
    from distill3d.synth.lidar import lidar_preset, lidar_sensor_to_world, scan_lidar
    from distill3d.synth.world import Scene, SceneConfig

    config = lidar_preset(lidar)
    label_of = {name: i for i, name in enumerate(class_names)}
    samples = []
    for b in range(batch_size):
        scene = Scene(SceneConfig(seed=seed * 1000 + b, num_keyframes=2))
        t_key = float(scene.keyframe_times()[-1])
        key_state = scene.state_at(t_key)
        world_to_key = np.linalg.inv(lidar_sensor_to_world(key_state, config))
        rng = np.random.default_rng([seed, b])
        parts = []
        for s in range(max(1, sweeps)):
            state = key_state if s == 0 else scene.state_at(t_key - 0.05 * s)
            points = scan_lidar(state, config, rng).astype(np.float64)
            to_key = world_to_key @ lidar_sensor_to_world(state, config)
            xyz = points[:, :3] @ to_key[:3, :3].T + to_key[:3, 3]
            cols = [xyz, points[:, 3:4]]
            if sweeps > 1:
                cols.append(np.full((xyz.shape[0], 1), 0.05 * s))
            parts.append(np.concatenate(cols, axis=1))
        kept = [o for o in key_state.objects if o.name in label_of]
        boxes = np.zeros((len(kept), 9))
        if kept:
            world = np.stack([o.box for o in kept])
            boxes[:, :3] = world[:, :3] @ world_to_key[:3, :3].T + world_to_key[:3, 3]
            boxes[:, 3:6] = world[:, 3:6]
            heading = np.arctan2(world_to_key[1, 0], world_to_key[0, 0])
            boxes[:, 6] = np.remainder(world[:, 6] + heading + np.pi, 2 * np.pi) - np.pi
            boxes[:, 7:9] = world[:, 7:9] @ world_to_key[:2, :2].T
        features = ("x", "y", "z", "intensity") + (("time_lag",) if sweeps > 1 else ())
        samples.append(Sample(token=f"synthetic-{seed}-{b}", points=torch.from_numpy(np.concatenate(parts)).float(),
                              point_features=features, boxes=torch.from_numpy(boxes).float(),
                              labels=torch.tensor([label_of[o.name] for o in kept], dtype=torch.long),
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
