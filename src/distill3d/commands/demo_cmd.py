"""``distill3d demo``: the main job on SynthDrive (see :mod:`distill3d.demo`)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _demo(args: argparse.Namespace) -> int:
    from distill3d.demo import run_demo

    run_demo(args.method, quick=args.quick, out=args.out, teacher_ckpt=args.teacher_ckpt, device=args.device,
             overwrite=args.overwrite, epochs=args.epochs, quiet=args.quiet)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` verb."""
    parser = subparsers.add_parser(
        "demo", help="distil a student on SynthDrive end to end, with a report",
        description="Build (once) the SynthDrive demo set, load the shipped CenterPoint-Pillar teacher, train "
                    "the quarter-width student alone and with distillation on the same budget, evaluate all "
                    "three and write report.md, report.json and pictures into the run folder. About 10 minutes "
                    "on a 2-core CPU; --quick about 3.")
    parser.add_argument("--method", default="sparsekd",
                        help="distillation method preset, e.g. pointdistiller (default: sparsekd, the preset that "
                             "gains most at the demo's budget, see docs/benchmarks.md; distill3d distill "
                             "--list-methods lists them)")
    parser.add_argument("--quick", action="store_true", help="a shorter budget (3 epochs of at most 40 steps)")
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/demo_<method>[_quick])")
    parser.add_argument("--teacher-ckpt", metavar="PATH",
                        help="a teacher checkpoint of synthdrive/demo_teacher (default: the shipped one)")
    parser.add_argument("--epochs", type=int, help="epochs per student (default: 8; --quick: 3)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where to train (default: cuda when available)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=_demo)
