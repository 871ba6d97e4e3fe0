"""A handset's outside or emergency call through the proxy, as a pure call core (its table is
in ``callcore.py``'s docstring, under *Outbound*).
"""

from __future__ import annotations

from appliance.directory.model import Directory
from drivers.trunk import CallAlerting, CallAnswered, CallEnded, DtmfReceived, EndCause

from . import policy
from .callcore import (
    PREEMPTED_REASON,
    Action,
    AnswerLeg,
    AttachBridge,
    Begin,
    CallCore,
    Dial,
    DialFailed,
    Dialled,
    EarlyAudio,
    EmergencyStarted,
    FailLeg,
    HangupLeg,
    HangupTrunk,
    Phase,
    PlayTone,
    Preempt,
    Preempted,
    PreemptionDone,
    RecordAnswered,
    RememberEmergency,
    RequireSrtp,
    SelectTrunks,
    SendDtmfToLeg,
    SendDtmfToTrunk,
    Shutdown,
    SlotFreed,
    StartRecord,
    Timeout,
    TrunkAudioProblem,
    TrunksSelected,
    journal,
    rows,
)
from .config import GatewayConfig
from .leg_events import LegConfirmed, LegDtmf, LegEnded, LegMedia, LegProgress
from .policy import FailureAnswer, NumberVerdict
from .sipmsg import InboundInvite
from .tones import PREEMPTION_TONE

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
        **rows((*_CONNECTED, Phase.TONE), [TrunkAudioProblem], "_trunk_audio"),
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
