"""DLE shielding of V.253 voice streams (reference 2.4, 2.6, 2.8 quirks 1 and 6). Pure.

Modem to host: audio bytes, with a data byte 0x10 sent as ``DLE DLE`` (or two of them as
``DLE SUB``), and events as ``DLE <code>``: ``DLE ETX`` ends the stream, ``DLE 5`` is a DTMF
digit, ``DLE b`` busy tone, ``DLE d`` dial tone, and so on. A DLE can be the last byte of one
read and its code the first of the next: the decoder keeps that state between reads.

Host to modem: every 0x10 data byte doubled; stream control codes (``DLE ^`` end duplex,
``DLE !`` end receive, ``DLE ETX`` end transmit). Some modems want the code preceded by three
DLEs instead of one (the Zoom 3095 needs ``DLE DLE DLE ^``); on a one-DLE modem the extra pair
is just one 0x10 sample, so sending the long form after the short one failed is harmless.
"""

from __future__ import annotations

import dataclasses

DLE = 0x10
ETX = 0x03
SUB = 0x1A

DTMF_CODES = frozenset("0123456789*#ABCD")

EVENT_NAMES = {
    "/": "dtmf-start", "~": "dtmf-end", "a": "answer-tone", "b": "busy", "K": "busy",
    "c": "fax-calling", "m": "fax-calling", "e": "data-calling", "f": "data-calling",
    "d": "dial-tone", "i": "dial-tone", "h": "handset-on-hook", "p": "handset-on-hook",
    "H": "handset-off-hook", "P": "handset-off-hook", "l": "loop-break",
    "L": "loop-reversal", "q": "quiet", "s": "silence", "R": "ring", "r": "ringback",
    "J": "sit-tone", "$": "bong", "t": "tdd", "v": "voice", "V": "voice",
    "w": "call-waiting", "u": "underrun", "o": "overrun", "T": "timing-mark",
    "E": "bad-format", "Y": "lost-data",
}


@dataclasses.dataclass(frozen=True, slots=True)
class DleEvent:
    code: str

    @property
    def name(self) -> str:
        if self.code in DTMF_CODES:
            return "dtmf"
        return EVENT_NAMES.get(self.code, "unknown")


class DleDecoder:
    """Splits a modem-to-host voice stream into audio bytes and events.

    Use as the AT core's raw consumer: :meth:`feed` returns None while the stream goes on and
    the number of bytes used once ``DLE ETX`` ended it. Take the results with
    :meth:`take_audio` and :meth:`take_events`."""

    def __init__(self) -> None:
        self._audio = bytearray()
        self._events: list[DleEvent] = []
        self._pending_dle = False
        self.ended = False
        self.dle_pairs = 0
        """How many shielded 0x10 data bytes were seen (for the bench's statistics)."""

    def feed(self, data: bytes) -> int | None:
        if self.ended:
            return 0
        audio = self._audio
        start = 0
        i = 0
        if self._pending_dle and data:
            self._pending_dle = False
            used = self._code(data[0])
            i = start = 1
            if used:
                return 1
        n = len(data)
        while i < n:
            j = data.find(DLE, i)
            if j < 0:
                audio += data[start:]
                return None
            audio += data[start:j]
            if j + 1 >= n:
                self._pending_dle = True
                return None
            if self._code(data[j + 1]):
                return j + 2
            i = start = j + 2
        return None

    def _code(self, byte: int) -> bool:
        """Handle ``DLE <byte>``; True when it ended the stream."""
        if byte == DLE:
            self._audio.append(DLE)
            self.dle_pairs += 1
        elif byte == SUB:
            self._audio += bytes((DLE, DLE))
            self.dle_pairs += 2
        elif byte == ETX:
            self.ended = True
            return True
        else:
            self._events.append(DleEvent(chr(byte)))
        return False

    def take_audio(self) -> bytes:
        data = bytes(self._audio)
        self._audio.clear()
        return data

    def take_events(self) -> list[DleEvent]:
        events, self._events = self._events, []
        return events


def shield(data: bytes) -> bytes:
    """Host to modem: double every 0x10 data byte."""
    return data.replace(b"\x10", b"\x10\x10")


def stop_codes(code: bytes, dles: tuple[int, ...] = (1, 3)) -> list[bytes]:
    """The ways to send stream control ``code`` (e.g. b'^'), shortest first."""
    return [bytes([DLE]) * count + code for count in dles]


class DtmfShielding:
    """Turns a modem's DTMF reports into digits: a bare ``DLE 5`` is one digit; between
    ``DLE /`` and ``DLE ~`` (Conexant shielding) the digit is reported once however often
    the modem repeats it while the key is held."""

    def __init__(self) -> None:
        self._open = False
        self._seen: str | None = None

    def event(self, event: DleEvent) -> str | None:
        if event.code == "/":
            self._open, self._seen = True, None
            return None
        if event.code == "~":
            self._open, self._seen = False, None
            return None
        if event.name != "dtmf":
            return None
        if self._open:
            if self._seen == event.code:
                return None
            self._seen = event.code
        return event.code
