"""The SIP subsystem with real sockets on loopback: UDP, TCP and TLS transports, keep-alives,
connection limits, persistence across a restart, live WAN and directory changes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import pathlib
import socket
import ssl

import pytest

from appliance.assembly import sip_verdict
from appliance.config import ApplianceConfig, LoadedConfig
from appliance.control.commands import CommandContext, Peer, Role
from appliance.directory.config import DirectoryConfig
from appliance.directory.model import parse_directory
from appliance.directory.service import DirectoryService
from appliance.gateway.events import EmergencyCallStarted
from appliance.lifecycle import Appliance
from appliance.runtime import HealthLevel, SubsystemChanged
from appliance.sip import transport
from appliance.sip.config import CloudEdgeConfig, SipConfig
from appliance.sip.service import SipService, serves_handsets
from appliance.store.call_records import CallRecordStore
from appliance.wan.events import WanState
from jbcbench import sipua
from jbcbench.sipnet import PASSWORDS, SITE
from jbcbench.tlscerts import make_tls_files

ADMIN = Peer(pid=1, uid=0, gid=0, user="root", role=Role.ADMIN)


def write_site(state: pathlib.Path) -> pathlib.Path:
    state.mkdir(parents=True, exist_ok=True)
    site = state / "site.json"
    if not site.exists():
        site.write_text(json.dumps(SITE))
    return site


@contextlib.asynccontextmanager
async def running_appliance(state: pathlib.Path, daemon: dict | None = None, **sip):
    """The daemon's own lifecycle (storage, journal, supervision, start retries, stop
    deadlines) with the directory and SIP only; ``daemon`` overrides [daemon] settings."""
    site = write_site(state)
    options = {"enabled": True, "udp_port": 0, "tcp_port": 0, "tls_port": 0,
               "assume_wan_state": "outage", **sip}
    defaults = ApplianceConfig()
    config = ApplianceConfig(directory=DirectoryConfig(file=site), sip=SipConfig(**options),
                             daemon=dataclasses.replace(defaults.daemon, state_dir=state,
                                                        runtime_dir=state / "run",
                                                        **(daemon or {})))

    def build(runtime):
        directory = DirectoryService(runtime)
        return [directory, SipService(runtime, directory,
                                      call_records=CallRecordStore(runtime.database))]

    loaded = LoadedConfig(config=config, source="test", digest="0" * 64)
    async with Appliance(loaded, build=build, serve_control=False) as appliance:
        yield appliance


@contextlib.asynccontextmanager
async def running_sip(state: pathlib.Path, **sip):
    async with running_appliance(state, **sip) as appliance:
        yield appliance.by_name("sip")


async def command(service: SipService, name: str, **args):
    return await service.runtime.commands.get(name).handler(CommandContext(peer=ADMIN,
                                                                           args=args))


class UdpHandset:
    def __init__(self, user: str, host: str, server_port: int) -> None:
        self.user = user
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.local = self.sock.getsockname()
        self.server = ("127.0.0.1", server_port)
        self.call_id = sipua.unique("udp-")
        self.cseq = 0

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, self.server)

    async def receive(self, within: float = 3.0) -> sipua.Message:
        async with asyncio.timeout(within):
            data, _ = await asyncio.get_running_loop().sock_recvfrom(self.sock, 65535)
        return sipua.parse_message(data)

    async def register(self, password: str | None = None, expires: int = 300) -> sipua.Message:
        self.cseq += 2
        await self.send(sipua.register(self.user, "127.0.0.1", local=self.local,
                                       call_id=self.call_id, cseq=self.cseq - 1,
                                       expires=expires))
        challenge = await self.receive()
        if challenge.status != 401:
            return challenge
        answer = sipua.digest_answer(challenge.header("www-authenticate"), method="REGISTER",
                                     uri="sip:127.0.0.1", username=self.user,
                                     password=password or PASSWORDS[self.user])
        await self.send(sipua.register(self.user, "127.0.0.1", local=self.local,
                                       call_id=self.call_id, cseq=self.cseq, expires=expires,
                                       authorization=answer))
        return await self.receive()

    def close(self) -> None:
        self.sock.close()


class StreamHandset:
    """A handset on one TCP or TLS connection (its contact is its listening address)."""

    def __init__(self, user: str, reader, writer, transport: str) -> None:
        self.user = user
        self.reader, self.writer = reader, writer
        self.transport = transport
        self.local = writer.get_extra_info("sockname")
        self.call_id = sipua.unique("stream-")

    @classmethod
    async def connect(cls, user: str, port: int, *, host: str = "127.0.0.1",
                      context: ssl.SSLContext | None = None) -> StreamHandset:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, local_addr=(host, 0),
            server_hostname="127.0.0.1" if context else None)
        return cls(user, reader, writer, "TLS" if context else "TCP")

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self, within: float = 3.0) -> sipua.Message:
        async with asyncio.timeout(within):
            head = await self.reader.readuntil(b"\r\n\r\n")
            message = sipua.parse_message(head)
            length = int(message.header("content-length") or 0)
            body = await self.reader.readexactly(length) if length else b""
        return sipua.parse_message(head + body)

    async def register(self, expires: int = 300) -> sipua.Message:
        common = {"local": self.local, "call_id": self.call_id, "expires": expires,
                  "transport": self.transport}
        await self.send(sipua.register(self.user, "127.0.0.1", cseq=1, **common))
        challenge = await self.receive()
        answer = sipua.digest_answer(challenge.header("www-authenticate"), method="REGISTER",
                                     uri="sip:127.0.0.1", username=self.user,
                                     password=PASSWORDS[self.user])
        await self.send(sipua.register(self.user, "127.0.0.1", cseq=2, authorization=answer,
                                       **common))
        return await self.receive()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@pytest.mark.integration
async def test_udp_registration_shows_in_sip_phones(tmp_path):
    async with running_sip(tmp_path) as service:
        phone = UdpHandset("101", "127.10.0.1", service.ports["udp"])
        try:
            reply = await phone.register()
            assert reply.status == 200
            result = await command(service, "sip.phones")
            assert result["serving"] is True
            [row] = result["phones"]
            assert row["aor"] == "101" and row["transport"] == "udp"
            assert row["source"] == f"127.10.0.1:{phone.local[1]}"
            assert service.health().level is HealthLevel.OK
        finally:
            phone.close()


@pytest.mark.integration
async def test_tcp_registration_answers_on_the_same_connection_and_answers_keepalives(
        tmp_path):
    async with running_sip(tmp_path) as service:
        phone = await StreamHandset.connect("102", service.ports["tcp"], host="127.10.0.2")
        try:
            assert (await phone.register()).status == 200
            await phone.send(b"\r\n\r\n")
            async with asyncio.timeout(3):
                assert await phone.reader.readexactly(2) == b"\r\n"
            [row] = (await command(service, "sip.phones"))["phones"]
            assert row["transport"] == "tcp" and row["source"].startswith("127.10.0.2:")
        finally:
            await phone.close()


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_registration_with_tls12_or_newer(tmp_path):
    files = make_tls_files(tmp_path / "tls")
    async with running_sip(tmp_path, transports=("udp", "tls"),
                           tls_certificate=files.certificate,
                           tls_private_key=files.private_key) as service:
        context = ssl.create_default_context(cafile=str(files.ca))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        phone = await StreamHandset.connect("103", service.ports["tls"], context=context)
        try:
            assert (await phone.register()).status == 200
            assert phone.writer.get_extra_info("ssl_object").version() == "TLSv1.2"
            [row] = (await command(service, "sip.phones"))["phones"]
            assert row["transport"] == "tls"
        finally:
            await phone.close()
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await StreamHandset.connect("103", service.ports["tls"], context=old)


@pytest.mark.integration
async def test_a_call_reaches_a_tcp_handset_over_the_connection_it_opened(tmp_path):
    async with running_sip(tmp_path) as service:
        callee = await StreamHandset.connect("102", service.ports["tcp"], host="127.10.0.3")
        caller = UdpHandset("101", "127.10.0.4", service.ports["udp"])
        try:
            assert (await callee.register()).status == 200
            uri = "sip:102@127.0.0.1"
            invite = sipua.request("INVITE", uri, local=caller.local, to=f"<{uri}>",
                                   from_="<sip:101@127.0.0.1>;tag=c", call_id="tcp-call",
                                   cseq=1, branch="z9hG4bKc1")
            await caller.send(invite)
            challenge = await caller.receive()
            assert challenge.status == 407
            answer = sipua.digest_answer(challenge.header("proxy-authenticate"),
                                         method="INVITE", uri=uri, username="101",
                                         password=PASSWORDS["101"])
            await caller.send(invite.replace(b"CSeq: 1", b"CSeq: 2").replace(
                b"branch=z9hG4bKc1", b"branch=z9hG4bKc2").replace(
                b"Content-Length: 0", f"Proxy-Authorization: {answer}\r\nContent-Length: 0"
                .encode()))
            forwarded = await callee.receive()
            assert forwarded.method == "INVITE"
            assert forwarded.all("via")[0].startswith("SIP/2.0/TCP")
            await callee.send(sipua.response_for(forwarded, 486, to_tag="busy"))
            statuses = [(await caller.receive()).status for _ in range(2)]
            assert statuses == [100, 486]
            # written by the time the phone has its answer: no write-behind window a crash
            # could lose it in
            [record] = service.call_records.recent(5)
            assert (record.direction, record.from_party, record.to_party, record.result) == (
                "internal", "101", "102", "busy")
            assert record.ended_at is not None
        finally:
            caller.close()
            await callee.close()


@pytest.mark.integration
async def test_an_emergency_call_refused_while_the_gateway_is_down_is_recorded_at_once(
        tmp_path):
    async with running_sip(tmp_path, gateway_uri="sip:127.0.0.1:5062") as service:
        alerts: list[EmergencyCallStarted] = []
        service.runtime.bus.subscribe(EmergencyCallStarted, alerts.append)
        caller = UdpHandset("101", "127.10.0.12", service.ports["udp"])
        try:
            assert (await caller.register()).status == 200
            service.follow_gateway("SIP media agent failed to start", retry_after_s=7.4)
            uri = "sip:911@127.0.0.1"
            await caller.send(sipua.request("INVITE", uri, local=caller.local, to=f"<{uri}>",
                                            from_="<sip:101@127.0.0.1>;tag=e",
                                            call_id="sos-call", cseq=1, branch="z9hG4bKe1"))
            answer = await caller.receive()
            assert (answer.status, answer.header("retry-after")) == (500, "7")
            [record] = service.call_records.recent(5)
            assert (record.direction, record.from_party, record.to_party, record.emergency,
                    record.result) == ("emergency", "101", "911", True, "failed")
            assert record.ended_at is not None
            [alert] = alerts  # the cloud learns of it as of any other emergency call
            assert (alert.call, alert.extension, alert.caller_verified) == (record.id, "101",
                                                                            True)
        finally:
            caller.close()


@pytest.mark.integration
async def test_the_one_timer_follows_every_move_of_the_cores_deadline(tmp_path):
    async with running_sip(tmp_path) as service:
        core = service.core
        assert service._timer_at == core.next_deadline()  # housekeeping: armed at start
        callee = UdpHandset("102", "127.10.0.11", service.ports["udp"])
        caller = UdpHandset("101", "127.10.0.12", service.ports["udp"])
        try:
            assert (await callee.register()).status == 200
            uri = "sip:102@127.0.0.1"
            invite = sipua.request("INVITE", uri, local=caller.local, to=f"<{uri}>",
                                   from_="<sip:101@127.0.0.1>;tag=t", call_id="timer-call",
                                   cseq=1, branch="z9hG4bKt1")
            await caller.send(invite)
            challenge = await caller.receive()
            answer = sipua.digest_answer(challenge.header("proxy-authenticate"),
                                         method="INVITE", uri=uri, username="101",
                                         password=PASSWORDS["101"])
            await caller.send(invite.replace(b"CSeq: 1", b"CSeq: 2").replace(
                b"branch=z9hG4bKt1", b"branch=z9hG4bKt2").replace(
                b"Content-Length: 0", f"Proxy-Authorization: {answer}\r\nContent-Length: 0"
                .encode()))
            forwarded = await callee.receive()
            retransmit_at = service._timer_at  # Timer A of the branch towards the callee
            assert retransmit_at == core.next_deadline()
            assert retransmit_at <= asyncio.get_running_loop().time() + 0.5
            await callee.send(sipua.response_for(forwarded, 180, to_tag="ring"))
            assert [(await caller.receive()).status for _ in range(2)] == [100, 180]
            # Ringing stopped Timer A: the deadline moved later, and so did the timer.
            assert service._timer_at == core.next_deadline() > retransmit_at
        finally:
            caller.close()
            callee.close()


@pytest.mark.integration
async def test_a_timer_the_loop_runs_early_still_fires_what_was_due(tmp_path):
    async with running_sip(tmp_path) as service:
        due = service._timer_at
        assert due > asyncio.get_running_loop().time()
        service._timer.cancel()
        service._on_timer()  # as if the loop ran the handle a hair before its time
        assert service._timer_at > due


@pytest.mark.integration
async def test_bad_input_on_a_stream_gets_400_and_lost_framing_closes_it(tmp_path):
    async with running_sip(tmp_path) as service:
        phone = await StreamHandset.connect("101", service.ports["tcp"])
        try:
            bad = sipua.register("101", "127.0.0.1", local=phone.local, call_id="b", cseq=1,
                                 transport="TCP").replace(b"CSeq: 1 REGISTER",
                                                          b"CSeq: 1 INVITE")
            await phone.send(bad)
            assert (await phone.receive()).status == 400
            await phone.send(b"GARBAGE / NOTHING\r\nX: y\r\n\r\n")
            async with asyncio.timeout(3):
                rest = await phone.reader.read()
            assert rest == b""  # closed: no framing without Content-Length
        finally:
            await phone.close()


@pytest.mark.integration
async def test_connections_per_source_are_capped(tmp_path):
    async with running_sip(tmp_path, max_connections_per_source=2) as service:
        port = service.ports["tcp"]
        kept = [await asyncio.open_connection("127.0.0.1", port, local_addr=("127.10.0.9", 0))
                for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=("127.10.0.9", 0))
        async with asyncio.timeout(3):
            assert await reader.read() == b""
        other = await asyncio.open_connection("127.0.0.1", port,
                                              local_addr=("127.10.0.10", 0))
        for _, w in [*kept, other, (reader, writer)]:
            w.close()
        assert service.stats["connections_refused_per_source"] == 1


@pytest.mark.integration
async def test_idle_connections_make_room_for_a_handset_and_registered_ones_stay(
        tmp_path, monkeypatch):
    monkeypatch.setattr(transport, "EVICTABLE_AFTER_S", 0.0)
    async with running_sip(tmp_path, max_connections=20) as service:
        port = service.ports["tcp"]
        table = service._connections
        phone = await StreamHandset.connect("102", port, host="127.10.1.1")
        idle = []
        try:
            assert (await phone.register()).status == 200
            for index in range(40):  # 10 per address, more than the table holds
                idle.append(await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(f"127.10.2.{index % 4 + 1}", 0)))
            reader, writer = idle[-1]  # accepted in order: a pong on the last means all are in
            writer.write(b"\r\n\r\n")
            async with asyncio.timeout(3):
                assert await reader.readexactly(2) == b"\r\n"
            assert len(table) == 20 and service.stats["connections_evicted_total"] == 21
            newcomer = await StreamHandset.connect("103", port, host="127.10.1.2")
            try:
                assert (await newcomer.register()).status == 200
            finally:
                await newcomer.close()
            await phone.send(b"\r\n\r\n")  # the registered phone's connection was kept
            async with asyncio.timeout(3):
                assert await phone.reader.readexactly(2) == b"\r\n"
        finally:
            await phone.close()
            for _, writer in idle:
                writer.close()


@pytest.mark.integration
async def test_the_per_address_cap_counts_only_connections_without_a_registration(tmp_path):
    async with running_sip(tmp_path, max_connections_per_source=4) as service:
        port = service.ports["tcp"]
        phones = []
        try:
            for index in range(10):  # ten phones behind one NAT, each on its own connection
                user = ("101", "102", "103", "104", "105")[index % 5]
                phone = await StreamHandset.connect(user, port, host="127.10.3.1")
                phones.append(phone)
                assert (await phone.register()).status == 200, index
            assert len(service._connections) == 10
        finally:
            for phone in phones:
                await phone.close()


@pytest.mark.integration
async def test_an_emergency_call_that_cannot_be_placed_still_alerts_the_cloud(tmp_path):
    # No trunk gateway: the proxy refuses the call itself, so the gateway never raises its
    # alert; the SIP service publishes the same event sync sends the cloud at once.
    async with running_sip(tmp_path) as service:
        alerts: list[EmergencyCallStarted] = []
        service.runtime.bus.subscribe(EmergencyCallStarted, alerts.append)
        caller = UdpHandset("101", "127.10.0.5", service.ports["udp"])
        try:
            assert (await caller.register()).status == 200
            uri = "sip:911@127.0.0.1"
            await caller.send(sipua.request("INVITE", uri, local=caller.local, to=f"<{uri}>",
                                            from_="<sip:101@127.0.0.1>;tag=e",
                                            call_id="no-gateway-911", cseq=1))
            assert (await caller.receive()).status == 500
            [alert] = alerts
            assert (alert.extension, alert.caller_verified, alert.number) == ("101", True,
                                                                              "911")
            assert alert.call == "sip:no-gateway-911"
            service._flush()
            entry = service.runtime.journal.query(subsystem="sip")[-1]
            assert entry.kind == "emergency-call-not-placed" and "911" in entry.reason
        finally:
            caller.close()


@pytest.mark.integration
async def test_the_in_path_cloud_link_moves_on_to_the_next_edge_and_counts_failures(tmp_path):
    files = make_tls_files(tmp_path / "tls")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.certificate, files.private_key)
    pinged = asyncio.Event()

    async def edge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):  # answer keep-alive pings until the link closes
            pinged.set()  # the link is up and holding the connection
            writer.write(b"\r\n")
        writer.close()

    server = await asyncio.start_server(edge, "127.0.0.1", 0, ssl=server_context)
    refusing = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    refusing.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    edges = (CloudEdgeConfig(address="127.0.0.1", port=refusing.getsockname()[1],
                                       server_name="127.0.0.1"),
             CloudEdgeConfig(address="127.0.0.1",
                                       port=server.sockets[0].getsockname()[1],
                                       server_name="127.0.0.1"))
    try:
        async with running_sip(tmp_path, mode="in-path", cloud_edges=edges,
                               cloud_ca_file=files.ca, cloud_keepalive_s=1.0,
                               assume_wan_state="online") as service:
            async with asyncio.timeout(10):
                await pinged.wait()
            phones = await command(service, "sip.phones")
            stats = phones["cloud_link_stats"]
            assert stats["edge"]["port"] == edges[1].port
            assert stats["connects"] == 1 and stats["failures"] == 1, stats
            assert phones["cloud_link"].endswith("connected 1 time, 1 failed attempt")
            health = service.health()
            assert health.details["cloud_link_stats"] == stats
            assert "1 failed attempt" in health.summary
    finally:
        refusing.close()
        server.close()
        await server.wait_closed()


@pytest.mark.integration
async def test_bindings_survive_a_restart_mid_outage(tmp_path):
    async with running_sip(tmp_path) as service:
        phone = UdpHandset("101", "127.10.0.5", service.ports["udp"])
        assert (await phone.register(expires=120)).status == 200
        phone.close()
    # The WAN monitor has no verdict yet after the restart, but an outage was in progress.
    async with running_sip(tmp_path, assume_wan_state="starting") as service:
        result = await command(service, "sip.phones")
        assert result["serving"] is True
        [row] = result["phones"]
        assert row["aor"] == "101" and 110 <= row["expires_in_s"] <= 120
        assert row["source"].startswith("127.10.0.5:")


@pytest.mark.parametrize(("state", "fresh", "resumed"), [
    # WAN state          serves on a fresh start   serves after a restart mid-outage
    (WanState.STARTING,   False,                   True),
    (WanState.ONLINE,     False,                   False),
    (WanState.DEGRADED,   False,                   False),
    (WanState.OUTAGE,     True,                    True),
    (WanState.RECOVERING, True,                    True),
    (WanState.FORCED,     True,                    True),
])
def test_which_wan_states_serve_handsets(state, fresh, resumed):
    verdict = sip_verdict(state, "test")
    assert serves_handsets(verdict, resumed_outage=False) is fresh
    assert serves_handsets(verdict, resumed_outage=True) is resumed


@pytest.mark.integration
async def test_wan_state_changes_switch_register_handling_and_keep_calls(tmp_path):
    async with running_sip(tmp_path) as service:
        phone = UdpHandset("101", "127.10.0.6", service.ports["udp"])
        try:
            assert (await phone.register()).status == 200
            service.follow_wan(sip_verdict(WanState.ONLINE, "cloud back"))
            assert (await phone.register()).status == 503
            entries = service.runtime.journal.query(subsystem="sip")
            assert entries[-1].kind == "mode" and "cloud back" in entries[-1].reason
            assert (await command(service, "sip.phones"))["serving"] is False
            service.follow_wan(sip_verdict(WanState.OUTAGE, "cloud gone"))
            assert (await phone.register()).status == 200
        finally:
            phone.close()


@pytest.mark.integration
async def test_directory_updates_apply_live(tmp_path):
    async with running_sip(tmp_path) as service:
        phone = UdpHandset("carl", "127.10.0.7", service.ports["udp"])
        try:
            assert (await phone.register(password="carl-pw")).status == 401
            updated = {**SITE, "version": 9,
                       "extensions": [*SITE["extensions"], {"number": "107", "name": "Carl"}],
                       "devices": [*SITE["devices"], {"id": "carl", "extension": "107",
                                                      "username": "carl",
                                                      "password": "carl-pw"}]}
            service.directory_service.install(parse_directory(updated, source="test"),
                                              source="test v9")
            assert (await phone.register(password="carl-pw")).status == 200
        finally:
            phone.close()


@pytest.mark.integration
async def test_garbage_flood_is_counted_and_a_handset_still_registers(tmp_path):
    async with running_sip(tmp_path, burst_per_source=100) as service:
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flood.bind(("127.10.0.66", 0))
        for index in range(300):
            flood.sendto(b"\x00\xff garbage %d\r\n\r\n" % index, ("127.0.0.1",
                                                                   service.ports["udp"]))
        flood.close()
        phone = UdpHandset("101", "127.10.0.8", service.ports["udp"])
        try:
            assert (await phone.register()).status == 200
        finally:
            phone.close()
        stats = service.health().details["stats"]
        assert stats["malformed"] + stats.get("dropped", 0) >= 1
        assert service.core.guard.dropped_rate > 0  # the flood outran its rate limit


async def test_disabled_sip_binds_nothing_and_says_so(tmp_path):
    async with running_sip(tmp_path, enabled=False) as service:
        assert service.ports == {} and service.health().level is HealthLevel.DISABLED


@pytest.mark.integration
async def test_a_port_in_use_fails_the_subsystem_not_the_daemon(tmp_path):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    try:
        async with running_appliance(tmp_path, udp_port=port, daemon={
                "restart_min_s": 0.05, "restart_max_s": 0.2}) as appliance:
            service = appliance.by_name("sip")
            up = asyncio.Event()
            appliance.runtime.bus.subscribe(
                SubsystemChanged, lambda event: up.set() if event.name == "sip" and event.up
                else None)
            assert not appliance.started("sip") and appliance.started("directory")
            health = service.health()
            assert health.level is HealthLevel.FAILED and "in use" in health.summary
            [failed] = appliance.events("start-failed", subsystem="sip")
            assert f"udp 127.0.0.1:{port} is in use by another program" in failed.reason
            blocker.close()
            async with asyncio.timeout(10):  # the supervision backoff starts it again
                await up.wait()
            assert appliance.started("sip")
            assert service.ports["udp"] == port
            assert service.health().level is HealthLevel.OK
    finally:
        blocker.close()


def test_config_refuses_tls_without_certificate():
    from appliance.sip.config import SipConfig as Config
    problems = list(Config(transports=("tls",)).validate())
    assert problems and problems[0][0] == "transports"
    assert dataclasses.replace(Config(), listen_address="0.0.0.0").validate()


@pytest.mark.integration
async def test_erasing_customer_content_forgets_every_registration(tmp_path):
    async with running_sip(tmp_path) as service:
        phone = UdpHandset("101", "127.10.0.9", service.ports["udp"])
        try:
            assert (await phone.register()).status == 200
            service._flush()
            assert service.erase() == 1
            assert (await command(service, "sip.phones"))["phones"] == []
            rows = service.runtime.database.connection.execute(
                "SELECT COUNT(*) FROM sip_bindings").fetchone()[0]
            assert rows == 0
            assert (await phone.register()).status == 200  # the handset simply comes back
        finally:
            phone.close()
