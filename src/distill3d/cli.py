"""The ``distill3d`` command line: ``distill3d VERB [options]``.

Errors that are the user's to fix (a bad config key, a missing file) are printed as one
clear message with exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from distill3d import __version__
from distill3d.commands import (
    config_cmd,
    data_cmd,
    demo_cmd,
    distill_cmd,
    evaluate_cmd,
    planned,
    profile_cmd,
    synth_cmd,
    train_cmd,
)
from distill3d.errors import Distill3DError

COMMAND_MODULES = (config_cmd, synth_cmd, data_cmd, train_cmd, distill_cmd, demo_cmd, profile_cmd, evaluate_cmd, planned)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every verb registered."""
    parser = argparse.ArgumentParser(
        prog="distill3d",
        description="Knowledge distillation for 3D object detectors (LiDAR and camera), in pure PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"distill3d {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="VERB", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``distill3d`` console script and of ``python -m distill3d``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Distill3DError as exc:
        print(f"distill3d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distill3d {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
