"""A small typed schema for TOML config: frozen dataclasses in, clear one-line errors out.

Each config section is a frozen dataclass whose fields are declared with :func:`setting`.
:func:`build_section` turns the dict that ``tomllib`` produced into that dataclass, checking:

* unknown keys (a typo must never be silently ignored),
* types (``bool`` is not an ``int``; an ``int`` is accepted where a ``float`` is expected),
* per-field checks (ranges, existing device paths, ...) given as ``check=``,
* cross-field checks from an optional ``validate(self)`` method yielding ``(key, message)``.

Every problem becomes a :class:`ConfigError` naming ``file: table.key: what is wrong``.
The same field metadata renders the commented example file (see ``render.py``), so the
documentation of every key lives exactly once, next to its default.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")

Check = Callable[[Any], "str | None"]
"""A field check: returns None when the value is acceptable, else what is wrong with it."""


class ConfigError(Exception):
    """A config file could not be used. ``str(error)`` is the one line to show the operator."""

    def __init__(self, file: str | pathlib.Path, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(where + message)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    check: Check | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    example: Any = dataclasses.MISSING,
) -> Any:
    """Declare one config key: its default, what it means (``doc``) and how it is checked.

    ``example`` is shown (commented out) in the rendered example file for keys whose default
    is empty, so the reader sees what a real value looks like.
    """
    metadata = {"doc": doc, "check": check, "example": example}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Ready-made checks


def between(low: float, high: float) -> Check:
    def check(value: float) -> str | None:
        if not low <= value <= high:
            return f"{value!r} is out of range; allowed {low:g} to {high:g}"
        return None

    return check


def at_least(low: float) -> Check:
    def check(value: float) -> str | None:
        if value < low:
            return f"{value!r} is too small; allowed {low:g} or more"
        return None

    return check


def non_empty(value: Any) -> str | None:
    if not value:
        return "must not be empty"
    return None


def absolute_path(value: pathlib.Path) -> str | None:
    if not value.is_absolute():
        return f"{str(value)!r} is not an absolute path; give the full path starting with /"
    return None


# ---------------------------------------------------------------------------------------------
# Building dataclasses from TOML data


def build_section(cls: type[T], data: Any, *, file: str | pathlib.Path, key: str) -> T:
    """Build the frozen dataclass ``cls`` from ``data`` (a TOML table), or raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(file, key, f"must be a table, not {_toml_type_name(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields)) or "(none)"
        raise ConfigError(
            file,
            _join(key, unknown[0]),
            f"unknown key; allowed keys in [{key or 'top level'}] are: {allowed}",
        )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        full_key = _join(key, name)
        if name in data:
            value = _convert(hints[name], data[name], file=file, key=full_key)
            check = field.metadata.get("check")
            if check is not None:
                problem = check(value)
                if problem:
                    raise ConfigError(file, full_key, problem)
            values[name] = value
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(file, full_key, "is required but missing")
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        for sub_key, problem in validate():
            raise ConfigError(file, _join(key, sub_key), problem)
    return instance


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _convert(hint: Any, value: Any, *, file: str | pathlib.Path, key: str) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)

    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _convert(non_none[0], value, file=file, key=key)
        raise TypeError(f"unsupported union in config schema at {key}: {hint!r}")

    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            return _fail(file, key, f"{value!r} is not allowed; choose one of {allowed}")
        return value

    if dataclasses.is_dataclass(hint):
        return build_section(hint, value, file=file, key=key)

    if origin is tuple:
        if not isinstance(value, list):
            return _fail(file, key, f"must be an array, not {_toml_type_name(value)}")
        item_hint = args[0]
        return tuple(
            _convert(item_hint, item, file=file, key=f"{key}[{index}]")
            for index, item in enumerate(value)
        )

    if origin is dict:
        if not isinstance(value, dict):
            return _fail(file, key, f"must be a table, not {_toml_type_name(value)}")
        _, value_hint = args
        return types.MappingProxyType(
            {
                name: _convert(value_hint, item, file=file, key=_join(key, name))
                for name, item in value.items()
            }
        )

    if hint is bool:
        if not isinstance(value, bool):
            return _fail(file, key, f"must be true or false, not {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return _fail(file, key, f"must be a whole number, not {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _fail(file, key, f"must be a number, not {_describe(value)}")
        if not math.isfinite(value):
            return _fail(file, key, f"must be a finite number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            return _fail(file, key, f"must be a string, not {_describe(value)}")
        if "\0" in value:
            return _fail(file, key, "contains a NUL character; remove it")
        return value
    if hint is pathlib.Path:
        if not isinstance(value, str) or not value:
            return _fail(file, key, f"must be a path string, not {_describe(value)}")
        if "\0" in value:
            return _fail(file, key, "contains a NUL character, which no path may; remove it")
        return pathlib.Path(value)
    raise TypeError(f"unsupported type in config schema at {key}: {hint!r}")


def _fail(file: str | pathlib.Path, key: str, message: str) -> Any:
    raise ConfigError(file, key, message)


def _toml_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _describe(value: Any) -> str:
    return f"{_toml_type_name(value)} ({value!r})" if not isinstance(value, dict | list) else (
        _toml_type_name(value)
    )


def iter_settings(cls: type) -> Iterator[tuple[dataclasses.Field, Any]]:
    """Yield ``(field, type hint)`` for each key of a section, in declaration order."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.init:
            yield field, hints[field.name]
