"""The LTE driver's pure parts: response parsers, the call tracker, the NMEA filter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.lte import parse
from drivers.lte.calls import CallTracker, ResultCode
from drivers.pcm import NmeaFilter
from drivers.trunk import (
    CallAlerting,
    CallAnswered,
    CallEnded,
    CallState,
    EndCause,
    IncomingCall,
    Presentation,
)


@pytest.mark.parametrize(("payload", "stat", "act", "registered"), [
    ('2,1,"1A2B","01C2D3E4",7', 1, 7, True),
    ("0,5", 5, None, True),
    ("2,3", 3, None, False),
    ("1,2", 2, None, False),
])
def test_registration_read_form(payload, stat, act, registered):
    reg = parse.parse_registration(payload)
    assert (reg.stat, reg.act, reg.registered) == (stat, act, registered)


@pytest.mark.parametrize(("payload", "stat"), [
    ("1", 1), ('5,"1A2B","01C2D3E4",7', 5), ("3", 3), ("2,1", 1)])
def test_registration_urc_and_read_form_told_apart(payload, stat):
    assert parse.registration_urc(payload).stat == stat


@pytest.mark.parametrize(("rssi", "dbm", "bars"), [
    (0, -113, 0), (2, -109, 1), (10, -93, 3), (20, -73, 5), (31, -51, 5), (99, None, 0)])
def test_signal(rssi, dbm, bars):
    assert parse.signal_dbm(rssi) == dbm
    assert parse.signal_bars(parse.signal_dbm(rssi)) == bars


def test_call_reports_in_each_dialect():
    clcc = parse.parse_clcc('1,1,4,0,0,"+79139131234",145')
    assert (clcc.idx, clcc.direction, clcc.stat, clcc.number) == (1, 1, 4, "+79139131234")
    ended = parse.parse_clcc('3,0,6,0,0,"0802",129')
    assert ended.stat == -1  # SIMCom's "ended"
    ccinfo = parse.parse_ccinfo('"ccinfo",2,0,-1,0,0,"+15551234567",145')
    assert (ccinfo.idx, ccinfo.stat, ccinfo.number) == (2, -1, "+15551234567")
    assert parse.parse_ccinfo('"csq",20,99') is None


@pytest.mark.parametrize(("payload", "number", "validity"), [
    ('"+15551234567",145,,,,0', "+15551234567", 0),
    ('"",128,,,,1', "", 1),
    ('"",128,,,,2', "", 2),
    ('"+15551234567",145', "+15551234567", 0),
    ('"",128', "", 2),
])
def test_clip(payload, number, validity):
    clip = parse.parse_clip(payload)
    assert (clip.number, clip.validity) == (number, validity)


def test_ims_and_pin_counters():
    assert parse.parse_quectel_ims('"ims",1,1') is True
    assert parse.parse_quectel_ims('"ims",0,0') is False
    assert parse.parse_cireg("0,1") is True
    assert parse.parse_pin_retries('"SC",3,10') == 3
    assert parse.parse_pin_retries("1,10,3,10") == 1


def report(text: str):
    return parse.parse_ccinfo(f'"ccinfo",{text}')


def test_outgoing_call_through_its_states():
    tracker = CallTracker("t")
    call = tracker.dial_started("+1555", emergency=False, now=0.0)
    tracker.report(report('1,0,2,0,0,"+1555",145'), 0.1)
    tracker.report(report('1,0,3,0,0,"+1555",145'), 0.5)
    tracker.report(report('1,0,0,0,0,"+1555",145'), 2.0)
    tracker.report(report('1,0,-1,0,0,"+1555",145'), 5.0)
    events = tracker.take_events()
    assert [type(e) for e in events] == [CallAlerting, CallAnswered, CallEnded]
    assert events[-1].cause is EndCause.NORMAL
    assert call.state is CallState.ENDED


@pytest.mark.parametrize("order", ["code-first", "release-first"])
@pytest.mark.parametrize(("code", "cause"), [
    (ResultCode.BUSY, EndCause.BUSY), (ResultCode.NO_ANSWER, EndCause.NO_ANSWER)])
def test_failure_cause_whichever_order_the_lines_come(order, code, cause):
    tracker = CallTracker("t", end_settle=0.3)
    tracker.dial_started("+1555", emergency=False, now=0.0)
    tracker.report(report('1,0,2,0,0,"+1555",145'), 0.1)
    if order == "code-first":
        tracker.result_code(code, 1.0)
        tracker.report(report('1,0,-1,0,0,"+1555",145'), 1.01)
    else:
        tracker.report(report('1,0,-1,0,0,"+1555",145'), 1.0)
        assert not tracker.take_events()  # waits a moment for the reason
        tracker.result_code(code, 1.01)
    (ended,) = tracker.take_events()
    assert ended.cause is cause


def test_release_without_a_reason_settles_on_rejected():
    tracker = CallTracker("t", end_settle=0.3)
    tracker.dial_started("+1555", emergency=False, now=0.0)
    tracker.report(report('1,0,2,0,0,"+1555",145'), 0.1)
    tracker.report(report('1,0,-1,0,0,"+1555",145'), 0.2)
    assert tracker.get_timer() == pytest.approx(0.5)
    tracker.handle_timer(0.5)
    (ended,) = tracker.take_events()
    assert ended.cause is EndCause.REJECTED


def test_no_service_reason_explains_a_refused_call():
    tracker = CallTracker("t", end_settle=0.0)
    tracker.no_service_reason = "VoLTE (IMS) not ready"
    tracker.dial_started("+1555", emergency=False, now=0.0)
    tracker.report(report('1,0,2,0,0,"+1555",145'), 0.1)
    tracker.result_code(ResultCode.NO_CARRIER, 0.2)
    (ended,) = tracker.take_events()
    assert ended.cause is EndCause.NO_SERVICE


def test_a_left_over_result_code_does_not_touch_a_call_being_dialled():
    tracker = CallTracker("t")
    call = tracker.dial_started("+1555", emergency=False, now=0.0)
    tracker.result_code(ResultCode.NO_CARRIER, 0.01)  # the previous call's
    tracker.report(report('1,0,2,0,0,"+1555",145'), 0.1)
    tracker.report(report('1,0,0,0,0,"+1555",145'), 1.0)
    assert call.state is CallState.ACTIVE


def test_call_missing_from_a_listing_has_ended_but_only_if_seen_before_it():
    tracker = CallTracker("t")
    call = tracker.dial_started("+1555", emergency=False, now=0.0)
    tracker.report(report('1,0,0,0,0,"+1555",145'), 1.0)
    tracker.snapshot([], taken_at=0.5)  # listed before the call existed: proves nothing
    assert call.state is CallState.ACTIVE
    tracker.snapshot([], taken_at=2.0)
    ended = tracker.take_events()[-1]
    assert isinstance(ended, CallEnded) and ended.cause is EndCause.NORMAL


def test_dialled_call_never_listed_fails_after_grace():
    tracker = CallTracker("t", bind_grace=3.0)
    call = tracker.dial_started("+1555", emergency=False, now=0.0)
    tracker.snapshot([], taken_at=1.0)
    assert call.state is CallState.DIALING
    tracker.snapshot([], taken_at=3.5)
    assert call.end_cause is EndCause.FAILED


def test_incoming_announced_with_clip_and_repeated_rings_ignored():
    tracker = CallTracker("t", clip_wait=0.3)
    tracker.ring(0.0)
    assert not tracker.take_events()
    tracker.clip(parse.parse_clip('"+15551234567",145,,,,0'), 0.05)
    tracker.ring(0.06)
    tracker.report(report('1,1,4,0,0,"+15551234567",145'), 0.07)
    tracker.ring(3.0)
    (incoming,) = tracker.take_events()
    assert isinstance(incoming, IncomingCall)
    assert incoming.call.caller.number == "+15551234567"
    assert len(tracker.live()) == 1


@pytest.mark.parametrize(("clip", "presentation", "number"), [
    ('"",128,,,,1', Presentation.WITHHELD, None),
    ('"",128,,,,2', Presentation.UNAVAILABLE, None),
    (None, Presentation.UNAVAILABLE, None),
])
def test_incoming_without_a_number(clip, presentation, number):
    tracker = CallTracker("t", clip_wait=0.3)
    tracker.ring(0.0)
    if clip:
        tracker.clip(parse.parse_clip(clip), 0.05)
    else:
        tracker.handle_timer(0.3)
        assert tracker.take_events() == [] and tracker.poll_wanted  # RING alone: ask the list
        assert tracker.get_timer() == 10.0  # nothing to do before the ringing times out
        tracker.snapshot([report('1,1,4,0,0,"",128')], taken_at=0.4)
    (incoming,) = tracker.take_events()
    assert incoming.call.caller.presentation is presentation
    assert incoming.call.caller.number is number


def test_a_stray_ring_that_the_call_list_contradicts_leaves_no_trace():
    """A RING with no call in AT+CLCC used to become a phantom missed call."""
    tracker = CallTracker("t", clip_wait=0.3, ring_timeout=10.0)
    tracker.ring(0.0)
    assert tracker.poll_wanted
    tracker.handle_timer(0.3)
    tracker.snapshot([], taken_at=0.35)
    tracker.handle_timer(10.0)
    assert tracker.take_events() == [] and tracker.live() == [] and tracker.calls() == []
    assert tracker.get_timer() is None


def test_ringing_that_stops_is_a_missed_call():
    tracker = CallTracker("t", ring_timeout=10.0)
    tracker.ring(0.0)
    tracker.clip(parse.parse_clip('"+1555",145,,,,0'), 0.05)
    tracker.take_events()
    tracker.handle_timer(10.0)
    (ended,) = tracker.take_events()
    assert ended.cause is EndCause.MISSED


def test_waiting_call_and_zombie_are_handed_back_for_release():
    tracker = CallTracker("t")
    tracker.dial_started("+1555", emergency=False, now=0.0)
    tracker.report(report('1,0,0,0,0,"+1555",145'), 0.1)
    tracker.report(report('2,1,5,0,0,"+1666",145'), 1.0)  # call waiting
    tracker.report(report('3,0,0,0,0,"+1777",145'), 1.1)  # an MO call we never made
    assert tracker.take_releases() == [2, 3] and tracker.take_releases() == []
    assert [type(e) for e in tracker.take_events()] == [CallAnswered]


def test_nmea_sentences_leave_the_pcm_stream():
    audio = bytes(range(256)) * 4
    sentence = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
    nmea = NmeaFilter()
    assert nmea.feed(audio[:500] + sentence + audio[500:]) == audio
    assert nmea.removed == 1


def test_a_dollar_in_audio_that_is_no_sentence_passes():
    nmea = NmeaFilter()
    fake = b"\x00$GPxyz\r\n\x01"  # no checksum: not NMEA
    assert nmea.feed(fake) == fake


@given(st.lists(st.integers(min_value=1, max_value=120), max_size=10))
def test_nmea_filter_across_any_chunking(cuts):
    sentence = b"$GNRMC,1,A,2,N,3,E,0,0,1,,*3E\r\n"
    body = sentence[1:-5]
    checksum = 0
    for byte in body:
        checksum ^= byte
    sentence = sentence[:-4] + f"{checksum:02X}".encode() + b"\r\n"
    audio = bytes((i * 7) % 251 for i in range(300))
    stream = audio[:100] + sentence + audio[100:]
    nmea = NmeaFilter()
    out, start = b"", 0
    for cut in sorted(set(cuts)):
        out += nmea.feed(stream[start:cut])
        start = cut
    out += nmea.feed(stream[start:])
    assert out == audio


def test_a_ring_that_crosses_our_answer_is_not_a_new_call():
    tracker = CallTracker("t", clip_wait=0.3)
    tracker.ring(0.0)
    tracker.clip(parse.parse_clip('"+1555",145,,,,0'), 0.05)
    (incoming,) = tracker.take_events()
    tracker.answered(incoming.call)
    tracker.ring(2.0)
    tracker.clip(parse.parse_clip('"+1555",145,,,,0'), 2.01)
    tracker.handle_timer(3.0)
    assert [type(e) for e in tracker.take_events()] == [CallAnswered]
    assert tracker.live() == [incoming.call]


def test_both_drivers_implement_the_trunk_interface(tmp_path):
    from drivers.lte.trunk import LteSettings, LteTrunk
    from drivers.trunk import SupportsAtPassthrough, Trunk
    from drivers.v253.trunk import VoiceModemSettings, VoiceModemTrunk

    for trunk in (LteTrunk(LteSettings(name="a", usb_id="2c7c:0125", sysfs=tmp_path)),
                  VoiceModemTrunk(VoiceModemSettings(name="b", usb_id="0baf:0303"))):
        assert isinstance(trunk, Trunk) and isinstance(trunk, SupportsAtPassthrough)
        assert trunk.max_calls == 1


def test_an_unknown_modem_needs_its_interface_numbers(tmp_path):
    from drivers.lte.trunk import LteSettings, LteTrunk

    with pytest.raises(ValueError, match="at_interface"):
        LteTrunk(LteSettings(name="a", usb_id="1234:5678", sysfs=tmp_path))


def test_a_listing_sent_before_a_call_ended_does_not_bring_it_back():
    tracker = CallTracker("t", clip_wait=0.3)
    tracker.ring(0.0)
    tracker.report(report('1,1,4,0,0,"+15550003",145'), 0.05)
    (incoming,) = tracker.take_events()
    # AT+CLCC goes out at 0.5; the caller gives up at 0.6, before its answer arrives
    tracker.result_code(ResultCode.MISSED, 0.6)
    tracker.snapshot([report('1,1,4,0,0,"+15550003",145')], taken_at=0.5)
    (ended,) = tracker.take_events()
    assert ended.call is incoming.call and ended.cause is EndCause.MISSED
    assert tracker.live() == []
    # a new call may use the same index afterwards
    tracker.report(report('1,1,4,0,0,"+15550004",145'), 1.0)
    (again,) = tracker.take_events()
    assert isinstance(again, IncomingCall) and again.call.number == "+15550004"
