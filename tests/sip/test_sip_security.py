"""Abuse resistance against the real jbcd: no extension enumeration, lockouts that engage and
expire, and a flooding source that cannot stop a legitimate handset."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import time

import pytest

from jbcbench import sipua
from jbcbench.daemon import DaemonProcess
from jbcbench.handset import HandsetProcess
from jbcbench.sipdaemon import sip_daemon, sip_ports
from jbcbench.sipnet import PASSWORDS, SITE

pytestmark = pytest.mark.integration
LOCKOUT_S = 2.0


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    daemon = sip_daemon(tmp_path_factory.mktemp("sip-security"), SITE,
                        auth_failures_per_source=5, auth_failure_window_s=30,
                        lockout_s=LOCKOUT_S, rate_per_source=50.0,
                        burst_per_source=100.0).start()
    try:
        daemon.ports = sip_ports(daemon)
        yield daemon
    finally:
        daemon.stop()


class Prober:
    """A raw UDP client: sends what we like, reads what comes back (or nothing)."""

    def __init__(self, appliance, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(1.0)
        self.local = self.sock.getsockname()
        self.server = ("127.0.0.1", appliance.ports["udp"])

    def exchange(self, data: bytes, *, wait: float = 1.0) -> bytes | None:
        self.sock.settimeout(wait)
        self.sock.sendto(data, self.server)
        try:
            return self.sock.recv(65535)
        except TimeoutError:
            return None

    def register(self, user: str, password: str, call_id: str) -> bytes | None:
        first = self.exchange(sipua.register(user, "127.0.0.1", local=self.local,
                                             call_id=call_id, cseq=1, tag="t"))
        if first is None:
            return None
        challenge = sipua.parse_message(first).header("www-authenticate")
        answer = sipua.digest_answer(challenge, method="REGISTER", uri="sip:127.0.0.1",
                                     username=user, password=password, cnonce="fixed")
        return self.exchange(sipua.register(user, "127.0.0.1", local=self.local,
                                            call_id=call_id, cseq=2, tag="t",
                                            authorization=answer))

    def close(self) -> None:
        self.sock.close()


def _blank(data: bytes, user: str) -> str:
    text = data.decode()
    for pattern, token in ((r'nonce="[^"]+"', 'nonce="N"'), (r"tag=[0-9a-f]+\b", "tag=T"),
                           (r"branch=[^;\s]+", "branch=B"), (r"rport=\d+", "rport=P"),
                           (r"username=\"[^\"]+\"", "")):
        text = re.sub(pattern, token, text)
    return text.replace(f"sip:{user}@", "sip:USER@")


def test_wrong_password_and_unknown_user_look_the_same_on_the_wire(appliance):
    prober = Prober(appliance, "127.40.1.1")
    try:
        wrong = prober.register("101", "not-the-password", "enum-a")
        unknown = prober.register("987", "not-the-password", "enum-a")
        assert wrong is not None and unknown is not None
        assert sipua.parse_message(wrong).status == 401
        assert _blank(wrong, "101").replace("CSeq: 2", "") == \
            _blank(unknown, "987").replace("CSeq: 2", "")
        assert len(wrong) - len("101") == len(unknown) - len("987")
    finally:
        prober.close()


def test_lockout_engages_after_repeated_failures_and_expires(appliance):
    prober = Prober(appliance, "127.40.2.1")
    try:
        for attempt in range(5):
            assert prober.register("102", f"guess-{attempt}", f"lock-{attempt}") is not None
        # Locked out: not even a challenge comes back, and the right password does not help.
        assert prober.register("102", "bob-pw", "lock-ok") is None
        journal = appliance.call("events", {"subsystem": "sip"})["events"]
        assert any(e["kind"] == "lockout" and e["details"]["subject"] == "127.40.2.1"
                   for e in journal)
        time.sleep(LOCKOUT_S + 0.2)
        reply = prober.register("102", "bob-pw", "lock-after")
        assert reply is not None and sipua.parse_message(reply).status == 200
    finally:
        prober.close()


def test_a_flooding_source_does_not_stop_a_handset_from_registering_and_calling(appliance):
    flooder = Prober(appliance, "127.40.3.66")
    try:
        garbage = [b"\x16\x03\x01 not sip at all", b"INVITE sip:x SIP/2.0\r\n\r\n",
                   b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP nowhere\r\n\r\n"]
        for index in range(400):
            flooder.sock.sendto(garbage[index % 3], flooder.server)
        for attempt in range(20):
            flooder.sock.sendto(sipua.register("101", "127.0.0.1", local=flooder.local,
                                               call_id=f"flood-{attempt}", cseq=1,
                                               authorization=f'Digest username="101", '
                                               f'realm="jbc", nonce="x{attempt}", uri="sip:'
                                               f'127.0.0.1", response="00", qop=auth, '
                                               f'nc=00000001, cnonce="c"'), flooder.server)
        alice = HandsetProcess(user="101", password="alice-pw", bind="127.40.3.1",
                               server=f"127.0.0.1:{appliance.ports['udp']}")
        bob = HandsetProcess(user="102", password="bob-pw", bind="127.40.3.2",
                             server=f"127.0.0.1:{appliance.ports['udp']}", auto="answer")
        try:
            alice.registered()
            bob.registered()
            alice.send("call", uri="sip:102@127.0.0.1")
            alice.call_state("CONFIRMED")
            alice.send("hangup")
            bob.call_state("DISCONNECTED")
        finally:
            alice.close()
            bob.close()
        health = next(s for s in appliance.call("status")["subsystems"] if s["name"] == "sip")
        abuse = health["details"]["abuse"]
        assert abuse["dropped_rate_limited"] + abuse["dropped_locked_out"] > 0
        assert health["details"]["stats"]["malformed"] > 0
    finally:
        flooder.close()


class LimitedDaemon(DaemonProcess):
    """jbcd under a small open-file limit it may not raise (as the unit's seccomp filter
    forbids setrlimit): soft and hard both ``NOFILE``."""

    NOFILE = 300

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.NOFILE}:{self.NOFILE}", "--", *super().command()]


def _open_idle(port: int, count: int, sources: int, prefix: str) -> list[socket.socket]:
    kept = []
    for index in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((f"{prefix}.{index % sources + 1}", 0))
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        kept.append(sock)
    return kept


def _tcp_register(user: str, address: str, port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=3.0,
                                  source_address=(address, 0)) as sock:
        local = sock.getsockname()
        common = {"local": local, "call_id": f"tcp-{address}", "transport": "TCP"}
        sock.sendall(sipua.register(user, "127.0.0.1", cseq=1, **common))
        challenge = sipua.parse_reply(sock.recv(65535))
        answer = sipua.digest_answer(sipua.pick_challenge(challenge), method="REGISTER",
                                     uri="sip:127.0.0.1", username=user,
                                     password=PASSWORDS[user])
        sock.sendall(sipua.register(user, "127.0.0.1", cseq=2, authorization=answer, **common))
        return sipua.parse_reply(sock.recv(65535)).status


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_idle_connections_beyond_the_open_file_limit_neither_stop_registrations_nor_flood_the_log(
        tmp_path):
    directory = tmp_path / "directory.json"
    directory.write_text(json.dumps(SITE))
    daemon = LimitedDaemon(tmp_path, f'[directory]\nfile = "{directory}"\n[sip]\n'
                           'enabled = true\nudp_port = 0\ntcp_port = 0\n'
                           'assume_wan_state = "outage"\n').start()
    kept: list[socket.socket] = []
    try:
        port = sip_ports(daemon)["tcp"]
        limited = [e for e in daemon.call("events", {"subsystem": "sip"})["events"]
                   if e["kind"] == "connections-limited"]
        assert limited and limited[0]["details"]["max_connections"] < LimitedDaemon.NOFILE
        # More idle connections than the process has file descriptors, 10 per address.
        kept = _open_idle(port, LimitedDaemon.NOFILE + 20, 32, "127.41.0")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until jbcd has taken in all it will take
            sip = next(s for s in daemon.call("status")["subsystems"] if s["name"] == "sip")
            stats = sip["details"]["stats"]
            if sip["details"]["connections"] >= sip["details"]["max_connections"] and \
                    stats.get("connections_refused_total", 0) + \
                    stats.get("connections_evicted_total", 0) > 0:
                break
            time.sleep(0.05)
        time.sleep(1.1)  # the idle ones become closable (EVICTABLE_AFTER_S)
        assert _tcp_register("101", "127.41.1.1", port) == 200
        assert _tcp_register("102", "127.41.1.2", port) == 200
        assert daemon.log().count("out of system resource") <= 3
    finally:
        for sock in kept:
            sock.close()
        daemon.stop()
