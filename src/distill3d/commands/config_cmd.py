"""``distill3d config show CONFIG [--set KEY=VALUE ...]``: print the resolved config."""

from __future__ import annotations

import argparse
import sys

from distill3d.config import dump_config, load_config


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--set KEY=VALUE`` option shared by every verb that reads a config."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set train.lr=0.002")


def _show(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    sys.stdout.write(dump_config(config))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="inspect configs",
                                   description="Inspect experiment configs.")
    verbs = parser.add_subparsers(dest="config_verb", metavar="VERB", required=True)
    show = verbs.add_parser("show", help="print the resolved config (after _base_ and --set)",
                            description="Print the config after _base_ inheritance and --set overrides, "
                                        "validated against the schema.")
    show.add_argument("config", help="a YAML file or the name of a shipped config "
                                     "(e.g. synthdrive/centerpoint_pillar_teacher)")
    add_set_argument(show)
    show.set_defaults(func=_show)
