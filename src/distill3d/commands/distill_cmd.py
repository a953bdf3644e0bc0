"""``distill3d distill``: train a student by knowledge distillation from a trained teacher,
with everything ``train`` has (run folder, DDP under torchrun, resume, logging, evaluation of
the student)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from distill3d.commands.config_cmd import add_set_argument
from distill3d.config import load_config
from distill3d.config.schema import ExperimentConfig

__all__ = ["distill_config", "register", "run_distillation"]


def distill_config(config: str, overrides: list[str], *, method: str | None = None,
                   teacher_ckpt: str | None = None) -> ExperimentConfig:
    """The resolved distillation config: the file, ``--set`` overrides, the method preset
    (``--method`` or ``distill.method``) and the teacher checkpoint recorded in it (so that
    the run folder's ``config.yaml`` names it and ``--resume`` finds it)."""
    from distill3d.distill.methods import apply_method

    cfg = apply_method(load_config(config, overrides), method)
    if teacher_ckpt and cfg.distill is not None:
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teacher_checkpoint=str(teacher_ckpt)))
    return cfg


def _recorded_teacher_checkpoint(cfg: ExperimentConfig, work_dir: str | None) -> ExperimentConfig:
    """``cfg`` with the teacher checkpoint that the run folder's ``config.yaml`` names, when
    ``cfg`` names none (``--resume`` without ``--teacher-ckpt``)."""
    import yaml

    from distill3d.engine.run_dir import default_run_dir

    if cfg.distill is None or cfg.distill.teacher_checkpoint:
        return cfg
    path = default_run_dir(cfg, work_dir) / "config.yaml"
    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return cfg
    distill = recorded.get("distill") if isinstance(recorded, dict) else None
    ckpt = distill.get("teacher_checkpoint") if isinstance(distill, dict) else None
    if not ckpt:
        return cfg
    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teacher_checkpoint=str(ckpt)))


def run_distillation(cfg: ExperimentConfig, *, work_dir: str | None = None, resume: bool = False,
                     overwrite: bool = False, quiet: bool = False, device: str | None = None) -> Any:
    """Distil ``cfg``'s student from its teacher (see :func:`distill3d.commands.train_cmd.run_training`).

    With ``resume`` and no teacher checkpoint in ``cfg``, the one recorded in the run
    folder's ``config.yaml`` is used. A missing teacher checkpoint is reported before the
    run folder is made."""
    from distill3d.commands.train_cmd import run_training
    from distill3d.distill.build import build_distiller, resolve_teacher_checkpoint

    if resume:
        cfg = _recorded_teacher_checkpoint(cfg, work_dir)
    if cfg.distill is not None:
        resolve_teacher_checkpoint(cfg)

    def factory(config: ExperimentConfig, dist: Any) -> Any:
        log = (lambda text: print(text, file=sys.stderr, flush=True)) if dist.is_main and not quiet else None
        return build_distiller(config, log=log)

    return run_training(cfg, work_dir=work_dir, resume=resume, overwrite=overwrite, quiet=quiet, device=device,
                        module_factory=factory)


def _distill(args: argparse.Namespace) -> int:
    if args.list_methods:
        from distill3d.distill.losses import loss_names
        from distill3d.distill.methods import method_names

        print("methods: " + ", ".join(method_names()))
        print("losses:  " + ", ".join(loss_names()))
        return 0
    if not args.config:
        raise SystemExit("distill3d distill: a CONFIG is required (or --list-methods)")
    cfg = distill_config(args.config, args.overrides, method=args.method, teacher_ckpt=args.teacher_ckpt)
    run_distillation(cfg, work_dir=args.work_dir, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                     device=args.device)
    return 0


def _cache_teacher(args: argparse.Namespace) -> int:
    from distill3d.distill.cache import write_teacher_cache
    from distill3d.errors import ConfigError

    cfg = distill_config(args.config, args.overrides, method=args.method, teacher_ckpt=args.teacher_ckpt)
    out = args.out or (cfg.distill.cache_dir if cfg.distill else None)
    if not out:
        raise ConfigError("cache-teacher: give --out DIR or set distill.cache_dir")
    ckpt = args.teacher_ckpt or (cfg.distill.teacher_checkpoint if cfg.distill else None)
    if not ckpt:
        raise ConfigError("cache-teacher: pass --teacher-ckpt PATH or set distill.teacher_checkpoint")
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    write_teacher_cache(cfg, ckpt, out, augmentation_seeds=args.augmentation_seeds, device=args.device, log=say)
    print(f"teacher cache written to {out}; distil with --set distill.cache_dir={out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``distill`` and ``cache-teacher`` verbs."""
    cache = subparsers.add_parser(
        "cache-teacher", help="run the teacher once per sample and augmentation seed and cache its outputs",
        description="Run the teacher of a distillation config over the training split under K augmentation "
                    "seeds and store the taps and head outputs its terms need (float16, compressed), with the "
                    "teacher checkpoint's hash and the configs recorded. 'distill3d distill' reads the cache when "
                    "distill.cache_dir points at it, and refuses a stale one.")
    cache.add_argument("config", help="the distillation config (a YAML file or a shipped config name)")
    add_set_argument(cache)
    cache.add_argument("--teacher-ckpt", metavar="PATH", help="the teacher's checkpoint")
    cache.add_argument("--method", help="a method preset (its terms decide which taps are cached)")
    cache.add_argument("--out", metavar="DIR", help="the cache folder (default: distill.cache_dir)")
    cache.add_argument("--augmentation-seeds", type=int, default=1, metavar="K",
                       help="augmented copies of each sample (epoch e of the distillation uses seed e %% K)")
    cache.add_argument("--device", choices=["cpu", "cuda"], help="where to run the teacher")
    cache.add_argument("--quiet", action="store_true", help="no progress lines")
    cache.set_defaults(func=_cache_teacher)

    parser = subparsers.add_parser(
        "distill", help="train a student by distillation from a teacher",
        description="Train the config's student (model section) by knowledge distillation from the teacher "
                    "named in distill.teacher_config, with the terms of distill.terms or of a method preset "
                    "(--method). Writes a run folder as 'train' does; the student's checkpoints hold the "
                    "adapters too ('distill3d test' evaluates the student). Run under torchrun for DDP.")
    parser.add_argument("config", nargs="?", help="a YAML file or the name of a shipped config")
    add_set_argument(parser)
    parser.add_argument("--teacher-ckpt", metavar="PATH", help="the teacher's checkpoint (overrides "
                                                               "distill.teacher_checkpoint)")
    parser.add_argument("--method", help="a method preset (replaces the config's terms), e.g. pointdistiller; "
                                         "--list-methods lists them")
    parser.add_argument("--list-methods", action="store_true", help="list method presets and losses, then exit")
    parser.add_argument("--work-dir", metavar="DIR", help="run folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint (the "
                                                              "teacher checkpoint defaults to the run's config.yaml's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    parser.add_argument("--quiet", action="store_true", help="plain log lines instead of a progress bar")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where to train (default: cuda when available)")
    parser.set_defaults(func=_distill)
