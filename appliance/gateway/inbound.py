"""A call arriving on a trunk, rung through the proxy to its targets in turn, as a pure call core
(its table is in ``callcore.py``'s docstring, under *Inbound*); how the caller is presented.
"""

from __future__ import annotations

import dataclasses

from drivers.trunk import CallAnswered, CallEnded, DtmfReceived, Presentation, TrunkCall

from . import policy
from .callcore import (
    CANCEL_WAIT_S,
    PREEMPTED_REASON,
    Action,
    AnswerTrunk,
    AttachBridge,
    Begin,
    CallCore,
    EarlyAudio,
    HangupLeg,
    HangupTrunk,
    Journal,
    LegPlaced,
    LegPlaceFailed,
    Phase,
    PlayTone,
    Preempted,
    RecordAnswered,
    RingTarget,
    SendDtmfToLeg,
    SendDtmfToTrunk,
    Shutdown,
    SlotFreed,
    StartRecord,
    Timeout,
    TrunkAnswered,
    TrunkAnswerFailed,
    TrunkAudioProblem,
    journal,
    rows,
)
from .config import GatewayConfig
from .leg_events import LegConfirmed, LegDtmf, LegEnded, LegMedia, LegProgress
from .policy import CallKind
from .sipmsg import caller_uri_user, sip_quote
from .tones import PREEMPTION_TONE

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
        (Phase.PLACING, LegConfirmed): "_answered_while_cancelled",  # a leg given up on
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
        **rows(_INBOUND_ALL, [TrunkAudioProblem], "_trunk_audio"),
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
        """An answer from a leg already given up (cancelled, or refused for plain media)."""
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
