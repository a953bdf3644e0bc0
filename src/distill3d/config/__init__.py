"""Configs: YAML files with ``_base_`` inheritance, validated into typed dataclasses.

>>> cfg = load_config("synthdrive/centerpoint_pillar_teacher.yaml", ["train.lr=0.002"])
>>> cfg.train.lr
0.002
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from distill3d.config.budget import with_fixed_budget
from distill3d.config.schema import (
    DataConfig, DistillConfig, ExperimentConfig, ModelConfig, TermConfig, TrainConfig,
)
from distill3d.config.typed import field_type_at, from_dict, to_dict
from distill3d.config.yaml_io import KeyPath, Origin, load_config_tree
from distill3d.errors import ConfigError

T = TypeVar("T")

PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

__all__ = [
    "ExperimentConfig", "DataConfig", "ModelConfig", "TrainConfig", "DistillConfig", "TermConfig",
    "load_config", "parse_override", "resolve_config_path", "dump_config", "from_dict", "to_dict",
    "PACKAGED_CONFIG_DIR", "with_fixed_budget",
]


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path: an existing path as given, else a config shipped in the package
    (``synthdrive/centerpoint_pillar_teacher`` or with ``.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (PACKAGED_CONFIG_DIR / path, PACKAGED_CONFIG_DIR / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = sorted(str(p.relative_to(PACKAGED_CONFIG_DIR).with_suffix(""))
                     for p in PACKAGED_CONFIG_DIR.rglob("*.yaml") if "_base_" not in p.parts)
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor a shipped config. "
                      f"Shipped configs: {', '.join(shipped) or 'none'}")


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """Parse ``a.b.c=value``; the value is read as a YAML scalar or flow collection
    (``0.1``, ``true``, ``null``, ``[1, 2]``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.lr=0.001")
    key, raw = text.split("=", 1)
    path = tuple(key.strip().split("."))
    if not all(path):
        raise ConfigError(f"--set {text!r}: malformed key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: cannot parse the value: {exc}") from None
    return path, value


def _set_path(data: dict[str, Any], path: KeyPath, value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def load_config(name_or_path: str | Path, overrides: Sequence[str] = (),
                schema: type[T] = ExperimentConfig) -> T:  # type: ignore[assignment]
    """Load a config file with its ``_base_`` files, apply ``--set`` overrides, validate.

    Args:
        name_or_path: a YAML file or the name of a shipped config.
        overrides: ``KEY=VALUE`` strings, applied in order after the files.
        schema: the root dataclass (``ExperimentConfig`` unless a caller has its own).

    Raises:
        ConfigError: with the file and line (or the override) of the offending key.
    """
    path = resolve_config_path(name_or_path)
    data, origins = load_config_tree(path)
    for text in overrides:
        key_path, value = parse_override(text)
        origin = Origin(f"--set {text}")
        field_type_at(schema, key_path, {key_path[:i]: origin for i in range(1, len(key_path) + 1)})
        _set_path(data, key_path, value)
        origins = {k: v for k, v in origins.items() if k[: len(key_path)] != key_path}
        origins[key_path] = origin
    return from_dict(schema, data, origins)


class _ConfigDumper(yaml.SafeDumper):
    """Block style for mappings, flow style for lists of scalars (``[0.2, 0.2, 8.0]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _represent_list)


def dump_config(config: Any) -> str:
    """The resolved config as YAML text (loadable again with :func:`load_config`)."""
    return yaml.dump(to_dict(config), Dumper=_ConfigDumper, sort_keys=False,
                     default_flow_style=False, width=100)
