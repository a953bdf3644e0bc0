"""Validate plain config data into typed dataclasses, and turn them back into data.

The rules are strict on purpose: an unknown key, a missing required key or a value of the
wrong type is an error that names the key, where it was set (file and line, or the
``--set`` override) and, for unknown keys, the closest valid keys.

Supported field types: ``bool``, ``int``, ``float`` (ints are accepted), ``str``,
``typing.Literal``, ``enum.Enum`` (by name or value), ``X | None``, unions of the above,
``list[T]``, ``tuple[T, ...]``, ``tuple[T1, T2]``, ``dict[str, T]``, nested dataclasses
and ``typing.Any``.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from typing import Any, TypeVar

from distill3d.config.yaml_io import KeyPath, Origin
from distill3d.errors import ConfigError

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def _dotted(path: KeyPath) -> str:
    """``("a", "b", "[2]")`` -> ``"a.b[2]"``."""
    if not path:
        return "<root>"
    text = ""
    for key in path:
        text += key if key.startswith("[") or not text else f".{key}"
    return text


class FieldError(ValueError):
    """Raised by a config dataclass's ``__post_init__`` about one of its fields, so that
    the error can point at where that field was set."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _where(path: KeyPath, origins: dict[KeyPath, Origin]) -> str:
    """The origin of ``path`` or of its closest ancestor that has one."""
    for cut in range(len(path), 0, -1):
        origin = origins.get(path[:cut])
        if origin is not None:
            return f"{origin}: "
    return ""


def type_name(tp: Any) -> str:
    """A readable name for a type annotation (``list[float]``, ``'a' | 'b'``, ...)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def _given(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


class _Converter:
    """Recursive converter from plain data to typed values (one instance per call)."""

    def __init__(self, origins: dict[KeyPath, Origin]):
        self.origins = origins

    def fail(self, path: KeyPath, message: str) -> ConfigError:
        return ConfigError(f"{_where(path, self.origins)}key '{_dotted(path)}': {message}")

    def convert(self, tp: Any, value: Any, path: KeyPath) -> Any:
        if tp is Any:
            return value
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Literal:
            if value not in args or type(value) is bool and not any(a is value for a in args):
                raise self.fail(path, f"expected one of {type_name(tp)}, got {value!r}")
            return value
        if origin in (typing.Union, types.UnionType):
            return self._convert_union(tp, args, value, path)
        if dataclasses.is_dataclass(tp):
            return self.convert_dataclass(tp, value, path)
        if origin in (list, tuple, dict):
            return self._convert_container(tp, origin, args, value, path)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            for member in tp:
                if value == member.value or value == member.name:
                    return member
            raise self.fail(path, f"expected one of {type_name(tp)}, got {value!r}")
        return self._convert_scalar(tp, value, path)

    def _convert_union(self, tp: Any, args: tuple, value: Any, path: KeyPath) -> Any:
        if value is None:
            if type(None) in args:
                return None
            raise self.fail(path, f"expected {type_name(tp)}, got null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return self.convert(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise self.fail(path, f"expected {type_name(tp)}, got {_given(value)}")

    def _convert_container(self, tp: Any, origin: type, args: tuple, value: Any, path: KeyPath) -> Any:
        if origin is dict:
            if not isinstance(value, dict):
                raise self.fail(path, f"expected a mapping ({type_name(tp)}), got {_given(value)}")
            key_tp, value_tp = args if args else (str, Any)
            return {self.convert(key_tp, k, path): self.convert(value_tp, v, path + (str(k),))
                    for k, v in value.items()}
        if not isinstance(value, (list, tuple)):
            raise self.fail(path, f"expected a list ({type_name(tp)}), got {_given(value)}")
        if origin is list:
            item_tp = args[0] if args else Any
            return [self.convert(item_tp, v, path + (f"[{i}]",)) for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(self.convert(args[0], v, path + (f"[{i}]",)) for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise self.fail(path, f"expected {len(args)} items ({type_name(tp)}), got {len(value)}")
        return tuple(self.convert(a, v, path + (f"[{i}]",)) for i, (a, v) in enumerate(zip(args, value)))

    def _convert_scalar(self, tp: Any, value: Any, path: KeyPath) -> Any:
        if tp is bool:
            if isinstance(value, bool):
                return value
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif tp is str:
            if isinstance(value, str):
                return value
        else:
            raise self.fail(path, f"unsupported field type {type_name(tp)} in the config schema")
        raise self.fail(path, f"expected {type_name(tp)}, got {_given(value)}")

    def convert_dataclass(self, cls: type, value: Any, path: KeyPath) -> Any:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping ({cls.__name__}), got {_given(value)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in value:
            if key not in fields:
                raise self.unknown_key(path, str(key), sorted(fields))
        kwargs = {}
        for name, field in fields.items():
            if name in value:
                kwargs[name] = self.convert(hints[name], value[name], path + (name,))
            elif field.default is _MISSING and field.default_factory is _MISSING:
                raise self.fail(path + (name,), f"required key is missing (type {type_name(hints[name])})")
        try:
            return cls(**kwargs)
        except FieldError as exc:
            raise self.fail(path + (exc.field,), str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise self.fail(path, str(exc)) from None

    def unknown_key(self, path: KeyPath, key: str, valid: list[str]) -> ConfigError:
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        where = _where(path + (key,), self.origins)
        section = f" in '{_dotted(path)}'" if path else ""
        return ConfigError(f"{where}unknown key '{key}'{section}{hint} Valid keys: {', '.join(valid)}")


def from_dict(cls: type[T], data: dict[str, Any], origins: dict[KeyPath, Origin] | None = None) -> T:
    """Build dataclass ``cls`` from plain data, validating every key and type.

    Args:
        cls: the dataclass of the config's root.
        data: plain data (as loaded from YAML).
        origins: where each key path was set, for error messages.

    Raises:
        ConfigError: an unknown key, a missing required key, or a value of the wrong type.
    """
    return _Converter(origins or {}).convert_dataclass(cls, data, ())


def to_dict(obj: Any) -> Any:
    """Turn a config dataclass back into plain data (enums by value, tuples as lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def field_type_at(cls: type, path: KeyPath, origins: dict[KeyPath, Origin]) -> Any:
    """The annotation of the field at ``path`` below dataclass ``cls``.

    Raises:
        ConfigError: a key on the path does not exist (naming the closest valid ones).
    """
    converter = _Converter(origins)
    tp: Any = cls
    for depth, key in enumerate(path):
        tp = _strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            names = [f.name for f in dataclasses.fields(tp) if f.init]
            if key not in names:
                raise converter.unknown_key(path[:depth], key, sorted(names))
            tp = hints[key]
        elif typing.get_origin(tp) is dict:
            args = typing.get_args(tp)
            tp = args[1] if args else Any
        elif tp is Any:
            return Any
        else:
            raise converter.fail(path[: depth + 1],
                                 f"'{_dotted(path[:depth])}' is a {type_name(tp)}, it has no key '{key}'")
    return tp


def _strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X`` when X is a dataclass or a dict (so paths can go through it)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        candidates = [a for a in typing.get_args(tp) if a is not type(None)]
        for arg in candidates:
            if dataclasses.is_dataclass(arg) or typing.get_origin(arg) is dict:
                return arg
    return tp
