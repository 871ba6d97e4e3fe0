"""The probes against real servers on loopback (and, for ICMP, inside a test namespace)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest

from appliance.wan import probes
from appliance.wan.observations import ProbeOutcome
from appliance.wan.probes import (
    HTTP_MAX_HEAD,
    WanBinding,
    _open_icmp_socket,
    probe_dns,
    probe_https_get,
    probe_icmp_echo,
    probe_sip_options,
    probe_tls_handshake,
)
from jbcbench.cloud_edge import DnsResponder, HttpsHealth, SipEdge, TestCA, loopback_socket
from jbcbench.topology import Topology, can_build_namespaces

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason="binding probes to a device needs CAP_NET_RAW (root)")]

LO = WanBinding(interface="lo", ipv4="127.0.0.1")
NAME = "edge.cloud.test"


@pytest.fixture(scope="module")
def ca():
    return TestCA()


@pytest.fixture
def tls(ca, tmp_path):
    server = ca.server_context([NAME], ["127.0.0.1"], directory=tmp_path)
    client = ca.client_context(tmp_path)
    return server, client


@pytest.fixture(scope="module", autouse=True)
def receive_timestamps_on():
    """What the monitor does: hold receive timestamps on for the probes. The kernel switches
    them on in deferred work, so wait until a datagram is stamped when it arrives rather than
    when it is read (a read 20 ms later tells which)."""
    keeper = probes.hold_receive_timestamps()
    checker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    checker.bind(("127.0.0.1", 0))
    probes.stamp_receptions(checker)
    try:
        deadline = time.monotonic() + 10.0
        while True:
            checker.sendto(b"stamp?", checker.getsockname())
            threading.Event().wait(0.02)  # the gap to see, not a wait for a result
            _, ancillary, _, _ = checker.recvmsg(64, 64)
            if time.time() - probes.receive_time(ancillary) >= 0.015:
                break
            assert time.monotonic() < deadline, "the kernel never stamped on arrival"
        yield
    finally:
        checker.close()
        if keeper is not None:
            keeper.close()


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


async def test_icmp_echo_to_loopback_answers_with_an_rtt():
    result = await probe_icmp_echo("127.0.0.1", binding=LO, timeout_s=1.0,
                                   retry_interval_s=0.25)
    assert result.outcome is ProbeOutcome.OK and 0 < result.rtt_s < 0.5


def busy_before(monkeypatch, name: str, seconds: float) -> None:
    """Make the event loop busy for ``seconds`` (blocking it) right after a probe sent its
    request and before it reads the answer: a daemon busy elsewhere."""
    original = getattr(probes, name)

    async def busy_first(*args, **kwargs):
        time.sleep(seconds)  # noqa: ASYNC251 - blocking the loop is the point
        return await original(*args, **kwargs)

    monkeypatch.setattr(probes, name, busy_first)


def busy_past_timeout(monkeypatch, name: str, seconds: float) -> None:
    """Block the loop for ``seconds`` after a probe sent its request; the probe's overdue
    timeout then goes off before it reads anything."""
    original = getattr(probes, name)

    async def busy_then_timed_out(*args, **kwargs):
        time.sleep(seconds)  # noqa: ASYNC251 - blocking the loop is the point
        for _ in range(2):  # the loop's turns: the timeout handle runs before the next read
            await asyncio.sleep(0)
        return await original(*args, **kwargs)

    monkeypatch.setattr(probes, name, busy_then_timed_out)


async def test_icmp_echo_rtt_is_the_networks_not_the_busy_loops(monkeypatch):
    # The kernel answers the echo while the loop is blocked: its receive timestamp, not the
    # moment the loop reads the reply, ends the round trip (else the busy loop is jitter).
    busy_before(monkeypatch, "_await_echo", 0.3)
    result = await probe_icmp_echo("127.0.0.1", binding=LO, timeout_s=2.0,
                                   retry_interval_s=1.0)
    assert result.outcome is ProbeOutcome.OK and 0 < result.rtt_s < 0.1, result


async def test_icmp_echo_answered_in_time_is_not_lost_when_the_loop_wakes_too_late(monkeypatch):
    # The loop is blocked past the probe's whole timeout right after the request went out,
    # and the timeout is the first thing it runs after: the reply the kernel received in
    # time is still read, not taken for a lost probe.
    busy_past_timeout(monkeypatch, "_await_echo", 0.5)
    result = await probe_icmp_echo("127.0.0.1", binding=LO, timeout_s=0.3,
                                   retry_interval_s=0.25)
    assert result.outcome is ProbeOutcome.OK and 0 < result.rtt_s < 0.1, result
    assert result.attempts == (result.rtt_s,)


async def test_sip_options_over_udp_rtt_is_the_networks_not_the_busy_loops(monkeypatch):
    edge = SipEdge()
    sock = loopback_socket(socket.SOCK_DGRAM)
    sock.setblocking(True)
    sock.settimeout(0.1)
    stop = threading.Event()

    def answer() -> None:  # in a thread: it answers while the probe's loop is blocked
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(65535)
            except TimeoutError:
                continue
            sock.sendto(edge.handle(data, transport="UDP", source=source), source)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    busy_before(monkeypatch, "_await_options_answer", 0.3)
    try:
        result = await probe_sip_options("127.0.0.1", port_of(sock), transport="udp",
                                         server_name=NAME, binding=LO, timeout_s=2.0,
                                         retry_interval_s=1.0)
        assert result.outcome is ProbeOutcome.OK and 0 < result.rtt_s < 0.1, result
        assert result.attempts == (result.rtt_s,)
        # Blocked past the whole timeout: the answer received in time still counts.
        busy_past_timeout(monkeypatch, "_await_options_answer", 0.5)
        late = await probe_sip_options("127.0.0.1", port_of(sock), transport="udp",
                                       server_name=NAME, binding=LO, timeout_s=0.3,
                                       retry_interval_s=0.25)
        assert late.outcome is ProbeOutcome.OK and 0 < late.rtt_s < 0.1, late
    finally:
        stop.set()
        thread.join()
        sock.close()


async def test_icmp_echo_bound_to_another_device_cannot_reach_loopback():
    # Bound to a device that does not carry 127.0.0.1 the echo never gets an answer: the
    # binding, not the routing table, decides which way the probe leaves.
    result = await probe_icmp_echo("127.0.0.2", binding=WanBinding(interface="nosuchdev0"),
                                   timeout_s=0.3, retry_interval_s=0.1)
    assert result.outcome in (ProbeOutcome.UNREACHABLE, ProbeOutcome.ERROR)
    assert "ENODEV" in result.detail or "No such device" in result.detail


def run_in_namespace(ns, coroutine_factory):
    """Run a coroutine on a fresh event loop in a thread that has joined ``ns``."""
    from jbcbench.topology import _setns

    box = {}

    def work():
        fd = os.open(ns.path, os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        box["result"] = asyncio.run(coroutine_factory())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return box["result"]


@pytest.mark.netns
@pytest.mark.skipif(not can_build_namespaces()[0], reason=can_build_namespaces()[1])
@pytest.mark.parametrize("unprivileged_ping", [False, True])
def test_icmp_echo_uses_a_datagram_socket_where_ping_group_range_allows(unprivileged_ping):
    with Topology("jbcprobe") as topo:
        a, b = topo.namespace("a"), topo.namespace("b")
        topo.link(a, "wan0", b, "peer0", a_address="10.80.0.2/24", b_address="10.80.0.1/24")
        if unprivileged_ping:
            a.sysctl("net.ipv4.ping_group_range", "0 2147483647")
        binding = WanBinding(interface="wan0", ipv4="10.80.0.2")

        async def both():
            sock, raw = _open_icmp_socket(binding, "10.80.0.1")
            sock.close()
            ok = await probe_icmp_echo("10.80.0.1", binding=binding, timeout_s=1.0,
                                       retry_interval_s=0.25)
            missing = await probe_icmp_echo("10.80.0.9", binding=binding, timeout_s=0.6,
                                            retry_interval_s=0.2)
            return raw, ok, missing

        raw, ok, missing = run_in_namespace(a, both)
        assert raw is not unprivileged_ping
        assert ok.outcome is ProbeOutcome.OK
        assert missing.outcome in (ProbeOutcome.TIMEOUT, ProbeOutcome.UNREACHABLE)


async def test_dns_probe_resolves_every_name_and_reports_rcodes():
    responder = DnsResponder({NAME: ["10.65.0.10"], "sip.west.cloud.test": ["10.65.1.10"]})
    sock = loopback_socket(socket.SOCK_DGRAM)
    port = port_of(sock)
    await responder.serve(sock)
    try:
        names = (NAME, "sip.west.cloud.test")
        result = await probe_dns("127.0.0.1", names, binding=LO, timeout_s=1.0,
                                 retry_interval_s=0.25, port=port)
        assert result.outcome is ProbeOutcome.OK
        assert dict(result.addresses) == {NAME: ("10.65.0.10",),
                                          "sip.west.cloud.test": ("10.65.1.10",)}
        missing = await probe_dns("127.0.0.1", (NAME, "nope.cloud.test"), binding=LO,
                                  timeout_s=1.0, retry_interval_s=0.25, port=port)
        assert missing.outcome is ProbeOutcome.ERROR and "nope.cloud.test: NXDOMAIN" in \
            missing.detail and dict(missing.addresses) == {NAME: ("10.65.0.10",)}
        responder.mode = "servfail"
        failing = await probe_dns("127.0.0.1", names, binding=LO, timeout_s=1.0,
                                  retry_interval_s=0.25, port=port)
        assert failing.outcome is ProbeOutcome.ERROR and "SERVFAIL" in failing.detail
        responder.mode = "silent"
        before = responder.queries
        silent = await probe_dns("127.0.0.1", (NAME,), binding=LO, timeout_s=0.6,
                                 retry_interval_s=0.15, port=port)
        assert silent.outcome is ProbeOutcome.TIMEOUT
        assert responder.queries - before >= 3, "unanswered queries are sent again"
    finally:
        await responder.close()


async def test_dns_probe_to_a_closed_port_is_refused():
    sock = loopback_socket(socket.SOCK_DGRAM)
    port = port_of(sock)
    sock.close()
    result = await probe_dns("127.0.0.1", (NAME,), binding=LO, timeout_s=1.0,
                             retry_interval_s=0.25, port=port)
    assert result.outcome is ProbeOutcome.REFUSED


async def test_tls_probe_verifies_the_cloud_certificate(ca, tls, tmp_path):
    server_context, client_context = tls
    health = HttpsHealth()
    sock = loopback_socket(socket.SOCK_STREAM)
    port = port_of(sock)
    await health.serve(sock, server_context)
    try:
        ok = await probe_tls_handshake("127.0.0.1", port, server_name=NAME, binding=LO,
                                       ssl_context=client_context, timeout_s=2.0)
        assert ok.outcome is ProbeOutcome.OK and ok.detail.startswith("TLSv1.")
        wrong_name = await probe_tls_handshake("127.0.0.1", port, server_name="other.test",
                                               binding=LO, ssl_context=client_context,
                                               timeout_s=2.0)
        assert wrong_name.outcome is ProbeOutcome.ERROR
        assert "certificate not trusted" in wrong_name.detail
        stranger = TestCA("someone else").client_context(tmp_path / "..")
        untrusted = await probe_tls_handshake("127.0.0.1", port, server_name=NAME, binding=LO,
                                              ssl_context=stranger, timeout_s=2.0)
        assert untrusted.outcome is ProbeOutcome.ERROR and "not trusted" in untrusted.detail
    finally:
        await health.close()
    refused = await probe_tls_handshake("127.0.0.1", port, server_name=NAME, binding=LO,
                                        ssl_context=client_context, timeout_s=2.0)
    assert refused.outcome is ProbeOutcome.REFUSED


async def test_https_probe_reads_the_health_status(tls):
    server_context, client_context = tls
    health = HttpsHealth()
    sock = loopback_socket(socket.SOCK_STREAM)
    port = port_of(sock)
    await health.serve(sock, server_context)
    try:
        async def get(path="/health"):
            return await probe_https_get("127.0.0.1", port, server_name=NAME, path=path,
                                         binding=LO, ssl_context=client_context, timeout_s=2.0)

        ok = await get()
        assert ok.outcome is ProbeOutcome.OK and ok.detail == "HTTP 200 OK"
        health.status = 503
        degraded = await get()
        assert degraded.outcome is ProbeOutcome.DEGRADED and "503" in degraded.detail
        health.status = 200
        missing = await get("/nothing")
        assert missing.outcome is ProbeOutcome.ERROR and missing.detail.startswith("HTTP 404")
    finally:
        await health.close()


async def test_https_probe_refuses_a_response_head_over_its_limit(tls):
    # HTTP_MAX_HEAD bounds what the probe reads: a head just over it is refused, one just
    # under it is read (asyncio's own default would have allowed 64 KiB).
    server_context, client_context = tls
    padding = {"size": HTTP_MAX_HEAD + 100}

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        filler = b"X-Filler: " + b"a" * padding["size"] + b"\r\n"
        writer.write(b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    sock = loopback_socket(socket.SOCK_STREAM)
    server = await asyncio.start_server(answer, sock=sock, ssl=server_context)
    try:
        async def get():
            return await probe_https_get("127.0.0.1", port_of(sock), server_name=NAME,
                                         path="/health", binding=LO,
                                         ssl_context=client_context, timeout_s=2.0)

        too_long = await get()
        assert too_long.outcome is ProbeOutcome.ERROR
        assert too_long.detail == "HTTP response head too long"
        padding["size"] = HTTP_MAX_HEAD - 200
        assert (await get()).outcome is ProbeOutcome.OK
    finally:
        server.close()


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_sip_options_probe_over_each_transport(transport, tls):
    server_context, client_context = tls
    edge = SipEdge()
    if transport == "udp":
        sock = loopback_socket(socket.SOCK_DGRAM)
        await edge.serve_udp(sock)
    else:
        sock = loopback_socket(socket.SOCK_STREAM)
        await edge.serve_stream(sock, ssl_context=server_context if transport == "tls" else None)
    port = port_of(sock)
    try:
        async def probe():
            return await probe_sip_options("127.0.0.1", port, transport=transport,
                                           server_name=NAME, binding=LO, timeout_s=1.0,
                                           retry_interval_s=0.25, ssl_context=client_context)

        ok = await probe()
        assert ok.outcome is ProbeOutcome.OK and ok.detail == "SIP 200 OK"
        edge.status = 503
        degraded = await probe()
        assert degraded.outcome is ProbeOutcome.DEGRADED
        edge.status = 404
        assert (await probe()).outcome is ProbeOutcome.OK, "any final answer means reachable"
        edge.status = None
        edge.silent = True
        before = edge.requests.get("OPTIONS", 0)
        silent = await probe()
        assert silent.outcome is ProbeOutcome.TIMEOUT
        if transport == "udp":
            assert edge.requests["OPTIONS"] - before >= 3, "retransmitted while unanswered"
    finally:
        await edge.close()


async def test_sip_options_over_udp_accounts_for_every_attempt():
    # The voice-quality estimate needs every attempt's fate: the first two requests vanish,
    # the third is answered. Each attempt is a transaction of its own, so the answer says
    # which attempt it belongs to.
    edge = SipEdge()
    seen: list[bytes] = []
    loop = asyncio.get_running_loop()

    class LossyEdge(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            seen.append(data)
            if len(seen) > 2:
                self.transport.sendto(edge.handle(data, transport="UDP", source=addr), addr)

    sock = loopback_socket(socket.SOCK_DGRAM)
    transport, _ = await loop.create_datagram_endpoint(LossyEdge, sock=sock)
    try:
        result = await probe_sip_options("127.0.0.1", port_of(sock), transport="udp",
                                         server_name=NAME, binding=LO, timeout_s=2.0,
                                         retry_interval_s=0.1)
        assert result.outcome is ProbeOutcome.OK
        assert result.attempts[:2] == (None, None) and len(result.attempts) == 3
        assert 0 < result.attempts[2] < 0.1
        branches = {line for data in seen for line in data.decode().split("\r\n")
                    if line.startswith("Via:")}
        assert len(branches) == 3, "a new branch per attempt"
        seen.clear()
        edge.silent = True
        lost = await probe_sip_options("127.0.0.1", port_of(sock), transport="udp",
                                       server_name=NAME, binding=LO, timeout_s=0.55,
                                       retry_interval_s=0.1)
        assert lost.outcome is ProbeOutcome.TIMEOUT
        assert lost.attempts == (None,) * (len(seen) - 1), "the last attempt is not counted"
    finally:
        transport.close()
