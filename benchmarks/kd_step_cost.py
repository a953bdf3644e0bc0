"""What distillation costs per training step: the plain student's step beside the distilled
student's step with the live teacher and with the teacher read from a cache, for several
methods, on the same SynthDrive demo batches, measured in one run.

    python benchmarks/kd_step_cost.py --teacher-ckpt T.pth [--methods pointdistiller pp_logit fitnet]

The cache is written once into a temporary folder (``distill3d cache-teacher``, one
augmentation seed); methods whose terms read maps too large to cache sensibly are still
measured with it, the size per sample is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _machine import CpuMonitor  # benchmarks/ is on sys.path when run as a script

from distill3d.commands.distill_cmd import distill_config
from distill3d.data.loader import collate_samples
from distill3d.distill.build import build_distiller
from distill3d.distill.cache import write_teacher_cache
from distill3d.engine.builders import build_dataset, build_model


def _median_step_ms(module, batches, repeats: int) -> float:
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)  # lr 0: the weights stay, the step costs the same
    times = []
    for i in range(repeats + 1):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        losses = module(batch) if not hasattr(module, "loss") else module.loss(batch, module(batch))
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-ckpt", required=True)
    parser.add_argument("--methods", nargs="+", default=["pointdistiller", "pp_logit", "heatmap_kd", "fitnet"])
    parser.add_argument("--width", default="0.25", choices=["0.25", "0.5"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args(argv)

    monitor = CpuMonitor()
    base = distill_config(f"synthdrive/demo_distill_x{args.width}", [], method=args.methods[0],
                          teacher_ckpt=args.teacher_ckpt)
    dataset = build_dataset(base, base.data.train_split, training=True)
    dataset.augmentation_cycle = 1
    batches = [collate_samples([dataset[i * args.batch_size + j] for j in range(args.batch_size)]) for i in range(3)]
    torch.manual_seed(0)
    student_ms = _median_step_ms(build_model(base), batches, args.repeats)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            cfg = distill_config(f"synthdrive/demo_distill_x{args.width}", [], method=method,
                                 teacher_ckpt=args.teacher_ckpt)
            live_ms = _median_step_ms(build_distiller(cfg, use_cache=False), batches, args.repeats)
            cache_dir = Path(tmp) / method
            cached_cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, cache_dir=str(cache_dir)))
            write_teacher_cache(cached_cfg, args.teacher_ckpt, cache_dir, augmentation_seeds=1, num_workers=0)
            entries = list((cache_dir / "samples").glob("*.npz"))
            size_kb = sum(p.stat().st_size for p in entries) / max(1, len(entries)) / 1024
            cached_ms = _median_step_ms(build_distiller(cached_cfg), batches, args.repeats)
            rows.append((method, live_ms, cached_ms, size_kb))

    per = args.batch_size
    print(f"x{args.width} student, batch {per}, {torch.get_num_threads()} threads, median of {args.repeats} steps")
    print(f"{'':18s} {'step ms':>9s} {'samples/s':>10s} {'vs plain':>9s} {'cache KB/sample':>16s}")
    print(f"{'plain student':18s} {student_ms:9.0f} {per * 1000 / student_ms:10.1f} {1.0:8.2f}x")
    for method, live, cached, size in rows:
        print(f"{method + ' live':18s} {live:9.0f} {per * 1000 / live:10.1f} {live / student_ms:8.2f}x")
        print(f"{method + ' cached':18s} {cached:9.0f} {per * 1000 / cached:10.1f} {cached / student_ms:8.2f}x "
              f"{size:16.0f}")
    other = monitor.other_share()
    if other is not None:
        print(f"other processes used {other:.0%} of the machine's CPU time during the run")


if __name__ == "__main__":
    main()
