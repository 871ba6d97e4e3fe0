"""The real jbcd with a part that cannot start: it runs anyway (READY=1, 'jbc status', the
watchdog), shows that part failed with the reason and what to do, keeps the other parts
serving, and starts the part once its cause is gone, within the backoff (or at once on a
reload)."""

from __future__ import annotations

import contextlib
import json
import pathlib
import socket
import time

import pytest

from jbcbench.daemon import DaemonProcess
from jbcbench.handset import HandsetProcess
from jbcbench.notifysocket import NotifySocket
from jbcbench.sipnet import PASSWORDS, SITE

pytestmark = pytest.mark.integration

RESTART_MAX_S = 1.0
BACKOFF = f"""
[daemon]
restart_min_s = 0.25
restart_max_s = {RESTART_MAX_S}
"""


def held_port(kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A loopback port held by "another program" (this test)."""
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


def subsystem(daemon: DaemonProcess, name: str) -> dict:
    return next(s for s in daemon.call("status")["subsystems"] if s["name"] == name)


def wait_for(predicate, timeout_s: float, what: str, daemon: DaemonProcess):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s} s:\n{daemon.log()[-3000:]}")
        time.sleep(0.05)


def journal(daemon: DaemonProcess, subsystem: str, kind: str) -> list[dict]:
    events = daemon.call("events", {"subsystem": subsystem, "limit": 1000})["events"]
    return [e for e in events if e["kind"] == kind]


@contextlib.contextmanager
def running(workdir: pathlib.Path, config: str, notify: NotifySocket | None = None):
    workdir.mkdir(parents=True, exist_ok=True)
    daemon = DaemonProcess(workdir, config, env=notify.env() if notify else None)
    try:
        yield daemon.start(timeout_s=30)
    finally:
        assert daemon.stop() == 0, daemon.log()[-3000:]


def sip_site(tmp_path: pathlib.Path, udp_port: int, **extra: str) -> str:
    directory = tmp_path / "directory.json"
    directory.write_text(json.dumps(SITE))
    lines = "".join(f"{key} = {value}\n" for key, value in extra.items())
    return f"""
[directory]
file = "{directory}"

[sip]
enabled = true
listen_address = "127.0.0.1"
udp_port = {udp_port}
tcp_port = 0
tls_port = 0
assume_wan_state = "outage"
{lines}
{BACKOFF}"""


def test_sip_port_taken_at_start_jbcd_runs_and_sip_comes_up_once_the_port_is_free(tmp_path):
    other_program = held_port()
    port = other_program.getsockname()[1]
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        with running(tmp_path / "jbcd", sip_site(tmp_path, port), notify) as daemon:
            notify.wait_for("READY=1")  # systemd sees it up: no restart loop
            sip = subsystem(daemon, "sip")
            assert sip["level"] == "failed", sip
            assert f"udp 127.0.0.1:{port} is in use by another program" in sip["summary"]
            assert f"ss -lnp sport = :{port}" in sip["summary"]  # what to do
            assert subsystem(daemon, "control")["level"] == "ok"
            [failed] = journal(daemon, "sip", "start-failed")
            assert "is in use by another program" in failed["reason"]
            # the technician's view: status exits 1 and names sip; phones says why
            status = daemon.cli("status")
            assert status.returncode == 1 and "sip" in status.stdout
            assert "is in use by another" in " ".join(status.stdout.split())
            phones = daemon.cli("phones")
            assert phones.returncode == 1
            assert "is in use by another program" in phones.stdout + phones.stderr

            other_program.close()
            freed = time.monotonic()
            wait_for(lambda: subsystem(daemon, "sip")["level"] in ("ok", "warning")
                     and subsystem(daemon, "sip")["details"].get("ports"),
                     RESTART_MAX_S + 5, "SIP up after the port was freed", daemon)
            up_after_s = time.monotonic() - freed
            assert up_after_s < RESTART_MAX_S + 5
            assert journal(daemon, "sip", "start-recovered")
            with HandsetProcess(user="101", password=PASSWORDS["101"], bind="127.0.0.1",
                                server=f"127.0.0.1:{port}") as alice:
                alice.registered()
                phones = daemon.call("sip.phones")["phones"]
                assert [p["device"] for p in phones] == ["alice-desk"]
            assert subsystem(daemon, "sip")["level"] == "ok"  # nothing left to attend to
    finally:
        other_program.close()
        notify.close()
