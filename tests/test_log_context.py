"""Log context prints. A plain ``logging.LoggerAdapter`` only puts its context in the record's
attributes, which our format (``%(name)s: %(message)s``) never shows: every adapter in the
tree must be one that writes its context into the line (gateway CallLog, drivers TrunkLog)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted(p for top in ("appliance", "drivers", "hw-testbench")
                 for p in (ROOT / top).rglob("*.py") if ".cache" not in p.parts)


def is_adapter(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "LoggerAdapter") or (
        isinstance(node, ast.Name) and node.id == "LoggerAdapter")


def test_no_plain_logger_adapter_is_made():
    plain = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in SOURCES
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and is_adapter(node.func)]
    assert plain == []


def test_every_adapter_class_writes_its_context_into_the_line():
    silent = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(is_adapter(b) for b in node.bases):
                methods = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
                if not methods & {"process", "log"}:
                    silent.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert silent == []
