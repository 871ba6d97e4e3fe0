"""The gateway package's shape: the call cores and the other pure parts read no clock, await
nothing and do no I/O; every exception the package defines is a GatewayError."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib

import pytest

import appliance.gateway
from appliance.gateway.errors import GatewayError

PACKAGE = pathlib.Path(appliance.gateway.__file__).parent
CORES = ["callcore.py", "outbound.py", "inbound.py", "notification.py", "testcall.py",
         "policy.py", "sipmsg.py", "playout.py", "echo.py", "tones.py", "leg_events.py"]
"""Pure: events and ``now`` in, actions (or frames) out."""
IO_MODULES = {"asyncio", "socket", "ssl", "time", "threading", "sqlite3", "selectors",
              "subprocess", "pjsua2"}


def tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / module).read_text())


def imported_modules(module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_list_of_cores_names_real_modules():
    assert [m for m in CORES if not (PACKAGE / m).exists()] == []


@pytest.mark.parametrize("module", CORES)
def test_cores_import_nothing_that_does_io_or_reads_a_clock(module):
    assert imported_modules(module) & IO_MODULES == set()


@pytest.mark.parametrize("module", CORES)
def test_cores_await_nothing(module):
    awaits = [type(node).__name__ for node in ast.walk(tree(module))
              if isinstance(node, ast.Await | ast.AsyncFunctionDef | ast.AsyncWith
                            | ast.AsyncFor)]
    assert awaits == []


def test_every_exception_the_package_defines_is_a_gateway_error():
    for path in sorted(PACKAGE.glob("*.py")):
        module = importlib.import_module(f"appliance.gateway.{path.stem}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                assert issubclass(cls, GatewayError), cls
