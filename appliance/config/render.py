"""Render the fully commented example config from the schema, so docs and defaults never drift.

``jbcd --print-example-config`` prints it; ``appliance/appliance.example.toml`` is this output,
and a test fails when the committed file differs from what the schema renders.
"""

from __future__ import annotations

import dataclasses
import pathlib
import textwrap
import types
import typing
from typing import Any, get_args, get_origin

from .schema import iter_settings

HEADER = """\
# /etc/jbc/appliance.toml: the site's own settings for jbcd, the business-continuity appliance.
#
# Every key is shown with its built-in default; a key you leave out keeps that default, so a
# real file only needs the lines you change. Durations are in seconds, sizes in bytes.
# Check a file without starting the daemon:  jbcd --check-config --config FILE
# Reload a running daemon after editing:      systemctl reload jbcd   (SIGHUP; a broken file is
#                                             refused and the daemon keeps its last good config)
"""


def render_example(root_cls: type, header: str = HEADER) -> str:
    out: list[str] = [header]
    # Top-level scalars first (TOML requires them before any table), then tables.
    scalars, tables = _split(root_cls)
    for field, hint in scalars:
        out.extend(_render_key(field, hint, prefix_comment=""))
    for field, hint in tables:
        out.append("")
        out.extend(_render_table(field, hint, field.name))
    return "\n".join(out).rstrip() + "\n"


def _split(cls: type) -> tuple[list, list]:
    scalars, tables = [], []
    for field, hint in iter_settings(cls):
        (tables if _is_table(hint) else scalars).append((field, hint))
    return scalars, tables


def _is_table(hint: Any) -> bool:
    hint = _strip_optional(hint)
    if dataclasses.is_dataclass(hint):
        return True
    origin = get_origin(hint)
    if origin is tuple and dataclasses.is_dataclass(get_args(hint)[0]):
        return True
    return origin is dict and dataclasses.is_dataclass(get_args(hint)[1])


def _strip_optional(hint: Any) -> Any:
    if get_origin(hint) in (typing.Union, types.UnionType):
        non_none = [a for a in get_args(hint) if a is not type(None)]
        if len(non_none) == 1:
            return non_none[0]
    return hint


def _comment(text: str, indent: str = "") -> list[str]:
    lines = []
    for paragraph in text.split("\n"):
        wrapped = textwrap.wrap(paragraph, width=96 - len(indent)) or [""]
        lines.extend(f"{indent}# {line}".rstrip() for line in wrapped)
    return lines


def _render_table(field: dataclasses.Field, hint: Any, name: str) -> list[str]:
    hint = _strip_optional(hint)
    doc = field.metadata.get("doc", "")
    origin = get_origin(hint)
    lines = _comment(doc) if doc else []
    if dataclasses.is_dataclass(hint):
        lines.append(f"[{name}]")
        lines.extend(_render_body(hint, name, commented=False))
        return lines
    if origin is tuple:
        item_cls = get_args(hint)[0]
        lines.append(f"# Repeat this [[{name}]] block once per entry. Example:")
        lines.append(f"# [[{name}]]")
        lines.extend(_render_body(item_cls, name, commented=True))
        return lines
    # dict[str, dataclass]
    item_cls = get_args(hint)[1]
    lines.append(f"# One [{name}.NAME] table per entry. Example:")
    lines.append(f"# [{name}.example]")
    lines.extend(_render_body(item_cls, f"{name}.example", commented=True))
    return lines


def _render_body(cls: type, name: str, *, commented: bool) -> list[str]:
    scalars, tables = _split(cls)
    prefix = "# " if commented else ""
    lines: list[str] = []
    for field, hint in scalars:
        lines.extend(_render_key(field, hint, prefix_comment=prefix))
    for field, hint in tables:
        lines.append("")
        sub = _render_table(field, hint, f"{name}.{field.name}")
        lines.extend(f"# {line}" if commented and not line.startswith("#") else line
                     for line in sub)
    return lines


def _render_key(field: dataclasses.Field, hint: Any, *, prefix_comment: str) -> list[str]:
    doc = field.metadata.get("doc", "")
    lines = _comment(doc) if doc else []
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = dataclasses.MISSING
    example = field.metadata.get("example", dataclasses.MISSING)
    if default is dataclasses.MISSING:
        shown = example if example is not dataclasses.MISSING else "..."
        lines.append(f"# {field.name} = {_toml_value(shown)}   (required)")
    elif default is None or (default in ((), "") and example is not dataclasses.MISSING):
        shown = example if example is not dataclasses.MISSING else "..."
        lines.append(f"# {field.name} = {_toml_value(shown)}")
    else:
        lines.append(f"{prefix_comment}{field.name} = {_toml_value(default)}")
    return lines


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, pathlib.Path):
        return _toml_string(str(value))
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict | types.MappingProxyType):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot render {value!r} as TOML")


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
