"""jbcd under a make-believe systemd: readiness, watchdog, reload and stop notifications."""

from __future__ import annotations

import itertools
import signal
import socket
import statistics
import threading
import time

import pytest

pytestmark = pytest.mark.integration

WATCHDOG_USEC = 300_000  # systemd would expect a ping at least every 0.3 s; we ping every 0.1 s


class FakeSystemd:
    """Receives sd_notify datagrams and timestamps them, like PID 1 would."""

    def __init__(self, path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self.on_ready = None
        self.ready_check: bool | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            for line in data.splitlines():
                if line == "READY=1" and self.on_ready and self.ready_check is None:
                    self.ready_check = self.on_ready()
                self.messages.append((time.monotonic(), line))

    def times_of(self, line: str) -> list[float]:
        return [t for t, m in self.messages if m == line]

    def wait_for(self, line: str, timeout: float = 15.0, after: float = 0.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, m in list(self.messages):
                if m == line and t >= after:
                    return t
            time.sleep(0.01)
        raise AssertionError(f"{line!r} never arrived; got {[m for _, m in self.messages]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


def control_socket_accepts(path) -> bool:
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def test_ready_watchdog_stall_reload_and_stop(systemd, daemon_factory):
    daemon = daemon_factory("[daemon]\ndebug_commands = true\n",
                            env={"NOTIFY_SOCKET": str(systemd.path),
                                 "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    systemd.on_ready = lambda: control_socket_accepts(daemon.socket_path)
    daemon.start(wait=False)

    ready_at = systemd.wait_for("READY=1")
    assert systemd.ready_check is True, "READY=1 came before the control socket accepted"
    # built-in defaults: the WAN monitor owns the state and says it has nothing to watch
    assert any(m.startswith("STATUS=unconfigured") for _, m in systemd.messages)

    # Watchdog pings every WATCHDOG_USEC/3 while the loop is healthy.
    time.sleep(1.5)
    pings = [t for t in systemd.times_of("WATCHDOG=1") if t > ready_at]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 8, pings
    assert 0.07 < statistics.median(gaps) < 0.2
    assert max(gaps) < WATCHDOG_USEC / 1e6, "a ping came too late for systemd"

    # A deliberately stalled loop must stop the pings for the whole stall.
    stall_started = time.monotonic()
    assert daemon.call("debug.stall", {"seconds": 1.2}) == {"stalled_s": 1.2}
    stall_ended = time.monotonic()
    during = [t for t in systemd.times_of("WATCHDOG=1") if stall_started + 0.15 < t <
              stall_ended - 0.15]
    assert during == [], "watchdog pinged while the event loop was stuck"
    resumed = systemd.wait_for("WATCHDOG=1", timeout=2, after=stall_ended)
    assert resumed - stall_ended < 0.5

    # SIGHUP: RELOADING=1, then READY=1 again.
    reload_sent = time.monotonic()
    daemon.signal(signal.SIGHUP)
    reloading = systemd.wait_for("RELOADING=1", after=reload_sent)
    assert systemd.wait_for("READY=1", after=reloading) >= reloading

    # SIGTERM: STOPPING=1 and a clean exit 0.
    stop_sent = time.monotonic()
    assert daemon.stop() == 0
    assert systemd.wait_for("STOPPING=1", timeout=1, after=stop_sent)
    assert "Traceback" not in daemon.log()


def test_no_watchdog_pings_without_watchdog_usec(systemd, daemon_factory):
    daemon = daemon_factory(env={"NOTIFY_SOCKET": str(systemd.path)}).start(wait=False)
    systemd.wait_for("READY=1")
    time.sleep(0.5)
    assert systemd.times_of("WATCHDOG=1") == []
    assert daemon.stop() == 0


def test_watchdog_meant_for_another_process_is_ignored(systemd, daemon_factory):
    daemon = daemon_factory(env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "300000",
                                 "WATCHDOG_PID": "1"}).start(wait=False)
    systemd.wait_for("READY=1")
    time.sleep(0.5)
    assert systemd.times_of("WATCHDOG=1") == []
    assert daemon.stop() == 0
