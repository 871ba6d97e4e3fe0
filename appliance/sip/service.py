"""The SIP subsystem: the asyncio shell around :class:`~appliance.sip.core.SipCore`.

It binds the transports and drives the core the sans-I/O way: it feeds the core bytes and
``loop.time()``, then drains it (``take_transmits`` to send, ``take_notices`` for the journal,
``take_changes`` to persist) and keeps one ``loop.call_at`` timer on the core's one deadline,
cancelled and re-armed whenever that deadline moves, firing with
``now = max(deadline, loop.time())``. The same timer sweeps idle TCP/TLS connections (the
core's deadline includes its housekeeping, so it fires at least every few seconds).

Bindings and call records are written behind (within a fraction of a second, in one
transaction) through :class:`~appliance.sip.store.SipStore`. The service follows
:class:`DirectoryUpdated` live, and the WAN through :meth:`SipService.follow_wan` (the
assembly translates the WAN monitor's events into :class:`WanVerdict`, so that SIP does not
depend on the WAN package). It answers ``sip.phones`` and ``sip.calls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from appliance.config import ApplianceConfig
from appliance.control.commands import CommandContext, CommandError, Role
from appliance.directory.events import DirectoryUpdated
from appliance.directory.service import DirectoryService
from appliance.gateway.events import EmergencyCallStarted
from appliance.runtime import Health, HealthLevel, Runtime, SubsystemChanged
from appliance.store.call_records import CallRecordStore, UnknownCall
from appliance.supervision import StartFailed

from .abuse import AbusePolicy
from .cloudlink import CloudLink, cloud_tls_context
from .config import SipConfig
from .core import HOUSEKEEPING_S, CoreSettings, Notice, SipCore
from .fastfail import FastFail
from .flow import Flow
from .parser import Limits
from .proxy import Call, call_state_row
from .relay import RelaySettings
from .store import SipStore
from .transaction import Transmit
from .transport import (
    ConnectionTable,
    StreamConnection,
    UdpEndpoint,
    describe_bind_error,
    open_file_budget,
    server_tls_context,
    udp_socket,
)
from .uri import parse_hostport

log = logging.getLogger(__name__)

FLUSH_DELAY_S = 0.2
"""Bindings reach the database this long after they change, in one transaction (a
registration storm costs one write per 0.2 s). A call's changes (started, answered, ended) go
out before the next network input instead, with whatever else is waiting: a crash right after
a phone got its answer never loses that call's record."""
FD_RESERVE = 128
"""Open files kept for everything but SIP connections (database, serial ports, probes, control
clients, pjsua2)."""
SUMMARISE_OVER = 10
"""More registration notices than this in one flush become one summary journal entry."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WanVerdict:
    """What the SIP service follows of the WAN monitor."""

    state: str
    """The WAN state's name ('online', 'outage', ...): shown by 'jbc phones' and 'jbc status'
    (the sip line), and journalled."""
    serve_locally: bool | None
    """True: the cloud is unreachable or failover is forced, so handsets are served here.
    False: the cloud serves them. None: no verdict yet (the monitor is starting)."""
    cause: str = ""
    local_calls: bool = False
    """A sustained brownout under the 'local-calls' policy: in in-path mode new calls are
    served locally although the cloud is reachable."""


ASSUMED_VERDICTS = {"starting": None, "online": False, "outage": True}
"""sip.assume_wan_state, until the WAN monitor has a verdict."""


def serves_handsets(verdict: WanVerdict, *, resumed_outage: bool) -> bool:
    """Whether to serve handsets locally. Without a verdict, only if bindings from an outage
    in progress were persisted (a restart mid-outage)."""
    if verdict.serve_locally is None:
        return resumed_outage
    return verdict.serve_locally


def fast_fail_targets(config: SipConfig) -> list[tuple[str, int | None]]:
    """sip.fast_fail_targets, or else the cloud edges' addresses (5060 and 5061)."""
    if config.fast_fail_targets:
        return [parse_hostport(target) for target in config.fast_fail_targets]
    return [(edge.address, None) for edge in config.cloud_edges]


def core_settings(config: SipConfig, ports: dict[str, int]) -> CoreSettings:
    return CoreSettings(
        realm=config.realm,
        advertised_host=config.advertised_address or config.listen_address,
        ports=dict(ports),
        algorithms=config.digest_algorithms,
        nonce_lifetime_s=config.nonce_lifetime_s,
        default_expires_s=config.default_expires_s,
        min_expires_s=config.min_expires_s,
        outage_max_expires_s=config.outage_max_expires_s,
        online_max_expires_s=config.online_max_expires_s,
        online_register=config.online_register,
        max_contacts_per_aor=config.max_contacts_per_aor,
        abuse=AbusePolicy(rate_per_s=config.rate_per_source, burst=config.burst_per_source,
                          failures_per_source=config.auth_failures_per_source,
                          users_per_source=config.auth_users_per_source,
                          failures_per_user=config.auth_failures_per_user,
                          window_s=config.auth_failure_window_s, lockout_s=config.lockout_s),
        trusted_peers=config.trusted_peers,
        gateway_uri=config.gateway_uri,
        ring_timeout_s=config.ring_timeout_s,
        emergency_without_auth=config.emergency_without_auth,
        max_calls=config.max_calls,
        dialog_idle_timeout_s=config.dialog_idle_timeout_s,
        limits=Limits(max_message_bytes=config.max_message_bytes),
    )


class SipService:
    name = "sip"

    def __init__(self, runtime: Runtime, directory: DirectoryService, *,
                 call_records: CallRecordStore,
                 wan: Callable[[], WanVerdict] | None = None) -> None:
        """``wan`` reads the WAN monitor's verdict at start; later changes come through
        :meth:`follow_wan`. Without it, ``sip.assume_wan_state`` applies."""
        self.runtime = runtime
        self.wan = wan
        self.verdict = WanVerdict(state="starting", serve_locally=None)
        self._resumed_outage = False
        self.directory_service = directory
        self.call_records = call_records
        self._recorded: dict[str, int] = {}
        """Call record id -> how far its record is written (1 started, 2 answered, 3 ended)."""
        self.config: SipConfig = runtime.config.sip
        self.core: SipCore | None = None
        self.store: SipStore | None = None
        self.ports: dict[str, int] = {}
        self.problem: str | None = None
        self.stats: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: UdpEndpoint | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: ConnectionTable | None = None
        self._pending: dict[tuple[str, str, int], list[Transmit]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flush_handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._flush_at_leisure = True
        self._notices: list[Notice] = []
        self._unsaved_aors: set[str] = set()
        self._unsaved_calls: set[Call] = set()
        self._idle_sweep_at = 0.0
        self._stopped = False
        self._unsubscribe: list[Any] = []
        self.cloudlink: CloudLink | None = None
        self._cloudlink_task: asyncio.Task | None = None
        self.fastfail: FastFail | None = None
        self._commands_registered = False
        self._gateway_down: tuple[str, int] | None = None
        # The Appliance says when the trunk gateway starts, cannot start, dies or stops
        # (followed from construction: it may go down before SIP is up).
        runtime.bus.subscribe(SubsystemChanged, lambda event: self.follow_gateway(
            None if event.up else event.reason, event.retry_in_s)
            if event.name == "gateway" else None)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> SipService:
        # Read here, not kept from construction: a start retried after a reload uses the new
        # config (a port taken at start is tried again by the Appliance with backoff).
        self.config = config = self.runtime.config.sip
        if not self._commands_registered:
            self._register_commands()  # they say why while SIP cannot start
        if not config.enabled:
            return self
        self._loop = asyncio.get_running_loop()
        self._stopped = False
        try:
            cloud_context = self._cloud_tls_context(config)
            await self._bind(config)
        except (OSError, StartFailed) as error:
            self.problem = f"cannot listen: {error}" if isinstance(error, OSError) else str(error)
            await self._close_transports()
            self.ports.clear()
            raise StartFailed(self.problem) from None
        self.problem = None
        self.store = store = SipStore(self.runtime.database)
        now, wall = self._loop.time(), time.time()
        bindings = store.load_bindings(now, wall)
        self.verdict = self._initial_verdict()
        self._resumed_outage = bool(bindings) and config.mode != "in-path"
        relay = None
        if config.mode == "in-path":
            # Mirrored bindings are persisted too; they say nothing about an outage.
            relay = RelaySettings(edges=tuple((e.transport, e.address, e.port)
                                              for e in config.cloud_edges),
                                  outage_expires_s=config.in_path_outage_expires_s)
        self.core = SipCore(core_settings(config, self.ports),
                            directory=self.directory_service.current, now=now,
                            serving=serves_handsets(self.verdict,
                                                    resumed_outage=self._resumed_outage),
                            relay=relay, relay_key=store.relay_key() if relay else None)
        self.core.set_local_calls(self.verdict.local_calls)
        self._apply_gateway()
        self.core.registrations.restore(bindings)
        for call in store.load_dialogs(now, wall):
            self._recorded[call.id] = 2
            self.core.proxy.restore_call(call, now)
        self._idle_sweep_at = now + HOUSEKEEPING_S
        self._unsubscribe.append(self.runtime.bus.subscribe(DirectoryUpdated,
                                                            self._directory_updated))
        if relay is not None:
            self._start_cloudlink(config, cloud_context)
        if config.fast_fail:
            self.fastfail = FastFail(fast_fail_targets(config))
            self._apply_fast_fail()
        self._pump()
        where = ", ".join(f"{t} {config.listen_address}:{p}" for t, p in self.ports.items())
        self.runtime.journal.record(
            "sip", "started", f"listening on {where}; "
            + ("serving handsets" if self.core.serving else "standing by"),
            {"ports": self.ports, "restored_bindings": len(bindings),
             "wan_state": self.verdict.state})
        return self

    @staticmethod
    def _cloud_tls_context(config: SipConfig) -> ssl.SSLContext | None:
        """In-path mode's TLS to the cloud's edges, verified against sip.cloud_ca_file."""
        if config.mode != "in-path" or not any(edge.transport == "tls"
                                               for edge in config.cloud_edges):
            return None
        ca_file = str(config.cloud_ca_file) if config.cloud_ca_file else None
        try:
            return cloud_tls_context(ca_file)
        except (OSError, ssl.SSLError) as error:
            raise StartFailed(
                f"sip.cloud_ca_file {ca_file or '(the system CA store)'}: cannot load it "
                f"({error}); put the CA certificates (PEM) that sign the cloud edges' "
                "certificates there and reload (systemctl reload jbcd)") from None

    def _start_cloudlink(self, config: SipConfig, context: ssl.SSLContext | None) -> None:
        self.cloudlink = CloudLink(
            [(e.transport, e.address, e.port, e.server_name) for e in config.cloud_edges],
            self._connections, ssl_context=context, keepalive_s=config.cloud_keepalive_s,
            on_change=self._cloud_changed)
        self._cloudlink_task = self.runtime.supervise(self.cloudlink.run, name="cloudlink",
                                                      subsystem=self.name)

    def _apply_fast_fail(self) -> None:
        """Refuse phones' packets to the cloud while serving (sip.fast_fail)."""
        fastfail, core = self.fastfail, self.core
        if fastfail is None or core is None:
            return
        wanted = core.serving

        async def apply() -> None:
            if await fastfail.set(wanted):
                self.runtime.journal.record(
                    "sip", "fast-fail", ("refusing" if wanted else "no longer refusing")
                    + " phones' packets to the cloud's SIP addresses "
                    + ", ".join(f"{a}:{p or '5060/5061'}" for a, p in fastfail.targets),
                    {"active": wanted})
            else:
                self.runtime.journal.record("sip", "fast-fail-failed", fastfail.problem or "",
                                            {"active": wanted})

        self.runtime.spawn(apply(), name="fast-fail", subsystem=self.name)

    def _cloud_changed(self, flow: Flow | None) -> None:
        core = self.core
        if core is None or core.relay is None:
            return
        core.relay.set_cloud(flow, self._loop.time())
        self._pump()
        what = f"relaying to the cloud over {self.cloudlink.describe()}" if flow else \
            "no connection to the cloud" + (f" ({self.cloudlink.last_error})"
                                            if self.cloudlink.last_error else "")
        self.runtime.journal.record("sip", "cloud-link", what,
                                    {"connected": flow is not None,
                                     "edge": self.cloudlink.describe()})

    def _initial_verdict(self) -> WanVerdict:
        verdict = self.wan() if self.wan is not None else None
        if verdict is None or verdict.serve_locally is None:
            assumed = self.config.assume_wan_state
            return WanVerdict(state=assumed, serve_locally=ASSUMED_VERDICTS[assumed],
                              cause="sip.assume_wan_state until the WAN monitor decides")
        return verdict

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self._stopped = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self._cloudlink_task is not None:
            self._cloudlink_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._cloudlink_task
        if self.fastfail is not None and self.fastfail.active:
            await self.fastfail.set(False)
        await self._close_transports()
        self.ports.clear()  # the gateway reads an empty map as "the proxy is not running"
        if self.core is not None:
            self._flush()
        for name in ("sip.phones", "sip.calls"):
            self.runtime.commands.unregister(name)
        self._commands_registered = False

    async def reconfigure(self, config: ApplianceConfig) -> None:
        if config.sip != self.config:
            log.warning("[sip] changes take effect after a restart of jbcd")
            self.runtime.journal.record("sip", "config-pending",
                                        "[sip] changed; restart jbcd to apply it")

    def calls_in_progress(self) -> int:
        """Calls the proxy is carrying now (an OS update waits for them to end)."""
        return len(self.core.proxy.active_calls()) if self.core is not None else 0

    def health(self) -> Health:
        if not self.config.enabled:
            return Health(level=HealthLevel.DISABLED, summary="disabled (sip.enabled = false)")
        if self.problem:
            return Health(level=HealthLevel.FAILED, summary=self.problem)
        core = self.core
        if core is None:
            return Health(level=HealthLevel.STARTING, summary="starting")
        now = self._loop.time()
        phones = len(core.phones(now))
        calls = len(core.proxy.active_calls())
        ports = " ".join(f"{t}:{p}" for t, p in self.ports.items())
        mode = "serving handsets" if core.serving else (
            f"relaying to the cloud ({self.cloudlink.describe()})" if self.cloudlink is not None
            else f"standing by (WAN {self.verdict.state})")
        table = self._connections
        details = {"ports": self.ports, "phones": phones, "aors": core.registrations.aor_count,
                   "connections": len(table) if table is not None else 0,
                   "max_connections": table.max_connections if table is not None else 0,
                   "calls": calls, "serving": core.serving, "wan_state": self.verdict.state,
                   "mode": self.config.mode,
                   "cloud_link": self.cloudlink.describe() if self.cloudlink else None,
                   "cloud_link_stats": self.cloudlink.report() if self.cloudlink else None,
                   "stats": dict(core.stats) | dict(self.stats),
                   "abuse": core.guard.snapshot(now)}
        if not self.directory_service.current.devices:
            return Health(level=HealthLevel.WARNING,
                          summary=f"{mode}; no devices in the directory ({ports})",
                          details=details)
        return Health(level=HealthLevel.OK,
                      summary=f"{mode}: {phones} phones, {calls} calls ({ports})",
                      details=details)

    # -- transports ---------------------------------------------------------------------------

    async def _bind(self, config: SipConfig) -> None:
        loop = self._loop
        host = config.listen_address
        limits = Limits(max_message_bytes=config.max_message_bytes)
        max_connections = config.max_connections
        if "tcp" in config.transports or "tls" in config.transports:
            max_connections, nofile = open_file_budget(max_connections, reserve=FD_RESERVE)
            if max_connections < config.max_connections:
                what = (f"sip.max_connections = {config.max_connections} does not fit the "
                        f"open-file limit ({nofile}, {FD_RESERVE} kept for the rest of jbcd): "
                        f"at most {max_connections} TCP/TLS connections at once; raise "
                        "LimitNOFILE in jbcd.service or lower sip.max_connections")
                log.warning("%s", what)
                self.runtime.journal.record("sip", "connections-limited", what,
                                            {"max_connections": max_connections,
                                             "open_file_limit": nofile})
        self._connections = ConnectionTable(
            limits=limits, max_connections=max_connections,
            max_per_source=config.max_connections_per_source,
            max_write_buffer=config.max_write_buffer_bytes, stats=self.stats,
            on_items=self._on_stream_items, on_closed=self._on_connection_closed,
            bound=self._bound_connections)
        if "udp" in config.transports:
            try:
                sock = udp_socket(host, config.udp_port, config.udp_receive_buffer_bytes)
            except OSError as error:
                raise OSError(describe_bind_error(error, "udp", host, config.udp_port)) from None
            self._udp = UdpEndpoint(sock, self._on_datagrams, self.stats)
            self.ports["udp"] = sock.getsockname()[1]
        for transport, port in (("tcp", config.tcp_port), ("tls", config.tls_port)):
            if transport not in config.transports:
                continue
            context = None
            if transport == "tls":
                try:
                    context = server_tls_context(str(config.tls_certificate),
                                                 str(config.tls_private_key))
                except (OSError, ValueError) as error:
                    raise StartFailed(
                        f"sip.tls_certificate {config.tls_certificate} / sip.tls_private_key "
                        f"{config.tls_private_key}: cannot load them ({error}); put the PEM "
                        "certificate and its key there, readable by jbcd, and reload "
                        "(systemctl reload jbcd)") from None
            try:
                server = await loop.create_server(
                    lambda t=transport: StreamConnection(self._connections, t), host, port,
                    ssl=context, reuse_address=True, backlog=512,
                    ssl_handshake_timeout=10.0 if context else None)
            except OSError as error:
                raise OSError(describe_bind_error(error, transport, host, port)) from None
            self._servers.append(server)
            self.ports[transport] = server.sockets[0].getsockname()[1]

    async def _close_transports(self) -> None:
        for server in self._servers:
            server.close()
        if self._connections is not None:
            await self._connections.close_all()
        for server in self._servers:
            try:
                async with asyncio.timeout(2.0):
                    await server.wait_closed()
            except TimeoutError:
                pass
        self._servers.clear()
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    # -- input --------------------------------------------------------------------------------

    def _on_datagrams(self, datagrams: list[tuple[bytes, Flow]]) -> None:
        core = self.core
        if core is None:
            return
        now = self._loop.time()
        receive = core.receive_datagram
        for data, flow in datagrams:
            receive(data, flow, now)
        self._pump()

    def _on_stream_items(self, items: list[Any], flow: Flow) -> None:
        core = self.core
        if core is None:
            return
        now = self._loop.time()
        for item in items:
            core.receive_stream_item(item, flow, now)
        self._pump()

    def _bound_connections(self) -> set[int]:
        """Connections that are never evicted to make room: those carrying a registration,
        and in-path mode's connection to the cloud."""
        bound = self.core.registrations.connections() if self.core is not None else set()
        cloud = self.cloudlink.connection if self.cloudlink is not None else None
        if cloud is not None:
            bound.add(cloud.id)
        return bound

    def _on_connection_closed(self, connection: int) -> None:
        if self.core is not None:
            self.core.connection_closed(connection)

    def _on_timer(self) -> None:
        # The loop may run a handle a hair before its time: never let the core see a clock
        # earlier than the deadline it asked for, or it would ask for the same one again.
        now = max(self._timer_at, self._loop.time())
        self._timer = self._timer_at = None
        self.core.handle_timer(now)
        if now >= self._idle_sweep_at and self._connections is not None:
            self._idle_sweep_at = now + HOUSEKEEPING_S
            try:
                closed = self._connections.close_idle(now, self.config.connection_idle_timeout_s)
                self.stats["connections_idle_closed"] += closed
            except Exception:
                log.exception("closing idle SIP connections failed")
        self._pump()

    # -- output -------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Drain the core after every input: send, note what to journal and persist, and
        keep the one timer on the core's deadline."""
        core = self.core
        while True:
            transmits = core.take_transmits()
            if not transmits:
                break
            for item in transmits:  # a send failure reported back may queue more
                try:
                    self._send(item)
                except Exception:
                    log.exception("sending to %r failed", item.flow)
                    self.stats["send_errors"] += 1
        notices = core.take_notices()
        changes = core.take_changes()
        for notice in notices:
            if notice.kind == "emergency-call-not-placed":
                self._alert_emergency(notice)
        if notices or changes:
            self._notices += notices
            self._unsaved_aors |= changes.aors
            self._unsaved_calls |= changes.calls
            self._schedule_flush(soon=bool(changes.calls))
        deadline = core.next_deadline()
        if deadline != self._timer_at and not self._stopped:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _alert_emergency(self, notice: Notice) -> None:
        """An emergency call the gateway never got (the proxy could not place it): the same
        event the gateway publishes for the calls it places, so sync alerts the cloud at once
        (over the backup uplink in an outage)."""
        details = notice.details
        log.error("%s", notice.reason)
        self.runtime.bus.publish(EmergencyCallStarted(
            call=details["call"], extension=details["extension"],
            caller_verified=details["caller_verified"], number=details["number"],
            location=details["location"], started_at=time.time()))

    def _send(self, item: Transmit) -> None:
        flow = item.flow
        if flow.transport == "udp":
            if self._udp is None or not self._udp.send(item.data, flow):
                self.core.transport_error(item.client_key, self._loop.time())
            return
        connection = self._connections.find(flow) if self._connections else None
        if connection is not None:
            if not connection.send(item.data):
                self.core.transport_error(item.client_key, self._loop.time())
            return
        if flow.transport != "tcp" or (flow.connection is not None and item.client_key is None):
            # A response whose connection is gone, or TLS to a handset that is no longer
            # connected (we do not open TLS connections to handsets): nothing to send on.
            self.stats["stream_destination_gone"] += 1
            self.core.transport_error(item.client_key, self._loop.time())
            return
        key = (flow.transport, flow.host, flow.port)
        queue = self._pending.get(key)
        if queue is not None:
            if len(queue) < 32:
                queue.append(item)
            else:
                self.core.transport_error(item.client_key, self._loop.time())
            return
        self._pending[key] = [item]
        self.runtime.spawn(self._connect(key), name=f"connect {flow.describe()}",
                           subsystem=self.name)

    async def _connect(self, key: tuple[str, str, int]) -> None:
        _, host, port = key
        connection: StreamConnection | None = None
        try:
            async with asyncio.timeout(5.0):
                _, connection = await self._loop.create_connection(
                    lambda: StreamConnection(self._connections, "tcp"), host, port,
                    family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        except (OSError, TimeoutError) as error:
            log.info("cannot connect to tcp %s:%s: %s", host, port, error)
        items = self._pending.pop(key, [])
        if self.core is None:
            return
        now = self._loop.time()
        for item in items:
            if connection is None or not connection.send(item.data):
                self.core.transport_error(item.client_key, now)
        self._pump()

    # -- bus ----------------------------------------------------------------------------------

    def _directory_updated(self, event: DirectoryUpdated) -> None:
        if self.core is None:
            return
        self.core.set_directory(event.directory)
        log.info("SIP now uses directory version %s (%d devices)", event.directory.version,
                 len(event.directory.devices))

    def follow_gateway(self, down: str | None, retry_after_s: float | None = None) -> None:
        """The trunk gateway stopped, cannot start or died (``down`` says why; its next start
        attempt is ``retry_after_s`` away), or runs again (None): outside and emergency calls
        get a final answer (500 with Retry-After) at once while it is down."""
        self._gateway_down = (down, max(1, round(retry_after_s or 30))) if down else None
        if self.core is not None:
            self._apply_gateway()

    def _apply_gateway(self) -> None:
        reason, retry = self._gateway_down or (None, 30)
        self.core.set_gateway_down(reason, retry)

    def follow_wan(self, verdict: WanVerdict) -> None:
        """The WAN monitor changed its verdict: serve handsets locally, or stand by. Calls in
        progress carry on either way."""
        self.verdict = verdict
        core = self.core
        if core is None:
            return
        was = core.serving
        core.set_serving(serves_handsets(verdict, resumed_outage=self._resumed_outage),
                         self._loop.time())
        core.set_local_calls(verdict.local_calls)
        if self.cloudlink is not None and not core.serving:
            self.cloudlink.kick()
        if self.fastfail is not None and core.serving != was:
            self._apply_fast_fail()
        self._pump()
        if core.serving != was:
            what = "serving handsets locally" if core.serving else (
                "relaying to the cloud again" if core.relay is not None else
                "standing by: REGISTER now " + ("accepted with online expiries"
                                                if self.config.online_register == "accept"
                                                else "refused with 503 so handsets return "
                                                "to the cloud"))
            bound = sorted({row["aor"] for row in core.phones(self._loop.time())})
            if core.serving and core.relay is not None:
                what += f" at once: {len(bound)} phones from their mirrored bindings"
            self.runtime.journal.record("sip", "mode", f"{what} (WAN {verdict.state}: "
                                        f"{verdict.cause})",
                                        {"state": verdict.state, "serving": core.serving,
                                         "calls_in_progress": len(core.proxy.active_calls()),
                                         "phones": bound})

    # -- persistence --------------------------------------------------------------------------

    def _schedule_flush(self, *, soon: bool = False) -> None:
        """Write behind: within FLUSH_DELAY_S, or ``soon`` (the loop's next turn, after
        everything that arrived with this input) when a call changed."""
        if self._loop is None or self._stopped:
            return
        if soon and self._flush_handle is not None and self._flush_at_leisure:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._flush_handle is None:
            self._flush_at_leisure = not soon
            self._flush_handle = self._loop.call_soon(self._flush) if soon else \
                self._loop.call_later(FLUSH_DELAY_S, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        core = self.core
        if core is None:
            return
        try:
            self._write_state(core)
        except Exception:
            log.exception("cannot persist SIP bindings and calls; will retry")
            self.stats["persist_errors"] += 1
            self._schedule_flush()
            return
        notices, self._notices = self._notices, []
        self._journal(notices)

    def _write_state(self, core: SipCore) -> None:
        """Write what changed, in one transaction; on failure it stays unsaved (retried)."""
        aors, calls = self._unsaved_aors, self._unsaved_calls
        if not aors and not calls:
            return
        now, wall = self._loop.time(), time.time()
        store = self.store
        with store.transaction():
            store.replace_all_bindings({aor: core.registrations.bindings_of(aor)
                                        for aor in aors}, now, wall)
            for call in calls:
                try:
                    self._write_call(call, now, wall)
                except UnknownCall:  # its record was erased ('jbc data erase') meanwhile
                    log.warning("call record %s vanished; not updating it", call.id)
                    self._recorded.pop(call.id, None)
        self._unsaved_aors, self._unsaved_calls = set(), set()

    def _write_call(self, call: Call, now: float, wall: float) -> None:
        """Bring the call's record and, while it is answered and up, its dialog row
        (routing state kept across a restart) up to date."""
        records = self.call_records
        done = self._recorded.get(call.id, 0) if call.owns_record else 3
        if done < 1:
            records.start(direction=call.direction, from_party=call.caller,
                          to_party=call.callee, emergency=call.emergency,
                          location=call.location, record_id=call.id,
                          at=_wall(call.started_at, now, wall))
            done = 1
        if done < 2 and call.answered_at is not None:
            records.answered(call.id, at=_wall(call.answered_at, now, wall))
            done = 2
        if call.ended_at is not None:
            if done < 3:
                records.ended(call.id, result=call.record_result,
                              cause=f"{call.result} ({call.ended_by})" if call.ended_by
                              else call.result, at=_wall(call.ended_at, now, wall))
            self.store.delete_dialog(call)
            self._recorded.pop(call.id, None)
            return
        self._recorded[call.id] = done
        if call.answered_at is not None:
            self.store.save_dialog(call, now, wall)

    def _journal(self, notices: list[Notice]) -> None:
        journal = self.runtime.journal
        registered = [n for n in notices if n.kind == "registered"]
        if len(registered) > SUMMARISE_OVER:
            aors = [n.details["aor"] for n in registered]
            journal.record("sip", "registered", f"{len(aors)} phones registered: "
                           f"{', '.join(aors[:8])}...", {"aors": aors})
            notices = [n for n in notices if n.kind != "registered"]
        for notice in notices:
            journal.record("sip", notice.kind, notice.reason, notice.details)

    def erase(self) -> int:
        """Customer content erasure ('jbc data erase'): every registration and persisted
        dialog. Handsets simply register again; calls in progress carry on."""
        erased = self.core.registrations.clear() if self.core is not None else 0
        if self.core is not None:
            self.core.sightings.clear()
        if self.config.enabled:
            if self.store is None:
                self.store = SipStore(self.runtime.database)
            bindings, dialogs = self.store.erase()
            erased = max(erased, bindings) + dialogs
        return erased

    # -- control commands ---------------------------------------------------------------------

    def _register_commands(self) -> None:
        self._commands_registered = True
        commands = self.runtime.commands
        commands.register("sip.phones", self._cmd_phones, role=Role.TECHNICIAN,
                          summary="registered handsets: extension, contact, transport, source, "
                          "expiry, user agent")
        commands.register("sip.calls", self._cmd_calls, role=Role.TECHNICIAN,
                          summary="calls through the local proxy: parties, state, duration")

    def _require_core(self) -> SipCore:
        if self.core is None:
            raise CommandError("unavailable", self.problem or
                               "the SIP registrar is not running (sip.enabled = false?)")
        return self.core

    async def _cmd_phones(self, context: CommandContext) -> dict[str, Any]:
        core = self._require_core()
        now = self._loop.time()
        return {"serving": core.serving, "wan_state": self.verdict.state,
                "mode": self.config.mode,
                "relaying": core.relay is not None and not core.serving
                and core.relay.cloud is not None,
                "cloud_link": self.cloudlink.describe() if self.cloudlink else None,
                "cloud_link_stats": self.cloudlink.report() if self.cloudlink else None,
                "phones": core.phones(now)}

    async def _cmd_calls(self, context: CommandContext) -> dict[str, Any]:
        core = self._require_core()
        recent = context.arg("recent", int, 0)
        if not 0 <= recent <= 1000:
            raise CommandError("bad_request", "'recent' must be between 0 and 1000")
        now = self._loop.time()
        calls = [call_state_row(c, now) for c in core.proxy.active_calls()]
        calls.sort(key=lambda c: -c["duration_s"])
        result: dict[str, Any] = {"calls": calls}
        if recent:
            self._flush()
            result["recent"] = [record.to_upload() for record in
                                self.call_records.recent(recent)]
        return result


def _wall(mono: float | None, now: float, wall: float) -> float | None:
    return None if mono is None else wall + (mono - now)



