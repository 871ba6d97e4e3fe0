"""The `integration` mark means what pyproject.toml says: a pytest plugin (tests/conftest.py
loads it) that fails a test doing real I/O without the mark.

Real I/O is binding or connecting a network socket (AF_INET/AF_INET6, netlink, packet),
binding a Unix socket (a server), opening a pseudo-terminal, or starting a process
(subprocess, fork, exec). A test that does any of these is an integration test; unmarked, it
fails here, so that ``pytest -m "not integration"`` stays the fast pure layer. Seen through
Python's audit hooks (``sys.addaudithook``), so it catches every Python-level socket and
process whoever opens them, fixtures included; pjsua2's sockets, opened in C, are not seen
(its tests are integration anyway). Threads are not judged: a pure test may use one (e.g. to
bound a call that could hang). A Unix-socket client alone (a ``jbc`` run against no daemon) is
not real I/O: whatever it talks to is.

``JBC_REAL_IO_REPORT=FILE`` writes, for every test run, whether it is marked, the first real I/O
it did and how many threads it started (JSON): integration tests listed there with no real I/O
and no threads are candidates for the fast layer.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import sys
import threading

import pytest

NETWORK_FAMILIES = {socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET}
SOCKET_EVENTS = {"socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg"}
PROCESS_EVENTS = {"subprocess.Popen", "os.posix_spawn", "os.fork", "os.forkpty", "os.system",
                  "os.exec", "pty.spawn"}


def real_io(event: str, args: tuple) -> str | None:
    """What an audit event says the code did, if it is real I/O; else None."""
    if event in SOCKET_EVENTS:
        family = args[0].family
        if family in NETWORK_FAMILIES or (family == socket.AF_UNIX and event == "socket.bind"):
            return f"{event} {socket.AddressFamily(family).name} {args[1]!r}"
    elif event in PROCESS_EVENTS:
        return f"{event} {str(args[0])[:120]}"
    return None


class RealIoWatch:
    """The test being watched and the first real I/O seen while it runs."""

    def __init__(self, report_path: str | None) -> None:
        self.test: str | None = None
        self.seen: str | None = None
        self.threads = 0
        self.report_path = report_path
        self.report: dict[str, dict] = {}

    def audit(self, event: str, args: tuple) -> None:
        if self.test is None or self.seen is not None:
            return
        with contextlib.suppress(Exception):  # a hook must never break what it watches
            self.seen = real_io(event, args)

    def opened_pty(self) -> None:
        if self.test is not None and self.seen is None:
            self.seen = "os.openpty"

    def started_thread(self) -> None:
        if self.test is not None:
            self.threads += 1


_watch = RealIoWatch(os.environ.get("JBC_REAL_IO_REPORT"))
sys.addaudithook(_watch.audit)
_openpty = os.openpty
_thread_start = threading.Thread.start


def _watched_openpty() -> tuple[int, int]:
    _watch.opened_pty()
    return _openpty()


def _counted_start(thread: threading.Thread) -> None:
    _watch.started_thread()
    _thread_start(thread)


os.openpty = _watched_openpty  # os.openpty raises no audit event
if _watch.report_path:
    threading.Thread.start = _counted_start  # type: ignore[method-assign]


def _integration(item: pytest.Item) -> bool:
    return item.get_closest_marker("integration") is not None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    watched = bool(_watch.report_path) or not _integration(item)
    _watch.test, _watch.seen, _watch.threads = (item.nodeid if watched else None), None, 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    try:
        result = yield
    finally:
        test, seen = _watch.test, _watch.seen
        _watch.test = None
        if test is not None and _watch.report_path:
            _watch.report[test] = {"integration": _integration(item), "real_io": seen,
                                   "threads": _watch.threads}
    if seen is not None and not _integration(item):
        pytest.fail(f"this test does real I/O ({seen}) but is not marked integration: mark it "
                    "@pytest.mark.integration (see pyproject.toml) or keep it pure",
                    pytrace=False)
    return result


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _watch.report_path and _watch.report:
        pathlib.Path(_watch.report_path).write_text(json.dumps(_watch.report, indent=1))
