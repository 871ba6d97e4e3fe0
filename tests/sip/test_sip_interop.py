"""Real SIP clients against the real jbcd: pjsua2 handsets (each in its own process), and
sipsak and baresip from Debian. Everything on loopback, STUN and ICE off."""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import socket
import subprocess
import time

import pytest

from jbcbench.handset import HandsetProcess
from jbcbench.sipdaemon import sip_daemon, sip_ports
from jbcbench.sipnet import SITE
from jbcbench.tlscerts import make_tls_files

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    """One jbcd for the module, on UDP, TCP and TLS, offering SHA-256 before MD5."""
    workdir = tmp_path_factory.mktemp("sip-interop")
    tls = make_tls_files(workdir / "tls")
    daemon = sip_daemon(workdir / "jbcd", SITE, transports=["udp", "tcp", "tls"],
                        tls_certificate=tls.certificate, tls_private_key=tls.private_key,
                        digest_algorithms=["SHA-256", "MD5"]).start()
    try:
        daemon.ports = sip_ports(daemon)
        daemon.tls = tls
        yield daemon
    finally:
        daemon.stop()


@contextlib.contextmanager
def handsets(appliance, *specs):
    """Start handsets (user, password, bind address, options) and stop them afterwards."""
    started = []
    try:
        for user, password, bind, options in specs:
            transport = options.pop("transport", "udp")
            if transport == "tls":
                options.setdefault("ca", str(appliance.tls.ca))
            started.append(HandsetProcess(
                user=user, password=password, bind=bind, transport=transport,
                server=f"127.0.0.1:{appliance.ports[transport]}", **options))
        for handset in started:
            handset.registered()
        yield started
    finally:
        for handset in started:
            handset.close()


def phones_cli(appliance) -> str:
    result = appliance.cli("phones")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_pjsua2_handsets_register_with_digest_and_show_in_jbc_phones(appliance):
    with handsets(appliance, ("101", "alice-pw", "127.30.0.1", {}),
                  ("102", "bob-pw", "127.30.0.2", {"transport": "tcp"})):
        text = phones_cli(appliance)
        assert "serving handsets locally (WAN outage)" in text
        assert "101" in text and "127.30.0.1:" in text and "UDP" in text
        assert "102" in text and "127.30.0.2:" in text and "TCP" in text
        assert "jbcbench-handset/101" in text
        assert all(len(line) <= 80 for line in text.splitlines())
        rows = json.loads(appliance.cli("--json", "phones").stdout)["phones"]
        assert {r["aor"] for r in rows} >= {"101", "102"}


def test_call_with_direct_rtp_hold_and_hang_up_from_either_side(appliance):
    with handsets(appliance, ("101", "alice-pw", "127.30.1.1", {}),
                  ("102", "bob-pw", "127.30.1.2", {"auto": "answer"})) as (alice, bob):
        alice.send("call", uri="sip:102@127.0.0.1")
        bob.expect("incoming")
        alice.call_state("CONFIRMED")
        bob.call_state("CONFIRMED")
        time.sleep(0.8)
        alice_stats, bob_stats = alice.stats(), bob.stats()
        # Media flows handset to handset: each sees the other's address, never the proxy.
        assert alice_stats["remote_rtp"].startswith("127.30.1.2:")
        assert bob_stats["remote_rtp"].startswith("127.30.1.1:")
        assert alice_stats["rx"] > 10 and bob_stats["rx"] > 10
        calls = json.loads(appliance.cli("--json", "calls").stdout)["calls"]
        assert [(c["caller"], c["callee"], c["state"]) for c in calls] == [
            ("101", "102", "answered")]

        alice.send("hold")
        alice.expect("media", lambda e: e["status"] == "local-hold")
        bob.expect("media", lambda e: e["status"] == "remote-hold")
        assert "on hold" in appliance.cli("calls").stdout
        alice.send("unhold")
        alice.expect("media", lambda e: e["status"] == "active")
        bob.send("hangup")  # the callee hangs up
        alice.call_state("DISCONNECTED")

        alice.send("call", uri="sip:102@127.0.0.1")
        alice.call_state("CONFIRMED")
        alice.send("hangup")  # now the caller does
        bob.call_state("DISCONNECTED")
        time.sleep(0.3)
        assert "no calls in progress" in appliance.cli("calls").stdout
        recent = json.loads(appliance.cli("--json", "calls", "--recent", "2").stdout)["recent"]
        assert [r["result"] for r in recent] == ["answered", "answered"]


def test_cancel_before_answer(appliance):
    with handsets(appliance, ("101", "alice-pw", "127.30.2.1", {}),
                  ("102", "bob-pw", "127.30.2.2", {"auto": "ring"})) as (alice, bob):
        alice.send("call", uri="sip:102@127.0.0.1")
        bob.expect("incoming")
        alice.call_state("EARLY")
        alice.send("hangup")  # CANCEL while it rings
        assert alice.call_state("DISCONNECTED")["code"] == 487
        bob.call_state("DISCONNECTED")


def test_busy(appliance):
    with handsets(appliance, ("101", "alice-pw", "127.30.3.1", {}),
                  ("102", "bob-pw", "127.30.3.2", {"auto": "busy"})) as (alice, _):
        alice.send("call", uri="sip:102@127.0.0.1")
        assert alice.call_state("DISCONNECTED")["code"] == 486


def test_unknown_and_unregistered_numbers(appliance):
    with handsets(appliance, ("101", "alice-pw", "127.30.4.1", {})) as (alice,):
        alice.send("call", uri="sip:199@127.0.0.1")
        assert alice.call_state("DISCONNECTED")["code"] == 404
        alice.send("call", uri="sip:106@127.0.0.1")
        assert alice.call_state("DISCONNECTED")["code"] == 480


def test_tls_registration_and_a_call_over_tls(appliance):
    with handsets(appliance, ("101", "alice-pw", "127.0.0.1", {"transport": "tls"}),
                  ("102", "bob-pw", "127.0.0.1", {"transport": "tls", "auto": "answer"})
                  ) as (alice, bob):
        rows = json.loads(appliance.cli("--json", "phones").stdout)["phones"]
        assert {r["transport"] for r in rows if r["user_agent"].startswith("jbcbench")} \
            >= {"tls"}
        alice.send("call", uri="sip:102@127.0.0.1")
        alice.call_state("CONFIRMED")
        time.sleep(0.5)
        assert alice.stats()["rx"] > 0
        alice.send("hangup")
        bob.call_state("DISCONNECTED")


# -- Debian clients ---------------------------------------------------------------------------

needs_sipsak = pytest.mark.skipif(shutil.which("sipsak") is None,
                                  reason="sipsak is not installed (apt-get install sipsak)")
needs_baresip = pytest.mark.skipif(shutil.which("baresip") is None,
                                   reason="baresip is not installed (apt-get install baresip)")


@pytest.fixture(scope="module")
def md5_appliance(tmp_path_factory):
    """jbcd with the default digest settings (MD5 only), as most sites run it."""
    daemon = sip_daemon(tmp_path_factory.mktemp("sip-debian"), SITE).start()
    try:
        daemon.ports = sip_ports(daemon)
        yield daemon
    finally:
        daemon.stop()


@needs_sipsak
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipsak_registers_over_udp_and_tcp_and_a_wrong_password_is_refused(md5_appliance,
                                                                           transport):
    port = md5_appliance.ports[transport]

    def sipsak(password: str, source: str) -> int:
        return subprocess.run(
            ["sipsak", "-U", "-s", f"sip:103@127.0.0.1:{port}", "-u", "103", "-a", password,
             "-x", "60", "-E", transport, "--local-ip", source],
            capture_output=True, timeout=30).returncode

    assert sipsak("carol-pw", "127.31.0.1") == 0
    assert sipsak("wrong", "127.31.0.2") == 2
    rows = json.loads(md5_appliance.cli("--json", "phones").stdout)["phones"]
    assert any(r["aor"] == "103" and r["transport"] == transport and
               r["user_agent"].startswith("sipsak") for r in rows)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@needs_baresip
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_baresip_registers_over_udp_and_tcp(md5_appliance, transport, tmp_path):
    port = _free_port()
    (tmp_path / "config").write_text(
        "poll_method epoll\n"
        f"sip_listen 127.0.0.1:{port}\n"
        "net_interface 127.0.0.1\n"
        "audio_player aubridge,nil\naudio_source ausine,440\n"
        "module_path /usr/lib/baresip/modules\n"
        "module g711.so\nmodule ausine.so\nmodule aubridge.so\n"
        "module_app account.so\n")
    tail = "" if transport == "udp" else ";transport=tcp"
    (tmp_path / "accounts").write_text(
        f'<sip:104@127.0.0.1{tail}>;auth_pass=dave-pw;'
        f'outbound="sip:127.0.0.1:{md5_appliance.ports[transport]}{tail}";regint=60\n')
    process = subprocess.Popen(["baresip", "-f", str(tmp_path)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        found = False
        while not found and time.monotonic() < deadline:
            rows = json.loads(md5_appliance.cli("--json", "phones").stdout)["phones"]
            found = any(r["aor"] == "104" and r["transport"] == transport and
                        r["user_agent"].startswith("baresip") for r in rows)
            time.sleep(0.2)
        assert found, pathlib.Path(md5_appliance.log_path).read_text()[-2000:]
    finally:
        process.terminate()
        try:
            process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_restart_mid_outage_keeps_every_phone_reachable(tmp_path):
    udp = _free_port()
    daemon = sip_daemon(tmp_path / "jbcd", SITE, transports=["udp"], udp_port=udp)
    daemon.start()
    try:
        sip_ports(daemon)
        bob = HandsetProcess(user="102", password="bob-pw", bind="127.30.9.2",
                             server=f"127.0.0.1:{udp}", auto="answer", expires=300)
        try:
            bob.registered()
            daemon.stop()
            # No WAN verdict yet after the restart: the persisted outage decides.
            daemon.config_path.write_text(daemon.config_path.read_text().replace(
                'assume_wan_state = "outage"', 'assume_wan_state = "starting"'))
            daemon.start()
            sip_ports(daemon)
            assert "serving handsets locally" in phones_cli(daemon)
            with HandsetProcess(user="101", password="alice-pw", bind="127.30.9.1",
                                server=f"127.0.0.1:{udp}") as alice:
                alice.registered()
                alice.send("call", uri="sip:102@127.0.0.1")  # bob has not re-registered
                alice.call_state("CONFIRMED")
                alice.send("hangup")
                bob.call_state("DISCONNECTED")
        finally:
            bob.close()
    finally:
        daemon.stop()
