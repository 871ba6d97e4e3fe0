"""Talking to systemd: readiness, status, reload, stopping, and a watchdog that tells the truth.

All sd_notify traffic goes through :class:`ServiceNotifier`, a thin wrapper over ``sdnotify``.
Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the daemon runs the same anywhere.

The watchdog ping is sent from a task on the event loop, and only when that task woke up
roughly on time: a loop stuck in blocking code cannot run the task, and a loop that was stuck
and just recovered skips the late ping. systemd then sees silence and restarts us, which is
exactly what should happen to a phone appliance whose loop has stopped making progress.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping

import sdnotify

log = logging.getLogger(__name__)


class ServiceNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        self.watchdog_interval_s = _watchdog_interval(environ)
        self.pings_sent = 0
        self.pings_skipped = 0

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={_one_line(status)}")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    async def run_watchdog(self, healthy: Callable[[], bool] = lambda: True) -> None:
        """Ping every WATCHDOG_USEC/3 while the loop runs on time and ``healthy()`` holds."""
        interval = self.watchdog_interval_s
        if interval is None:
            return
        loop = asyncio.get_running_loop()
        log.debug("systemd watchdog: pinging every %.3f s", interval)
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            lateness = loop.time() - due
            if lateness < interval and healthy():
                self._send("WATCHDOG=1")
                self.pings_sent += 1
            else:
                self.pings_skipped += 1
                log.warning("watchdog ping skipped: the event loop was %.2f s late", lateness)


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is meant for another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
        return None
    if value <= 0:
        return None
    return value / 3 / 1_000_000


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
