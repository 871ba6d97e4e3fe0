"""Stands in for systemd's notify socket: receives jbcd's sd_notify datagrams (READY=1,
WATCHDOG=1, STATUS=...), so a test can run jbcd as systemd would with WatchdogSec set."""

from __future__ import annotations

import pathlib
import socket
import threading
import time


class NotifySocket:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._arrived = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)
        self._thread.start()

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        """What systemd puts in the service's environment."""
        env = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            except OSError:
                return
            with self._arrived:
                self.messages += [(time.monotonic(), line) for line in data.splitlines()]
                self._arrived.notify_all()

    def wait_for(self, line: str, timeout_s: float = 15.0) -> float:
        with self._arrived:
            found = self._arrived.wait_for(
                lambda: any(m == line for _, m in self.messages), timeout_s)
            if not found:
                raise TimeoutError(f"{line!r} never arrived; got "
                                   f"{[m for _, m in self.messages][-10:]}")
            return next(t for t, m in self.messages if m == line)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
