"""One trunk call as a pure state machine: ``CallCore.handle(event, now) -> actions``.

Each kind of call (a handset's outside call, a call arriving on a trunk, the on-site emergency
notification, the technician's test call) is a table of ``(phase, event) -> handler``; the
handler returns the next phase and the actions the session (``calls.py``) must carry out. No
clocks, no awaits, no I/O: ``now`` comes in with each event, the next deadline comes out as
``core.deadline`` (the session feeds :class:`Timeout` when it passes), and what an action
produced (a trunk dialled, a handset leg placed) comes back as the next event. A pair that is
not in the table raises :class:`UnexpectedEvent`: nothing is ignored silently.

Outbound (a handset calls an outside or emergency number)::

    phase        event                      next phase    actions
    -----------  -------------------------  ------------  -------------------------------------
    routing      Begin                      selecting     RequireSrtp?, EmergencyStarted?,
                                                          SelectTrunks
                                            ended         FailLeg 400/484/404/488
    selecting    TrunksSelected (chosen)    dialing       Dial (first candidate)
                 TrunksSelected (all busy,  preempting    Preempt
                   emergency)
                 TrunksSelected (else)      ended         FailLeg 486/503/404
    preempting   PreemptionDone (freed)     selecting     SelectTrunks
                 PreemptionDone (not)       ended         FailLeg (the selection's answer)
    dialing      Dialled                    dialled       StartRecord, Journal, Remember?,
                                                          AttachBridge, AnswerLeg 180 (analog)
                 Dialled (caller gone)      ended         StartRecord, HangupTrunk
                 DialFailed                 dialing       Dial (next candidate)
                                            selecting     SelectTrunks (every slot taken)
                                            ended         FailLeg (the trunk's cause)
    dialled,     CallAlerting               alerting      AnswerLeg 180 (unless audio heard)
    alerting     EarlyAudio                 (same)        AnswerLeg 183 (once)
                 CallAnswered               active        AnswerLeg 200, RecordAnswered
                 Timeout (answer_timeout)   ended         HangupTrunk, FailLeg 480
    dialled,     CallEnded                  ended         HangupLeg (answered) / FailLeg
    alerting,    LegEnded (the caller)      ended         HangupTrunk
    active       Preempted                  tone / ended  HangupTrunk, SlotFreed, PlayTone
                 LegDtmf / DtmfReceived     (same)        SendDtmfToTrunk / SendDtmfToLeg
    tone         Timeout (preemption tone)  ended         HangupLeg with Reason / FailLeg 503
    routing ..   LegEnded (the caller)      (same)        none: noted, the call ends before
      dialing                                             the next dial (or its trunk is hung
                                                          up as soon as it is dialled)
    dialled ..   LegConfirmed (the ACK)     (same)        none
      tone
    any          LegMedia, LegProgress      (same)        none (media noted)
    any          Shutdown                   ended         none (the session ends the legs)

Inbound (a call arrives on a trunk)::

    phase        event                      next phase    actions
    -----------  -------------------------  ------------  -------------------------------------
    routing      Begin                      placing       StartRecord, Journal?, RingTarget
                                            ended         StartRecord, Journal, HangupTrunk
    placing      LegPlaced                  ringing       (ring deadline)
                 LegPlaceFailed             placing       RingTarget (next target)
    ringing      LegConfirmed               answering     AnswerTrunk
                 LegConfirmed (TLS handset  placing       HangupLeg, Journal, RingTarget next
                   answered without SRTP)
                 LegEnded (srtp_refused)    placing       Journal, RingTarget next
                 LegEnded (the ringing leg) placing       RingTarget (next target)
                 Timeout (ring timeout)     cancelling    HangupLeg (CANCEL)
    cancelling   LegEnded (the ringing leg) placing       RingTarget (next target)
                 LegConfirmed               cancelling    HangupLeg (answered as cancelled)
                 Timeout                    placing       RingTarget (next target)
    placing ..   CallEnded (caller gone)    ended         HangupLeg
      cancelling Preempted                  ended         HangupLeg, HangupTrunk, SlotFreed
    answering    TrunkAnswered              active        RecordAnswered, AttachBridge
                 TrunkAnswerFailed          ended         HangupLeg
    active       CallEnded / LegEnded       ended         HangupLeg / HangupTrunk
                 Preempted                  tone / ended  HangupTrunk, SlotFreed, PlayTone
    tone         Timeout                    ended         HangupLeg with Reason
    (no target left to ring)                ended         Journal call-missed, HangupTrunk

Emergency notification (its own record, of kind ``notification``, never uploaded as a
customer call): ``routing -Begin-> placing -LegPlaced-> ringing -LegConfirmed->
active (PlayTone, 8 s) -Timeout/LegEnded-> ended``. Test call: ``routing -Begin-> selecting
-TrunksSelected-> dialing -Dialled-> dialled -CallAnswered-> listening (Listen) -Listened->
ended``. Their full tables are below, next to their handlers.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any

from appliance.directory.model import Directory
from drivers.trunk import (
    CallAlerting,
    CallAnswered,
    CallEnded,
    DtmfReceived,
    EndCause,
    Presentation,
    TrunkCall,
)

from . import policy
from .config import GatewayConfig
from .errors import GatewayError
from .leg_events import LegConfirmed, LegDtmf, LegEnded, LegMedia, LegProgress
from .policy import CallKind, FailureAnswer, NumberVerdict
from .sipmsg import InboundInvite, caller_uri_user, header_text, sip_quote
from .tones import NOTIFY_ALERT_TONE, PREEMPTION_TONE

NOTIFY_ALERT_S = 8.0
"""How long an answered emergency notification plays its alert before hanging up."""
CANCEL_WAIT_S = 5.0
"""How long a cancelled ringing leg may take to end before the next target is rung."""
PREEMPTED_REASON = 'SIP;cause=503;text="Pre-empted by an emergency call"'


class UnexpectedEvent(GatewayError):
    """An event the call's table has no row for, in the phase the call is in."""

    def __init__(self, core: CallCore, event: object) -> None:
        super().__init__(f"{type(core).__name__} {core.key}: no transition for "
                         f"{type(event).__name__} in phase {core.phase.value}")
        self.phase = core.phase
        self.event = event


# ---------------------------------------------------------------------------------------------
# Events the session feeds in (besides the agent's Leg* and the trunk's Call* events)


@dataclasses.dataclass(frozen=True, slots=True)
class Begin:
    """The session started. For an inbound call: where it rings (call-back first)."""

    targets: tuple[str, ...] = ()
    callback_of: policy.EmergencyCallMemo | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Timeout:
    """``core.deadline`` passed."""


@dataclasses.dataclass(frozen=True, slots=True)
class Shutdown:
    """The gateway is stopping."""


@dataclasses.dataclass(frozen=True, slots=True)
class EarlyAudio:
    """The trunk's audio carried sound before the answer (in-band ringback, announcements)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Preempted:
    """An emergency call needs this call's trunk slot."""

    by: str


@dataclasses.dataclass(frozen=True, slots=True)
class TrunksSelected:
    selection: policy.Selection


@dataclasses.dataclass(frozen=True, slots=True)
class PreemptionDone:
    freed: bool
    """False: nothing could be pre-empted, or the victim did not free its slot in time."""


@dataclasses.dataclass(frozen=True, slots=True)
class Dialled:
    trunk: str
    call: TrunkCall
    analog: bool
    """A voice-modem line: it reports no alerting (the ringback is heard in-band)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DialFailed:
    trunk: str
    cause: EndCause
    message: str
    busy: bool = False
    """Every call slot of that trunk was taken (TrunkBusy): selecting again may help."""
    gone: bool = False
    """The trunk is no longer configured: the next candidate is tried, nothing is learnt."""


@dataclasses.dataclass(frozen=True, slots=True)
class LegPlaced:
    leg: int


@dataclasses.dataclass(frozen=True, slots=True)
class LegPlaceFailed:
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class TrunkAnswered:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class TrunkAnswerFailed:
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Listened:
    level_dbfs: float | None


# ---------------------------------------------------------------------------------------------
# Actions the core asks for


@dataclasses.dataclass(frozen=True, slots=True)
class AnswerLeg:
    leg: int
    status: int


@dataclasses.dataclass(frozen=True, slots=True)
class FailLeg:
    leg: int
    answer: FailureAnswer
    warning: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class HangupLeg:
    """A final response (unanswered incoming leg), CANCEL (unanswered outgoing) or BYE."""

    leg: int
    headers: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class RequireSrtp:
    leg: int


@dataclasses.dataclass(frozen=True, slots=True)
class AttachBridge:
    leg: int


@dataclasses.dataclass(frozen=True, slots=True)
class PlayTone:
    leg: int
    tones: tuple[tuple[int, int, int, int], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SendDtmfToLeg:
    leg: int
    digit: str


@dataclasses.dataclass(frozen=True, slots=True)
class RingTarget:
    """Place a call leg to ``target`` through the proxy (answered by LegPlaced/Failed)."""

    target: str
    from_uri: str
    headers: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SelectTrunks:
    emergency: bool
    only: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Preempt:
    full: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Dial:
    trunk: str
    number: str
    emergency: bool


@dataclasses.dataclass(frozen=True, slots=True)
class HangupTrunk:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class AnswerTrunk:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class SendDtmfToTrunk:
    digit: str


@dataclasses.dataclass(frozen=True, slots=True)
class SlotFreed:
    """Tell the emergency call that pre-empted this one that the trunk slot is free."""


@dataclasses.dataclass(frozen=True, slots=True)
class Journal:
    kind: str
    reason: str
    details: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class StartRecord:
    location: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RecordAnswered:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class EmergencyStarted:
    """Journal the emergency call, alert the cloud and notify the on-site extensions."""


@dataclasses.dataclass(frozen=True, slots=True)
class RememberEmergency:
    """Keep the call for routing call-backs on its trunk."""


@dataclasses.dataclass(frozen=True, slots=True)
class Listen:
    seconds: float


Action = (AnswerLeg | FailLeg | HangupLeg | RequireSrtp | AttachBridge | PlayTone
          | SendDtmfToLeg | RingTarget | SelectTrunks | Preempt | Dial | HangupTrunk
          | AnswerTrunk | SendDtmfToTrunk | SlotFreed | Journal | StartRecord | RecordAnswered
          | EmergencyStarted | RememberEmergency | Listen)


def journal(kind: str, reason: str, **details: Any) -> Journal:
    return Journal(kind, reason, tuple(details.items()))


# ---------------------------------------------------------------------------------------------
# The machine


class Phase(enum.StrEnum):
    ROUTING = "routing"
    SELECTING = "selecting"
    PREEMPTING = "preempting"
    DIALING = "dialing"
    DIALLED = "dialled"          # the trunk dialled; no alerting reported yet
    ALERTING = "alerting"
    PLACING = "placing"          # inbound: a leg to a handset is being placed
    RINGING = "ringing"          # inbound: a handset is being rung
    CANCELLING = "cancelling"    # inbound: the ring timed out, its CANCEL is under way
    ANSWERING = "answering"      # inbound: answering the trunk
    ACTIVE = "active"
    LISTENING = "listening"      # test call: tone out, listening
    TONE = "tone"                # pre-empted: the handset hears the pre-emption tone
    ENDED = "ended"

    @property
    def shown(self) -> str:
        """What 'jbc calls' shows."""
        return _SHOWN.get(self, self.value)


_SHOWN = {Phase.SELECTING: "routing", Phase.PREEMPTING: "routing", Phase.DIALLED: "dialing",
          Phase.PLACING: "ringing", Phase.CANCELLING: "ringing", Phase.ANSWERING: "ringing",
          Phase.LISTENING: "active", Phase.TONE: "ending"}

Handler = Callable[[Any, Any, float], "tuple[Phase, list[Action]]"]


def rows(phases: Sequence[Phase], events: Sequence[type], handler: str
         ) -> dict[tuple[Phase, type], str]:
    return {(phase, event): handler for phase in phases for event in events}


class CallCore:
    """The state every kind of call shares; subclasses supply ``TABLE``."""

    TABLE: dict[tuple[Phase, type], str] = {}
    kind: CallKind = CallKind.OUTBOUND
    direction = "outbound"

    def __init__(self, key: str, config: GatewayConfig) -> None:
        self.key = key
        self.config = config
        self.phase = Phase.ROUTING
        self.deadline: float | None = None
        self.emergency = False
        self.trunk: str | None = None
        self.trunk_call: TrunkCall | None = None
        self.legs: set[int] = set()
        self.answered = False
        self.answered_at: float | None = None
        self.from_party = ""
        self.to_party = ""
        self.result = ""
        self.cause = ""
        self.media: LegMedia | None = None

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    def abandon(self, cause: str) -> None:
        """The session ends the call from outside the table (stopping, an internal error)."""
        self.cause = self.cause or cause
        self.result = self.result or "failed"
        self.phase, self.deadline = Phase.ENDED, None

    def handle(self, event: object, now: float) -> list[Action]:
        """Feed one event; return what to do. Raises UnexpectedEvent for a pair not in the
        table (the call keeps its phase)."""
        name = self.TABLE.get((self.phase, type(event)))
        if name is None:
            raise UnexpectedEvent(self, event)
        handler: Handler = getattr(self, name)
        phase, actions = handler(event, now)
        self.phase = phase
        if phase is Phase.ENDED:
            self.deadline = None
        return actions

    # shared handlers

    def _noted(self, event: object, now: float) -> tuple[Phase, list[Action]]:
        if isinstance(event, LegMedia):
            self.media = event
        return self.phase, []

    def _stopping(self, event: Shutdown, now: float) -> tuple[Phase, list[Action]]:
        self.cause = self.cause or "gateway stopping"
        self.result = self.result or ("answered" if self.answered else "failed")
        return Phase.ENDED, []

    def _stale_leg(self, event: LegEnded, now: float) -> tuple[Phase, list[Action]]:
        self.legs.discard(event.leg)
        return self.phase, []

    def _end(self, result: str, cause: str, actions: list[Action]
             ) -> tuple[Phase, list[Action]]:
        self.result, self.cause = result, cause
        return Phase.ENDED, actions


# ---------------------------------------------------------------------------------------------
# Outbound


_BEFORE_DIAL = (Phase.ROUTING, Phase.SELECTING, Phase.PREEMPTING, Phase.DIALING)
_CONNECTED = (Phase.DIALLED, Phase.ALERTING, Phase.ACTIVE)
_OUTBOUND_ALL = (*_BEFORE_DIAL, *_CONNECTED, Phase.TONE)


class OutboundCore(CallCore):
    """A handset calling an outside or emergency number through the proxy."""

    TABLE = {
        (Phase.ROUTING, Begin): "_begin",
        (Phase.SELECTING, TrunksSelected): "_selected",
        (Phase.PREEMPTING, PreemptionDone): "_preemption_done",
        (Phase.DIALING, Dialled): "_dialled",
        (Phase.DIALING, DialFailed): "_dial_failed",
        **rows(_BEFORE_DIAL, [LegEnded], "_gave_up_early"),
        **rows(_CONNECTED, [CallAlerting], "_alerting"),
        **rows(_CONNECTED, [EarlyAudio], "_early_audio"),
        **rows(_CONNECTED, [CallAnswered], "_trunk_answered"),
        **rows(_CONNECTED, [CallEnded], "_trunk_ended"),
        **rows(_CONNECTED, [LegEnded], "_caller_ended"),
        **rows(_CONNECTED, [LegDtmf], "_dtmf_from_handset"),
        **rows(_CONNECTED, [DtmfReceived], "_dtmf_from_trunk"),
        **rows(_CONNECTED, [Preempted], "_preempted"),
        **rows((Phase.DIALLED, Phase.ALERTING), [Timeout], "_not_answered"),
        (Phase.TONE, Timeout): "_tone_played",
        (Phase.TONE, LegEnded): "_gone_during_tone",
        **rows((Phase.TONE,), [CallAlerting, CallAnswered, CallEnded, EarlyAudio, LegDtmf,
                               DtmfReceived, Preempted], "_noted"),
        **rows((*_CONNECTED, Phase.TONE), [LegConfirmed], "_noted"),  # the caller's ACK
        **rows(_OUTBOUND_ALL, [LegMedia, LegProgress], "_noted"),
        **rows(_OUTBOUND_ALL, [Shutdown], "_stopping"),
    }

    def __init__(self, key: str, config: GatewayConfig, *, leg: int,
                 invite: InboundInvite | None, problem: str, directory: Directory) -> None:
        super().__init__(key, config)
        self.leg = leg
        self.legs.add(leg)
        self.invite = invite
        self.problem = problem
        self.directory = directory
        self.number = ""
        self.location: str | None = None
        self.extension: str | None = None
        self.sent_ringing = False
        self.sent_progress = False
        self.heard_audio = False
        self.caller_gave_up: LegEnded | None = None
        self.attempt = 0
        self.candidates: list[str] = []
        self.selection: policy.Selection | None = None
        self.last_failure: DialFailed | None = None
        self.preempted_by: str | None = None

    # -- routing ---------------------------------------------------------------------------

    def _fail(self, result: str, cause: str, answer: FailureAnswer, warning: str = ""
              ) -> tuple[Phase, list[Action]]:
        return self._end(result, cause, [FailLeg(self.leg, answer, warning)])

    def _begin(self, event: Begin, now: float) -> tuple[Phase, list[Action]]:
        invite = self.invite
        if invite is None:
            return self._fail("failed", f"unreadable INVITE: {self.problem}",
                              FailureAnswer(status=400, reason="Bad Request"))
        directory = self.directory
        self.extension = invite.caller
        self.from_party = invite.caller or "unknown"
        classified = policy.classify_number(
            invite.request_user, emergency_numbers=directory.emergency.numbers,
            outside_prefix=directory.dial_plan.outside_prefix,
            external_patterns=directory.dial_plan.compiled(),
            emergency_marked=invite.emergency_marked)
        self.number = self.to_party = classified.number
        self.emergency = classified.verdict is NumberVerdict.EMERGENCY
        if self.emergency:
            located = (directory.location_of_extension(self.extension) if self.extension
                       else directory.location(directory.emergency.default_location))
            self.location = located.dispatchable() if located else None
        actions: list[Action] = []
        # SRTP: a handset on TLS gets SRTP or no call; never a silent plain-RTP leg.
        if invite.handset_over_tls:
            if invite.sdp is None or not invite.sdp.has_sdes:
                return self._fail("failed", "handset on TLS offered no SRTP (SDES)",
                                  FailureAnswer(status=488, reason="Not Acceptable Here"),
                                  "SRTP (SDES crypto) is required for handsets on TLS")
            actions.append(RequireSrtp(self.leg))
        if classified.verdict is NumberVerdict.INCOMPLETE:
            return self._fail("rejected", "number incomplete",
                              FailureAnswer(status=484, reason="Address Incomplete"))
        if classified.verdict is NumberVerdict.INVALID:
            return self._fail("rejected", "not a number the trunks can dial",
                              FailureAnswer(status=404, reason="Not Found"))
        if self.emergency:
            actions.append(EmergencyStarted())
        return self._select(actions)

    def _select(self, actions: list[Action]) -> tuple[Phase, list[Action]]:
        if self.attempt >= 3:
            return self._dial_gave_up()
        self.attempt += 1
        return Phase.SELECTING, [*actions, SelectTrunks(emergency=self.emergency)]

    def _no_trunk(self, selection: policy.Selection) -> tuple[Phase, list[Action]]:
        answer = policy.no_trunk_answer(selection, retry_after_s=self.config.retry_after_s)
        return self._fail("busy" if answer.status == 486 else "failed",
                          f"no trunk: {selection.reason}", answer, selection.reason)

    def _selected(self, event: TrunksSelected, now: float) -> tuple[Phase, list[Action]]:
        selection = self.selection = event.selection
        if selection.outcome is policy.SelectionOutcome.ALL_BUSY and self.emergency:
            return Phase.PREEMPTING, [Preempt(selection.full)]
        if selection.outcome is not policy.SelectionOutcome.CHOSEN:
            return self._no_trunk(selection)
        self.candidates = list(selection.candidates)
        return self._dial_next()

    def _preemption_done(self, event: PreemptionDone, now: float
                         ) -> tuple[Phase, list[Action]]:
        if event.freed:
            return self._select([])
        assert self.selection is not None
        return self._no_trunk(self.selection)

    def _dial_next(self) -> tuple[Phase, list[Action]]:
        if not self.candidates:
            failure = self.last_failure
            if failure is not None and failure.busy:
                return self._select([])  # every slot filled meanwhile (emergency pre-empts)
            return self._dial_gave_up()
        if self.caller_gave_up is not None:
            return self._end("cancelled", "caller hung up before dialling", [])
        return Phase.DIALING, [Dial(self.candidates.pop(0), self.number, self.emergency)]

    def _dial_gave_up(self) -> tuple[Phase, list[Action]]:
        failure = self.last_failure
        cause = failure.cause if failure else EndCause.FAILED
        answer = policy.failure_answer(cause, retry_after_s=self.config.retry_after_s)
        return self._fail(policy.record_result(cause, answered=False, caller_gave_up=False),
                          f"dial failed: {failure.message}" if failure else "dial failed",
                          answer, failure.message if failure else "")

    def _dial_failed(self, event: DialFailed, now: float) -> tuple[Phase, list[Action]]:
        if event.gone:
            return self._dial_next()
        self.last_failure = event
        if event.busy or event.cause in (EndCause.FAILED, EndCause.NO_SERVICE):
            return self._dial_next()  # another trunk may do better
        return self._dial_gave_up()

    def _gave_up_early(self, event: LegEnded, now: float) -> tuple[Phase, list[Action]]:
        if event.leg != self.leg:
            return self._stale_leg(event, now)
        self.legs.discard(event.leg)
        self.caller_gave_up = event
        return self.phase, []

    def _dialled(self, event: Dialled, now: float) -> tuple[Phase, list[Action]]:
        self.trunk, self.trunk_call = event.trunk, event.call
        actions: list[Action] = [
            StartRecord(self.location),
            journal("call-dialled", f"{self.key}: {self.from_party} -> {self.number} on "
                    f"{event.trunk}", call=self.key, trunk=event.trunk,
                    emergency=self.emergency)]
        if self.emergency:
            actions.append(RememberEmergency())
        if self.caller_gave_up is not None:
            gone = self.caller_gave_up
            return self._end("cancelled", f"caller gave up ({gone.status} {gone.reason})",
                             [*actions, HangupTrunk()])
        actions.append(AttachBridge(self.leg))
        if event.analog:
            # Analog lines report no alerting: ringback is heard in-band once audio flows;
            # until then the handset plays its own.
            actions += self._ringing()
        self.deadline = now + self.config.answer_timeout_s
        return Phase.DIALLED, actions

    # -- connected ---------------------------------------------------------------------------

    def _ringing(self) -> list[Action]:
        if self.sent_ringing or self.sent_progress or self.answered:
            return []
        self.sent_ringing = True
        return [AnswerLeg(self.leg, 180)]

    def _alerting(self, event: CallAlerting, now: float) -> tuple[Phase, list[Action]]:
        phase = Phase.ACTIVE if self.answered else Phase.ALERTING
        return phase, [] if self.heard_audio else self._ringing()

    def _early_audio(self, event: EarlyAudio, now: float) -> tuple[Phase, list[Action]]:
        self.heard_audio = True
        if self.answered or self.sent_progress:
            return self.phase, []
        self.sent_progress = True
        return self.phase, [AnswerLeg(self.leg, 183)]

    def _trunk_answered(self, event: CallAnswered, now: float) -> tuple[Phase, list[Action]]:
        if self.answered:
            return self.phase, []
        self.answered, self.answered_at, self.deadline = True, now, None
        return Phase.ACTIVE, [
            AnswerLeg(self.leg, 200), RecordAnswered(),
            journal("call-answered", f"{self.key}: {self.number} answered on {self.trunk}",
                    call=self.key)]

    def _not_answered(self, event: Timeout, now: float) -> tuple[Phase, list[Action]]:
        return self._end("no-answer", "not answered in time", [
            HangupTrunk(),
            FailLeg(self.leg, FailureAnswer(status=480, reason="Temporarily Unavailable"))])

    def _trunk_ended(self, event: CallEnded, now: float) -> tuple[Phase, list[Action]]:
        self.legs.discard(self.leg)
        if self.answered:
            return self._end("answered", f"far end hung up ({event.cause.value})",
                             [HangupLeg(self.leg)])
        answer = policy.failure_answer(event.cause, retry_after_s=self.config.retry_after_s)
        return self._end(
            policy.record_result(event.cause, answered=False, caller_gave_up=False),
            f"{event.cause.value}{': ' + event.detail if event.detail else ''}",
            [FailLeg(self.leg, answer, event.detail)])

    def _caller_ended(self, event: LegEnded, now: float) -> tuple[Phase, list[Action]]:
        if event.leg != self.leg:
            return self._stale_leg(event, now)
        self.legs.discard(self.leg)
        if self.answered:
            return self._end("answered", "caller hung up", [HangupTrunk()])
        self.caller_gave_up = event
        return self._end("cancelled", f"caller gave up ({event.status} {event.reason})".strip(),
                         [HangupTrunk()])

    def _dtmf_from_handset(self, event: LegDtmf, now: float) -> tuple[Phase, list[Action]]:
        return self.phase, [SendDtmfToTrunk(event.digit)] if self.answered else []

    def _dtmf_from_trunk(self, event: DtmfReceived, now: float) -> tuple[Phase, list[Action]]:
        return self.phase, [SendDtmfToLeg(self.leg, event.digit)]

    def _preempted(self, event: Preempted, now: float) -> tuple[Phase, list[Action]]:
        self.preempted_by = event.by
        self.result = "answered" if self.answered else "failed"
        self.cause = f"pre-empted by emergency call {event.by}"
        actions: list[Action] = [HangupTrunk(), SlotFreed()]  # the slot first: 911 waits
        tone_s = self.config.preemption_tone_s
        if self.media is not None and tone_s > 0:
            self.deadline = now + tone_s
            return Phase.TONE, [*actions, PlayTone(self.leg, tuple(PREEMPTION_TONE))]
        return Phase.ENDED, [*actions, self._preemption_hangup()]

    def _preemption_hangup(self) -> Action:
        self.legs.discard(self.leg)
        if self.answered:
            return HangupLeg(self.leg, (("Reason", PREEMPTED_REASON),))
        return FailLeg(self.leg, FailureAnswer(status=503, reason="Service Unavailable",
                                               retry_after_s=self.config.retry_after_s),
                       "pre-empted by an emergency call")

    def _tone_played(self, event: Timeout, now: float) -> tuple[Phase, list[Action]]:
        return Phase.ENDED, [self._preemption_hangup()]

    def _gone_during_tone(self, event: LegEnded, now: float) -> tuple[Phase, list[Action]]:
        self.legs.discard(event.leg)
        return (Phase.ENDED if event.leg == self.leg else Phase.TONE), []


# ---------------------------------------------------------------------------------------------
# Inbound


_RINGING_PHASES = (Phase.PLACING, Phase.RINGING, Phase.CANCELLING)
_INBOUND_ALL = (Phase.ROUTING, *_RINGING_PHASES, Phase.ANSWERING, Phase.ACTIVE, Phase.TONE)


@dataclasses.dataclass(frozen=True, slots=True)
class CallerIdentity:
    from_uri: str
    """The From of the INVITEs to the handsets (display name and URI)."""
    headers: tuple[tuple[str, str], ...]
    recorded: str
    """The caller as the call record shows it."""


def caller_identity(call: TrunkCall, *, domain: str, callback: bool) -> CallerIdentity:
    """How a caller arriving on a trunk is presented to the handsets."""
    caller = call.caller
    prefix = "EMERGENCY CALLBACK " if callback else ""
    if caller is None or caller.presentation is Presentation.UNAVAILABLE or not (
            caller.number or caller.presentation is Presentation.WITHHELD):
        display = sip_quote(f"{prefix}Unavailable".strip())
        return CallerIdentity(f"{display} <sip:anonymous@anonymous.invalid>", (),
                              "unavailable")
    if caller.presentation is Presentation.WITHHELD or not caller.number:
        display = sip_quote(f"{prefix}Anonymous".strip())
        return CallerIdentity(f"{display} <sip:anonymous@anonymous.invalid>",
                              (("Privacy", "id"),), "anonymous")
    user = caller_uri_user(caller.number)
    name = caller.name or caller.number
    uri = f"sip:{user}@{domain}"
    return CallerIdentity(f"{sip_quote(prefix + name)} <{uri}>",
                          (("P-Asserted-Identity", f"{sip_quote(name)} <{uri}>"),),
                          caller.number)


class InboundCore(CallCore):
    """A call arriving on a trunk, rung through the proxy to its targets in turn."""

    kind = CallKind.INBOUND
    direction = "inbound"
    TABLE = {
        (Phase.ROUTING, Begin): "_begin",
        (Phase.PLACING, LegPlaced): "_placed",
        (Phase.PLACING, LegPlaceFailed): "_place_failed",
        (Phase.RINGING, LegConfirmed): "_handset_answered",
        (Phase.RINGING, Timeout): "_ring_timeout",
        (Phase.CANCELLING, LegConfirmed): "_answered_while_cancelled",
        (Phase.CANCELLING, Timeout): "_cancel_timeout",
        **rows(_RINGING_PHASES, [LegEnded], "_ring_leg_ended"),
        **rows(_RINGING_PHASES, [CallEnded], "_caller_gone"),
        **rows(_RINGING_PHASES, [Preempted], "_preempted_ringing"),
        **rows(_RINGING_PHASES, [LegDtmf, DtmfReceived, EarlyAudio], "_noted"),
        (Phase.ANSWERING, TrunkAnswered): "_trunk_answered",
        (Phase.ANSWERING, TrunkAnswerFailed): "_trunk_answer_failed",
        **rows((Phase.ANSWERING, Phase.ACTIVE), [CallEnded], "_caller_hung_up"),
        **rows((Phase.ANSWERING, Phase.ACTIVE), [LegEnded], "_handset_hung_up"),
        **rows((Phase.ANSWERING, Phase.ACTIVE), [Preempted], "_preempted_talking"),
        # the trunk confirms the answer we gave it; the ACK confirms the handset's leg
        **rows((Phase.ANSWERING, Phase.ACTIVE), [CallAnswered, LegConfirmed, EarlyAudio],
               "_noted"),
        (Phase.ACTIVE, LegDtmf): "_dtmf_from_handset",
        (Phase.ACTIVE, DtmfReceived): "_dtmf_from_trunk",
        (Phase.ANSWERING, LegDtmf): "_noted",
        (Phase.ANSWERING, DtmfReceived): "_noted",
        (Phase.TONE, Timeout): "_tone_played",
        (Phase.TONE, LegEnded): "_gone_during_tone",
        **rows((Phase.TONE,), [CallEnded, CallAnswered, LegConfirmed, LegDtmf, DtmfReceived,
                               EarlyAudio, Preempted], "_noted"),
        **rows(_INBOUND_ALL, [LegMedia, LegProgress], "_noted"),
        **rows(_INBOUND_ALL, [Shutdown], "_stopping"),
    }

    def __init__(self, key: str, config: GatewayConfig, *, trunk: str, call: TrunkCall
                 ) -> None:
        super().__init__(key, config)
        self.trunk, self.trunk_call = trunk, call
        self.leg: int | None = None
        self.targets: tuple[str, ...] = ()
        self.waiting: list[str] = []
        """Targets not rung yet; the first is being rung."""
        self.callback_of: policy.EmergencyCallMemo | None = None
        self.identity: CallerIdentity | None = None

    def _begin(self, event: Begin, now: float) -> tuple[Phase, list[Action]]:
        assert self.trunk_call is not None
        self.callback_of = event.callback_of
        self.emergency = event.callback_of is not None
        self.identity = caller_identity(self.trunk_call, domain=self.config.domain,
                                        callback=self.emergency)
        self.from_party = self.identity.recorded
        self.targets = event.targets
        self.waiting = list(event.targets)
        self.to_party = self.targets[0] if self.targets else ""
        actions: list[Action] = [StartRecord()]
        if not self.targets:
            return self._end("no-answer", "missed: no inbound route for this trunk", [
                *actions,
                journal("call-missed", f"{self.key}: call on {self.trunk} from "
                        f"{self.from_party} has nowhere to ring (no inbound route)",
                        call=self.key, trunk=self.trunk),
                HangupTrunk()])
        if self.callback_of is not None:
            actions.append(journal(
                "emergency-callback", f"{self.key}: call on {self.trunk} within the call-back "
                f"window of {self.callback_of.dialled}; ringing {self.callback_of.extension}",
                call=self.key, extension=self.callback_of.extension))
        return self._ring_next(actions, first=True)

    def _headers(self) -> tuple[tuple[str, str], ...]:
        assert self.identity is not None
        headers = list(self.identity.headers)
        if self.callback_of is not None:
            headers += [("Priority", "emergency"),
                        ("Alert-Info", "<urn:alert:service:emergency>")]
        else:
            headers.append(("Alert-Info", "<urn:alert:service:normal>"))
        return tuple(headers)

    def _ring_next(self, actions: list[Action], *, first: bool = False
                   ) -> tuple[Phase, list[Action]]:
        self.deadline = None
        if not first:
            self.waiting.pop(0)
        if not self.waiting:
            return self._end("no-answer", f"missed: {', '.join(self.targets)} did not answer", [
                *actions,
                journal("call-missed", f"{self.key}: call on {self.trunk} from "
                        f"{self.from_party} was not answered", call=self.key),
                HangupTrunk()])
        assert self.identity is not None
        self.to_party = self.waiting[0]
        return Phase.PLACING, [*actions, RingTarget(self.to_party, self.identity.from_uri,
                                                    self._headers())]

    def _placed(self, event: LegPlaced, now: float) -> tuple[Phase, list[Action]]:
        self.leg = event.leg
        self.legs.add(event.leg)
        self.deadline = now + self.config.inbound_ring_timeout_s
        return Phase.RINGING, []

    def _place_failed(self, event: LegPlaceFailed, now: float) -> tuple[Phase, list[Action]]:
        return self._ring_next([])

    def _srtp_refused(self) -> Journal:
        return journal("call-srtp-refused", f"{self.key}: {self.to_party} answered over TLS "
                       "without SRTP; the call is not carried to it in plain RTP",
                       call=self.key, extension=self.to_party)

    def _handset_answered(self, event: LegConfirmed, now: float) -> tuple[Phase, list[Action]]:
        if event.leg != self.leg:
            return self.phase, []
        if event.secure_signalling and not event.srtp:
            # Never a downgrade: a handset on TLS gets SRTP or no call.
            self.legs.discard(event.leg)
            return self._ring_next([
                HangupLeg(event.leg, (("Reason", 'SIP;cause=488;text="SRTP required"'),)),
                self._srtp_refused()])
        self.deadline = None
        return Phase.ANSWERING, [AnswerTrunk()]

    def _ring_timeout(self, event: Timeout, now: float) -> tuple[Phase, list[Action]]:
        assert self.leg is not None
        self.deadline = now + CANCEL_WAIT_S
        return Phase.CANCELLING, [HangupLeg(self.leg)]

    def _answered_while_cancelled(self, event: LegConfirmed, now: float
                                  ) -> tuple[Phase, list[Action]]:
        if event.leg != self.leg:
            return self.phase, []
        return self.phase, [HangupLeg(event.leg)]

    def _cancel_timeout(self, event: Timeout, now: float) -> tuple[Phase, list[Action]]:
        return self._ring_next([])

    def _ring_leg_ended(self, event: LegEnded, now: float) -> tuple[Phase, list[Action]]:
        self.legs.discard(event.leg)
        if event.leg != self.leg or self.phase is Phase.PLACING:
            return self.phase, []
        # the agent ends a TLS handset's leg whose media came up plain before it answers
        return self._ring_next([self._srtp_refused()] if event.srtp_refused else [])

    def _caller_gone(self, event: CallEnded, now: float) -> tuple[Phase, list[Action]]:
        actions: list[Action] = []
        if self.leg is not None and self.leg in self.legs:
            actions.append(HangupLeg(self.leg))
            self.legs.discard(self.leg)
        return self._end("no-answer", "missed: caller hung up while ringing", actions)

    def _preempted_ringing(self, event: Preempted, now: float) -> tuple[Phase, list[Action]]:
        actions: list[Action] = []
        if self.leg is not None and self.leg in self.legs:
            actions.append(HangupLeg(self.leg))
            self.legs.discard(self.leg)
        return self._end("no-answer", f"pre-empted by {event.by}",
                         [*actions, HangupTrunk(), SlotFreed()])

    def _trunk_answered(self, event: TrunkAnswered, now: float) -> tuple[Phase, list[Action]]:
        assert self.leg is not None
        self.answered, self.answered_at, self.result = True, now, "answered"
        return Phase.ACTIVE, [
            RecordAnswered(), AttachBridge(self.leg),
            journal("call-answered", f"{self.key}: inbound call on {self.trunk} answered by "
                    f"{self.to_party}", call=self.key)]

    def _trunk_answer_failed(self, event: TrunkAnswerFailed, now: float
                             ) -> tuple[Phase, list[Action]]:
        assert self.leg is not None
        return self._end("no-answer", f"missed: answering the trunk failed: {event.message}",
                         [HangupLeg(self.leg)])

    def _caller_hung_up(self, event: CallEnded, now: float) -> tuple[Phase, list[Action]]:
        assert self.leg is not None
        self.legs.discard(self.leg)
        return self._end(self.result or "answered", f"caller hung up ({event.cause.value})",
                         [HangupLeg(self.leg)])

    def _handset_hung_up(self, event: LegEnded, now: float) -> tuple[Phase, list[Action]]:
        self.legs.discard(event.leg)
        if event.leg != self.leg:
            return self.phase, []
        return self._end(self.result or "answered", "answering party hung up",
                         [HangupTrunk()])

    def _dtmf_from_handset(self, event: LegDtmf, now: float) -> tuple[Phase, list[Action]]:
        return self.phase, [SendDtmfToTrunk(event.digit)]

    def _dtmf_from_trunk(self, event: DtmfReceived, now: float) -> tuple[Phase, list[Action]]:
        assert self.leg is not None
        return self.phase, [SendDtmfToLeg(self.leg, event.digit)]

    def _preempted_talking(self, event: Preempted, now: float) -> tuple[Phase, list[Action]]:
        assert self.leg is not None
        self.result = self.result or "answered"
        self.cause = f"pre-empted by emergency call {event.by}"
        actions: list[Action] = [HangupTrunk(), SlotFreed()]
        tone_s = self.config.preemption_tone_s
        if tone_s > 0:
            self.deadline = now + tone_s
            return Phase.TONE, [*actions, PlayTone(self.leg, tuple(PREEMPTION_TONE))]
        phase, hangup = self._tone_played(Timeout(), now)
        return phase, [*actions, *hangup]

    def _tone_played(self, event: Timeout, now: float) -> tuple[Phase, list[Action]]:
        assert self.leg is not None
        self.legs.discard(self.leg)
        return Phase.ENDED, [HangupLeg(self.leg, (("Reason", PREEMPTED_REASON),))]

    def _gone_during_tone(self, event: LegEnded, now: float) -> tuple[Phase, list[Action]]:
        self.legs.discard(event.leg)
        return (Phase.ENDED if event.leg == self.leg else Phase.TONE), []


# ---------------------------------------------------------------------------------------------
# The on-site emergency notification


class NotificationCore(CallCore):
    """Rings one on-site extension to tell them of an emergency call; plays an alert tone
    when answered. Not a trunk call: it holds no trunk and is never pre-empted.

    ``routing -Begin-> placing -LegPlaced-> ringing -LegConfirmed-> active -Timeout-> ended``;
    a LegEnded, a Timeout while ringing, a failed placing or Shutdown end it at any point."""

    kind = CallKind.TEST
    direction = "notification"
    TABLE = {
        (Phase.ROUTING, Begin): "_begin",
        (Phase.PLACING, LegPlaced): "_placed",
        (Phase.PLACING, LegPlaceFailed): "_place_failed",
        (Phase.RINGING, LegConfirmed): "_answered",
        **rows((Phase.RINGING, Phase.ACTIVE), [Timeout, Shutdown], "_over"),
        **rows((Phase.RINGING, Phase.ACTIVE), [LegEnded], "_leg_ended"),
        (Phase.ACTIVE, LegConfirmed): "_noted",
        **rows((Phase.RINGING, Phase.ACTIVE), [LegMedia, LegProgress, LegDtmf], "_noted"),
        **rows((Phase.ROUTING, Phase.PLACING), [Shutdown], "_stopping"),
    }

    def __init__(self, key: str, config: GatewayConfig, *, extension: str, text: str,
                 caller_display: str) -> None:
        super().__init__(key, config)
        self.extension = extension
        self.text = text
        self.caller_display = caller_display
        self.to_party = extension
        self.from_party = "emergency-notify"
        self.leg: int | None = None

    def _begin(self, event: Begin, now: float) -> tuple[Phase, list[Action]]:
        domain = self.config.domain
        return Phase.PLACING, [StartRecord(), RingTarget(
            self.extension,
            f"{sip_quote(self.caller_display)} <sip:emergency-notify@{domain}>",
            (("Subject", header_text(self.text)), ("Priority", "emergency"),
             ("Alert-Info", "<urn:alert:service:emergency>")))]

    def _placed(self, event: LegPlaced, now: float) -> tuple[Phase, list[Action]]:
        self.leg = event.leg
        self.legs.add(event.leg)
        self.deadline = now + self.config.emergency_notify_ring_s
        return Phase.RINGING, []

    def _place_failed(self, event: LegPlaceFailed, now: float) -> tuple[Phase, list[Action]]:
        return self._end("failed", event.message, [])

    def _answered(self, event: LegConfirmed, now: float) -> tuple[Phase, list[Action]]:
        assert self.leg is not None
        self.answered = True
        self.deadline = now + NOTIFY_ALERT_S
        return Phase.ACTIVE, [PlayTone(self.leg, tuple(NOTIFY_ALERT_TONE))]

    def _over(self, event: object, now: float) -> tuple[Phase, list[Action]]:
        assert self.leg is not None
        return self._end("answered" if self.answered else "no-answer", self.cause,
                         [HangupLeg(self.leg)])

    def _leg_ended(self, event: LegEnded, now: float) -> tuple[Phase, list[Action]]:
        self.legs.discard(event.leg)
        return self._end("answered" if self.answered else "no-answer",
                         f"{event.status} {event.reason}", [])


# ---------------------------------------------------------------------------------------------
# The technician's test call


class TestCallCore(CallCore):
    """'jbc test-call': dial, wait for the answer, send a tone while listening, hang up.

    ``routing -Begin-> selecting -TrunksSelected-> dialing -Dialled-> dialled
    -CallAnswered-> listening -Listened-> ended``; DialFailed tries the next trunk (unless one
    was named); a Timeout, CallEnded, Preempted or Shutdown before the answer end it."""

    kind = CallKind.TEST
    __test__ = False  # not a pytest class
    TABLE = {
        (Phase.ROUTING, Begin): "_begin",
        (Phase.SELECTING, TrunksSelected): "_selected",
        (Phase.DIALING, Dialled): "_dialled",
        (Phase.DIALING, DialFailed): "_dial_failed",
        (Phase.DIALLED, CallAnswered): "_answered",
        (Phase.DIALLED, Timeout): "_not_answered",
        (Phase.DIALLED, CallEnded): "_trunk_ended",
        (Phase.DIALLED, Preempted): "_preempted",
        **rows((Phase.DIALLED,), [CallAlerting, EarlyAudio, DtmfReceived], "_noted"),
        (Phase.LISTENING, Listened): "_listened",
        **rows((Phase.ROUTING, Phase.SELECTING, Phase.DIALING, Phase.DIALLED), [Shutdown],
               "_stopping"),
    }

    def __init__(self, key: str, config: GatewayConfig, *, number: str, only: str | None,
                 actor: str, directory: Directory) -> None:
        super().__init__(key, config)
        self.number = number
        self.only = only
        self.directory = directory
        self.from_party = f"test-call ({actor})"
        self.to_party = number
        self.candidates: list[str] = []
        self.dial_started_at: float | None = None
        self.report: dict[str, Any] = {"number": number, "trunk": None, "connected": False,
                                       "audio_heard": False}

    def _begin(self, event: Begin, now: float) -> tuple[Phase, list[Action]]:
        if self.directory.is_emergency(self.number):
            self.report["error"] = "refusing to place a test call to an emergency number"
            return self._end("rejected", self.report["error"], [])
        return Phase.SELECTING, [SelectTrunks(emergency=False, only=self.only)]

    def _selected(self, event: TrunksSelected, now: float) -> tuple[Phase, list[Action]]:
        selection = event.selection
        if selection.outcome is not policy.SelectionOutcome.CHOSEN:
            self.report["error"] = selection.reason
            return self._end("failed", f"no trunk: {selection.reason}", [])
        self.candidates = list(selection.candidates)
        self.dial_started_at = now
        return self._dial_next()

    def _dial_next(self) -> tuple[Phase, list[Action]]:
        if not self.candidates:
            return Phase.ENDED, []
        name = self.candidates.pop(0)
        self.report["trunk"] = name
        return Phase.DIALING, [Dial(name, self.number, False)]

    def _dial_failed(self, event: DialFailed, now: float) -> tuple[Phase, list[Action]]:
        if event.gone:
            return self._dial_next()
        self.report["error"] = event.message
        self.result = policy.record_result(event.cause, answered=False, caller_gave_up=False)
        self.cause = f"dial failed: {event.message}"
        if event.cause in (EndCause.FAILED, EndCause.NO_SERVICE) and not self.only:
            return self._dial_next()
        return Phase.ENDED, []

    def _dialled(self, event: Dialled, now: float) -> tuple[Phase, list[Action]]:
        self.trunk, self.trunk_call = event.trunk, event.call
        self.result = self.cause = ""
        self.report.pop("error", None)
        self.deadline = now + self.config.test_call_timeout_s
        return Phase.DIALLED, [StartRecord()]

    def _not_answered(self, event: Timeout, now: float) -> tuple[Phase, list[Action]]:
        self.report["error"] = "not answered in time"
        return self._end("no-answer", "not answered in time", [])

    def _answered(self, event: CallAnswered, now: float) -> tuple[Phase, list[Action]]:
        self.answered, self.answered_at, self.deadline = True, now, None
        self.report["connected"] = True
        self.report["setup_s"] = round(now - (self.dial_started_at or now), 2)
        self.result = "answered"
        return Phase.LISTENING, [RecordAnswered(), Listen(self.config.test_call_listen_s)]

    def _trunk_ended(self, event: CallEnded, now: float) -> tuple[Phase, list[Action]]:
        self.report["error"] = f"call ended: {event.cause.value}"
        return self._end(policy.record_result(event.cause, answered=False,
                                              caller_gave_up=False), event.cause.value, [])

    def _preempted(self, event: Preempted, now: float) -> tuple[Phase, list[Action]]:
        self.report["error"] = f"pre-empted by emergency call {event.by}"
        return self._end("failed", self.report["error"], [HangupTrunk(), SlotFreed()])

    def _listened(self, event: Listened, now: float) -> tuple[Phase, list[Action]]:
        level = event.level_dbfs
        self.report["audio_level_dbfs"] = level
        self.report["audio_heard"] = level is not None and level > -50.0
        return self._end("answered", "test call completed", [])
