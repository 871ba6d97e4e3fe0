"""Trunk calls as asyncio tasks: a handset's outside call, a call arriving on a trunk, the
on-site emergency notification and the technician's test call.

Each call is one :class:`Session` whose task reads its own queue of events: the trunk's
(``drivers.trunk`` events for its TrunkCall), the SIP agent's (``agent.Leg*`` for its legs)
and the gateway's own (pre-emption, early audio heard). The rules it follows are the pure
functions of ``policy.py``; the I/O is the trunk (awaited directly, it is asyncio) and the
pjsua thread (through :class:`AgentHandle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import itertools
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from drivers.trunk import (
    CallAlerting,
    CallAnswered,
    CallEnded,
    CallState,
    DtmfReceived,
    EndCause,
    Presentation,
    Trunk,
    TrunkBusy,
    TrunkCall,
    TrunkError,
)

from . import policy
from .bridge import BridgeSettings, TrunkAudioBridge
from .leg_events import LegConfirmed, LegDtmf, LegEnded, LegMedia, LegOffered
from .policy import CallKind, FailureAnswer, NumberVerdict
from .sipmsg import CALL_RECORD_HEADER, InboundInvite, caller_uri_user, sip_quote
from .tones import NOTIFY_ALERT_TONE, PREEMPTION_TONE

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger(__name__)

_keys = itertools.count(1)


class CallRecorder(Protocol):
    """What the gateway needs of the call-record store (appliance/store/call_records.py)."""

    def start(self, *, direction: str, from_party: str, to_party: str,
              trunk: str | None = None, emergency: bool = False,
              location: str | None = None, at: float | None = None) -> str: ...

    def answered(self, record_id: str) -> None: ...

    def ended(self, record_id: str, *, result: str, cause: str = "") -> None: ...


# ---------------------------------------------------------------------------------------------
# Internal events


@dataclasses.dataclass(frozen=True, slots=True)
class EarlyAudio:
    """The trunk's audio carried sound before the answer (in-band ringback, announcements)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Preempt:
    by: str
    done: asyncio.Future


@dataclasses.dataclass(frozen=True, slots=True)
class Shutdown:
    pass


class Phase(enum.StrEnum):
    ROUTING = "routing"
    DIALING = "dialing"
    ALERTING = "alerting"
    RINGING = "ringing"       # inbound: a handset is being rung
    ACTIVE = "active"
    ENDING = "ending"
    ENDED = "ended"


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
            headers.append(("Warning", f'399 jbc "{_header_text(warning)}"'))
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


def _header_text(text: str) -> str:
    return "".join(ch for ch in text if " " <= ch < "\x7f" and ch not in '"\\')[:200]


# ---------------------------------------------------------------------------------------------
# Sessions


class Session:
    kind: CallKind = CallKind.OUTBOUND
    direction = "outbound"

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.key = f"c{next(_keys)}"
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.phase = Phase.ROUTING
        self.emergency = False
        self.trunk: Trunk | None = None
        self.trunk_call: TrunkCall | None = None
        self.legs: set[int] = set()
        self.answered = False
        self.started_mono = time.monotonic()
        self.started_wall = time.time()
        self.answered_mono: float | None = None
        self.record_id: str | None = None
        self.owns_record = True
        """False when the SIP proxy opened this call's record (it then writes it; the
        gateway only adds the trunk): one call, one record."""
        self.from_party = ""
        self.to_party = ""
        self.result = ""
        self.cause = ""
        self.preempted_by: str | None = None
        self.bridge: TrunkAudioBridge | None = None
        self.media: LegMedia | None = None
        self.task: asyncio.Task | None = None

    # -- plumbing --------------------------------------------------------------------------

    def deliver(self, event: object) -> None:
        self.queue.put_nowait(event)

    async def next_event(self, timeout_s: float | None = None) -> object | None:
        if timeout_s is None:
            return await self.queue.get()
        try:
            return await asyncio.wait_for(self.queue.get(), max(0.0, timeout_s))
        except TimeoutError:
            return None

    @property
    def agent(self) -> AgentHandle:
        return self.gateway.agent

    def active_view(self) -> policy.ActiveCall | None:
        if self.trunk is None or self.trunk_call is None or self.phase is Phase.ENDED:
            return None
        return policy.ActiveCall(key=self.key, trunk=self.trunk.name, kind=self.kind,
                                 emergency=self.emergency, answered=self.answered,
                                 started_at=self.started_mono)

    def summary(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "call": self.key, "direction": self.direction, "from": self.from_party,
            "to": self.to_party, "trunk": self.trunk.name if self.trunk else None,
            "state": self.phase.value, "emergency": self.emergency,
            "started_at": self.started_wall, "duration_s": round(now - self.started_mono, 1),
            "talk_s": round(now - self.answered_mono, 1) if self.answered_mono else None,
            "codec": self.media.codec if self.media else None,
            "srtp": self.media.srtp if self.media else None,
            "record": self.record_id,
        }

    def bridge_settings(self) -> BridgeSettings:
        config = self.gateway.config
        return BridgeSettings(echo_canceller=config.echo_canceller,
                              echo_tail_ms=config.echo_tail_ms,
                              jitter_min_ms=config.jitter_min_ms,
                              jitter_max_ms=config.jitter_max_ms)

    def make_bridge(self) -> TrunkAudioBridge:
        assert self.trunk_call is not None
        loop = asyncio.get_running_loop()

        def first_audio() -> None:  # media clock thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.deliver, EarlyAudio())

        self.bridge = TrunkAudioBridge(self.trunk_call.uplink, self.trunk_call.downlink,
                                       self.bridge_settings(), on_first_audio=first_audio)
        return self.bridge

    # -- records -----------------------------------------------------------------------------

    def record_start(self, *, location: str | None = None) -> None:
        records = self.gateway.records
        if records is None:
            return
        if not self.owns_record:
            if self.record_id is not None and self.trunk is not None:
                self.gateway.annotate_record(self.record_id, trunk=self.trunk.name,
                                             location=location)
            return
        if self.record_id is not None:
            return
        try:
            self.record_id = records.start(
                direction="emergency" if (self.emergency and self.direction == "outbound")
                else self.direction,
                from_party=self.from_party or "unknown", to_party=self.to_party or "unknown",
                trunk=self.trunk.name if self.trunk else None, emergency=self.emergency,
                location=location, at=self.started_wall)
        except Exception:
            log.exception("%s: cannot write the call record", self.key)

    def record_answered(self) -> None:
        if self.owns_record and self.gateway.records is not None and self.record_id is not None:
            try:
                self.gateway.records.answered(self.record_id)
            except Exception:
                log.exception("%s: cannot update the call record", self.key)

    def record_ended(self) -> None:
        if self.owns_record and self.gateway.records is not None and self.record_id is not None:
            try:
                self.gateway.records.ended(self.record_id, result=self.result or "failed",
                                           cause=self.cause[:200])
            except Exception:
                log.exception("%s: cannot close the call record", self.key)

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self.body()
        except asyncio.CancelledError:
            self.cause = self.cause or "gateway stopping"
            raise
        except Exception as error:
            log.exception("%s: call failed", self.key)
            self.result = self.result or "failed"
            self.cause = self.cause or f"internal error: {type(error).__name__}"
        finally:
            await asyncio.shield(self.finish())

    async def body(self) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        self.phase = Phase.ENDED
        if self.trunk is not None and self.trunk_call is not None \
                and self.trunk_call.state is not CallState.ENDED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.trunk.hangup(self.trunk_call), 10)
        for leg in list(self.legs):
            await self.agent.hangup(leg, status=503 if not self.answered else 0)
        if not self.result:
            self.result = "failed"
        if self.record_id is None:  # ended before its record was opened (refused, no trunk)
            self.record_start(location=getattr(self, "location", None))
        self.record_ended()
        self.gateway.session_finished(self)

    async def end_trunk(self) -> None:
        if self.trunk is not None and self.trunk_call is not None \
                and self.trunk_call.state is not CallState.ENDED:
            try:
                await asyncio.wait_for(self.trunk.hangup(self.trunk_call), 10)
            except (TrunkError, TimeoutError) as error:
                log.warning("%s: hanging up on %s: %s", self.key, self.trunk.name, error)


class OutboundCall(Session):
    """A handset calling an outside (or emergency) number through the proxy."""

    def __init__(self, gateway: Gateway, offer: LegOffered) -> None:
        super().__init__(gateway)
        self.leg = offer.leg
        self.legs.add(offer.leg)
        self.invite: InboundInvite | None = offer.invite
        self.problem = offer.problem
        if offer.invite is not None and offer.invite.call_record:
            self.owns_record = False
            self.record_id = offer.invite.call_record
        self.number = ""
        self.location: str | None = None
        self.extension: str | None = None
        self.sent_ringing = False
        self.sent_progress = False
        self.caller_gave_up = False

    async def body(self) -> None:
        if self.invite is None:
            self.result, self.cause = "failed", f"unreadable INVITE: {self.problem}"
            await self.agent.fail(self.leg, FailureAnswer(status=400, reason="Bad Request"))
            return
        invite = self.invite
        self.extension = invite.caller
        self.from_party = invite.caller or "unknown"
        directory = self.gateway.directory()
        classified = policy.classify_number(
            invite.request_user, emergency_numbers=directory.emergency.numbers,
            outside_prefix=directory.dial_plan.outside_prefix,
            external_patterns=directory.dial_plan.compiled(),
            emergency_marked=invite.emergency_marked)
        self.number = classified.number
        self.to_party = classified.number
        self.emergency = classified.verdict is NumberVerdict.EMERGENCY
        if self.emergency:
            self.kind = CallKind.OUTBOUND
            located = (directory.location_of_extension(self.extension) if self.extension
                       else directory.location(directory.emergency.default_location))
            self.location = located.dispatchable() if located else None
        # SRTP: a handset on TLS gets SRTP or no call; never a silent plain-RTP leg.
        if invite.handset_over_tls:
            if invite.sdp is None or not invite.sdp.has_sdes:
                self.result, self.cause = "failed", "handset on TLS offered no SRTP (SDES)"
                await self.agent.fail(
                    self.leg, FailureAnswer(status=488, reason="Not Acceptable Here"),
                    warning="SRTP (SDES crypto) is required for handsets on TLS")
                return
            await self.agent.require_srtp(self.leg)
        if classified.verdict is NumberVerdict.INCOMPLETE:
            self.result, self.cause = "rejected", "number incomplete"
            await self.agent.fail(self.leg, FailureAnswer(status=484,
                                                          reason="Address Incomplete"))
            return
        if classified.verdict is NumberVerdict.INVALID:
            self.result, self.cause = "rejected", "not a number the trunks can dial"
            await self.agent.fail(self.leg, FailureAnswer(status=404, reason="Not Found"))
            return
        if self.emergency:
            self.gateway.emergency_started(self)
        acquired = await self.acquire_trunk()
        if not acquired:
            return
        await self.connect()

    # -- trunk acquisition -------------------------------------------------------------------

    async def acquire_trunk(self) -> bool:
        retry_after = self.gateway.config.retry_after_s
        last_error: TrunkError | None = None
        for _attempt in range(3):
            selection = self.gateway.select(emergency=self.emergency)
            if selection.outcome is policy.SelectionOutcome.ALL_BUSY and self.emergency:
                victim = self.gateway.preemption_victim(selection.full)
                if victim is not None and await self.gateway.preempt(victim, by=self):
                    continue
            if selection.outcome is not policy.SelectionOutcome.CHOSEN:
                answer = policy.no_trunk_answer(selection, retry_after_s=retry_after)
                self.result = "busy" if answer.status == 486 else "failed"
                self.cause = f"no trunk: {selection.reason}"
                await self.agent.fail(self.leg, answer, warning=selection.reason)
                return False
            for name in selection.candidates:
                trunk = self.gateway.trunk_named(name)
                if trunk is None:
                    continue
                if self.caller_gave_up or self.drain_cancel():
                    self.result, self.cause = "cancelled", "caller hung up before dialling"
                    return False
                self.phase = Phase.DIALING
                try:
                    call = await trunk.dial(self.number, emergency=self.emergency)
                except TrunkBusy as error:
                    last_error = error
                    continue
                except TrunkError as error:
                    last_error = error
                    log.warning("%s: dial on %s failed: %s", self.key, name, error)
                    if error.cause in (EndCause.FAILED, EndCause.NO_SERVICE):
                        continue  # another trunk may do better
                    break
                self.trunk, self.trunk_call = trunk, call
                self.gateway.bind_trunk_call(self, call)
                self.record_start(location=self.location)
                self.gateway.journal("call-dialled", f"{self.key}: {self.from_party} -> "
                                     f"{self.number} on {name}",
                                     {"call": self.key, "trunk": name,
                                      "emergency": self.emergency})
                if self.emergency:
                    self.gateway.remember_emergency(self)
                return True
            if last_error is not None and last_error.cause not in (
                    EndCause.FAILED, EndCause.NO_SERVICE, EndCause.BUSY):
                break
            if isinstance(last_error, TrunkBusy):
                continue  # every slot filled meanwhile: select again (emergency pre-empts)
            break
        cause = last_error.cause if last_error else EndCause.FAILED
        answer = policy.failure_answer(cause, retry_after_s=retry_after)
        self.result = policy.record_result(cause, answered=False, caller_gave_up=False)
        self.cause = f"dial failed: {last_error}" if last_error else "dial failed"
        await self.agent.fail(self.leg, answer, warning=str(last_error or ""))
        return False

    def drain_cancel(self) -> bool:
        """Look for a CANCEL (leg ended) that arrived while we were choosing a trunk."""
        pending = []
        gave_up = False
        while not self.queue.empty():
            event = self.queue.get_nowait()
            if isinstance(event, LegEnded) and event.leg == self.leg:
                gave_up = True
            else:
                pending.append(event)
        for event in pending:
            self.queue.put_nowait(event)
        self.caller_gave_up = self.caller_gave_up or gave_up
        return gave_up

    # -- the call ----------------------------------------------------------------------------

    async def connect(self) -> None:
        assert self.trunk is not None and self.trunk_call is not None
        bridge = self.make_bridge()
        await self.agent.attach(self.leg, bridge, f"{self.trunk.name}-{self.trunk_call.id}")
        if self.trunk.kind == "voice-modem":
            # Analog lines report no alerting: ringback is heard in-band once audio flows;
            # until then the handset plays its own.
            await self._ringing()
        deadline = time.monotonic() + self.gateway.config.answer_timeout_s
        while True:
            timeout = None if self.answered else deadline - time.monotonic()
            event = await self.next_event(timeout)
            if event is None:
                self.result, self.cause = "no-answer", "not answered in time"
                await self.end_trunk()
                await self.agent.fail(self.leg, FailureAnswer(
                    status=480, reason="Temporarily Unavailable"))
                return
            if not await self.handle(event):
                return

    async def _ringing(self) -> None:
        if not self.sent_ringing and not self.sent_progress and not self.answered:
            self.sent_ringing = True
            await self.agent.answer(self.leg, 180)

    async def handle(self, event: object) -> bool:
        """Handle one event; False when the call is over."""
        if isinstance(event, CallAlerting):
            self.phase = Phase.ALERTING
            if not (self.bridge and self.bridge.heard_audio):
                await self._ringing()
        elif isinstance(event, EarlyAudio):
            if not self.answered and not self.sent_progress:
                self.sent_progress = True
                await self.agent.answer(self.leg, 183)
        elif isinstance(event, CallAnswered):
            if not self.answered:
                self.answered = True
                self.answered_mono = time.monotonic()
                self.phase = Phase.ACTIVE
                await self.agent.answer(self.leg, 200)
                self.record_answered()
                self.gateway.journal("call-answered", f"{self.key}: {self.number} answered "
                                     f"on {self.trunk.name if self.trunk else '?'}",
                                     {"call": self.key})
        elif isinstance(event, CallEnded):
            return await self._trunk_ended(event)
        elif isinstance(event, LegEnded):
            return await self._leg_ended(event)
        elif isinstance(event, LegDtmf):
            if self.trunk is not None and self.trunk_call is not None and self.answered:
                try:
                    await self.trunk.send_dtmf(self.trunk_call, event.digit)
                except TrunkError as error:
                    log.warning("%s: DTMF %s not sent: %s", self.key, event.digit, error)
        elif isinstance(event, DtmfReceived):
            await self.agent.send_dtmf(self.leg, event.digit)
        elif isinstance(event, LegMedia):
            self.media = event
        elif isinstance(event, Preempt):
            await self._preempted(event)
            return False
        elif isinstance(event, Shutdown):
            self.cause = "gateway stopping"
            self.result = "answered" if self.answered else "failed"
            return False
        return True

    async def _trunk_ended(self, event: CallEnded) -> bool:
        self.phase = Phase.ENDING
        if self.answered:
            self.result = "answered"
            self.cause = f"far end hung up ({event.cause.value})"
            await self.agent.hangup(self.leg)
        else:
            answer = policy.failure_answer(event.cause,
                                           retry_after_s=self.gateway.config.retry_after_s)
            self.result = policy.record_result(event.cause, answered=False,
                                               caller_gave_up=False)
            self.cause = f"{event.cause.value}{': ' + event.detail if event.detail else ''}"
            await self.agent.fail(self.leg, answer, warning=event.detail)
        self.legs.discard(self.leg)
        return False

    async def _leg_ended(self, event: LegEnded) -> bool:
        self.legs.discard(self.leg)
        self.phase = Phase.ENDING
        if self.answered:
            self.result = "answered"
            self.cause = "caller hung up"
        else:
            self.caller_gave_up = True
            self.result = "cancelled"
            self.cause = f"caller gave up ({event.status} {event.reason})".strip()
        await self.end_trunk()
        return False

    async def _preempted(self, event: Preempt) -> None:
        self.preempted_by = event.by
        self.phase = Phase.ENDING
        self.result = "answered" if self.answered else "failed"
        self.cause = f"pre-empted by emergency call {event.by}"
        await self.end_trunk()  # the slot first: the emergency call is waiting for it
        if not event.done.done():
            event.done.set_result(True)
        tone_s = self.gateway.config.preemption_tone_s
        if self.media is not None and tone_s > 0:
            await self.agent.play(self.leg, PREEMPTION_TONE, loop=True)
            await asyncio.sleep(tone_s)
        reason = ('SIP;cause=503;text="Pre-empted by an emergency call"')
        if self.answered:
            await self.agent.hangup(self.leg, headers=[("Reason", reason)])
        else:
            await self.agent.fail(self.leg, FailureAnswer(
                status=503, reason="Service Unavailable",
                retry_after_s=self.gateway.config.retry_after_s),
                warning="pre-empted by an emergency call")
        self.legs.discard(self.leg)


class InboundCall(Session):
    """A call arriving on a trunk, rung through the proxy to its target."""

    kind = CallKind.INBOUND
    direction = "inbound"

    def __init__(self, gateway: Gateway, trunk: Trunk, call: TrunkCall) -> None:
        super().__init__(gateway)
        self.trunk = trunk
        self.trunk_call = call
        self.leg: int | None = None
        self.callback_of: policy.EmergencyCallMemo | None = None

    def caller_identity(self) -> tuple[str, list[tuple[str, str]], str]:
        """(From URI with display name, extra headers, caller as recorded)."""
        assert self.trunk_call is not None
        domain = self.gateway.config.domain
        caller = self.trunk_call.caller
        prefix = "EMERGENCY CALLBACK " if self.callback_of else ""
        if caller is None or caller.presentation is Presentation.UNAVAILABLE or not (
                caller.number or caller.presentation is Presentation.WITHHELD):
            display = sip_quote(f"{prefix}Unavailable".strip())
            return (f"{display} <sip:anonymous@anonymous.invalid>", [], "unavailable")
        if caller.presentation is Presentation.WITHHELD or not caller.number:
            display = sip_quote(f"{prefix}Anonymous".strip())
            return (f"{display} <sip:anonymous@anonymous.invalid>", [("Privacy", "id")],
                    "anonymous")
        user = caller_uri_user(caller.number)
        name = caller.name or caller.number
        uri = f"sip:{user}@{domain}"
        return (f"{sip_quote(prefix + name)} <{uri}>",
                [("P-Asserted-Identity", f"{sip_quote(name)} <{uri}>")], caller.number)

    async def body(self) -> None:
        assert self.trunk is not None and self.trunk_call is not None
        self.phase = Phase.RINGING
        targets = self.gateway.inbound_targets(self)
        from_uri, headers, caller = self.caller_identity()
        self.from_party = caller
        self.to_party = targets[0] if targets else ""
        self.emergency = self.callback_of is not None
        self.record_start()
        if not targets:
            self.result, self.cause = "no-answer", "missed: no inbound route for this trunk"
            self.gateway.journal("call-missed", f"{self.key}: call on {self.trunk.name} from "
                                 f"{caller} has nowhere to ring (no inbound route)",
                                 {"call": self.key, "trunk": self.trunk.name})
            await self.end_trunk()
            return
        if self.callback_of is not None:
            self.gateway.journal(
                "emergency-callback", f"{self.key}: call on {self.trunk.name} within the "
                f"call-back window of {self.callback_of.dialled}; ringing "
                f"{self.callback_of.extension}", {"call": self.key,
                                                  "extension": self.callback_of.extension})
        headers = [*headers, ("Alert-Info", "<urn:alert:service:normal>")]
        if self.callback_of is not None:
            headers = [(n, v) for n, v in headers if n != "Alert-Info"]
            headers += [("Priority", "emergency"),
                        ("Alert-Info", "<urn:alert:service:emergency>")]
        if self.record_id is not None:
            headers.append((CALL_RECORD_HEADER, self.record_id))
        for target in targets:
            self.to_party = target
            outcome = await self.ring(target, from_uri, headers)
            if outcome == "answered":
                await self.talk()
                return
            if outcome == "caller-gone":
                self.result, self.cause = "no-answer", "missed: caller hung up while ringing"
                return
            if outcome == "stopped":
                return
        self.result = "no-answer"
        self.cause = f"missed: {', '.join(targets)} did not answer"
        self.gateway.journal("call-missed", f"{self.key}: call on {self.trunk.name} from "
                             f"{caller} was not answered", {"call": self.key})
        await self.end_trunk()

    async def ring(self, target: str, from_uri: str,
                   headers: list[tuple[str, str]]) -> str:
        assert self.trunk is not None and self.trunk_call is not None
        domain = self.gateway.config.domain
        try:
            leg = await self.agent.make_call(f"sip:{target}@{domain}", from_uri=from_uri,
                                             headers=headers)
        except Exception as error:
            log.warning("%s: cannot ring %s: %s", self.key, target, error)
            return "failed"
        self.leg = leg
        self.legs.add(leg)
        self.gateway.bind_leg(self, leg)
        deadline = time.monotonic() + self.gateway.config.inbound_ring_timeout_s
        while True:
            event = await self.next_event(deadline - time.monotonic())
            if event is None:
                await self.agent.hangup(leg)  # CANCEL
                await self._await_leg_end(leg)
                return "timeout"
            if isinstance(event, LegConfirmed) and event.leg == leg:
                return "answered"
            if isinstance(event, LegEnded) and event.leg == leg:
                self.legs.discard(leg)
                return "failed"
            if isinstance(event, LegMedia) and event.leg == leg:
                self.media = event
            if isinstance(event, CallEnded):
                await self.agent.hangup(leg)
                self.legs.discard(leg)
                return "caller-gone"
            if isinstance(event, Preempt):
                await self.agent.hangup(leg)
                self.legs.discard(leg)
                self.result, self.cause = "no-answer", f"pre-empted by {event.by}"
                await self.end_trunk()
                if not event.done.done():
                    event.done.set_result(True)
                return "stopped"
            if isinstance(event, Shutdown):
                self.result, self.cause = "no-answer", "gateway stopping"
                return "stopped"

    async def _await_leg_end(self, leg: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while leg in self.legs:
            event = await self.next_event(deadline - time.monotonic())
            if event is None:
                break
            if isinstance(event, LegEnded) and event.leg == leg:
                self.legs.discard(leg)
            elif isinstance(event, LegConfirmed) and event.leg == leg:
                await self.agent.hangup(leg)  # answered as we cancelled: end it
            elif isinstance(event, CallEnded | Preempt | Shutdown):
                self.queue.put_nowait(event)
                break

    async def talk(self) -> None:
        assert self.trunk is not None and self.trunk_call is not None and self.leg is not None
        try:
            await self.trunk.answer(self.trunk_call)
        except TrunkError as error:
            self.result, self.cause = "no-answer", f"missed: answering the trunk failed: {error}"
            await self.agent.hangup(self.leg)
            return
        self.answered = True
        self.answered_mono = time.monotonic()
        self.phase = Phase.ACTIVE
        self.record_answered()
        bridge = self.make_bridge()
        await self.agent.attach(self.leg, bridge, f"{self.trunk.name}-{self.trunk_call.id}")
        self.gateway.journal("call-answered", f"{self.key}: inbound call on {self.trunk.name} "
                             f"answered by {self.to_party}", {"call": self.key})
        self.result = "answered"
        while True:
            event = await self.next_event()
            if isinstance(event, CallEnded):
                self.cause = f"caller hung up ({event.cause.value})"
                await self.agent.hangup(self.leg)
                self.legs.discard(self.leg)
                return
            if isinstance(event, LegEnded) and event.leg == self.leg:
                self.legs.discard(self.leg)
                self.cause = "answering party hung up"
                await self.end_trunk()
                return
            if isinstance(event, LegDtmf):
                with contextlib.suppress(TrunkError):
                    await self.trunk.send_dtmf(self.trunk_call, event.digit)
            elif isinstance(event, DtmfReceived):
                await self.agent.send_dtmf(self.leg, event.digit)
            elif isinstance(event, LegMedia):
                self.media = event
            elif isinstance(event, Preempt):
                self.cause = f"pre-empted by emergency call {event.by}"
                await self.end_trunk()
                if not event.done.done():
                    event.done.set_result(True)
                tone_s = self.gateway.config.preemption_tone_s
                if tone_s > 0:
                    await self.agent.play(self.leg, PREEMPTION_TONE, loop=True)
                    await asyncio.sleep(tone_s)
                await self.agent.hangup(self.leg, headers=[
                    ("Reason", 'SIP;cause=503;text="Pre-empted by an emergency call"')])
                self.legs.discard(self.leg)
                return
            elif isinstance(event, Shutdown):
                self.cause = "gateway stopping"
                return


class EmergencyNotification(Session):
    """Rings one on-site extension to tell them of an emergency call; plays an alert tone
    when answered. Not a trunk call: it holds no trunk and is never pre-empted."""

    kind = CallKind.TEST
    direction = "notification"

    def __init__(self, gateway: Gateway, extension: str, text: str, caller_display: str) -> None:
        super().__init__(gateway)
        self.extension = extension
        self.text = text
        self.caller_display = caller_display
        self.to_party = extension
        self.from_party = "emergency-notify"

    def record_start(self, *, location: str | None = None) -> None:
        return None  # the emergency call's own record covers it

    async def body(self) -> None:
        domain = self.gateway.config.domain
        self.phase = Phase.RINGING
        try:
            leg = await self.agent.make_call(
                f"sip:{self.extension}@{domain}",
                from_uri=f"{sip_quote(self.caller_display)} <sip:emergency-notify@{domain}>",
                headers=[("Subject", _header_text(self.text)), ("Priority", "emergency"),
                         ("Alert-Info", "<urn:alert:service:emergency>")])
        except Exception as error:
            self.result, self.cause = "failed", str(error)
            return
        self.legs.add(leg)
        self.gateway.bind_leg(self, leg)
        deadline = time.monotonic() + self.gateway.config.emergency_notify_ring_s
        answered_until: float | None = None
        while True:
            end = answered_until or deadline
            event = await self.next_event(end - time.monotonic())
            if event is None or isinstance(event, Shutdown):
                await self.agent.hangup(leg)
                self.result = "answered" if answered_until else "no-answer"
                return
            if isinstance(event, LegConfirmed):
                self.answered = True
                answered_until = time.monotonic() + 8.0
                await self.agent.play(leg, NOTIFY_ALERT_TONE, loop=True)
            elif isinstance(event, LegEnded):
                self.legs.discard(leg)
                self.result = "answered" if self.answered else "no-answer"
                self.cause = f"{event.status} {event.reason}"
                return


class TestCall(Session):
    """'jbc test-call': dial, wait for the answer, send a tone, listen, hang up. No handset;
    the audio is pumped here on the loop (20 ms ticks) straight into the trunk's queues."""

    kind = CallKind.TEST
    __test__ = False  # not a pytest class

    def __init__(self, gateway: Gateway, number: str, only: str | None, actor: str) -> None:
        super().__init__(gateway)
        self.number = number
        self.only = only
        self.from_party = f"test-call ({actor})"
        self.to_party = number
        self.report: dict[str, Any] = {"number": number, "trunk": None, "connected": False,
                                       "audio_heard": False}
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    async def body(self) -> None:
        directory = self.gateway.directory()
        if directory.is_emergency(self.number):
            self.report["error"] = "refusing to place a test call to an emergency number"
            self.result, self.cause = "rejected", self.report["error"]
            return
        selection = self.gateway.select(emergency=False, only=self.only)
        if selection.outcome is not policy.SelectionOutcome.CHOSEN:
            self.report["error"] = selection.reason
            self.result, self.cause = "failed", f"no trunk: {selection.reason}"
            return
        started = time.monotonic()
        for name in selection.candidates:
            trunk = self.gateway.trunk_named(name)
            if trunk is None:
                continue
            self.trunk = trunk
            self.report["trunk"] = name
            try:
                self.trunk_call = await trunk.dial(self.number)
            except TrunkError as error:
                self.report["error"] = str(error)
                self.result = policy.record_result(error.cause, answered=False,
                                                   caller_gave_up=False)
                self.cause = f"dial failed: {error}"
                self.trunk = None
                if error.cause in (EndCause.FAILED, EndCause.NO_SERVICE) and not self.only:
                    continue
                return
            break
        if self.trunk_call is None:
            return
        self.record_start()
        self.gateway.bind_trunk_call(self, self.trunk_call)
        deadline = time.monotonic() + self.gateway.config.test_call_timeout_s
        while not self.answered:
            event = await self.next_event(deadline - time.monotonic())
            if event is None:
                self.report["error"] = "not answered in time"
                self.result, self.cause = "no-answer", "not answered in time"
                return
            if isinstance(event, CallAnswered):
                self.answered = True
                self.answered_mono = time.monotonic()
                self.phase = Phase.ACTIVE
                self.record_answered()
            elif isinstance(event, CallEnded):
                self.report["error"] = f"call ended: {event.cause.value}"
                self.result = policy.record_result(event.cause, answered=False,
                                                   caller_gave_up=False)
                self.cause = event.cause.value
                return
            elif isinstance(event, Preempt):
                self.report["error"] = f"pre-empted by emergency call {event.by}"
                self.result, self.cause = "failed", self.report["error"]
                await self.end_trunk()
                event.done.set_result(True)
                return
            elif isinstance(event, Shutdown):
                return
        self.report["connected"] = True
        self.report["setup_s"] = round(self.answered_mono - started, 2)
        self.result = "answered"
        level = await self.listen(self.gateway.config.test_call_listen_s)
        self.report["audio_level_dbfs"] = level
        self.report["audio_heard"] = level is not None and level > -50.0
        self.cause = "test call completed"

    async def listen(self, seconds: float = 3.0) -> float | None:
        """Send a 1 kHz tone for ``seconds`` while measuring what comes back; the loudest
        0.5 s stretch heard, in dBFS (None: nothing at all)."""
        import math

        from .bridge import rms

        assert self.trunk_call is not None
        call = self.trunk_call
        phase = 0
        levels: list[float] = []
        start = time.monotonic()
        ticks = int(seconds / 0.02)
        for tick in range(ticks):
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
        if self.trunk is not None:
            self.report["trunk"] = self.trunk.name
        self.report.setdefault("result", self.result)
        self.report["cause"] = self.cause
        if not self.done.done():
            self.done.set_result(self.report)

