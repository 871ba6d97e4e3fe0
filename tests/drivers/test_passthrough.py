"""'jbc modem TRUNK at ...': one command, never a call (issue 13 finding 2). Pure."""

from __future__ import annotations

import pytest

from drivers.at.passthrough import PassthroughRefused, check_passthrough


@pytest.mark.parametrize("line", [
    "AT+CSQ", "AT", "ATI", "ATI0", "ATZ", "AT&V", "AT+CREG?", "AT+COPS=?", 'AT+CPIN="1234"',
    'AT+QCFG="ims"', 'AT+QCFG="a;b"', "AT+CFUN=1,1", "ATS7=45", "ATS0?", "ATS0=0",
    "at+csq", "  AT+CSQ  ",
])
def test_single_commands_are_sent(line):
    assert check_passthrough(line) == line.strip()


@pytest.mark.parametrize(("line", "words"), [
    ("AT+CSQ\r\nATD112;", "carriage return"),       # the field case: a second line
    ("AT+CSQ\nATD112;", "line feed"),
    ("AT+CSQ;D112;", "chains several"),              # the other field case: V.250 ';'
    ("AT+CSQ;+CHUP", "chains several"),
    ("ATD112;", "dials a call"),
    ("atd112", "dials a call"),
    ("AT D112", "dials a call"),
    ("ATA", "answers a call"),
    ("ATH", "hangs up"),
    ("ATH0", "hangs up"),
    ("ATO", "data mode"),
    ("A/", "repeats the previous command line"),
    ("AT+CHLD=1", "releases calls"),
    ("AT+QHUP=16,1", "hangs up"),
    ("AT+VTS=5", "tones"),
    ("AT+VLS=1", "off hook"),
    ("AT+CDV112", "dials a call"),
    ("ATE0V1", "several basic commands"),
    ("ATE0D112", "several basic commands"),
    ("AT&V&W", "several basic commands"),
    ("AT+CSQ D112", "not its arguments"),
    ("ATS0=1", "answer calls by itself"),
    ("CSQ", "must start with AT"),
    ("", "no command"),
    ("AT+CSQ\x1a", "Ctrl-Z"),
    ("AT+" + "C" * 300, "longer than"),
])
def test_anything_else_is_refused_with_the_reason(line, words):
    with pytest.raises(PassthroughRefused) as refused:
        check_passthrough(line)
    assert words in str(refused.value)
