"""Verbs whose parsers exist (so ``--help`` documents them) but whose implementation
arrives with a later issue. Running one says so plainly and exits with status 2."""

from __future__ import annotations

import argparse

from distill3d.commands.config_cmd import add_set_argument
from distill3d.errors import Distill3DError


def _not_available(args: argparse.Namespace) -> int:
    raise Distill3DError(
        f"'distill3d {args.command}' is not available in this version yet: it is planned "
        f"({args.planned_for}). See README.md for what works today.")


def _config_verb(subparsers: argparse._SubParsersAction, name: str, help_text: str, planned_for: str,
                 extra: list[tuple[tuple[str, ...], dict]] = ()) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=f"{help_text} [planned]",
                                   description=f"{help_text}. Planned: {planned_for}.")
    parser.add_argument("config", help="a YAML file or the name of a shipped config")
    for flags, kwargs in extra:
        parser.add_argument(*flags, **kwargs)
    add_set_argument(parser)
    parser.set_defaults(func=_not_available, planned_for=planned_for)
    return parser


_RUN_FOLDER = [
    (("--work-dir",), {"help": "run folder (default: runs/<config name>)"}),
    (("--resume",), {"action": "store_true", "help": "continue the run in --work-dir from its last checkpoint"}),
    (("--overwrite",), {"action": "store_true", "help": "replace an existing run folder"}),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    _config_verb(subparsers, "export", "export a student to ONNX (adapters stripped)",
                 "ONNX export issue", [(("--ckpt",), {"help": "checkpoint"}), (("--out",), {"help": "output .onnx"})])
    bench = subparsers.add_parser("bench", help="the benchmark table of every method [planned]",
                                  description="Benchmark distillation methods. Planned: issue 7.")
    bench.set_defaults(func=_not_available, planned_for="issue 7, benchmarks")
