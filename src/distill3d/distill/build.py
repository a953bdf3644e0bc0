"""Build a :class:`~distill3d.distill.distiller.Distiller` from an experiment config: the
student from ``model``, the teacher from ``distill.teacher_config`` (its ``model`` section,
with the student's ``data``) and its checkpoint, teacher-guided initialisation when asked,
and the teacher cache when one is configured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from distill3d.config import load_config
from distill3d.config.schema import ExperimentConfig
from distill3d.errors import ConfigError

__all__ = ["build_distiller", "build_teacher", "resolve_teacher_checkpoint", "teacher_experiment"]


def teacher_experiment(cfg: ExperimentConfig) -> ExperimentConfig:
    """The teacher's experiment config: ``distill.teacher_config`` with the student's
    ``data`` section (both models see the same samples).

    Raises:
        ConfigError: no ``distill`` section or no ``teacher_config``.
    """
    if cfg.distill is None or not cfg.distill.teacher_config:
        raise ConfigError("distill.teacher_config is not set: name the teacher's config (e.g. "
                          "synthdrive/centerpoint_pillar_teacher) in the distill section")
    import dataclasses

    teacher_cfg = load_config(cfg.distill.teacher_config)
    return dataclasses.replace(teacher_cfg, data=cfg.data)


def resolve_teacher_checkpoint(cfg: ExperimentConfig, checkpoint: str | Path | None = None) -> str:
    """The teacher checkpoint of a run: ``checkpoint`` (``--teacher-ckpt``), else
    ``distill.teacher_checkpoint``; checked to exist (cheap: no loading).

    Raises:
        ConfigError: none given.
        CheckpointError: no such file.
    """
    from distill3d.engine.checkpoint import CheckpointError

    ckpt = checkpoint or (cfg.distill.teacher_checkpoint if cfg.distill else None)
    if not ckpt:
        raise ConfigError("no teacher checkpoint: pass --teacher-ckpt PATH or set distill.teacher_checkpoint")
    if not Path(ckpt).is_file():
        raise CheckpointError(f"teacher checkpoint not found: {ckpt}")
    return str(ckpt)


def build_teacher(cfg: ExperimentConfig, checkpoint: str | Path | None, *, log: Callable[[str], Any] | None = None
                  ) -> nn.Module:
    """The teacher detector with its trained weights (EMA weights when the checkpoint has
    them; a distillation checkpoint's student when it is one).

    Raises:
        ConfigError: no checkpoint given.
        CheckpointError: a missing checkpoint, or one that does not fit the teacher's config
            (listing keys).
    """
    from distill3d.engine.builders import build_model
    from distill3d.engine.checkpoint import load_checkpoint

    teacher_cfg = teacher_experiment(cfg)
    ckpt = resolve_teacher_checkpoint(cfg, checkpoint)
    teacher = build_model(teacher_cfg)
    load_checkpoint(ckpt, teacher, weights="auto", prefix="auto")
    if log is not None:
        log(f"teacher: {teacher_cfg.name} ({teacher_cfg.model.type}, width x{teacher_cfg.model.width_multiplier}) "
            f"from {ckpt}")
    return teacher


def build_distiller(cfg: ExperimentConfig, teacher_checkpoint: str | Path | None = None, *,
                    log: Callable[[str], Any] | None = None, use_cache: bool = True) -> nn.Module:
    """The distiller of ``cfg``: student, frozen teacher, adapters and terms.

    Args:
        cfg: the experiment config with a ``distill`` section (method presets already
            applied, see :func:`distill3d.distill.methods.apply_method`).
        teacher_checkpoint: overrides ``distill.teacher_checkpoint``.
        log: receives one-line messages.
        use_cache: read the teacher cache of ``distill.cache_dir`` when set.

    Raises:
        ConfigError: a missing teacher, a term that cannot be wired (naming it), a stale
            teacher cache.
    """
    from distill3d.distill.distiller import Distiller
    from distill3d.engine.builders import build_model

    if cfg.distill is None:
        raise ConfigError("the config has no distill section (use a distillation config or --method NAME)")
    if not cfg.distill.terms and cfg.distill.label_kd is None and cfg.distill.student_input is None:
        raise ConfigError("distill.terms is empty: list terms, or choose a method with distill.method / --method")
    ckpt = teacher_checkpoint or cfg.distill.teacher_checkpoint
    teacher = build_teacher(cfg, ckpt, log=log)
    student = build_model(cfg)
    if cfg.distill.teacher_guided_init:
        from distill3d.distill.init import teacher_guided_init

        report = teacher_guided_init(student, teacher.state_dict())
        if log is not None:
            log(f"teacher-guided init: {len(report.copied)} tensors copied, {len(report.narrowed)} narrowed, "
                f"{len(report.skipped)} kept")
    cache = None
    if use_cache and cfg.distill.cache_dir:
        from distill3d.distill.cache import TeacherCache, cached_tap_names

        cache = TeacherCache.open(cfg.distill.cache_dir, cfg, ckpt)
        cache.check_taps(cached_tap_names(cfg, teacher.tap_names()))
        if log is not None:
            log(f"teacher outputs read from the cache {cfg.distill.cache_dir} "
                f"({cache.augmentation_cycle} augmentation seed(s))")
    distiller = Distiller(student, teacher, cfg.distill,
                          teacher_source=cache.reader(teacher) if cache is not None else None)
    if cache is not None:
        distiller.augmentation_cycle = cache.augmentation_cycle
    return distiller
