"""One trunk call as a pure state machine: ``CallCore.handle(event, now) -> actions``.

Each kind of call is a table of ``(phase, event) -> handler`` in a module of its own: a
handset's outside call (``outbound.py``), a call arriving on a trunk (``inbound.py``), the
on-site emergency notification (``notification.py``), the technician's test call
(``testcall.py``). This module has what they share: the events fed in, the actions that come
out, the phases and :class:`CallCore`. A handler returns the next phase and the actions the
session (``calls.py``) must carry out. No clocks, no awaits, no I/O: ``now`` comes in with each
event, the next deadline comes out as ``core.deadline`` (the session feeds :class:`Timeout`
when it passes), and what an action produced (a trunk dialled, a handset leg placed) comes
back as the next event. A pair that is not in the table raises :class:`UnexpectedEvent`:
nothing is ignored silently. The tables, all four kinds of call (the notification's and the
test call's in short):

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
    dialled ..   TrunkAudioProblem          (same)        Journal (once per change)
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
    any          TrunkAudioProblem          (same)        Journal (once per change)
    (no target left to ring)                ended         Journal call-missed, HangupTrunk

Emergency notification (its own record, of kind ``notification``, never uploaded as a
customer call): ``routing -Begin-> placing -LegPlaced-> ringing -LegConfirmed->
active (PlayTone, 8 s) -Timeout/LegEnded-> ended``. Test call: ``routing -Begin-> selecting
-TrunksSelected-> dialing -Dialled-> dialled -CallAnswered-> listening (Listen) -Listened->
ended``. Their full tables are in their modules.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any

from drivers.trunk import EndCause, TrunkCall

from . import policy
from .config import GatewayConfig
from .errors import GatewayError
from .leg_events import LegEnded, LegMedia
from .policy import CallKind, FailureAnswer

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
class TrunkAudioProblem:
    """The trunk's audio path, from its health: 'no-downlink' (nothing from the modem),
    'silent-downlink' (only digital silence), 'uplink-stalled', 'port-lost', or None (fine).
    Every health change of the call's trunk comes in; the core notes what changed."""

    problem: str | None


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
        self.audio_problem: str | None = None

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

    def _trunk_audio(self, event: TrunkAudioProblem, now: float) -> tuple[Phase, list[Action]]:
        """One journal entry per change: a technician sees one-way audio on a call at once."""
        if event.problem == self.audio_problem:
            return self.phase, []
        before, self.audio_problem = self.audio_problem, event.problem
        if event.problem is None:
            return self.phase, [journal("call-audio-restored", f"{self.key}: audio from "
                                        f"{self.trunk} again (was {before})", call=self.key,
                                        trunk=self.trunk)]
        return self.phase, [journal("call-audio-problem", f"{self.key}: audio problem on "
                                    f"{self.trunk} during this call: {event.problem}",
                                    call=self.key, trunk=self.trunk, problem=event.problem)]

    def _gone_during_tone(self, event: LegEnded, now: float) -> tuple[Phase, list[Action]]:
        """The pre-emption tone needs the handset: its hanging up ends the call at once."""
        self.legs.discard(event.leg)
        return (Phase.ENDED if event.leg == getattr(self, "leg", None) else Phase.TONE), []

    def _stale_leg(self, event: LegEnded, now: float) -> tuple[Phase, list[Action]]:
        self.legs.discard(event.leg)
        return self.phase, []

    def _end(self, result: str, cause: str, actions: list[Action]
             ) -> tuple[Phase, list[Action]]:
        self.result, self.cause = result, cause
        return Phase.ENDED, actions
