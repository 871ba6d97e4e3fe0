"""The V.253 driver's pure parts: DLE shielding, sample formats, caller ID."""

from __future__ import annotations

import struct
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.trunk import Presentation
from drivers.v253.callerid import CallerIdRecord, parse_cid_line
from drivers.v253.codecs import Codec, VoiceFormat, choose_format, parse_vsm_capabilities
from drivers.v253.dle import DleDecoder, DleEvent, DtmfShielding, shield, stop_codes


def decode_in_chunks(stream: bytes, cuts: list[int]):
    decoder = DleDecoder()
    audio, events, end = bytearray(), [], None
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        if cut <= start:
            continue
        used = decoder.feed(stream[start:cut])
        audio += decoder.take_audio()
        events += decoder.take_events()
        if used is not None:
            end = start + used
            break
        start = cut
    return bytes(audio), [e.code for e in events], end


def test_shielded_stream_decodes_to_audio_events_and_end():
    audio = b"\x7f\x10\x80\x10\x10\x00"
    stream = shield(audio) + b"\x10b" + b"\x10\x1a" + b"\x105\x10\x03\r\nOK\r\n"
    decoded, events, end = decode_in_chunks(stream, [])
    assert decoded == audio + b"\x10\x10"  # DLE SUB stands for two 0x10 data bytes
    assert events == ["b", "5"]
    assert stream[end:] == b"\r\nOK\r\n"


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=700),
                                          max_size=12))
def test_any_audio_split_anywhere_round_trips(audio, cuts):
    stream = shield(audio) + b"\x10d" + b"\x10\x03tail"
    decoded, events, end = decode_in_chunks(stream, cuts)
    assert decoded == audio
    assert events == ["d"]
    assert stream[end:] == b"tail"


def test_dle_split_across_reads_is_not_missed():
    # quirk 6: callattendant's find(DLE) on 1 KB chunks missed exactly this
    decoded, events, end = decode_in_chunks(b"\x01\x02\x10" + b"b\x03\x10" + b"\x10\x04", [3, 6])
    assert (decoded, events, end) == (b"\x01\x02\x03\x10\x04", ["b"], None)


def test_stop_codes_short_form_first():
    assert stop_codes(b"^") == [b"\x10^", b"\x10\x10\x10^"]


def test_conexant_dtmf_shielding_reports_each_key_once():
    shielding = DtmfShielding()
    codes = "/55~/5~4"
    digits = [shielding.event(DleEvent(c)) for c in codes]
    assert [d for d in digits if d] == ["5", "5", "4"]


USR_VSM = ['128,"8-BIT LINEAR",8,0,(7200,8000,11025),(0),(0)',
           '129,"ADPCM",4,0,(7200,8000,11025),(0),(0)',
           '130,"UNSIGNED PCM",8,0,(7200,8000,11025),(0),(0)',
           '131,"ULAW",8,0,(8000),(0),(0)', '132,"ALAW",8,0,(8000),(0),(0)',
           '133,"LINEAR 16",16,0,(8000,11025),(0),(0)']
ZOOM_VSM = ['1,"UNSIGNED PCM",8,0,8000,0,0', '129,"IMA ADPCM",4,0,8000,0,0',
            '130,"UNSIGNED PCM",8,0,8000,0,0', '140,"2-BIT ADPCM",2,0,8000,0,0',
            '141,"4-BIT ADPCM",4,0,8000,0,0']
GENERIC_VSM = ['+VSM: 0,"ITU UNSIGNED PCM",8,0,(8000),(0),(0)', '1,"8-BIT PCM",8,0,(8000)',
               '4,"G.711U",8,0,(4000-8000)', '5,"G.711A",8,0,(8000)']


@pytest.mark.parametrize(("lines", "ident", "kind"), [
    (USR_VSM, 133, "s16"), (ZOOM_VSM, 1, "u8"), (GENERIC_VSM, 4, "ulaw"),
    (USR_VSM[:5], 131, "ulaw"), (['128,"8-BIT LINEAR",8,0,(8000)'], 128, "s8"),
    (['129,"ADPCM",4,0,(8000)'], None, None),
    (['131,"ULAW",8,0,(11025)'], None, None),  # no 8 kHz
])
def test_format_chosen_from_what_the_modem_lists(lines, ident, kind):
    chosen = choose_format(parse_vsm_capabilities(lines))
    if ident is None:
        assert chosen is None
    else:
        assert (chosen.id, chosen.kind) == (ident, kind)


def _audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("audioop")


@pytest.mark.parametrize("kind", ["ulaw", "alaw"])
def test_g711_matches_the_reference_implementation(kind):
    audioop = _audioop()
    every = struct.pack("<65536h", *range(-32768, 32768))
    codec = Codec(VoiceFormat(id=0, name=kind, kind=kind, rates=(8000,)))
    encode, decode = ((audioop.lin2ulaw, audioop.ulaw2lin) if kind == "ulaw"
                      else (audioop.lin2alaw, audioop.alaw2lin))
    assert codec.encode(every) == encode(every, 2)
    assert codec.decode(bytes(range(256))) == decode(bytes(range(256)), 2)


@pytest.mark.parametrize(("kind", "silence"), [("u8", 0x80), ("s8", 0x00), ("ulaw", 0xFF),
                                               ("alaw", 0xD5)])
def test_eight_bit_formats_round_trip_and_silence(kind, silence):
    codec = Codec(VoiceFormat(id=0, name=kind, kind=kind, rates=(8000,)))
    assert codec.silence(4) == bytes([silence]) * 4
    samples = [0, 1000, -1000, 20000, -20000, 32767, -32768]
    back = struct.unpack(f"<{len(samples)}h", codec.decode(codec.encode(
        struct.pack(f"<{len(samples)}h", *samples))))
    for original, decoded in zip(samples, back, strict=True):
        assert abs(original - decoded) <= max(256, abs(original) // 16)


@pytest.mark.parametrize(("lines", "number", "name", "presentation"), [
    (["DATE = 1015", "TIME = 1310", "NMBR = 0412345677", "NAME = Test1"], "0412345677",
     "Test1", Presentation.ALLOWED),
    (["DATE=0801", "TIME=1801", "NMBR=5551234", "NAME=JOHN DOE"], "5551234", "JOHN DOE",
     Presentation.ALLOWED),
    (["DATE = 1015", "NMBR = P"], None, None, Presentation.WITHHELD),
    (["NMBR=O", "NAME=O"], None, None, Presentation.UNAVAILABLE),
    (["NMBR = 5551234", "MESG = 060342313232"], "5551234", None, Presentation.ALLOWED),
    (["NMBR = 5551234", "NAME = \x08"], "5551234", None, Presentation.ALLOWED),
    (["DATE = 1015", "TIME = 1310"], None, None, Presentation.UNAVAILABLE),
    (["NMBR = 555-1234", "REASON NO NAME"], "5551234", None, Presentation.ALLOWED),
])
def test_caller_id_variants(lines, number, name, presentation):
    record = CallerIdRecord()
    for line in lines:
        field = parse_cid_line(line)
        assert field is not None, line
        record.add(*field)
    caller = record.caller()
    assert (caller.number, caller.name, caller.presentation) == (number, name, presentation)


def test_lines_that_are_not_caller_id():
    assert parse_cid_line("RING") is None
    assert parse_cid_line("OK") is None
