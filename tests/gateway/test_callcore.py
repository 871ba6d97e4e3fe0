"""The gateway's call core on fake time: every kind of call as events in, actions out, and the
races an end-to-end run cannot aim at (pre-emption while ringing, the trunk hanging up during
183, a CANCEL crossing the answer, a call-back while another emergency call holds the trunk)."""

from __future__ import annotations

import pytest

from appliance.directory.model import parse_directory
from appliance.gateway import callcore as cc
from appliance.gateway import policy
from appliance.gateway.callcore import Phase
from appliance.gateway.config import GatewayConfig
from appliance.gateway.inbound import InboundCore
from appliance.gateway.leg_events import LegConfirmed, LegDtmf, LegEnded, LegMedia, LegProgress
from appliance.gateway.notification import NotificationCore
from appliance.gateway.outbound import OutboundCore
from appliance.gateway.policy import EmergencyCallMemo, FailureAnswer, SelectionOutcome
from appliance.gateway.sipmsg import parse_invite
from appliance.gateway.testcall import TestCallCore
from appliance.gateway.tones import NOTIFY_ALERT_TONE, PREEMPTION_TONE
from drivers.trunk import (
    CallAlerting,
    CallAnswered,
    CallDirection,
    CallEnded,
    CallerId,
    DtmfReceived,
    EndCause,
    TrunkCall,
)

DIRECTORY = parse_directory({
    "schema": 1, "version": 1, "site": "test",
    "locations": [{"id": "hq", "address": "1 Main St, Springfield, IL 62701", "floor": "2",
                   "room": "Reception"}],
    "extensions": [{"number": "101", "name": "Alice Ames", "location": "hq"},
                   {"number": "102", "name": "Bob Burns"}, {"number": "103", "name": "Carol"},
                   {"number": "104", "name": "Dan"}],
    "devices": [{"id": "d101", "extension": "101", "username": "101", "password": "pw"}],
    "dial_plan": {"outside_prefix": "9", "external_patterns": ["\\+?[0-9]{7,15}"]},
    "emergency": {"numbers": ["911"], "notify_extensions": ["103"], "callback_window_s": 600,
                  "default_location": "hq"},
    "inbound": [{"trunk": "*", "target": "102", "fallback": "104"}],
}, source="test")
CONFIG = GatewayConfig(answer_timeout_s=120.0, inbound_ring_timeout_s=30.0,
                       preemption_tone_s=2.0, retry_after_s=30)
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0\r\n{crypto}")
CRYPTO = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 40 + "\r\n"


def invite(number: str, *, caller: str = "101", transport: str = "UDP", crypto: bool = False,
           asserted: bool = True) -> str:
    body = SDP.format(crypto=CRYPTO if crypto else "")
    pai = f"P-Asserted-Identity: <sip:{caller}@site>\r\n" if asserted else ""
    return (f"INVITE sip:{number}@127.0.0.1 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKp\r\n"
            f"Via: SIP/2.0/{transport} 10.0.0.5:5061;branch=z9hG4bKh\r\n"
            f"From: <sip:{caller}@site>;tag=a\r\nTo: <sip:{number}@site>\r\n"
            f"Call-ID: x\r\nCSeq: 1 INVITE\r\n{pai}"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}")


def trunk_call(caller: str | None = "+15551230000") -> TrunkCall:
    return TrunkCall(trunk="lte-1", direction=CallDirection.INCOMING, number=None,
                     caller=CallerId(number=caller) if caller else None)


def chosen(*names: str) -> cc.TrunksSelected:
    return cc.TrunksSelected(policy.Selection(outcome=SelectionOutcome.CHOSEN,
                                              candidates=names))


def all_busy(*full: str) -> cc.TrunksSelected:
    return cc.TrunksSelected(policy.Selection(outcome=SelectionOutcome.ALL_BUSY, full=full,
                                              reason="every trunk in service is busy"))


class Clock:
    """Feeds a core at fake times and keeps what it asked for."""

    def __init__(self, core: cc.CallCore) -> None:
        self.core = core
        self.now = 1000.0

    def __call__(self, event: object, *, after_s: float = 0.0) -> list[cc.Action]:
        self.now += after_s
        return self.core.handle(event, self.now)

    def until_deadline(self) -> list[cc.Action]:
        assert self.core.deadline is not None
        self.now = self.core.deadline
        return self.core.handle(cc.Timeout(), self.now)


def outbound(number: str = "95551234567", **kwargs) -> tuple[OutboundCore, Clock]:
    core = OutboundCore("c1", CONFIG, leg=7, invite=parse_invite(invite(number, **kwargs)),
                           problem="", directory=DIRECTORY)
    return core, Clock(core)


def dialled_outbound(number: str = "95551234567", *, analog: bool = False, **kwargs):
    core, feed = outbound(number, **kwargs)
    feed(cc.Begin())
    feed(chosen("lte-1"))
    feed(cc.Dialled("lte-1", TrunkCall(trunk="lte-1", direction=CallDirection.OUTGOING,
                                       number=core.number), analog=analog))
    return core, feed


def of(actions: list[cc.Action], kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


# -- the tables ------------------------------------------------------------------------------


@pytest.mark.parametrize("core_class", [OutboundCore, InboundCore, NotificationCore,
                                        TestCallCore])
def test_every_row_of_every_table_names_a_handler(core_class):
    for (phase, event), handler in core_class.TABLE.items():
        assert isinstance(phase, Phase) and isinstance(event, type)
        assert callable(getattr(core_class, handler)), (phase, event, handler)


def test_an_event_the_table_does_not_expect_fails_loudly_and_changes_nothing():
    core, feed = outbound()
    with pytest.raises(cc.UnexpectedEvent, match="CallAnswered in phase routing"):
        feed(CallAnswered(call=trunk_call()))
    assert core.phase is Phase.ROUTING
    feed(cc.Begin())
    with pytest.raises(cc.UnexpectedEvent):
        feed(cc.Listened(-3.0))


def test_an_ended_call_takes_no_more_events():
    core, feed = dialled_outbound()
    feed(LegEnded(leg=7, status=487, reason="Request Terminated"))
    assert core.ended and core.deadline is None
    with pytest.raises(cc.UnexpectedEvent):
        feed(CallAnswered(call=core.trunk_call))


# -- outbound --------------------------------------------------------------------------------


def test_outside_call_is_dialled_rung_answered_and_ended_by_the_caller():
    core, feed = outbound()
    assert feed(cc.Begin()) == [cc.SelectTrunks(emergency=False)]
    assert feed(chosen("lte-1", "pots")) == [cc.Dial("lte-1", "5551234567", False)]
    call = TrunkCall(trunk="lte-1", direction=CallDirection.OUTGOING, number="5551234567")
    actions = feed(cc.Dialled("lte-1", call, analog=False))
    assert of(actions, cc.StartRecord) and of(actions, cc.AttachBridge) == [cc.AttachBridge(7)]
    assert [j.kind for j in of(actions, cc.Journal)] == ["call-dialled"]
    assert core.phase is Phase.DIALLED and core.deadline == feed.now + 120.0
    assert feed(CallAlerting(call=call)) == [cc.AnswerLeg(7, 180)]
    assert feed(CallAlerting(call=call)) == []  # one 180 is enough
    actions = feed(CallAnswered(call=call), after_s=5)
    assert actions[:2] == [cc.AnswerLeg(7, 200), cc.RecordAnswered()]
    assert core.answered_at == feed.now and core.deadline is None
    assert feed(LegDtmf(leg=7, digit="5", method="rfc4733")) == [cc.SendDtmfToTrunk("5")]
    assert feed(DtmfReceived(call=call, digit="1")) == [cc.SendDtmfToLeg(7, "1")]
    assert feed(LegEnded(leg=7, status=200, reason="BYE")) == [cc.HangupTrunk()]
    assert (core.result, core.cause) == ("answered", "caller hung up")


def test_an_analog_line_rings_at_once_and_in_band_audio_turns_it_into_183():
    core, feed = dialled_outbound(analog=True)
    assert core.sent_ringing
    assert feed(cc.EarlyAudio()) == [cc.AnswerLeg(7, 183)]
    assert feed(cc.EarlyAudio()) == []


def test_early_audio_heard_before_alerting_means_no_180():
    core, feed = dialled_outbound()
    assert feed(cc.EarlyAudio()) == [cc.AnswerLeg(7, 183)]
    assert feed(CallAlerting(call=core.trunk_call)) == []


def test_trunk_hangup_during_183_fails_the_handset_with_the_trunks_cause():
    core, feed = dialled_outbound()
    feed(CallAlerting(call=core.trunk_call))
    feed(cc.EarlyAudio())
    actions = feed(CallEnded(call=core.trunk_call, cause=EndCause.BUSY, detail="user busy"))
    assert actions == [cc.FailLeg(7, FailureAnswer(status=486, reason="Busy Here"),
                                  "user busy")]
    assert core.ended and core.result == "busy" and 7 not in core.legs


def test_trunk_dropping_an_unanswered_call_during_183_is_480_and_failed():
    core, feed = dialled_outbound()
    feed(cc.EarlyAudio())
    (fail,) = feed(CallEnded(call=core.trunk_call, cause=EndCause.NORMAL))
    assert fail.answer.status == 480 and core.result == "failed"


@pytest.mark.parametrize("answer_first", [True, False])
def test_a_cancel_crossing_the_trunks_answer_always_hangs_up_the_trunk(answer_first):
    core, feed = dialled_outbound()
    feed(CallAlerting(call=core.trunk_call))
    cancel = LegEnded(leg=7, status=487, reason="Request Terminated")
    if answer_first:
        assert feed(CallAnswered(call=core.trunk_call))[0] == cc.AnswerLeg(7, 200)
        assert feed(cancel) == [cc.HangupTrunk()]
        assert core.result == "answered"  # the trunk answered: the far end was reached
    else:
        assert feed(cancel) == [cc.HangupTrunk()]
        assert (core.result, core.caller_gave_up) == ("cancelled", cancel)
    assert core.ended


def test_a_caller_who_hangs_up_while_the_trunk_dials_gets_the_trunk_hung_up_once_dialled():
    core, feed = outbound()
    feed(cc.Begin())
    feed(chosen("lte-1"))
    assert feed(LegEnded(leg=7, status=487, reason="Request Terminated")) == []
    actions = feed(cc.Dialled("lte-1", trunk_call(), analog=False))
    assert actions[-1] == cc.HangupTrunk() and not of(actions, cc.AttachBridge)
    assert core.result == "cancelled" and core.ended


def test_a_caller_who_hangs_up_before_the_next_dial_stops_the_dialling():
    core, feed = outbound()
    feed(cc.Begin())
    feed(chosen("lte-1", "lte-2"))
    feed(LegEnded(leg=7, status=487, reason="Request Terminated"))
    assert feed(cc.DialFailed("lte-1", EndCause.FAILED, "no carrier")) == []
    assert (core.result, core.cause) == ("cancelled", "caller hung up before dialling")


def test_dial_failures_try_the_next_trunk_then_select_again_when_slots_filled():
    core, feed = outbound()
    feed(cc.Begin())
    feed(chosen("lte-1", "lte-2"))
    assert feed(cc.DialFailed("lte-1", EndCause.NO_SERVICE, "no network")) == [
        cc.Dial("lte-2", "5551234567", False)]
    assert feed(cc.DialFailed("lte-2", EndCause.BUSY, "slots", busy=True)) == [
        cc.SelectTrunks(emergency=False)]
    feed(chosen("lte-1"))
    (fail,) = feed(cc.DialFailed("lte-1", EndCause.REJECTED, "rejected"))
    assert fail.answer.status == 404 and core.result == "rejected"


def test_three_selections_at_most():
    core, feed = outbound()
    feed(cc.Begin())
    for _ in range(2):
        feed(chosen("lte-1"))
        assert feed(cc.DialFailed("lte-1", EndCause.BUSY, "slots", busy=True)) == [
            cc.SelectTrunks(emergency=False)]
    feed(chosen("lte-1"))
    (fail,) = feed(cc.DialFailed("lte-1", EndCause.BUSY, "slots", busy=True))
    assert fail.answer.status == 486 and core.ended


def test_no_answer_in_time_is_480_and_the_trunk_is_hung_up_first():
    core, feed = dialled_outbound()
    assert feed.until_deadline() == [
        cc.HangupTrunk(), cc.FailLeg(7, FailureAnswer(status=480,
                                                      reason="Temporarily Unavailable"))]
    assert core.result == "no-answer"


@pytest.mark.parametrize(("number", "status", "result"), [
    ("955512", 484, "rejected"), ("9abc", 404, "rejected")])
def test_numbers_the_trunks_cannot_dial_are_refused(number, status, result):
    core, feed = outbound(number)
    (fail,) = feed(cc.Begin())
    assert fail.answer.status == status and core.result == result


def test_unreadable_invite_is_400():
    core = OutboundCore("c1", CONFIG, leg=3, invite=None, problem="no request line",
                           directory=DIRECTORY)
    (fail,) = core.handle(cc.Begin(), 0.0)
    assert fail.answer.status == 400 and "no request line" in core.cause


def test_a_tls_handset_needs_srtp_or_gets_488():
    _, feed = outbound(transport="TLS")
    (fail,) = feed(cc.Begin())
    assert fail.answer.status == 488 and "SRTP" in fail.warning
    _core, feed = outbound(transport="TLS", crypto=True)
    assert feed(cc.Begin())[0] == cc.RequireSrtp(7)


def test_no_trunk_answers_busy_or_503_with_retry_after():
    core, feed = outbound()
    feed(cc.Begin())
    (fail,) = feed(all_busy("lte-1"))  # not an emergency: no pre-emption
    assert fail.answer.status == 486 and core.result == "busy"
    core, feed = outbound()
    feed(cc.Begin())
    none = policy.Selection(outcome=SelectionOutcome.NONE_IN_SERVICE, reason="lte-1: down")
    (fail,) = feed(cc.TrunksSelected(none))
    assert fail.answer == FailureAnswer(status=503, reason="Service Unavailable",
                                        retry_after_s=30)


# -- emergency -------------------------------------------------------------------------------


def test_emergency_call_starts_the_alarm_and_preempts_when_every_trunk_is_busy():
    core, feed = outbound("9911")
    assert feed(cc.Begin()) == [cc.EmergencyStarted(), cc.SelectTrunks(emergency=True)]
    assert core.emergency and core.location == ("1 Main St, Springfield, IL 62701 "
                                                "(floor 2, Reception)")
    assert feed(all_busy("lte-1")) == [cc.Preempt(("lte-1",))]
    assert feed(cc.PreemptionDone(freed=True)) == [cc.SelectTrunks(emergency=True)]
    assert feed(chosen("lte-1")) == [cc.Dial("lte-1", "911", True)]
    actions = feed(cc.Dialled("lte-1", trunk_call(), analog=False))
    assert cc.RememberEmergency() in actions


def test_emergency_call_with_nothing_to_preempt_is_busy():
    _core, feed = outbound("911")
    feed(cc.Begin())
    feed(all_busy("lte-1"))
    (fail,) = feed(cc.PreemptionDone(freed=False))
    assert fail.answer.status == 486


def test_preemption_while_the_trunk_rings_frees_the_slot_first_then_plays_the_tone():
    core, feed = dialled_outbound()
    feed(CallAlerting(call=core.trunk_call))
    feed(LegMedia(leg=7, codec="PCMU", clock_rate=8000, srtp=False))  # early media to the set
    actions = feed(cc.Preempted("c9"))
    assert actions == [cc.HangupTrunk(), cc.SlotFreed(),
                       cc.PlayTone(7, tuple(PREEMPTION_TONE))]
    assert core.phase is Phase.TONE and core.deadline == feed.now + 2.0
    assert feed(CallEnded(call=core.trunk_call, cause=EndCause.LOCAL_HANGUP)) == []
    (fail,) = feed.until_deadline()
    assert fail.answer.status == 503 and fail.answer.retry_after_s == 30
    assert (core.result, core.cause) == ("failed", "pre-empted by emergency call c9")


def test_preemption_of_an_answered_call_ends_it_with_a_reason():
    core, feed = dialled_outbound()
    feed(CallAnswered(call=core.trunk_call))
    actions = feed(cc.Preempted("c9"))
    assert actions[:2] == [cc.HangupTrunk(), cc.SlotFreed()]  # no media yet: no tone
    assert actions[2] == cc.HangupLeg(7, (("Reason", cc.PREEMPTED_REASON),))
    assert core.result == "answered" and core.ended


def test_a_caller_hanging_up_during_the_preemption_tone_ends_the_call_at_once():
    core, feed = dialled_outbound()
    feed(LegMedia(leg=7, codec="PCMU", clock_rate=8000, srtp=False))
    feed(cc.Preempted("c9"))
    assert feed(LegEnded(leg=7, status=200, reason="")) == []
    assert core.ended and not core.legs


# -- inbound ---------------------------------------------------------------------------------


def inbound(targets=("102", "104"), memo=None, caller="+15551230000"):
    core = InboundCore("c2", CONFIG, trunk="lte-1", call=trunk_call(caller))
    feed = Clock(core)
    return core, feed, feed(cc.Begin(targets, memo))


def test_inbound_call_rings_with_caller_id_and_answers_the_trunk_when_the_handset_does():
    core, feed, actions = inbound()
    start, ring = actions
    assert start == cc.StartRecord() and ring.target == "102"
    assert ring.from_uri == '"+15551230000" <sip:+15551230000@127.0.0.1>'
    assert ("Alert-Info", "<urn:alert:service:normal>") in ring.headers
    assert feed(cc.LegPlaced(21)) == [] and core.deadline == feed.now + 30.0
    assert feed(LegConfirmed(leg=21)) == [cc.AnswerTrunk()]
    actions = feed(cc.TrunkAnswered())
    assert actions[:2] == [cc.RecordAnswered(), cc.AttachBridge(21)]
    assert feed(CallEnded(call=core.trunk_call, cause=EndCause.NORMAL)) == [cc.HangupLeg(21)]
    assert (core.result, core.cause) == ("answered", "caller hung up (normal)")


def test_an_unanswered_target_is_cancelled_then_the_fallback_rings_then_it_is_missed():
    core, feed, _ = inbound()
    feed(cc.LegPlaced(21))
    assert feed.until_deadline() == [cc.HangupLeg(21)]  # CANCEL
    assert core.phase is Phase.CANCELLING
    (ring,) = feed(LegEnded(leg=21, status=487, reason="Request Terminated"))
    assert ring.target == "104"
    feed(cc.LegPlaced(22))
    feed.until_deadline()
    actions = feed.until_deadline()  # the CANCEL never confirmed: go on anyway
    assert [j.kind for j in of(actions, cc.Journal)] == ["call-missed"]
    assert actions[-1] == cc.HangupTrunk()
    assert (core.result, core.cause) == ("no-answer", "missed: 102, 104 did not answer")
    feed_stale = LegEnded(leg=22, status=487, reason="")
    with pytest.raises(cc.UnexpectedEvent):
        feed(feed_stale)


def test_a_handset_answering_as_its_ring_is_cancelled_is_hung_up():
    core, feed, _ = inbound(targets=("102",))
    feed(cc.LegPlaced(21))
    feed.until_deadline()
    assert feed(LegConfirmed(leg=21)) == [cc.HangupLeg(21)]
    actions = feed(LegEnded(leg=21, status=200, reason=""))
    assert core.ended and core.result == "no-answer" and actions[-1] == cc.HangupTrunk()


def test_the_caller_hanging_up_while_a_handset_rings_cancels_it():
    core, feed, _ = inbound()
    feed(cc.LegPlaced(21))
    assert feed(CallEnded(call=core.trunk_call, cause=EndCause.MISSED)) == [cc.HangupLeg(21)]
    assert (core.result, core.cause) == ("no-answer", "missed: caller hung up while ringing")


def test_a_handset_that_cannot_be_rung_is_skipped():
    _core, feed, _ = inbound()
    (ring,) = feed(cc.LegPlaceFailed("agent not started"))
    assert ring.target == "104"


def test_preemption_while_a_handset_rings_ends_the_inbound_call():
    core, feed, _ = inbound()
    feed(cc.LegPlaced(21))
    assert feed(cc.Preempted("c9")) == [cc.HangupLeg(21), cc.HangupTrunk(), cc.SlotFreed()]
    assert (core.result, core.cause) == ("no-answer", "pre-empted by c9")


def test_preemption_of_an_answered_inbound_call_plays_the_tone_then_says_why():
    core, feed, _ = inbound()
    feed(cc.LegPlaced(21))
    feed(LegConfirmed(leg=21))
    feed(cc.TrunkAnswered())
    assert feed(cc.Preempted("c9"))[:2] == [cc.HangupTrunk(), cc.SlotFreed()]
    assert feed.until_deadline() == [cc.HangupLeg(21, (("Reason", cc.PREEMPTED_REASON),))]
    assert core.result == "answered"


def test_a_trunk_that_cannot_be_answered_misses_the_call():
    core, feed, _ = inbound()
    feed(cc.LegPlaced(21))
    feed(LegConfirmed(leg=21))
    assert feed(cc.TrunkAnswerFailed("ERROR")) == [cc.HangupLeg(21)]
    assert core.result == "no-answer" and "answering the trunk failed" in core.cause


def test_a_trunk_without_an_inbound_route_is_missed_and_hung_up():
    core, _feed, actions = inbound(targets=())
    assert actions[-1] == cc.HangupTrunk() and core.ended
    assert core.cause == "missed: no inbound route for this trunk"


def test_withheld_and_unavailable_callers_are_presented_as_such():
    _, _, (_, ring) = inbound(caller=None)
    assert "Unavailable" in ring.from_uri and "anonymous.invalid" in ring.from_uri


def test_a_tls_handset_answering_without_srtp_is_never_carried_in_plain_rtp():
    _core, feed, _ = inbound()
    feed(cc.LegPlaced(21))
    actions = feed(LegConfirmed(leg=21, srtp=False, secure_signalling=True))
    assert actions[0] == cc.HangupLeg(21, (("Reason", 'SIP;cause=488;text="SRTP required"'),))
    assert [j.kind for j in of(actions, cc.Journal)] == ["call-srtp-refused"]
    assert actions[-1].target == "104" and not of(actions, cc.AnswerTrunk)
    feed(LegEnded(leg=21, status=200, reason=""))  # the refused leg's BYE completes
    feed(cc.LegPlaced(22))
    assert feed(LegConfirmed(leg=22, srtp=True, secure_signalling=True)) == [cc.AnswerTrunk()]


def test_a_tls_handset_leg_the_agent_ended_for_plain_media_is_journalled_and_skipped():
    core, feed, _ = inbound()
    feed(cc.LegPlaced(21))
    actions = feed(LegEnded(leg=21, status=488, reason="Not Acceptable Here",
                            srtp_refused=True))
    assert [j.kind for j in of(actions, cc.Journal)] == ["call-srtp-refused"]
    assert actions[-1].target == "104" and core.phase is Phase.PLACING


# -- emergency call-backs --------------------------------------------------------------------


def test_a_callback_rings_the_extension_that_called_first_as_an_emergency():
    memo = EmergencyCallMemo(extension="101", trunk="lte-1", dialled="911", at=990.0)
    core, _feed, actions = inbound(targets=("101", "102", "104"), memo=memo)
    ring = actions[-1]
    assert core.emergency and ring.target == "101"
    assert ("Priority", "emergency") in ring.headers
    assert ("Alert-Info", "<urn:alert:service:emergency>") in ring.headers
    assert '"EMERGENCY CALLBACK +15551230000"' in ring.from_uri
    assert [j.kind for j in of(actions, cc.Journal)] == ["emergency-callback"]


def test_a_callback_arriving_during_another_emergency_call_is_never_its_victim():
    """Two emergency-class calls on one full trunk: a new 911 finds nothing to pre-empt."""
    memo = EmergencyCallMemo(extension="101", trunk="lte-1", dialled="911", at=990.0)
    callback, feed, _ = inbound(targets=("101", "102"), memo=memo)
    emergency, _ = dialled_outbound("911")
    calls = [policy.ActiveCall(key=c.key, trunk="lte-1", kind=c.kind, emergency=c.emergency,
                               answered=False, started_at=0.0)
             for c in (callback, emergency)]
    assert policy.preemption_victim(calls, ["lte-1"]) is None
    # 101 is busy in its emergency call: the call-back goes on to the site's route, still
    # marked as an emergency call-back
    feed(cc.LegPlaced(41))
    (ring,) = feed(LegEnded(leg=41, status=486, reason="Busy Here"))
    assert ring.target == "102" and ("Priority", "emergency") in ring.headers
    _second, feed2 = outbound("911", caller="102")
    feed2(cc.Begin())
    feed2(all_busy("lte-1"))
    (fail,) = feed2(cc.PreemptionDone(freed=False))
    assert fail.answer.status == 486
    assert callback.emergency and callback.phase is Phase.PLACING


# -- notification and test call ---------------------------------------------------------------


def test_emergency_notification_rings_plays_the_alert_and_hangs_up():
    core = NotificationCore("c3", CONFIG, extension="103", text="EMERGENCY CALL: ext 101",
                               caller_display="EMERGENCY 911 ext 101")
    feed = Clock(core)
    start, ring = feed(cc.Begin())
    assert start == cc.StartRecord() and core.direction == "notification"  # its own kind
    assert ring.target == "103" and ("Priority", "emergency") in ring.headers
    feed(cc.LegPlaced(31))
    assert feed(LegConfirmed(leg=31)) == [cc.PlayTone(31, tuple(NOTIFY_ALERT_TONE))]
    assert core.deadline == feed.now + cc.NOTIFY_ALERT_S
    assert feed.until_deadline() == [cc.HangupLeg(31)]
    assert core.result == "answered"


@pytest.mark.parametrize("agent_ended_it", [False, True])
def test_a_notification_is_never_carried_in_plain_rtp_to_a_tls_extension(agent_ended_it):
    core = NotificationCore("c3", CONFIG, extension="103", text="x", caller_display="x")
    feed = Clock(core)
    feed(cc.Begin())
    feed(cc.LegPlaced(31))
    if agent_ended_it:
        actions = feed(LegEnded(leg=31, status=200, reason="", srtp_refused=True))
    else:
        actions = feed(LegConfirmed(leg=31, srtp=False, secure_signalling=True))
        assert actions[0] == cc.HangupLeg(31, (("Reason", 'SIP;cause=488;text="SRTP required"'),))
    assert not of(actions, cc.PlayTone)
    assert [j.kind for j in of(actions, cc.Journal)] == ["emergency-notify-failed"]
    assert core.ended and core.result == "failed"


def test_an_answer_from_a_leg_already_given_up_is_hung_up():
    core, feed, _ = inbound()
    feed(cc.LegPlaced(21))
    feed(LegEnded(leg=21, status=200, reason="", srtp_refused=True))  # the agent refused it
    assert core.phase is Phase.PLACING
    assert feed(LegConfirmed(leg=21, srtp=False, secure_signalling=True)) == [cc.HangupLeg(21)]
    assert feed(LegConfirmed(leg=99)) == []


def test_unanswered_notification_gives_up_after_its_ring_time():
    core = NotificationCore("c3", CONFIG, extension="103", text="x", caller_display="x")
    feed = Clock(core)
    feed(cc.Begin())
    feed(cc.LegPlaced(31))
    assert feed.until_deadline() == [cc.HangupLeg(31)] and core.result == "no-answer"


def test_test_call_dials_listens_and_reports():
    core = TestCallCore("c4", CONFIG, number="5550100", only=None, actor="root",
                           directory=DIRECTORY)
    feed = Clock(core)
    assert feed(cc.Begin()) == [cc.SelectTrunks(emergency=False, only=None)]
    feed(chosen("lte-1", "lte-2"))
    assert feed(cc.DialFailed("lte-1", EndCause.NO_SERVICE, "no network")) == [
        cc.Dial("lte-2", "5550100", False)]
    feed(cc.Dialled("lte-2", trunk_call(), analog=False), after_s=1.0)
    actions = feed(CallAnswered(call=core.trunk_call), after_s=2.5)
    assert actions == [cc.RecordAnswered(), cc.Listen(CONFIG.test_call_listen_s)]
    assert core.report["setup_s"] == 3.5 and "error" not in core.report
    feed(cc.Listened(-12.5))
    assert core.report["audio_heard"] and core.result == "answered"


def test_test_call_to_an_emergency_number_is_refused():
    core = TestCallCore("c4", CONFIG, number="911", only=None, actor="root",
                           directory=DIRECTORY)
    assert core.handle(cc.Begin(), 0.0) == [] and core.result == "rejected"


def test_test_call_preempted_before_the_answer_gives_up_its_trunk():
    core = TestCallCore("c4", CONFIG, number="5550100", only="lte-1", actor="root",
                           directory=DIRECTORY)
    feed = Clock(core)
    feed(cc.Begin())
    feed(chosen("lte-1"))
    feed(cc.Dialled("lte-1", trunk_call(), analog=False))
    assert feed(cc.Preempted("c9")) == [cc.HangupTrunk(), cc.SlotFreed()]
    assert "pre-empted" in core.report["error"]


# -- trunk audio problems (the audio bridge reports them) ---------------------------------------


def test_a_silent_downlink_on_an_answered_call_is_journalled_once_per_change():
    core, feed = dialled_outbound()
    feed(CallAnswered(call=core.trunk_call))
    (entry,) = feed(cc.TrunkAudioProblem("silent-downlink"))
    assert entry.kind == "call-audio-problem"
    assert entry.reason == "c1: audio problem on lte-1 during this call: silent-downlink"
    assert feed(cc.TrunkAudioProblem("silent-downlink")) == []
    (entry,) = feed(cc.TrunkAudioProblem(None))
    assert entry.kind == "call-audio-restored" and core.phase is Phase.ACTIVE


def test_trunk_health_changes_that_are_not_audio_problems_say_nothing():
    core, feed, _ = inbound()
    assert feed(cc.TrunkAudioProblem(None)) == []  # e.g. the signal changed while it rings
    feed(cc.LegPlaced(21))
    assert feed(cc.TrunkAudioProblem(None)) == [] and core.phase is Phase.RINGING


def test_an_inbound_call_reports_a_dead_downlink_too():
    _, feed, _ = inbound()
    feed(cc.LegPlaced(21))
    feed(LegConfirmed(leg=21))
    feed(cc.TrunkAnswered())
    (entry,) = feed(cc.TrunkAudioProblem("no-downlink"))
    assert entry.details == (("call", "c2"), ("trunk", "lte-1"), ("problem", "no-downlink"))


def test_log_lines_about_a_call_carry_its_key_and_sip_call_id(caplog):
    import logging

    from appliance.gateway.calls import CallLog

    caplog.set_level(logging.INFO, logger="appliance.gateway.test")
    CallLog(logging.getLogger("appliance.gateway.test"),
            {"call": "c7", "sip_call_id": "a84b@10.0.0.5"}).info("dial on %s failed", "lte-1")
    CallLog(logging.getLogger("appliance.gateway.test"), {"call": "c8"}).info("ringing")
    assert caplog.messages == ["c7 [a84b@10.0.0.5]: dial on lte-1 failed", "c8: ringing"]


# -- properties: whatever order the world's events come in --------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TRUNK_CALL = TrunkCall(trunk="lte-1", direction=CallDirection.OUTGOING, number="5551234567")
OUTBOUND_EVENTS = [
    CallAlerting(call=_TRUNK_CALL), cc.EarlyAudio(), CallAnswered(call=_TRUNK_CALL),
    CallEnded(call=_TRUNK_CALL, cause=EndCause.NORMAL),
    CallEnded(call=_TRUNK_CALL, cause=EndCause.BUSY),
    LegEnded(leg=7, status=487, reason="Request Terminated"),
    LegEnded(leg=3, status=200, reason="stale"), LegConfirmed(leg=7),
    LegMedia(leg=7, codec="PCMU", clock_rate=8000, srtp=False),
    LegDtmf(leg=7, digit="1", method="rfc4733"), DtmfReceived(call=_TRUNK_CALL, digit="2"),
    cc.Preempted("c9"), cc.Timeout(), cc.TrunkAudioProblem("no-downlink"), cc.Shutdown(),
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(OUTBOUND_EVENTS), max_size=12))
def test_an_outside_call_answers_the_handset_once_and_always_frees_a_preempted_slot(events):
    core, feed = dialled_outbound()
    finals, answers, slots_freed, preempted = [], 0, 0, 0
    for event in events:
        if isinstance(event, cc.Timeout) and core.deadline is None:
            continue  # the session feeds Timeout only when a deadline is set
        if core.ended:
            with pytest.raises(cc.UnexpectedEvent):
                feed(event, after_s=1.0)
            break
        actions = feed(event, after_s=1.0)
        preempted += isinstance(event, cc.Preempted) and core.preempted_by is not None
        for action in actions:
            if isinstance(action, cc.AnswerLeg) and action.status == 200:
                answers += 1
                assert not finals, "200 OK after the handset's call was already ended"
            if isinstance(action, cc.FailLeg | cc.HangupLeg):
                finals.append(action)
            slots_freed += isinstance(action, cc.SlotFreed)
        assert answers <= 1
        if core.ended:
            assert core.deadline is None and core.result
    assert slots_freed >= min(preempted, 1)  # a pre-emption always frees its slot
    assert len(finals) <= 1  # one final answer (or BYE) to the handset, never two


_INCOMING = TrunkCall(trunk="lte-1", direction=CallDirection.INCOMING, number=None,
                      caller=CallerId(number="+15551230000"))
INBOUND_EVENTS = [
    "answer", "answer-plain-tls", "busy", LegProgress(leg=0, status=180), cc.Timeout(),
    CallEnded(call=_INCOMING, cause=EndCause.MISSED), cc.Preempted("c9"),
    LegDtmf(leg=0, digit="3", method="info"), DtmfReceived(call=_INCOMING, digit="4"),
    cc.EarlyAudio(), cc.TrunkAudioProblem("silent-downlink"), "handset-hangs-up",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(INBOUND_EVENTS), max_size=14))
def test_an_inbound_call_answers_its_trunk_once_and_never_leaves_it_up(events):
    """The session's part is modelled: an action's result comes back at once (a leg placed,
    the trunk answered), a Timeout only when a deadline is set."""
    core = InboundCore("c2", CONFIG, trunk="lte-1", call=_INCOMING)
    feed = Clock(core)
    legs = iter(range(21, 100))
    answered_trunk, trunk_released = 0, False

    def run(actions):
        nonlocal answered_trunk, trunk_released
        for action in actions:
            trunk_released |= isinstance(action, cc.HangupTrunk)
            if isinstance(action, cc.RingTarget):
                run(feed(cc.LegPlaced(next(legs))))
            if isinstance(action, cc.AnswerTrunk):
                answered_trunk += 1
                run(feed(cc.TrunkAnswered()))

    run(feed(cc.Begin(("102", "104"), None)))
    for item in events:
        if core.ended:
            break
        leg = core.leg
        if item == "answer":
            event = LegConfirmed(leg=leg, srtp=True, secure_signalling=True)
        elif item == "answer-plain-tls":
            event = LegConfirmed(leg=leg, srtp=False, secure_signalling=True)
        elif item in ("busy", "handset-hangs-up"):
            event = LegEnded(leg=leg, status=486 if item == "busy" else 200, reason="")
        elif isinstance(item, cc.Timeout) and core.deadline is None:
            continue
        else:
            event = item
        before = core.phase
        if isinstance(event, CallEnded):
            trunk_released = True
        run(feed(event, after_s=1.0))
        if item == "answer-plain-tls" and before is Phase.RINGING:
            assert core.phase is not Phase.ACTIVE  # never carried in plain RTP
    assert answered_trunk <= 1
    if core.ended and core.cause != "gateway stopping":
        assert trunk_released, (core.result, core.cause)
