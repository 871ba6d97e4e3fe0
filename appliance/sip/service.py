"""The SIP subsystem: the asyncio shell around :class:`~appliance.sip.core.SipCore`.

It binds the transports, feeds the core bytes and ``loop.time()``, sends what the core puts
in its outbox, re-arms one ``loop.call_at`` timer for the core's next deadline, persists
bindings and call records (write-behind, within a fraction of a second, in one transaction),
records the core's notices in the journal, follows :class:`DirectoryUpdated` and
:class:`WanStateChanged` live, and answers ``sip.phones`` and ``sip.calls``.

Time: the core runs on the loop's monotonic clock. Persisted times are wall-clock; they are
converted on the way in and out, so a restart mid-outage resumes every binding with the time
it had left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import Counter
from typing import Any

from appliance.config import ApplianceConfig
from appliance.control.commands import CommandContext, CommandError, Role
from appliance.directory.events import DirectoryUpdated
from appliance.directory.service import DirectoryService
from appliance.runtime import Health, HealthLevel, Runtime
from appliance.store.call_records import CallRecordStore, UnknownCall
from appliance.wan.events import WanState, WanStateChanged, WanView, initial_wan_state

from .abuse import AbusePolicy
from .config import SipConfig
from .core import CoreSettings, Notice, SipCore
from .flow import Flow
from .parser import Limits
from .proxy import Call, call_state_row
from .registrar import Binding
from .transaction import Transmit
from .transport import (
    ConnectionTable,
    StreamConnection,
    UdpEndpoint,
    describe_bind_error,
    server_tls_context,
    udp_socket,
)
from .uri import SipUri

log = logging.getLogger(__name__)

SCHEMA = [
    """
    CREATE TABLE sip_bindings (
        aor TEXT NOT NULL,
        binding_key TEXT NOT NULL,
        contact TEXT NOT NULL,
        q REAL NOT NULL,
        expires_at REAL NOT NULL,
        call_id TEXT NOT NULL,
        cseq INTEGER NOT NULL,
        transport TEXT NOT NULL,
        source_host TEXT NOT NULL,
        source_port INTEGER NOT NULL,
        device_id TEXT NOT NULL,
        user_agent TEXT NOT NULL,
        instance TEXT,
        reg_id TEXT,
        registered_at REAL NOT NULL,
        PRIMARY KEY (aor, binding_key)
    );
    CREATE TABLE sip_dialogs (
        id TEXT PRIMARY KEY,
        call_id TEXT NOT NULL,
        caller_tag TEXT NOT NULL,
        to_tags TEXT NOT NULL,
        caller TEXT NOT NULL,
        callee TEXT NOT NULL,
        kind TEXT NOT NULL,
        direction TEXT NOT NULL,
        emergency INTEGER NOT NULL,
        state TEXT NOT NULL,
        started_at REAL NOT NULL,
        answered_at REAL NOT NULL
    )
    """,
]

FLUSH_DELAY_S = 0.2
"""Bindings, dialogs and call records reach the database this long after they change, in one
transaction."""
HOUSEKEEPING_S = 5.0
SUMMARISE_OVER = 10
"""More registration notices than this in one flush become one summary journal entry."""


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
                 call_records: CallRecordStore, wan: WanView | None = None) -> None:
        self.runtime = runtime
        self.wan = wan
        self.directory_service = directory
        self.call_records = call_records
        self._recorded: dict[str, int] = {}
        """Call record id -> how far its record is written (1 started, 2 answered, 3 ended)."""
        self.config: SipConfig = runtime.config.sip
        self.core: SipCore | None = None
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
        self._flush_handle: asyncio.TimerHandle | None = None
        self._notices: list[Notice] = []
        self._unsubscribe: list[Any] = []
        self._housekeeping: asyncio.TimerHandle | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> SipService:
        config = self.config
        self._register_commands()
        if not config.enabled:
            return self
        self._loop = asyncio.get_running_loop()
        database = self.runtime.database
        database.migrate("sip", SCHEMA)
        now, wall = self._loop.time(), time.time()
        bindings = self._load_bindings(now, wall)
        try:
            await self._bind(config)
        except OSError as error:
            self.problem = str(error)
            log.error("SIP is not serving: %s", error)
            self.runtime.journal.record("sip", "failed", f"cannot listen: {error}")
            await self._close_transports()
            return self
        initial = initial_wan_state(self.wan, WanState(config.assume_wan_state))
        self.core = SipCore(core_settings(config, self.ports),
                            directory=self.directory_service.current, wan_state=initial,
                            resumed_outage=bool(bindings))
        self.core.registrations.restore(bindings)
        for call in self._load_dialogs(now, wall):
            self.core.proxy.restore_call(call, now)
        bus = self.runtime.bus
        self._unsubscribe.append(bus.subscribe(DirectoryUpdated, self._directory_updated))
        self._unsubscribe.append(bus.subscribe(WanStateChanged, self._wan_changed))
        self._housekeeping = self._loop.call_later(HOUSEKEEPING_S, self._housekeep)
        where = ", ".join(f"{t} {config.listen_address}:{p}" for t, p in self.ports.items())
        self.runtime.journal.record(
            "sip", "started", f"listening on {where}; "
            + ("serving handsets" if self.core.serving else "standing by"),
            {"ports": self.ports, "restored_bindings": len(bindings),
             "wan_state": initial.value})
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self._timer is not None:
            self._timer.cancel()
        await self._close_transports()
        if self.core is not None:
            self._flush()
        for name in ("sip.phones", "sip.calls"):
            self.runtime.commands.unregister(name)

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
        mode = "serving handsets" if core.serving else \
            f"standing by (WAN {core.wan_state.value})"
        details = {"ports": self.ports, "phones": phones, "aors": core.registrations.aor_count,
                   "calls": calls, "serving": core.serving, "wan_state": core.wan_state.value,
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
        self._connections = ConnectionTable(
            limits=limits, max_connections=config.max_connections,
            max_per_source=config.max_connections_per_source,
            max_write_buffer=config.max_write_buffer_bytes, stats=self.stats,
            on_items=self._on_stream_items, on_closed=self._on_connection_closed)
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
                    raise OSError(f"sip.tls_certificate / sip.tls_private_key: cannot load "
                                  f"them: {error}") from None
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

    def _on_connection_closed(self, connection: int) -> None:
        if self.core is not None:
            self.core.connection_closed(connection)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timers(self._loop.time())
        self._pump()

    # -- output -------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send what the core produced, note what to persist, re-arm the timer."""
        core = self.core
        outbox = core.outbox
        while outbox:
            batch = outbox[:]
            outbox.clear()
            for item in batch:
                try:
                    self._send(item)
                except Exception:
                    log.exception("sending to %r failed", item.flow)
                    self.stats["send_errors"] += 1
        if core.notices:
            self._notices.extend(core.notices)
            core.notices.clear()
            self._schedule_flush()
        elif core.registrations.dirty or core.proxy.dirty:
            self._schedule_flush()
        deadline = core.next_deadline()
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

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

    def _wan_changed(self, event: WanStateChanged) -> None:
        core = self.core
        if core is None:
            return
        was = core.serving
        core.set_wan_state(event.state)
        if core.serving != was:
            what = "serving handsets locally" if core.serving else (
                "standing by: REGISTER now " + ("accepted with online expiries"
                                                if self.config.online_register == "accept"
                                                else "refused with 503 so handsets return "
                                                "to the cloud"))
            self.runtime.journal.record("sip", "mode", f"{what} (WAN {event.state.value}: "
                                        f"{event.cause})",
                                        {"state": event.state.value, "serving": core.serving,
                                         "calls_in_progress": len(core.proxy.active_calls())})

    # -- persistence --------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_later(FLUSH_DELAY_S, self._flush)

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
        now, wall = self._loop.time(), time.time()
        registrations, proxy = core.registrations, core.proxy
        dirty_aors, dirty_calls = set(registrations.dirty), set(proxy.dirty)
        if not dirty_aors and not dirty_calls:
            return
        with self.runtime.database.transaction() as db:
            for aor in dirty_aors:
                db.execute("DELETE FROM sip_bindings WHERE aor = ?", (aor,))
                db.executemany(
                    "INSERT INTO sip_bindings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                    "?, ?)",
                    [(b.aor, b.key, b.contact, b.q, wall + (b.expires_at - now), b.call_id,
                      b.cseq, b.flow.transport, b.flow.host, b.flow.port, b.device_id,
                      b.user_agent, b.instance, b.reg_id, wall + (b.registered_at - now))
                     for b in registrations.bindings_of(aor)])
            for call in dirty_calls:
                try:
                    self._write_call(db, call, now, wall)
                except UnknownCall:  # its record was erased ('jbc data erase') meanwhile
                    log.warning("call record %s vanished; not updating it", call.id)
                    self._recorded.pop(call.id, None)
        registrations.dirty -= dirty_aors
        proxy.dirty -= dirty_calls

    def _write_call(self, db, call: Call, now: float, wall: float) -> None:
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
            db.execute("DELETE FROM sip_dialogs WHERE id = ?", (call.id,))
            self._recorded.pop(call.id, None)
            return
        self._recorded[call.id] = done
        if call.answered_at is not None:
            db.execute(
                "INSERT OR REPLACE INTO sip_dialogs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (call.id, call.call_id, call.caller_tag, json.dumps(sorted(call.to_tags)),
                 call.caller, call.callee, call.kind, call.direction, int(call.emergency),
                 call.state, _wall(call.started_at, now, wall),
                 _wall(call.answered_at, now, wall)))

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

    def _load_bindings(self, now: float, wall: float) -> list[Binding]:
        rows = self.runtime.database.connection.execute(
            "SELECT * FROM sip_bindings WHERE expires_at > ?", (wall,)).fetchall()
        self.runtime.database.connection.execute(
            "DELETE FROM sip_bindings WHERE expires_at <= ?", (wall,))
        bindings = []
        for row in rows:
            try:
                uri = SipUri.parse(row["contact"])
            except ValueError:
                continue
            bindings.append(Binding(
                aor=row["aor"], contact=row["contact"], uri=uri, key=row["binding_key"],
                q=row["q"], expires_at=now + (row["expires_at"] - wall), call_id=row["call_id"],
                cseq=row["cseq"], flow=Flow(row["transport"], row["source_host"],
                                            row["source_port"]),
                device_id=row["device_id"], user_agent=row["user_agent"],
                instance=row["instance"], reg_id=row["reg_id"],
                registered_at=now + (row["registered_at"] - wall)))
        return bindings

    def _load_dialogs(self, now: float, wall: float) -> list[Call]:
        """Answered calls that were up when jbcd stopped: their in-dialog requests (hold,
        transfer, BYE) must still be routed after the restart."""
        rows = self.runtime.database.connection.execute("SELECT * FROM sip_dialogs").fetchall()
        calls = []
        for row in rows:
            call = Call(call_id=row["call_id"], caller_tag=row["caller_tag"],
                        caller=row["caller"], callee=row["callee"], kind=row["kind"],
                        direction=row["direction"], emergency=bool(row["emergency"]),
                        now=now + (row["started_at"] - wall), record_id=row["id"],
                        # Calls from the trunk gateway carry the gateway's own record.
                        owns_record=row["direction"] != "inbound")
            call.to_tags = set(json.loads(row["to_tags"]))
            call.state = row["state"]
            call.answered_at = now + (row["answered_at"] - wall)
            self._recorded[call.id] = 2
            calls.append(call)
        return calls

    def _housekeep(self) -> None:
        """Every few seconds: expire bindings and nonces, close idle connections."""
        self._housekeeping = self._loop.call_later(HOUSEKEEPING_S, self._housekeep)
        core = self.core
        now = self._loop.time()
        try:
            core.housekeeping(now)
            if self._connections is not None:
                closed = self._connections.close_idle(now, self.config.connection_idle_timeout_s)
                self.stats["connections_idle_closed"] += closed
        except Exception:
            log.exception("SIP housekeeping failed")
        self._pump()

    def erase(self) -> int:
        """Customer content erasure ('jbc data erase'): every registration and persisted
        dialog. Handsets simply register again; calls in progress carry on."""
        erased = self.core.registrations.clear() if self.core is not None else 0
        if self.config.enabled:
            database = self.runtime.database
            database.migrate("sip", SCHEMA)
            with database.transaction() as db:
                erased = max(erased, db.execute("DELETE FROM sip_bindings").rowcount)
                erased += db.execute("DELETE FROM sip_dialogs").rowcount
        return erased

    # -- control commands ---------------------------------------------------------------------

    def _register_commands(self) -> None:
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
        return {"serving": core.serving, "wan_state": core.wan_state.value,
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



