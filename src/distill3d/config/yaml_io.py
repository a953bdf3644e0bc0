"""Safe YAML loading with source positions and ``_base_`` inheritance.

Only YAML's plain data types are accepted (mappings, sequences, strings, numbers,
booleans, null): a tag that would construct Python objects is an error, so loading a
config can never execute code. Every value remembers where it came from (file and line)
so that validation errors can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distill3d.errors import ConfigError

BASE_KEY = "_base_"

KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class Origin:
    """Where a config value was set: a file and a 1-based line, or a command-line override."""

    source: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source


class _StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a common, silent YAML mistake)."""


def _construct_mapping(loader: _StrictSafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _collect_origins(node: yaml.Node, path: KeyPath, source: str, out: dict[KeyPath, Origin]) -> None:
    """Record the line of every mapping key below ``node`` (1-based)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            out[path + (key,)] = Origin(source, key_node.start_mark.line + 1)
            _collect_origins(value_node, path + (key,), source, out)


def load_yaml_file(path: Path) -> tuple[dict[str, Any], dict[KeyPath, Origin]]:
    """Load one YAML file into a dict plus the origin of each key path.

    Raises:
        ConfigError: the file is missing, is not valid YAML, uses a tag that would
            construct an object, or its top level is not a mapping.
    """
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=_StrictSafeLoader)
        data = yaml.load(text, Loader=_StrictSafeLoader)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(
            f"{where}: {exc.problem} (configs are plain YAML data; tags that build Python "
            "objects are refused)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config must be a mapping, got {type(data).__name__}")
    origins: dict[KeyPath, Origin] = {}
    if node is not None:
        _collect_origins(node, (), str(path), origins)
    return data, origins


def deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Merge ``child`` into a copy of ``base``: mappings merge key by key, anything else
    (scalars, lists) in the child replaces the base's value."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _drop_origins_below(origins: dict[KeyPath, Origin], prefix: KeyPath) -> None:
    for key in [k for k in origins if len(k) > len(prefix) and k[: len(prefix)] == prefix]:
        del origins[key]


def _merge_origins(base: dict[KeyPath, Origin], child: dict[KeyPath, Origin],
                   child_data: dict[str, Any]) -> dict[KeyPath, Origin]:
    merged = dict(base)

    def replaced_paths(data: dict[str, Any], prefix: KeyPath) -> None:
        for key, value in data.items():
            path = prefix + (key,)
            if isinstance(value, dict):
                replaced_paths(value, path)
            else:
                _drop_origins_below(merged, path)

    replaced_paths(child_data, ())
    merged.update(child)
    return merged


def load_config_tree(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[KeyPath, Origin]]:
    """Load ``path`` and its ``_base_`` files, merged in order, the child winning.

    ``_base_`` is a path or a list of paths relative to the file that names them.

    Returns:
        The merged mapping (without ``_base_`` keys) and the origin of each key path.
    """
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"_base_ inheritance cycle: {cycle}")
    data, origins = load_yaml_file(path)
    bases = data.pop(BASE_KEY, [])
    origins.pop((BASE_KEY,), None)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a path or a list of paths, got {bases!r}")
    merged: dict[str, Any] = {}
    merged_origins: dict[KeyPath, Origin] = {}
    for base in bases:
        base_path = (path.parent / base)
        if not base_path.is_file():
            raise ConfigError(f"{path}: '{BASE_KEY}' names {base!r}, but {base_path} does not exist")
        base_data, base_origins = load_config_tree(base_path, (*_chain, path))
        merged_origins = _merge_origins(merged_origins, base_origins, base_data)
        merged = deep_merge(merged, base_data)
    merged_origins = _merge_origins(merged_origins, origins, data)
    merged = deep_merge(merged, data)
    return merged, merged_origins
