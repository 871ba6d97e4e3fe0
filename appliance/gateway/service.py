"""The gateway subsystem: bridges SIP calls from the proxy to the trunks and back.

Outbound: the proxy sends external and emergency numbers to the gateway's loopback SIP agent,
which listens where ``sip.gateway_uri`` says. The gateway picks a trunk
by policy (configured order, health, free capacity), dials, relays ringback (180) or early
media (183), answers when the far end does, bridges audio (pjsua2 conference <-> trunk frame
queues, echo canceller and jitter buffer on the trunk side) and relays DTMF and hang-up.
Failures answer 486 / 503 + Retry-After / 480 / 404 / 484.

Emergency: always gets a trunk, pre-empting the lowest-priority non-emergency call (which
hears a tone); ``EmergencyCallStarted`` goes on the bus at once (sync alerts the cloud); the
directory's notify extensions get a MESSAGE and/or a ringing call naming the calling extension
(and whether the proxy verified it) and its dispatchable location; calls arriving on that
trunk within the call-back window ring the extension that called first.

Inbound: a ringing trunk becomes an INVITE through the proxy to the trunk's route from the
directory (extension or ring group, then the fallback), with the caller ID in From and
P-Asserted-Identity; the trunk is answered when a handset answers.

Every call gets exactly one call record (appliance/store/call_records.py) and journal
entries: a call the proxy routed to the gateway has the proxy's record (named in
X-JBC-Call-Record), to which the gateway adds the trunk; a call arriving on a trunk, a test
call and an emergency call-back have the gateway's own, whose id the gateway passes on to the
proxy in the same header. The on-site notification calls have records of their own kind
(``notification``), which are never uploaded as customer calls.

Each call is a session (``calls.py``) running a pure call core (``callcore.py`` and one module
per kind); this module routes the agent's and the trunks' events to the sessions, keeps what
outlives one call (emergency memos for call-backs) and answers the control commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from appliance.config import ApplianceConfig
from appliance.control.commands import CommandContext, CommandError, Role
from appliance.directory.model import Directory
from appliance.runtime import Health, HealthLevel, Runtime, SubsystemFailed
from appliance.supervision import StartFailed
from drivers.trunk import (
    CallAlerting,
    CallAnswered,
    CallEnded,
    CallState,
    DtmfReceived,
    HealthChanged,
    IncomingCall,
    Trunk,
    TrunkCall,
    TrunkEvent,
)

from . import policy, scheduling
from .callcore import Shutdown, TrunkAudioProblem
from .calls import (
    AgentHandle,
    CallRecorder,
    EmergencyNotification,
    InboundCall,
    OutboundCall,
    Session,
    TestCall,
)
from .config import GatewayAddressError, GatewayConfig, gateway_addresses
from .events import EmergencyCallStarted

log = logging.getLogger(__name__)

UNBOUND_EVENT_TTL_S = 10.0


class TrunkSource(Protocol):
    """Where the gateway finds the trunks, in configured order (the trunk pool)."""

    def trunks(self) -> Sequence[Trunk]: ...


class DirectorySource(Protocol):
    current: Directory


class ProxyPorts(Protocol):
    """The SIP proxy subsystem, for the ports it actually bound (0 in config = any); empty
    while it is not running (it could not start, or stopped)."""

    ports: dict[str, int]


class Gateway:
    name = "gateway"

    def __init__(self, runtime: Runtime, *, directory: DirectorySource, trunks: TrunkSource,
                 records: CallRecorder | None = None, proxy: ProxyPorts | None = None,
                 config: GatewayConfig | None = None) -> None:
        self.runtime = runtime
        self._proxy = proxy
        self._given_config = config
        self.config: GatewayConfig = config or runtime.config.gateway
        self._directory = directory
        self._trunks = trunks
        self.records = records
        self.thread = None
        self.agent: AgentHandle | None = None  # type: ignore[assignment]
        self.sessions: dict[str, Session] = {}
        self._by_leg: dict[int, Session] = {}
        self._by_trunk_call: dict[int, Session] = {}
        self._unbound: dict[int, list[tuple[float, TrunkEvent]]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._memos: list[policy.EmergencyCallMemo] = []
        self._tasks: set[asyncio.Task] = set()
        self.problem: str | None = None
        self.calls_handled = 0
        self._commands_registered = False
        self._loop_scheduling: scheduling.Previous | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        # Read here: a start retried after a reload uses the new config.
        self.config = self._given_config or self.runtime.config.gateway
        if not self._commands_registered:
            self._register_commands()
        if not self.config.enabled:
            return self
        from .agent import start_agent
        from .pjthread import PjsuaThread

        try:
            settings = self.agent_settings(self.config)
        except GatewayAddressError as error:
            self.problem = str(error)
            raise StartFailed(self.problem) from None
        thread = PjsuaThread(start_agent(settings, self._on_agent),
                             teardown=lambda agent: agent.shutdown(), name="pjsua",
                             on_crash=self._agent_crashed)
        try:
            agent = await thread.start()
        except Exception as error:
            self.problem = f"SIP media agent failed to start: {error}"
            raise StartFailed(self.problem) from None
        self.problem = None
        self.thread = thread
        self.agent = AgentHandle(thread, agent)
        for trunk in self._trunks.trunks():
            self._listeners.append(trunk.add_listener(self._trunk_listener(trunk)))
        self._seed_emergency_memos()
        self.runtime.journal.record(
            "gateway", "started", f"SIP agent on {settings.sip_address}:{agent.sip_port}, "
            f"calls to handsets via {settings.proxy_uri}, {len(self._trunks.trunks())} "
            "trunk(s)", {"sip_port": agent.sip_port, "proxy": settings.proxy_uri})
        # the trunk drivers read and pace the modems' audio on this loop: it is an audio
        # thread too while the gateway runs (see scheduling.py); put back in __aexit__
        # (last: nothing after it can fail and skip __aexit__)
        self._loop_scheduling = scheduling.raise_this_thread(self.config.realtime_priority,
                                                             "event loop")
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        for session in list(self.sessions.values()):
            session.deliver(Shutdown())
        tasks = [s.task for s in self.sessions.values() if s.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=3.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        for remove in self._listeners:
            with contextlib.suppress(Exception):
                remove()
        self._listeners.clear()
        if self.thread is not None:
            await self.thread.stop()
            self.thread = None
            from .media import TrunkMediaPort

            TrunkMediaPort.clock_stopped()  # pjsua2's threads are gone: their ids may recur
            for native_id in getattr(getattr(self.agent, "agent", None), "media_threads", ()):
                scheduling.forget(native_id)
        scheduling.restore(self._loop_scheduling)
        self._loop_scheduling = None
        self.agent = None
        self._unregister_commands()

    def _agent_crashed(self, error: BaseException) -> None:
        """The pjsua thread died of an error while running (its library is torn down, so
        every call through it is gone): say so, and let the Appliance stop this gateway and
        start it again with backoff; meanwhile the proxy answers outside calls at once."""
        if self.thread is None:
            return  # stopping anyway
        self.problem = (f"SIP media agent crashed ({type(error).__name__}: {error}); the "
                        "calls through it were cut")
        self.runtime.bus.publish(SubsystemFailed(name=self.name, reason=self.problem))

    def agent_settings(self, config: GatewayConfig):
        from .agent import AgentSettings

        address, port, proxy_uri = gateway_addresses(
            config, getattr(self.runtime.config, "sip", None),
            getattr(self._proxy, "ports", None))
        return AgentSettings(
            sip_address=address, sip_port=port, proxy_uri=proxy_uri, domain=config.domain,
            media_address=config.media_address, rtp_port=config.rtp_port,
            rtp_port_range=config.rtp_port_count, codecs=tuple(config.codecs),
            jb_max_ms=config.handset_jitter_max_ms, log_level=config.pj_log_level,
            realtime_priority=config.realtime_priority)

    def proxy_problem(self) -> str | None:
        """Why handsets cannot be rung now (the SIP proxy is not running), else None."""
        if self._proxy is None or self._proxy.ports:
            return None
        return "the SIP proxy is not running, so no handset can be rung (see 'jbc status')"

    def calls_in_progress(self) -> int:
        """Trunk calls up now (an OS update waits for them to end)."""
        return sum(1 for s in self.sessions.values() if s.trunk_call is not None)

    def health(self) -> Health:
        if not self.config.enabled:
            return Health(level=HealthLevel.DISABLED, summary="disabled in appliance.toml")
        if self.problem:
            return Health(level=HealthLevel.FAILED, summary=self.problem)
        if self.thread is None or not self.thread.running:
            return Health(level=HealthLevel.FAILED, summary="SIP media agent is not running")
        trunks = self._trunks.trunks()
        ready = [t.name for t in trunks if t.health().can_place_calls]
        active = sum(1 for s in self.sessions.values() if s.trunk_call is not None)
        details = {"active_calls": active, "ready_trunks": ready,
                   "calls_handled": self.calls_handled}
        if not trunks:
            return Health(level=HealthLevel.WARNING, summary="no trunks configured: outside "
                          "calls get 503", details=details)
        if not ready:
            return Health(level=HealthLevel.WARNING, summary="no trunk can place calls now "
                          "(see 'jbc trunks')", details=details)
        sip = getattr(self.runtime.config, "sip", None)
        if (ipaddress.ip_address(self.config.media_address).is_loopback and sip is not None
                and not ipaddress.ip_address(sip.listen_address).is_loopback):
            return Health(level=HealthLevel.WARNING, summary="gateway.media_address is "
                          f"{self.config.media_address}: handsets on the LAN cannot send "
                          "trunk-call audio there; set it to the LAN address", details=details)
        return Health(level=HealthLevel.OK,
                      summary=f"{active} trunk call(s); ready: {', '.join(ready)}",
                      details=details)

    async def reconfigure(self, config: ApplianceConfig) -> None:
        new = config.gateway
        old = self.config
        self.config = new
        if self.thread is not None and self.agent is not None:
            if (new.sip_address, new.sip_port, new.enabled) != (
                    old.sip_address, old.sip_port, old.enabled):
                log.warning("gateway: SIP address/port or enabled changed; restart jbcd to "
                            "apply (the rest is applied now)")
            try:
                settings = self.agent_settings(new)
            except GatewayAddressError as error:
                log.error("gateway: new config not applied: %s", error)
                return
            await self.thread.call(self.agent.agent.reconfigure, settings)

    # -- queries for sessions ----------------------------------------------------------------

    def directory(self) -> Directory:
        return self._directory.current

    def trunk_named(self, name: str) -> Trunk | None:
        for trunk in self._trunks.trunks():
            if trunk.name == name:
                return trunk
        return None

    def trunk_views(self) -> list[policy.TrunkView]:
        views = []
        for order, trunk in enumerate(self._trunks.trunks()):
            active = sum(1 for c in trunk.calls() if c.state is not CallState.ENDED)
            views.append(policy.TrunkView(name=trunk.name, order=order, health=trunk.health(),
                                          active_calls=active, max_calls=trunk.max_calls))
        return views

    def select(self, *, emergency: bool, only: str | None = None) -> policy.Selection:
        return policy.select_trunks(self.trunk_views(), emergency=emergency, only=only)

    def preemption_victim(self, full: Sequence[str]) -> Session | None:
        views = [v for v in (s.active_view() for s in self.sessions.values()) if v]
        victim = policy.preemption_victim(views, list(full))
        return self.sessions.get(victim.key) if victim else None

    async def preempt(self, victim: Session, *, by: Session) -> bool:
        """End ``victim`` for emergency call ``by``; True once its trunk slot is free."""
        call = victim.core
        self.journal("call-preempted", f"{victim.key} ({call.from_party} -> "
                     f"{call.to_party} on {call.trunk or '?'}) "
                     f"ended for emergency call {by.key}",
                     {"call": victim.key, "by": by.key})
        done = victim.preempt(by.key)
        try:
            await asyncio.wait_for(done, 10.0)
        except TimeoutError:
            log.error("pre-empting %s for %s took too long", victim.key, by.key)
            return False
        # the driver frees the slot when the modem confirms the hang-up
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if call.trunk_call is None or call.trunk_call.state is CallState.ENDED:
                return True
            await asyncio.sleep(0.05)
        return True

    def inbound_targets(self, trunk: str) -> tuple[list[str], policy.EmergencyCallMemo | None]:
        """Where a call arriving on ``trunk`` rings, in order, and the emergency call it
        presumably calls back (whose extension then rings first)."""
        directory = self.directory()
        targets: list[str] = []
        memo = policy.callback_extension(self._memos, trunk=trunk, now=time.time(),
                                         window_s=directory.emergency.callback_window_s)
        if memo is not None:
            targets.append(memo.extension)
        route = directory.inbound_route(trunk)
        if route is not None:
            targets.append(route.target)
            if route.fallback:
                targets.append(route.fallback)
        elif self.config.inbound_fallback:
            targets.append(self.config.inbound_fallback)
        return list(dict.fromkeys(targets)), memo

    # -- emergency ---------------------------------------------------------------------------

    def emergency_started(self, session: OutboundCall) -> None:
        directory = self.directory()
        call = session.core
        ext = call.extension
        extension = directory.extension(ext) if ext else None
        verified = call.invite is not None and call.invite.asserted_user is not None
        if ext:
            notes = [extension.name] if extension else []
            if not verified:
                notes.append("caller ID not authenticated")
            who = f"ext {ext}" + (f" ({', '.join(notes)})" if notes else "")
        else:
            who = "an unknown extension"
        where = call.location or "location unknown"
        text = (f"EMERGENCY CALL: {who} dialled {call.number} at "
                f"{time.strftime('%H:%M:%S')}. Location: {where}")
        self.journal("emergency-call", text, {"call": session.key, "extension": ext,
                                              "number": call.number, "location": where})
        self.runtime.bus.publish(EmergencyCallStarted(
            call=session.key, extension=ext, caller_verified=verified, number=call.number,
            location=call.location, started_at=session.started_wall))
        targets = [e for e in directory.emergency.notify_extensions if e != ext]
        if not targets or self.agent is None:
            return
        display = f"EMERGENCY {call.number} {who}"[:60]
        domain = self.config.domain
        if "message" in self.config.emergency_notify:
            for target in targets:
                tag = f"{session.key}:{target}"
                self._spawn(self._notify_message(f"sip:{target}@{domain}", text, tag))
        if "ring" in self.config.emergency_notify:
            for target in targets:
                self.start_session(EmergencyNotification(self, target, text, display))
        self.journal("emergency-notify", f"{session.key}: notifying {', '.join(targets)} "
                     f"by {' and '.join(self.config.emergency_notify)}",
                     {"call": session.key, "extensions": targets})

    async def _notify_message(self, uri: str, text: str, tag: str) -> None:
        try:
            await self.agent.send_message(uri, text, tag)
        except Exception as error:
            self.journal("emergency-notify-failed", f"MESSAGE to {uri}: {error}", {"tag": tag})

    def remember_emergency(self, session: OutboundCall) -> None:
        call = session.core
        if call.trunk is None:
            return
        self._memos.append(policy.EmergencyCallMemo(
            extension=call.extension or "", trunk=call.trunk, dialled=call.number,
            at=time.time()))
        self._memos = [m for m in self._memos if time.time() - m.at < 86400][-50:]

    def _seed_emergency_memos(self) -> None:
        """After a restart, emergency calls still within their call-back window come from
        the call records, so a call-back still rings the extension that called."""
        recent = getattr(self.records, "recent", None)
        if recent is None:
            return
        try:
            records = recent(200)
        except Exception:
            log.exception("cannot read recent call records")
            return
        directory = self.directory()
        for record in records:
            if record.direction != "emergency" or not record.trunk or not record.from_party:
                continue
            # the proxy writes "101 (unverified)" for callers it let through unauthenticated
            extension = record.from_party.split()[0]
            if directory.extension(extension) is None:
                continue
            self._memos.append(policy.EmergencyCallMemo(
                extension=extension, trunk=record.trunk, dialled=record.to_party,
                at=record.ended_at or record.started_at))

    # -- sessions ----------------------------------------------------------------------------

    def start_session(self, session: Session) -> Session:
        self.sessions[session.key] = session
        session.task = asyncio.get_running_loop().create_task(session.run(),
                                                               name=f"gateway:{session.key}")
        return session

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def bind_leg(self, session: Session, leg: int) -> None:
        self._by_leg[leg] = session

    def bind_trunk_call(self, session: Session, call: TrunkCall) -> None:
        self._by_trunk_call[call.id] = session
        for _, event in self._unbound.pop(call.id, []):
            session.deliver(event)

    def session_finished(self, session: Session) -> None:
        call = session.core
        self.sessions.pop(session.key, None)
        for leg in [leg for leg, s in self._by_leg.items() if s is session]:
            self._by_leg.pop(leg, None)
        if call.trunk_call is not None:
            self._by_trunk_call.pop(call.trunk_call.id, None)
        if call.emergency and call.trunk is not None:
            for index, memo in enumerate(self._memos):  # the window runs from the call's end
                if memo.trunk == call.trunk and memo.extension == (
                        getattr(call, "extension", None) or ""):
                    self._memos[index] = policy.EmergencyCallMemo(
                        extension=memo.extension, trunk=memo.trunk, dialled=memo.dialled,
                        at=time.time())
        if isinstance(session, EmergencyNotification):
            return
        self.calls_handled += 1
        self.journal("call-ended", f"{session.key}: {call.direction} {call.from_party} "
                     f"-> {call.to_party}: {call.result}"
                     + (f" ({call.cause})" if call.cause else ""),
                     {"call": session.key, "result": call.result, "trunk": call.trunk,
                      "record": session.record_id})

    def annotate_record(self, record_id: str, *, trunk: str | None,
                        location: str | None = None) -> None:
        """Add the trunk (and location) to a record the SIP proxy opened. The proxy writes
        its records a fraction of a second behind, so a record not there yet is retried."""
        records = self.records
        if records is None or not hasattr(records, "annotate"):
            return

        async def annotate() -> None:
            from appliance.store.call_records import UnknownCall

            for _ in range(40):
                try:
                    records.annotate(record_id, trunk=trunk, location=location)
                    return
                except UnknownCall:
                    await asyncio.sleep(0.25)
            log.warning("call record %s never appeared; its trunk (%s) is not recorded",
                        record_id, trunk)

        self._spawn(annotate())

    def journal(self, kind: str, reason: str, details: dict[str, Any] | None = None) -> None:
        self.runtime.journal.record("gateway", kind, reason, details or {})

    # -- event routing -----------------------------------------------------------------------

    def _on_agent(self, event) -> None:
        from .leg_events import LegOffered, MessageStatus

        if isinstance(event, LegOffered):
            session = OutboundCall(self, event)
            self._by_leg[event.leg] = session
            self.start_session(session)
            return
        if isinstance(event, MessageStatus):
            ok = 200 <= event.status < 300
            self.journal("emergency-notified" if ok else "emergency-notify-failed",
                         f"MESSAGE {event.tag}: {event.status} {event.reason}",
                         {"tag": event.tag, "status": event.status})
            return
        session = self._by_leg.get(event.leg)
        if session is not None:
            session.deliver(event)

    def _trunk_listener(self, trunk: Trunk) -> Callable[[TrunkEvent], None]:
        def listener(event: TrunkEvent) -> None:
            if isinstance(event, IncomingCall):
                if self.agent is None:
                    return
                session = InboundCall(self, trunk, event.call)
                self._by_trunk_call[event.call.id] = session
                self.start_session(session)
                return
            if isinstance(event, HealthChanged):
                # the trunk's audio path (one-way audio: no or silent downlink) on its calls
                for session in list(self.sessions.values()):
                    call = session.core
                    if call.trunk == trunk.name and call.trunk_call is not None \
                            and not call.ended:
                        session.deliver(TrunkAudioProblem(event.health.audio))
                return
            if isinstance(event, CallAlerting | CallAnswered | CallEnded | DtmfReceived):
                session = self._by_trunk_call.get(event.call.id)
                if session is not None:
                    session.deliver(event)
                    return
                now = time.monotonic()
                self._unbound.setdefault(event.call.id, []).append((now, event))
                for call_id in [k for k, v in self._unbound.items()
                                if now - v[0][0] > UNBOUND_EVENT_TTL_S]:
                    del self._unbound[call_id]

        return listener

    # -- control commands --------------------------------------------------------------------

    def _register_commands(self) -> None:
        commands = self.runtime.commands
        commands.register("gateway.calls", self._cmd_calls, role=Role.TECHNICIAN,
                          summary="trunk calls in progress, and the latest call records")
        commands.register("gateway.test_call", self._cmd_test_call, role=Role.ADMIN,
                          summary="place a test call on a trunk and report connect and audio")
        self._commands_registered = True

    def _unregister_commands(self) -> None:
        if self._commands_registered:
            self.runtime.commands.unregister("gateway.calls")
            self.runtime.commands.unregister("gateway.test_call")
            self._commands_registered = False

    async def _cmd_calls(self, context: CommandContext) -> dict[str, Any]:
        recent_limit = context.arg("recent", int, 10)
        if not 0 <= recent_limit <= 500:
            raise CommandError("bad_request", "'recent' must be between 0 and 500")
        active = []
        for session in list(self.sessions.values()):
            if isinstance(session, EmergencyNotification):
                continue
            row = session.summary()
            leg = getattr(session.core, "leg", None)
            if self.agent is not None and leg is not None:
                with contextlib.suppress(Exception):
                    info = await self.agent.leg_info(leg) or {}
                    for key in ("audio", "rtp"):
                        if info.get(key):
                            row[key] = info[key]
            active.append(row)
        recent = []
        records = self.records
        if records is not None and recent_limit and hasattr(records, "recent"):
            for record in records.recent(recent_limit * 3):
                if record.ended_at is None:
                    continue
                recent.append({
                    "record": record.id, "direction": record.direction,
                    "from": record.from_party, "to": record.to_party, "trunk": record.trunk,
                    "started_at": record.started_at, "answered_at": record.answered_at,
                    "ended_at": record.ended_at, "result": record.result,
                    "cause": record.cause, "emergency": record.emergency,
                    "duration_s": round(record.ended_at - record.started_at, 1),
                    "talk_s": round(record.ended_at - record.answered_at, 1)
                    if record.answered_at else None})
                if len(recent) >= recent_limit:
                    break
        trunks = [{"trunk": v.name, "state": v.health.state.value,
                   "calls": v.active_calls, "max_calls": v.max_calls}
                  for v in self.trunk_views()]
        return {"active": active, "recent": recent, "trunks": trunks,
                "enabled": self.config.enabled, "running": self.agent is not None}

    async def _cmd_test_call(self, context: CommandContext) -> dict[str, Any]:
        number = context.arg("number", str)
        trunk = context.arg("trunk", str, None)
        if not number or not all(ch.isdigit() or ch in "+*#" for ch in number):
            raise CommandError("bad_request", f"{number!r} is not a phone number")
        if self.agent is None:
            raise CommandError("unavailable", "the gateway is not running (see 'jbc status')")
        if trunk is not None and self.trunk_named(trunk) is None:
            names = ", ".join(t.name for t in self._trunks.trunks()) or "none configured"
            raise CommandError("not_found", f"no trunk named {trunk!r} (trunks: {names})")
        return await self.test_call(number, trunk, requested_by=context.peer.user)

    async def test_call(self, number: str, trunk: str | None, *,
                        requested_by: str) -> dict[str, Any]:
        """Dial ``number`` (on ``trunk``, or the first that can), send a tone, listen: the
        report 'jbc test-call' prints (also used by 'jbc selftest' and 'jbc drill')."""
        if self.agent is None:
            raise CommandError("unavailable", "the gateway is not running (see 'jbc status')")
        session = TestCall(self, number, trunk, requested_by)
        self.start_session(session)
        return await session.done
