"""Method presets: each method is a packaged YAML file ``configs/methods/<name>.yaml`` whose
``distill`` section lists the method's terms (and label KD, teacher-guided initialisation,
student input, teacher BN mode where the method uses them).

A config selects one with ``distill.method: <name>`` and no terms of its own, or the command
line with ``--method <name>`` (which replaces the config's terms). The teacher's config,
checkpoint and cache always come from the user's config or command line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from distill3d.config import PACKAGED_CONFIG_DIR, load_config
from distill3d.config.schema import DistillConfig, ExperimentConfig
from distill3d.errors import ConfigError

__all__ = ["METHODS_DIR", "apply_method", "load_method", "method_names"]

METHODS_DIR: Path = PACKAGED_CONFIG_DIR / "methods"

#: the fields a preset decides; the rest (teacher, cache) stay the user's
_PRESET_FIELDS = ("method", "terms", "label_kd", "teacher_guided_init", "teacher_bn_mode", "student_input")


def method_names() -> list[str]:
    """Names of the shipped method presets."""
    return sorted(p.stem for p in METHODS_DIR.glob("*.yaml"))


def load_method(name: str) -> DistillConfig:
    """The ``distill`` section of preset ``name``.

    Raises:
        ConfigError: an unknown method (listing the known ones) or a broken preset file.
    """
    path = METHODS_DIR / f"{name}.yaml"
    if not path.is_file():
        import difflib

        names = method_names()
        close = difflib.get_close_matches(name, names, n=2)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown distillation method {name!r}{hint} (methods: {', '.join(names)})")
    cfg = load_config(path)
    if cfg.distill is None:
        raise ConfigError(f"{path}: a method preset needs a 'distill' section")
    return cfg.distill


def apply_method(cfg: ExperimentConfig, method: str | None = None) -> ExperimentConfig:
    """``cfg`` with a method preset's terms.

    ``method`` (the command line's ``--method``) replaces the config's terms with the
    preset's; without it, a config whose ``distill.method`` is set and whose terms are empty
    takes that preset's terms. Otherwise ``cfg`` is returned unchanged.

    Raises:
        ConfigError: no ``distill`` section to put the method in, or an unknown method.
    """
    distill = cfg.distill
    if method is None:
        if distill is None or distill.terms or distill.method is None:
            return cfg
        method = distill.method
    preset = load_method(method)
    base = distill if distill is not None else DistillConfig()
    merged = dataclasses.replace(base, **{name: getattr(preset, name) for name in _PRESET_FIELDS})
    return dataclasses.replace(cfg, distill=merged)
