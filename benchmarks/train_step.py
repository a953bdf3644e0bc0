"""Training-step and forward-only speed of the SynthDrive teacher and its students.

For each config: the median forward pass (eval mode, no gradients) and the median training
step (forward, loss, backward) on the same SynthDrive batch, as samples per second, and the
cost of training relative to inference, all measured in one run so the ratios compare.

    python benchmarks/train_step.py [--batch-size 4] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch

from _machine import CpuMonitor  # benchmarks/ is on sys.path when run as a script
from distill3d.commands.profile_cmd import profile_detector, synthetic_batch
from distill3d.config import load_config
from distill3d.models import build_detector

CONFIGS = (
    "synthdrive/centerpoint_pillar_teacher",
    "synthdrive/centerpoint_pillar_student_x0.5",
    "synthdrive/centerpoint_pillar_student_x0.25",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    monitor = CpuMonitor()
    rows = []
    for name in CONFIGS:
        cfg = load_config(name)
        torch.manual_seed(0)
        model = build_detector(cfg.model, cfg.data)
        batch = synthetic_batch(args.batch_size, tuple(cfg.data.class_names), sweeps=cfg.data.sweeps)
        result = profile_detector(model, batch, repeats=args.repeats, warmup=1, train=True)
        forward_ms = result["total"]["latency_ms"]
        train_ms = result["train_step_ms"]
        rows.append((name.split("/")[-1], result["total"]["params"], args.batch_size * 1000 / forward_ms,
                     args.batch_size * 1000 / train_ms, train_ms / forward_ms))

    print(f"batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'config':36s} {'params':>10s} {'forward samples/s':>18s} {'train samples/s':>16s} {'train/forward':>14s}")
    for name, params, fwd, train, ratio in rows:
        print(f"{name:36s} {params / 1e6:9.2f}M {fwd:18.1f} {train:16.1f} {ratio:13.1f}x")
    teacher_train = rows[0][3]
    for name, _, _, train, _ in rows[1:]:
        print(f"{name}: trains {train / teacher_train:.1f}x faster than the teacher")
    other = monitor.other_share()
    if other is not None:
        print(f"other processes used {other:.0%} of the machine's CPU time during the run")


if __name__ == "__main__":
    main()
