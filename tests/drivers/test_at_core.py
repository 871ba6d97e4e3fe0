"""The AT line-framing core, driven with bytes and fake time (no ports, no sleeps)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.at.core import (
    AtCommand,
    AtCore,
    CommandFailed,
    CommandFinished,
    RawModeEnded,
    RawStopTimedOut,
    Resynced,
    StaleResponse,
    Urc,
)
from drivers.at.results import AtTimeout, AtUnresponsive, ResultKind, parse_final


def feed_bytewise(core: AtCore, data: bytes, now: float = 0.0) -> None:
    for i in range(len(data)):
        core.feed(data[i:i + 1], now)


def finished(events) -> list[CommandFinished]:
    return [e for e in events if isinstance(e, CommandFinished)]


@pytest.mark.parametrize(("line", "kind", "code", "text"), [
    ("OK", ResultKind.OK, None, ""),
    ("ERROR", ResultKind.ERROR, None, ""),
    ("+CME ERROR: 10", ResultKind.CME_ERROR, 10, "SIM not inserted"),
    ("+CME ERROR: SIM not inserted", ResultKind.CME_ERROR, 10, "SIM not inserted"),
    ("+CME ERROR: sim busy", ResultKind.CME_ERROR, 14, "sim busy"),
    ("+CME ERROR: 30", ResultKind.CME_ERROR, 30, "no network service"),
    ("+CME ERROR: vendor special", ResultKind.CME_ERROR, None, "vendor special"),
    ("+CMS ERROR: 500", ResultKind.CMS_ERROR, 500, ""),
    ("+CMS ERROR: unknown error", ResultKind.CMS_ERROR, None, "unknown error"),
    ("NO CARRIER", ResultKind.NO_CARRIER, None, ""),
    ("BUSY", ResultKind.BUSY, None, ""),
    ("NO ANSWER", ResultKind.NO_ANSWER, None, ""),
    ("NO DIALTONE", ResultKind.NO_DIALTONE, None, ""),
    ("NO DIAL TONE", ResultKind.NO_DIALTONE, None, ""),
    ("CONNECT", ResultKind.CONNECT, None, ""),
    ("CONNECT 115200", ResultKind.CONNECT, None, "115200"),
    ("VCON", ResultKind.VCON, None, ""),
])
def test_final_results_numeric_and_verbose(line, kind, code, text):
    result = parse_final(line)
    assert result.kind is kind
    assert result.code == code
    assert result.text == text


@pytest.mark.parametrize("line", ["+CSQ: 17,99", "OKAY", "RING", "CONNECTED", "Quectel"])
def test_non_final_lines_are_not_results(line):
    assert parse_final(line) is None


def test_command_with_info_lines_fed_byte_by_byte():
    core = AtCore()
    command = AtCommand(text="AT+CGMR")
    core.submit(command, 0.0)
    assert core.take_data() == b"AT+CGMR\r"
    feed_bytewise(core, b"\r\nRevision: EC25EFAR06A06M4G\r\n\r\nOK\r\n")
    (done,) = finished(core.take_events())
    assert done.command is command
    assert done.response.lines == ("Revision: EC25EFAR06A06M4G",)
    assert done.response.ok


def test_urcs_inside_a_response_are_demultiplexed():
    core = AtCore()
    core.submit(AtCommand(text="AT+CSQ"), 0.0)
    core.feed(b"\r\n^RSSI:26\r\n^HCSQ:\"LTE\",49,46,151,24\r\n+CSQ: 28,99\r\n"
              b"RING\r\n\r\nOK\r\n", 0.1)
    events = core.take_events()
    assert [e.line for e in events if isinstance(e, Urc)] == [
        "^RSSI:26", '^HCSQ:"LTE",49,46,151,24', "RING"]
    (done,) = finished(events)
    assert done.response.lines == ("+CSQ: 28,99",)


def test_a_urc_sharing_the_command_prefix_is_a_response_line():
    core = AtCore()
    core.submit(AtCommand(text="AT+CPIN?"), 0.0)
    core.feed(b"\r\n+CPIN: READY\r\n\r\nOK\r\n", 0.1)
    (done,) = finished(core.take_events())
    assert done.response.line_with("+CPIN:") == "READY"


def test_echo_is_tolerated():
    core = AtCore()
    core.submit(AtCommand(text="ATE0"), 0.0)
    core.feed(b"ATE0\r\r\nOK\r\n", 0.1)
    core.submit(AtCommand(text="AT+CGMI"), 0.2)
    core.feed(b"AT+CGMI\r\r\nQuectel\r\n\r\nOK\r\n", 0.3)
    first, second = finished(core.take_events())
    assert first.response.lines == ()
    assert second.response.lines == ("Quectel",)


def test_one_command_in_flight_others_wait():
    core = AtCore()
    a, b = AtCommand(text="AT"), AtCommand(text="AT+CSQ")
    core.submit(a, 0.0)
    core.submit(b, 0.0)
    assert core.take_data() == b"AT\r"
    core.feed(b"\r\nOK\r\n", 0.1)
    assert core.take_data() == b"AT+CSQ\r"
    core.feed(b"\r\n+CSQ: 17,99\r\n\r\nOK\r\n", 0.2)
    assert [e.command for e in finished(core.take_events())] == [a, b]


def test_cme_error_is_a_final_result_of_the_command():
    core = AtCore()
    core.submit(AtCommand(text="AT+CIMI"), 0.0)
    core.feed(b"\r\n+CME ERROR: SIM not inserted\r\n", 0.1)
    (done,) = finished(core.take_events())
    assert not done.response.ok
    assert done.response.result.code == 10


def test_call_progress_results_end_call_commands_but_are_urcs_otherwise():
    core = AtCore()
    core.submit(AtCommand(text="ATA"), 0.0)
    core.feed(b"\r\nNO CARRIER\r\n", 0.1)
    (done,) = finished(core.take_events())
    assert done.response.result.kind is ResultKind.NO_CARRIER
    core.submit(AtCommand(text="AT+CSQ"), 0.2)
    core.feed(b"\r\nNO CARRIER\r\n+CSQ: 20,99\r\nOK\r\n", 0.3)
    events = core.take_events()
    assert [e.line for e in events if isinstance(e, Urc)] == ["NO CARRIER"]
    assert finished(events)[0].response.lines == ("+CSQ: 20,99",)


def test_unsolicited_lines_when_idle_are_urcs():
    core = AtCore()
    core.feed(b"\r\nRING\r\n\r\n+CLIP: \"+15551234567\",145,,,,0\r\n$GPGGA,1,2*00\r\n", 0.0)
    assert [e.line for e in core.take_events()] == [
        "RING", '+CLIP: "+15551234567",145,,,,0', "$GPGGA,1,2*00"]


def test_timeout_then_late_answer_within_grace_is_not_taken_for_the_next_command():
    core = AtCore(late_grace=2.0)
    slow = AtCommand(text="AT+CGMR", timeout=1.0)
    core.submit(slow, 0.0)
    core.take_data()
    core.handle_timer(1.0)
    (failed,) = core.take_events()
    assert isinstance(failed, CommandFailed)
    assert isinstance(failed.error, AtTimeout)
    following = AtCommand(text="AT+CSQ")
    core.submit(following, 1.1)
    assert core.take_data() == b""  # held back while the old answer may still come
    core.feed(b"\r\n21.157.31.00.850\r\n\r\nOK\r\n", 1.5)
    assert core.take_data() == b"AT+CSQ\r"
    core.feed(b"\r\n+CSQ: 12,99\r\n\r\nOK\r\n", 1.6)
    events = core.take_events()
    stale = [e for e in events if isinstance(e, StaleResponse)]
    assert stale[0].lines == ("21.157.31.00.850",)
    (done,) = finished(events)
    assert done.command is following
    assert done.response.lines == ("+CSQ: 12,99",)


def test_answer_later_than_grace_is_caught_by_a_numbered_marker():
    core = AtCore(late_grace=1.0, sync_timeout=2.0)
    core.submit(AtCommand(text="AT+CGMR", timeout=1.0), 0.0)
    core.take_data()
    core.handle_timer(1.0)
    core.handle_timer(2.0)  # grace over, nothing came
    assert not core.synced
    core.take_events()
    following = AtCommand(text="AT+CSQ")
    core.submit(following, 3.0)
    assert core.take_data() == b"ATE1\r"
    # the late answer of AT+CGMR arrives now and looks like ATE1's answer
    core.feed(b"\r\n21.157.31.00.850\r\n\r\nOK\r\n", 3.1)
    assert core.take_data() == b"AT+JBCSYNC=1\r"
    # ATE1's own OK, and anything else before the marker's echo: not the marker's answer
    core.feed(b"\r\nOK\r\n\r\n+CSQ: 1,99\r\n\r\nOK\r\n", 3.2)
    assert core.take_data() == b""
    core.feed(b"AT+JBCSYNC=1\r\r\nERROR\r\n", 3.3)
    assert core.take_data() == b"ATE0\r"
    core.feed(b"ATE0\r\r\nOK\r\n", 3.4)
    assert core.take_data() == b"AT+CSQ\r"
    core.feed(b"\r\n+CSQ: 9,99\r\n\r\nOK\r\n", 3.5)
    events = core.take_events()
    assert any(isinstance(e, Resynced) for e in events)
    (done,) = finished(events)
    assert done.command is following
    assert done.response.lines == ("+CSQ: 9,99",)


def test_a_marker_that_gets_no_echo_in_time_is_replaced_by_a_new_number():
    core = AtCore(late_grace=1.0, sync_timeout=1.0)
    core.submit(AtCommand(text="AT+COPS?", timeout=2.0), 0.0)
    core.handle_timer(2.0)
    core.handle_timer(3.0)
    core.take_events()
    core.take_data()
    core.submit(AtCommand(text="AT+CREG?"), 3.0)
    core.feed(b"\r\nOK\r\n", 3.1)        # ATE1
    assert core.take_data() == b"ATE1\rAT+JBCSYNC=1\r"
    core.handle_timer(4.1)                 # the modem is slow: no echo of marker 1 yet
    assert core.take_data() == b"ATE1\r"
    # marker 1's echo and answer come now: they are not marker 2's
    core.feed(b"AT+JBCSYNC=1\r\r\nERROR\r\n", 4.5)
    assert core.take_data() == b"AT+JBCSYNC=2\r"
    core.feed(b"\r\nOK\r\n", 4.55)        # the second ATE1's answer: still not marker 2's
    assert core.take_data() == b""
    core.feed(b"AT+JBCSYNC=2\r\r\nERROR\r\n", 4.6)
    assert core.take_data() == b"ATE0\r"
    core.feed(b"ATE0\r\r\nOK\r\n", 4.65)
    assert core.take_data() == b"AT+CREG?\r"
    core.feed(b"\r\n+CREG: 2,1\r\n\r\nOK\r\n", 4.7)
    (done,) = finished(core.take_events())
    assert done.response.lines == ("+CREG: 2,1",)


def test_a_reply_answered_out_of_order_is_not_taken_for_the_next_queries():
    """The SIM7600 field case: AT+COPS? answered 3 s late (poll timeout 2 s) while the modem
    kept answering later commands at once. Before, AT+CPIN? took the stale +COPS line and a
    bare OK ('SIM not usable') and AT+CREG? took '+CPIN: READY'."""
    core = AtCore(late_grace=1.0, sync_timeout=1.0)
    core.submit(AtCommand(text="AT+COPS?", timeout=2.0), 0.0)
    core.handle_timer(2.0)
    core.handle_timer(3.0)
    core.take_events()
    cpin, creg = AtCommand(text="AT+CPIN?"), AtCommand(text="AT+CREG?")
    core.submit(cpin, 3.0)
    core.submit(creg, 3.0)
    core.feed(b"\r\nOK\r\n", 3.01)                                 # ATE1
    core.feed(b"AT+JBCSYNC=1\r\r\nERROR\r\n", 3.02)
    core.feed(b"ATE0\r\r\nOK\r\n", 3.03)
    assert core.take_data().endswith(b"AT+CPIN?\r")
    core.feed(b'\r\n+COPS: 0,0,"JBC Mobile",7\r\n\r\nOK\r\n', 3.1)  # the late one
    core.feed(b"\r\n+CPIN: READY\r\n\r\nOK\r\n", 3.11)
    core.feed(b"\r\n+CREG: 2,1\r\n\r\nOK\r\n", 3.12)
    events = core.take_events()
    answers = {e.command.text: e.response.lines for e in finished(events)}
    assert answers == {"AT+CPIN?": ("+CPIN: READY",), "AT+CREG?": ("+CREG: 2,1",)}
    assert len([e for e in events if isinstance(e, StaleResponse)]) == 2


@pytest.mark.parametrize(("text", "answer"), [
    ("AT+CPIN?", "+CPIN:"), ("AT+CREG?", "+CREG:"), ("AT+CSQ", "+CSQ:"), ("AT+CEER", "+CEER:"),
    ("AT+CREG=2", None), ("AT+FCLASS?", None), ("AT+VCID?", None), ("ATI0", None),
    ("AT+CLCC", None), ("AT+CPIN?;+CREG?", None), ('AT+QCFG="ims"', None)])
def test_which_commands_must_answer_with_their_prefix(text, answer):
    assert AtCommand(text=text).answer == answer


def test_silent_modem_fails_queued_commands_as_unresponsive():
    core = AtCore(late_grace=0.5, sync_timeout=1.0)
    core.submit(AtCommand(text="AT", timeout=1.0), 0.0)
    core.handle_timer(1.0)
    core.handle_timer(1.5)
    core.take_events()
    a, b = AtCommand(text="AT+CSQ"), AtCommand(text="AT+CREG?")
    core.submit(a, 2.0)
    core.submit(b, 2.0)
    core.feed(b"\r\n^RSSI:20\r\n", 2.5)  # URCs keep coming: not a sign of life
    core.handle_timer(3.0)  # ATE1 unanswered, and nothing but a URC since: hung, at once
    events = core.take_events()
    failed = [e for e in events if isinstance(e, CommandFailed)]
    assert [e.command for e in failed] == [a, b]
    assert all(isinstance(e.error, AtUnresponsive) for e in failed)
    assert [e.line for e in events if isinstance(e, Urc)] == ["^RSSI:20"]


class EndAtDleEtx:
    """A raw consumer that ends at DLE ETX and keeps what it saw."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._dle = False

    def feed(self, data: bytes) -> int | None:
        for i, byte in enumerate(data):
            if self._dle:
                self._dle = False
                if byte == 0x03:
                    return i + 1
                self.data.append(byte)
            elif byte == 0x10:
                self._dle = True
            else:
                self.data.append(byte)
        return None


def test_raw_mode_after_connect_and_back_to_lines():
    core = AtCore()
    sink = EndAtDleEtx()
    core.submit(AtCommand(text="AT+VTR", raw=sink), 0.0)
    stream = b"\r\nCONNECT\r\n\x0a\x0d\x7f\x80\x10\x10\x81" + b"\x10\x03\r\nOK\r\nRING\r\n"
    feed_bytewise(core, stream)
    events = core.take_events()
    assert finished(events)[0].response.result.kind is ResultKind.CONNECT
    ended = [e for e in events if isinstance(e, RawModeEnded)]
    assert ended and ended[0].result.kind is ResultKind.OK and not ended[0].by_dte
    # LF of CONNECT's CRLF is not audio; the audio's own CR/LF bytes are
    assert bytes(sink.data) == b"\x0a\x0d\x7f\x80\x10\x81"
    assert [e.line for e in events if isinstance(e, Urc)] == ["RING"]


def test_raw_stop_requested_by_us_and_dialect_timeout():
    core = AtCore()
    sink = EndAtDleEtx()
    core.submit(AtCommand(text="AT+VTR", raw=sink), 0.0)
    core.feed(b"\r\nCONNECT\r\n\x80\x80", 0.1)
    core.take_data()
    core.stop_raw(b"\x10^", 0.5, 1.0)
    assert core.take_data() == b"\x10^"
    core.feed(b"\x80\x80", 1.2)
    core.handle_timer(1.5)
    assert any(isinstance(e, RawStopTimedOut) for e in core.take_events())
    core.stop_raw(b"\x10\x10\x10^", 0.5, 1.6)
    assert core.take_data() == b"\x10\x10\x10^"
    core.feed(b"\x80\x10\x03\r\nOK\r\n", 1.7)
    (ended,) = [e for e in core.take_events() if isinstance(e, RawModeEnded)]
    assert ended.by_dte and ended.result.kind is ResultKind.OK


def test_commands_wait_while_raw():
    core = AtCore()
    core.submit(AtCommand(text="AT+VTR", raw=EndAtDleEtx()), 0.0)
    core.feed(b"\r\nCONNECT\r\n", 0.1)
    core.take_data()
    core.submit(AtCommand(text="ATH0"), 0.2)
    assert core.take_data() == b""
    core.feed(b"\x10\x03\r\nOK\r\n", 0.3)
    assert core.take_data() == b"ATH0\r"


TRANSCRIPT = (b"\r\n+QIND: \"csq\",20,99\r\n\r\n+CREG: 2,1,\"1A2B\",\"01C2D3E4\",7\r\n"
              b"\r\n+QIND: \"ccinfo\",1,0,2,0,0,\"+15551234567\",145\r\n\r\nOK\r\n")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(TRANSCRIPT)), max_size=8))
def test_any_chunking_gives_the_same_events(cuts):
    def run(chunks):
        core = AtCore()
        core.submit(AtCommand(text="AT+CREG?"), 0.0)
        for chunk in chunks:
            core.feed(chunk, 0.1)
        return [(type(e).__name__, getattr(e, "line", None),
                 getattr(getattr(e, "response", None), "lines", None)) for e in core.take_events()]

    points = sorted(set(cuts))
    chunks, start = [], 0
    for point in points:
        chunks.append(TRANSCRIPT[start:point])
        start = point
    chunks.append(TRANSCRIPT[start:])
    assert run(chunks) == run([TRANSCRIPT])
