"""The SIP package's shape: pure cores, one output discipline, one error tree, no WAN edge."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re

import pytest

import appliance.sip
from appliance.sip.config import SipConfig
from appliance.sip.errors import SipError
from appliance.sip.service import FD_RESERVE
from jbcbench.sipnet import make_core_net

PACKAGE = pathlib.Path(appliance.sip.__file__).parent
SHELL = {"service.py", "transport.py", "store.py", "config.py", "cloudlink.py",
         "fastfail.py"}
"""The modules allowed to do I/O (sockets, clocks, the database) or read config."""
MODULES = sorted(p.name for p in PACKAGE.glob("*.py"))


def imported_modules(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", MODULES)
def test_the_sip_package_does_not_depend_on_the_wan_package(module):
    assert not [m for m in imported_modules(PACKAGE / module) if m.startswith("appliance.wan")]


@pytest.mark.parametrize("module", [m for m in MODULES if m not in SHELL])
def test_cores_do_no_io_and_read_no_clock(module):
    forbidden = {"asyncio", "socket", "ssl", "time", "threading", "sqlite3", "selectors"}
    assert not imported_modules(PACKAGE / module) & forbidden


def test_every_error_the_package_defines_is_a_sip_error():
    for name in MODULES:
        module = importlib.import_module(f"appliance.sip.{name[:-3]}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                assert issubclass(cls, SipError), cls


def test_the_core_keeps_no_public_buffers_and_hands_out_what_it_produced():
    net = make_core_net()
    core = net.core
    for owner in (core, core.layer, core.registrations, core.proxy, core.guard):
        public = {n: v for n, v in vars(owner).items() if not n.startswith("_")} \
            if hasattr(owner, "__dict__") else {}
        assert not [n for n, v in public.items() if isinstance(v, list | set)], owner
    net.phone("101", "10.0.0.1").register()
    assert core.take_transmits() == [] and core.take_notices() == []  # net.pump drained them
    changes = core.take_changes()
    assert changes.aors == {"101"} and not core.take_changes()


def test_the_cores_deadline_always_includes_housekeeping():
    net = make_core_net()
    for _ in range(3):
        deadline = net.core.next_deadline()
        assert net.now < deadline <= net.now + 5.0
        net.advance(deadline - net.now)


def test_the_unit_gives_jbcd_room_for_every_sip_connection_it_may_accept():
    unit = (PACKAGE.parents[1] / "systemd" / "jbcd.service").read_text()
    match = re.search(r"^LimitNOFILE=(\d+)$", unit, re.MULTILINE)
    assert match, "jbcd.service must set LimitNOFILE (systemd's default soft limit is 1024)"
    assert int(match[1]) >= SipConfig().max_connections + FD_RESERVE
