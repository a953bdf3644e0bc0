"""Both evaluation benchmarks in one run, with one summary table of speed-ups.

Runs ``benchmarks/evaluate_nuscenes.py`` (ours against the official nuscenes-devkit on the
same 1,000+ sample results file; the SynthDrive set is generated once into
``--cache-dir`` and reused) and ``benchmarks/evaluate_kitti.py`` (ours against the
reference KITTI evaluation of mmdetection3d: its numba CPU path with a CPU port of the
rotated IoU, and optionally the unmodified CUDA kernel under numba's simulator), prints
each benchmark's own report, then a summary: for every comparison the reference's time,
ours, the ratio (reference / ours: how many times faster ours is) and the largest metric
difference. Ratios are taken within one run, both sides under the same machine load.

Usage::

    python benchmarks/evaluate.py [--repeats 3] [--kitti-frames 300] [--cudasim-frames 6]
        [--cache-dir /tmp/distill3d-bench-cache] [--skip-nuscenes] [--skip-kitti]
        [--nuscenes-args "..."] [--kitti-args "..."]

The devkit and the reference are optional: without them only our times are shown.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import platform
import re
import shlex
import sys
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Row:
    """One comparison of the summary."""

    suite: str
    what: str
    reference: str
    t_reference: float | None
    t_ours: float
    max_diff: float | None = None

    def format(self) -> str:
        ref = f"{self.t_reference:>10.3f}" if self.t_reference is not None else f"{'-':>10}"
        ratio = (f"{self.t_reference / self.t_ours:>8.1f}x" if self.t_reference is not None and self.t_ours > 0
                 else f"{'-':>9}")
        diff = f"{self.max_diff:>10.2e}" if self.max_diff is not None else f"{'-':>10}"
        return f"{self.suite:<9}{self.what:<34}{self.reference:<38}{ref}{self.t_ours:>10.3f}{ratio}{diff}"


def _load(name: str) -> types.ModuleType:
    """Import ``benchmarks/<name>.py`` by path (``benchmarks`` is not a package)."""
    path = HERE / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_distill3d_bench_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_nuscenes(argv: Sequence[str]) -> list[Row]:
    """Run the nuScenes benchmark (its report printed) and return its summary rows."""
    bench = _load("evaluate_nuscenes")
    args = bench.parse_args(list(argv))
    out = bench.run(args)
    print(bench.format_report(out, args))
    ours, dev = out["ours"], out.get("devkit")
    what = f"{out['samples']} samples, {out['predictions']} boxes"
    diff = out.get("max_abs_difference")

    def t(key: str) -> float | None:
        return dev[key] if dev else None

    total_dev = sum(dev[k] for k in ("load_gt", "load_results", "metrics")) if dev else None
    return [
        Row("nuScenes", what, "devkit: metrics (filter+match+AP+TP)", t("metrics"), ours["metrics"], diff),
        Row("nuScenes", "", "devkit: load results + metrics", (t("load_results") or 0) + (t("metrics") or 0)
            if dev else None, ours["load_results"] + ours["metrics"]),
        Row("nuScenes", "", "devkit: total (our GT cold)", total_dev,
            ours["load_gt"] + ours["load_results"] + ours["metrics"]),
        Row("nuScenes", "", "devkit: total (our GT cached)", total_dev,
            ours["load_gt_cached"] + ours["load_results"] + ours["metrics"]),
    ]


_FLOAT = r"([0-9.]+(?:e[+-]?[0-9]+)?)"


def run_kitti(argv: Sequence[str]) -> list[Row]:
    """Run the KITTI benchmark (its report printed) and return its summary rows, read from
    its printed table."""
    bench = _load("evaluate_kitti")
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        status = bench.main(list(argv))
    text = captured.getvalue()
    print(text, end="")
    if status:
        raise RuntimeError(f"benchmarks/evaluate_kitti.py exited with {status}")
    frames = re.search(r"^frames: (\d+)", text, re.MULTILINE)
    what = f"{frames.group(1)} frames" if frames else "KITTI frames"
    ours = re.search(rf"^ours \(distill3d\)\s+{_FLOAT}", text, re.MULTILINE)
    if ours is None:
        raise RuntimeError("could not read our time from the KITTI benchmark's report")
    rows = []
    ref = re.search(rf"^reference, numba CPU.*?\s{_FLOAT}\s+{_FLOAT}\s+{_FLOAT}x\s+{_FLOAT}", text, re.MULTILINE)
    rows.append(Row("KITTI", what, "mmdet3d kitti_eval, numba CPU",
                    float(ref.group(1)) if ref else None, float(ours.group(1)),
                    float(ref.group(4)) if ref else None))
    sim = re.search(rf"^first (\d+) frames.*?\n\s+ours {_FLOAT} ms, reference {_FLOAT} s: .*?max \|dAP\| {_FLOAT}",
                    text, re.MULTILINE | re.DOTALL)
    if sim:
        rows.append(Row("KITTI", f"{sim.group(1)} frames", "mmdet3d kitti_eval, CUDA simulator",
                        float(sim.group(3)), float(sim.group(2)) / 1000.0, float(sim.group(4))))
    return rows


def format_summary(rows: Sequence[Row], elapsed: float) -> str:
    """The summary table."""
    header = (f"{'suite':<9}{'workload':<34}{'reference (what is timed)':<38}{'ref. s':>10}"
              f"{'ours s':>10}{'speed-up':>9}{'max|diff|':>10}")
    lines = [
        "=" * len(header),
        ("Evaluation benchmarks: summary (speed-up = reference time / our time; max|diff|: "
         "largest metric difference, nuScenes absolute, KITTI AP points)"),
        (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
         f"benchmarks ran {elapsed:.0f} s"),
        header,
    ]
    lines += [row.format() for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both benchmarks and print the summary; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per phase in both benchmarks")
    parser.add_argument("--cache-dir", default="/tmp/distill3d-bench-cache",
                        help="where the nuScenes benchmark's SynthDrive set is generated once")
    parser.add_argument("--kitti-frames", type=int, default=300)
    parser.add_argument("--cudasim-frames", type=int, default=6,
                        help="frames for the unmodified KITTI reference under numba's CUDA simulator (0: skip)")
    parser.add_argument("--skip-nuscenes", action="store_true")
    parser.add_argument("--skip-kitti", action="store_true")
    parser.add_argument("--nuscenes-args", default="", help="extra arguments for evaluate_nuscenes.py")
    parser.add_argument("--kitti-args", default="", help="extra arguments for evaluate_kitti.py")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    start = time.perf_counter()
    rows: list[Row] = []
    if not args.skip_nuscenes:
        print("#" * 30 + " nuScenes " + "#" * 30, flush=True)
        rows += run_nuscenes(["--repeats", str(args.repeats), "--cache-dir", args.cache_dir,
                              *shlex.split(args.nuscenes_args)])
        print(flush=True)
    if not args.skip_kitti:
        print("#" * 30 + " KITTI " + "#" * 33, flush=True)
        rows += run_kitti(["--repeats", str(args.repeats), "--frames", str(args.kitti_frames),
                           "--cudasim-frames", str(args.cudasim_frames), *shlex.split(args.kitti_args)])
        print(flush=True)
    print(format_summary(rows, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
