"""The real jbcd with a part that cannot start: it runs anyway (READY=1, 'jbc status', the
watchdog), shows that part failed with the reason and what to do, keeps the other parts
serving, and starts the part once its cause is gone, within the backoff (or at once on a
reload)."""

from __future__ import annotations

import contextlib
import json
import pathlib
import signal
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


def sip_site(tmp_path: pathlib.Path, udp_port: int, site: dict = SITE, **extra: str) -> str:
    directory = tmp_path / "directory.json"
    directory.write_text(json.dumps(site))
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


def gateway_site(tmp_path: pathlib.Path, sip_port: int, gateway_port: int) -> str:
    site = {**SITE, "emergency": {"numbers": ["911"], "notify_extensions": ["102"]}}
    return sip_site(tmp_path, sip_port, site, gateway_uri=f'"sip:127.0.0.1:{gateway_port}"') + \
        "\n[gateway]\nenabled = true\n"


def final_answer(phone: HandsetProcess, timeout: float = 10.0) -> tuple[dict, float]:
    """The call's end as the phone saw it, and how long after dialling."""
    dialled = time.time()
    ended = phone.call_state("DISCONNECTED", timeout=timeout)
    return ended, ended["t"] - dialled


def test_gateway_cannot_start_emergency_calls_get_an_answer_at_once_and_local_calls_go_on(
        tmp_path):
    """The gateway's SIP port is taken: jbcd runs; 911 from a handset is answered at once (500
    with Retry-After, never a 503 that would make the phone shun the appliance), recorded
    as a failed emergency call, alerted to the cloud (here: journalled as not alerted, as
    sync is not configured) and told on site by MESSAGE; calls between handsets go on; once
    the port is free the gateway starts within the backoff and emergency calls reach it
    again."""
    other_program = held_port()
    gateway_port = other_program.getsockname()[1]
    with contextlib.closing(held_port()) as probe:
        sip_port = probe.getsockname()[1]
    try:
        with running(tmp_path / "jbcd", gateway_site(tmp_path, sip_port, gateway_port)) \
                as daemon:
            gateway = wait_for(lambda: (row := subsystem(daemon, "gateway"))["level"]
                               not in ("starting", "disabled") and row, 10,
                               "the gateway's first start", daemon)
            assert gateway["level"] == "failed", gateway
            assert "SIP media agent failed to start" in gateway["summary"]
            assert subsystem(daemon, "sip")["level"] == "ok"
            server = f"127.0.0.1:{sip_port}"
            with HandsetProcess(user="101", password=PASSWORDS["101"], bind="127.0.0.1",
                                server=server) as alice, \
                    HandsetProcess(user="102", password=PASSWORDS["102"], bind="127.0.0.1",
                                   server=server, auto="answer") as bob:
                alice.registered()
                bob.registered()
                alice.send("call", uri=f"sip:911@127.0.0.1:{sip_port}")
                ended, after_s = final_answer(alice)
                assert ended["code"] == 500 and ended["reason"] == "Trunk Gateway Down", ended
                assert after_s < 2.0, f"the phone waited {after_s:.2f} s for its answer"
                [refused] = wait_for(lambda: journal(daemon, "sip", "call-refused"), 5,
                                     "call-refused journalled", daemon)
                details = refused["details"]
                assert details["emergency"] and details["extension"] == "101"
                assert details["verified_by"].startswith("registration")
                [record] = [c for c in daemon.call("sip.calls", {"recent": 5})["recent"]
                            if c["id"] == details["call"]]
                assert record["emergency"] and record["result"] == "failed", record
                alerted = wait_for(lambda: [e for e in journal(
                    daemon, "sync", "emergency-alert-failed")
                    if details["call"] in e["reason"]], 5, "the cloud alert tried", daemon)
                assert "sync is not configured" in alerted[0]["reason"]
                # on site, bob's phone (a notify extension) got the MESSAGE and took it
                [notified] = wait_for(lambda: journal(daemon, "sip", "emergency-notified"), 5,
                                      "the on-site MESSAGE answered", daemon)
                assert notified["details"]["extension"] == "102", notified

                # the phone keeps using the appliance: a local call right after
                alice.send("call", uri=f"sip:102@127.0.0.1:{sip_port}")
                bob.expect("incoming")
                alice.call_state("CONFIRMED")
                alice.send("hangup")
                alice.call_state("DISCONNECTED")

                other_program.close()
                wait_for(lambda: subsystem(daemon, "gateway")["level"] in ("ok", "warning"),
                         RESTART_MAX_S + 10, "gateway up after its port was freed", daemon)
                assert journal(daemon, "gateway", "start-recovered")
                alice.send("call", uri=f"sip:911@127.0.0.1:{sip_port}")
                ended, _ = final_answer(alice, timeout=40)
                # no trunk configured: the gateway's own answer now, not the proxy's refusal
                assert ended["reason"] != "Trunk Gateway Down", ended
                assert wait_for(lambda: journal(daemon, "gateway", "emergency-call"), 5,
                                "the gateway saw the emergency call", daemon)
                assert len(journal(daemon, "sip", "call-refused")) == 1
    finally:
        other_program.close()


def metrics_site(port: int) -> str:
    return f"""
[metrics]
enabled = true
listen_address = "127.0.0.1"
port = {port}

[daemon]
restart_min_s = 60
restart_max_s = 60
"""


def test_metrics_port_taken_jbcd_serves_and_a_reload_starts_metrics_at_once(tmp_path):
    """The metrics port is taken: jbcd runs, 'jbc status' names the part and the port; the
    next attempt is a minute away, but a reload with a free port starts it at once."""
    other_program = held_port(socket.SOCK_STREAM)
    port = other_program.getsockname()[1]
    try:
        with running(tmp_path / "jbcd", metrics_site(port)) as daemon:
            metrics = wait_for(lambda: (row := subsystem(daemon, "metrics"))["level"]
                               not in ("starting", "disabled") and row, 10,
                               "the metrics endpoint's first start", daemon)
            assert metrics["level"] == "failed", metrics
            assert str(port) in metrics["summary"], metrics
            [failed] = journal(daemon, "metrics", "start-failed")
            assert "trying again in 60 s" in failed["reason"], failed
            assert subsystem(daemon, "control")["level"] == "ok"
            status = daemon.cli("status")
            assert status.returncode == 1 and "metrics" in status.stdout

            with contextlib.closing(held_port(socket.SOCK_STREAM)) as probe:
                free = probe.getsockname()[1]
            daemon.write_config(metrics_site(free))
            reloaded_at = time.monotonic()
            daemon.signal(signal.SIGHUP)
            wait_for(lambda: subsystem(daemon, "metrics")["level"] == "ok", 10,
                     "metrics up after the reload", daemon)
            assert time.monotonic() - reloaded_at < 10  # not the 60 s backoff
            assert journal(daemon, "metrics", "start-recovered")
            with socket.create_connection(("127.0.0.1", free), timeout=5) as scrape:
                scrape.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := scrape.recv(65536):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 200") and b"jbc_" in reply
    finally:
        other_program.close()
