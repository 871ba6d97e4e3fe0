"""Trunk calls as asyncio tasks: the thin shell around each call's pure core (``callcore.py``).

A :class:`Session` owns one :class:`~appliance.gateway.callcore.CallCore`. Its task reads the
session's queue (the trunk's events for its TrunkCall, the SIP agent's for its legs, the
gateway's own: pre-emption, early audio, shutdown), feeds each event to the core with the
time, and carries out the actions the core returns: the trunk (awaited directly, it is
asyncio), the pjsua thread (through :class:`AgentHandle`), call records, the journal. What an
action produced (a trunk dialled, a leg placed) goes straight back into the core. When the
core's deadline passes first, the core gets a ``Timeout``. Every decision is in the core;
nothing here decides what a call does next.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from drivers.trunk import CallState, EndCause, Trunk, TrunkBusy, TrunkCall, TrunkError

from . import callcore as cc
from .bridge import BridgeSettings, TrunkAudioBridge, rms
from .callcore import CallCore, Phase
from .inbound import InboundCore
from .leg_events import LegOffered
from .notification import NotificationCore
from .outbound import OutboundCore
from .policy import ActiveCall, FailureAnswer
from .sipmsg import CALL_RECORD_HEADER, header_text
from .testcall import TestCallCore

if TYPE_CHECKING:
    from appliance.directory.model import Directory

    from .config import GatewayConfig
    from .policy import EmergencyCallMemo, Selection

log = logging.getLogger(__name__)

_keys = itertools.count(1)


class CallRecorder(Protocol):
    """What the gateway needs of the call-record store (appliance/store/call_records.py)."""

    def start(self, *, direction: str, from_party: str, to_party: str,
              trunk: str | None = None, emergency: bool = False,
              location: str | None = None, at: float | None = None) -> str: ...

    def answered(self, record_id: str) -> None: ...

    def ended(self, record_id: str, *, result: str, cause: str = "") -> None: ...


class CallServices(Protocol):
    """What a session uses of the gateway (``service.Gateway``): the agent, the trunks, the
    records and the gateway-wide state (emergency memos, event routing). Nothing else."""

    agent: AgentHandle
    config: GatewayConfig
    records: CallRecorder | None

    def directory(self) -> Directory: ...

    def select(self, *, emergency: bool, only: str | None = None) -> Selection: ...

    def trunk_named(self, name: str) -> Trunk | None: ...

    def preemption_victim(self, full: Sequence[str]) -> Session | None: ...

    async def preempt(self, victim: Session, *, by: Session) -> bool: ...

    def inbound_targets(self, trunk: str) -> tuple[list[str], EmergencyCallMemo | None]: ...

    def bind_leg(self, session: Session, leg: int) -> None: ...

    def bind_trunk_call(self, session: Session, call: TrunkCall) -> None: ...

    def emergency_started(self, session: OutboundCall) -> None: ...

    def remember_emergency(self, session: OutboundCall) -> None: ...

    def annotate_record(self, record_id: str, *, trunk: str | None,
                        location: str | None = None) -> None: ...

    def journal(self, kind: str, reason: str, details: dict[str, Any] | None = None) -> None: ...

    def session_finished(self, session: Session) -> None: ...


class CallLog(logging.LoggerAdapter):
    """Every line about a call starts with its key (the 'call' column of 'jbc calls') and, for
    a call a handset placed, its SIP Call-ID (to find it in the proxy's log and captures)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        sip = self.extra.get("sip_call_id")
        prefix = f"{self.extra['call']} [{sip}]" if sip else self.extra["call"]
        return f"{prefix}: {msg}", kwargs


# ---------------------------------------------------------------------------------------------
# The SIP agent, as the loop sees it


class AgentHandle:
    """Loop-side calls into the agent on the pjsua thread; every method is a marshalled call."""

    def __init__(self, thread, agent) -> None:
        self.thread = thread
        self.agent = agent

    async def answer(self, leg: int, status: int, *, reason: str = "",
                     headers: Sequence[tuple[str, str]] = ()) -> None:
        await self.thread.call(self.agent.answer, leg, status, reason=reason,
                               headers=list(headers))

    async def hangup(self, leg: int, *, status: int = 0, reason: str = "",
                     headers: Sequence[tuple[str, str]] = ()) -> None:
        with contextlib.suppress(Exception):
            await self.thread.call(self.agent.hangup, leg, status=status, reason=reason,
                                   headers=list(headers))

    async def fail(self, leg: int, answer: FailureAnswer, *, warning: str = "") -> None:
        headers = []
        if answer.retry_after_s is not None:
            headers.append(("Retry-After", str(answer.retry_after_s)))
        if warning:
            headers.append(("Warning", f'399 jbc "{header_text(warning)}"'))
        await self.hangup(leg, status=answer.status, reason=answer.reason, headers=headers)

    async def require_srtp(self, leg: int) -> None:
        await self.thread.call(self.agent.require_srtp, leg)

    async def attach(self, leg: int, bridge: TrunkAudioBridge, name: str) -> None:
        await self.thread.call(self.agent.attach, leg, bridge, name)

    async def play(self, leg: int, tones: list[tuple[int, int, int, int]], *,
                   loop: bool = False) -> None:
        with contextlib.suppress(Exception):
            await self.thread.call(self.agent.play, leg, tones, loop=loop)

    async def send_dtmf(self, leg: int, digit: str) -> None:
        with contextlib.suppress(Exception):
            await self.thread.call(self.agent.send_dtmf, leg, digit)

    async def make_call(self, uri: str, *, from_uri: str,
                        headers: Sequence[tuple[str, str]] = ()) -> int:
        return await self.thread.call(self.agent.make_call, uri, from_uri=from_uri,
                                      headers=list(headers))

    async def send_message(self, uri: str, body: str, tag: str) -> None:
        await self.thread.call(self.agent.send_message, uri, body, tag)

    async def leg_info(self, leg: int) -> dict[str, Any] | None:
        return await self.thread.call(self.agent.leg_info, leg)


# ---------------------------------------------------------------------------------------------
# Sessions


class Session:
    """One call's task: feed the core, do what it says."""

    def __init__(self, gateway: CallServices, call: CallCore) -> None:
        self.gateway = gateway
        self.core = call
        self.key = call.key
        self.log = CallLog(log, {"call": call.key})
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.started_mono = time.monotonic()
        self.started_wall = time.time()
        self.trunk: Trunk | None = None
        self.record_id: str | None = None
        self.owns_record = True
        """False when the SIP proxy opened this call's record (it then writes it; the
        gateway only adds the trunk): one call, one record."""
        self.bridge: TrunkAudioBridge | None = None
        self.task: asyncio.Task | None = None
        self._slot_waiters: list[asyncio.Future] = []
        self._loop = asyncio.get_running_loop()

    @staticmethod
    def new_key() -> str:
        return f"c{next(_keys)}"

    # -- what the gateway asks of a session ------------------------------------------------

    def deliver(self, event: object) -> None:
        self.queue.put_nowait(event)

    def preempt(self, by: str) -> asyncio.Future:
        """Ask this call to give up its trunk for emergency call ``by``; the future is done
        once the trunk is hung up."""
        done = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(done)
        self.deliver(cc.Preempted(by))
        return done

    def active_view(self) -> ActiveCall | None:
        call = self.core
        if call.trunk is None or call.trunk_call is None or call.ended:
            return None
        return ActiveCall(key=self.key, trunk=call.trunk, kind=call.kind,
                          emergency=call.emergency, answered=call.answered,
                          started_at=self.started_mono)

    def summary(self) -> dict[str, Any]:
        call = self.core
        now = time.monotonic()
        return {
            "call": self.key, "direction": call.direction, "from": call.from_party,
            "to": call.to_party, "trunk": call.trunk, "state": call.phase.shown,
            "emergency": call.emergency, "started_at": self.started_wall,
            "duration_s": round(now - self.started_mono, 1),
            "talk_s": round(now - call.answered_at, 1) if call.answered_at else None,
            "codec": call.media.codec if call.media else None,
            "srtp": call.media.srtp if call.media else None,
            "record": self.record_id,
        }

    # -- the loop ----------------------------------------------------------------------------

    def begin(self) -> cc.Begin:
        return cc.Begin()

    async def run(self) -> None:
        try:
            await self._feed(self.begin())
            while not self.core.ended:
                await self._feed(await self._next_event())
        except asyncio.CancelledError:
            self.core.abandon("gateway stopping")
            raise
        except Exception as error:
            self.log.exception("call failed")
            self.core.abandon(f"internal error: {type(error).__name__}")
        finally:
            await asyncio.shield(self.finish())

    async def _next_event(self) -> object:
        deadline = self.core.deadline
        if deadline is None:
            return await self.queue.get()
        try:
            return await asyncio.wait_for(self.queue.get(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return cc.Timeout()

    async def _feed(self, event: object) -> None:
        self.log.debug("%s in phase %s", event, self.core.phase.value)
        try:
            actions = self.core.handle(event, time.monotonic())
        except cc.UnexpectedEvent as error:
            self.log.error("%s (event dropped; the call goes on)", error,
                           extra={"unexpected_event": True})
            return
        for action in actions:  # an action that has a result is the last of its list
            result = await self._execute(action)
            if result is not None:
                await self._feed(result)

    async def _execute(self, action: cc.Action) -> object | None:
        agent = self.gateway.agent
        match action:
            case cc.AnswerLeg(leg, status):
                try:
                    await agent.answer(leg, status)
                except Exception as error:
                    self.log.warning("answering leg %d with %d: %s", leg, status, error)
            case cc.FailLeg(leg, answer, warning):
                await agent.fail(leg, answer, warning=warning)
            case cc.HangupLeg(leg, headers):
                await agent.hangup(leg, headers=headers)
            case cc.RequireSrtp(leg):
                await agent.require_srtp(leg)
            case cc.AttachBridge(leg):
                await self._attach(leg)
            case cc.PlayTone(leg, tones):
                await agent.play(leg, list(tones), loop=True)
            case cc.SendDtmfToLeg(leg, digit):
                await agent.send_dtmf(leg, digit)
            case cc.RingTarget():
                return await self._ring(action)
            case cc.SelectTrunks(emergency, only):
                return cc.TrunksSelected(self.gateway.select(emergency=emergency, only=only))
            case cc.Preempt(full):
                victim = self.gateway.preemption_victim(full)
                freed = victim is not None and await self.gateway.preempt(victim, by=self)
                return cc.PreemptionDone(freed)
            case cc.Dial():
                return await self._dial(action)
            case cc.HangupTrunk():
                await self.end_trunk()
            case cc.AnswerTrunk():
                return await self._answer_trunk()
            case cc.SendDtmfToTrunk(digit):
                await self._dtmf_to_trunk(digit)
            case cc.SlotFreed():
                self._slot_free()
            case cc.Journal(kind, reason, details):
                self.gateway.journal(kind, reason, dict(details))
            case cc.StartRecord(location):
                self.record_start(location=location)
            case cc.RecordAnswered():
                self.record_answered()
            case cc.EmergencyStarted():
                self.gateway.emergency_started(self)
            case cc.RememberEmergency():
                self.gateway.remember_emergency(self)
            case cc.Listen(seconds):
                return cc.Listened(await self.listen(seconds))
            case _:
                raise TypeError(f"no way to carry out {action!r}")
        return None

    # -- actions -----------------------------------------------------------------------------

    async def _dial(self, action: cc.Dial) -> object:
        trunk = self.gateway.trunk_named(action.trunk)
        if trunk is None:
            return cc.DialFailed(action.trunk, EndCause.FAILED, "", gone=True)
        try:
            call = await trunk.dial(action.number, emergency=action.emergency)
        except TrunkBusy as error:
            return cc.DialFailed(trunk.name, error.cause, str(error), busy=True)
        except TrunkError as error:
            self.log.warning("dial on %s failed: %s", trunk.name, error)
            return cc.DialFailed(trunk.name, error.cause, str(error))
        self.trunk = trunk
        dialled = cc.Dialled(trunk.name, call, analog=trunk.kind == "voice-modem")
        self.gateway.bind_trunk_call(self, call)
        return dialled

    async def _ring(self, action: cc.RingTarget) -> object:
        problem = self.gateway.proxy_problem()
        if problem is not None:  # fail now rather than time out against a proxy not there
            self.log.warning("cannot ring %s: %s", action.target, problem)
            self.gateway.journal("call-not-delivered", f"{self.key}: cannot ring "
                                 f"{action.target}: {problem}", {"call": self.key})
            return cc.LegPlaceFailed(problem)
        headers = list(action.headers)
        if self.record_id is not None and self.owns_record:
            headers.append((CALL_RECORD_HEADER, self.record_id))
        domain = self.gateway.config.domain
        try:
            leg = await self.gateway.agent.make_call(f"sip:{action.target}@{domain}",
                                                     from_uri=action.from_uri, headers=headers)
        except Exception as error:
            self.log.warning("cannot ring %s: %s", action.target, error)
            return cc.LegPlaceFailed(str(error))
        self.gateway.bind_leg(self, leg)
        return cc.LegPlaced(leg)

    async def _answer_trunk(self) -> object:
        assert self.trunk is not None and self.core.trunk_call is not None
        try:
            await self.trunk.answer(self.core.trunk_call)
        except TrunkError as error:
            return cc.TrunkAnswerFailed(str(error))
        return cc.TrunkAnswered()

    async def _dtmf_to_trunk(self, digit: str) -> None:
        assert self.trunk is not None and self.core.trunk_call is not None
        try:
            await self.trunk.send_dtmf(self.core.trunk_call, digit)
        except TrunkError as error:
            self.log.warning("DTMF %s not sent: %s", digit, error)

    async def _attach(self, leg: int) -> None:
        call = self.core.trunk_call
        assert self.trunk is not None and call is not None
        await self.gateway.agent.attach(leg, self.make_bridge(call), f"{self.trunk.name}-{call.id}")

    def make_bridge(self, call: TrunkCall) -> TrunkAudioBridge:
        loop = self._loop
        config = self.gateway.config

        def first_audio() -> None:  # media clock thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.deliver, cc.EarlyAudio())

        settings = BridgeSettings(echo_canceller=config.echo_canceller,
                                  echo_tail_ms=config.echo_tail_ms,
                                  jitter_min_ms=config.jitter_min_ms,
                                  jitter_max_ms=config.jitter_max_ms)
        self.bridge = TrunkAudioBridge(call.uplink, call.downlink, settings,
                                       on_first_audio=first_audio)
        return self.bridge

    def _slot_free(self) -> None:
        for done in self._slot_waiters:
            if not done.done():
                done.set_result(True)
        self._slot_waiters.clear()

    async def end_trunk(self) -> None:
        call = self.core.trunk_call
        if self.trunk is not None and call is not None and call.state is not CallState.ENDED:
            try:
                await asyncio.wait_for(self.trunk.hangup(call), 10)
            except (TrunkError, TimeoutError) as error:
                self.log.warning("hanging up on %s: %s", self.trunk.name, error)

    # -- records -----------------------------------------------------------------------------

    @property
    def records(self) -> CallRecorder | None:
        return self.gateway.records

    def record_direction(self) -> str:
        call = self.core
        return "emergency" if call.emergency and call.direction == "outbound" \
            else call.direction

    def record_start(self, *, location: str | None = None) -> None:
        call = self.core
        if self.records is None:
            return
        if not self.owns_record:
            if self.record_id is not None and call.trunk is not None:
                self.gateway.annotate_record(self.record_id, trunk=call.trunk,
                                             location=location)
            return
        if self.record_id is not None:
            return
        try:
            self.record_id = self.records.start(
                direction=self.record_direction(), from_party=call.from_party or "unknown",
                to_party=call.to_party or "unknown", trunk=call.trunk,
                emergency=call.emergency, location=location, at=self.started_wall)
        except Exception:
            self.log.exception("cannot write the call record")

    def record_answered(self) -> None:
        if self.owns_record and self.records is not None and self.record_id is not None:
            try:
                self.records.answered(self.record_id)
            except Exception:
                self.log.exception("cannot update the call record")

    def record_ended(self) -> None:
        if self.owns_record and self.records is not None and self.record_id is not None:
            try:
                self.records.ended(self.record_id, result=self.core.result or "failed",
                                   cause=self.core.cause[:200])
            except Exception:
                self.log.exception("cannot close the call record")

    # -- the end -----------------------------------------------------------------------------

    async def finish(self) -> None:
        call = self.core
        call.abandon(call.cause)
        self._slot_free()
        await self.end_trunk()
        for leg in list(call.legs):
            await self.gateway.agent.hangup(leg, status=503 if not call.answered else 0)
        if self.record_id is None:  # ended before its record was opened (refused, no trunk)
            self.record_start(location=getattr(call, "location", None))
        self.record_ended()
        self.gateway.session_finished(self)


class OutboundCall(Session):
    """A handset calling an outside (or emergency) number through the proxy."""

    core: OutboundCore

    def __init__(self, gateway: CallServices, offer: LegOffered) -> None:
        super().__init__(gateway, OutboundCore(
            self.new_key(), gateway.config, leg=offer.leg, invite=offer.invite,
            problem=offer.problem, directory=gateway.directory()))
        if offer.invite is not None and offer.invite.call_record:
            self.owns_record = False
            self.record_id = offer.invite.call_record
        if offer.invite is not None and offer.invite.call_id:
            self.log = CallLog(log, {"call": self.key, "sip_call_id": offer.invite.call_id[:64]})


class InboundCall(Session):
    """A call arriving on a trunk, rung through the proxy to its targets."""

    core: InboundCore

    def __init__(self, gateway: CallServices, trunk: Trunk, call: TrunkCall) -> None:
        super().__init__(gateway, InboundCore(self.new_key(), gateway.config,
                                                   trunk=trunk.name, call=call))
        self.trunk = trunk

    def begin(self) -> cc.Begin:
        targets, memo = self.gateway.inbound_targets(self.trunk.name)
        return cc.Begin(tuple(targets), memo)


class EmergencyNotification(Session):
    """Rings one on-site extension about an emergency call (see NotificationCore)."""

    core: NotificationCore

    def __init__(self, gateway: CallServices, extension: str, text: str,
                 caller_display: str) -> None:
        super().__init__(gateway, NotificationCore(
            self.new_key(), gateway.config, extension=extension, text=text,
            caller_display=caller_display))


class TestCall(Session):
    """'jbc test-call': no handset; the audio is pumped here on the loop (20 ms ticks)
    straight into the trunk's queues."""

    core: TestCallCore
    __test__ = False  # not a pytest class

    def __init__(self, gateway: CallServices, number: str, only: str | None, actor: str) -> None:
        super().__init__(gateway, TestCallCore(
            self.new_key(), gateway.config, number=number, only=only, actor=actor,
            directory=gateway.directory()))
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    async def listen(self, seconds: float = 3.0) -> float | None:
        """Send a 1 kHz tone for ``seconds`` while measuring what comes back; the loudest
        0.5 s stretch heard, in dBFS (None: nothing at all)."""
        call = self.core.trunk_call
        assert call is not None
        phase = 0
        levels: list[float] = []
        start = time.monotonic()
        for tick in range(int(seconds / 0.02)):
            samples = bytearray()
            for i in range(160):
                value = int(8000 * math.sin(2 * math.pi * 1000 * (phase + i) / 8000))
                samples += value.to_bytes(2, "little", signed=True)
            phase += 160
            call.uplink.put(bytes(samples))
            while len(call.downlink):
                frame = call.downlink.get()
                if frame:
                    levels.append(rms(frame))
            if call.state is CallState.ENDED:
                break
            delay = start + (tick + 1) * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if not levels:
            return None
        window = max(1, min(25, len(levels)))
        loudest = max(sum(levels[i:i + window]) / window
                      for i in range(0, max(1, len(levels) - window + 1)))
        if loudest <= 0:
            return -120.0
        return round(20 * math.log10(loudest / 32768.0), 1)

    async def finish(self) -> None:
        await super().finish()
        report = self.core.report
        if self.trunk is not None:
            report["trunk"] = self.trunk.name
        report.setdefault("result", self.core.result)
        report["cause"] = self.core.cause
        if not self.done.done():
            self.done.set_result(report)


__all__ = ["AgentHandle", "CallRecorder", "EmergencyNotification", "InboundCall",
           "OutboundCall", "Phase", "Session", "TestCall"]
