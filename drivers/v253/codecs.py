"""Voice sample formats a V.253 modem offers, found from ``AT+VSM=?`` - never hard-coded ids
(reference 2.7: the same id means different things on different modems) - and conversion
between them and the trunk's 8 kHz signed 16-bit little-endian frames.

Supported: 16-bit linear, G.711 mu-law and A-law, 8-bit unsigned and signed linear.
ADPCM variants are skipped. Preference: exact 16-bit first, then the G.711 laws, then 8-bit.
"""

from __future__ import annotations

import array
import dataclasses
import functools
import re
import sys

SAMPLE_RATE = 8000


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VoiceFormat:
    id: int
    name: str
    kind: str
    """'s16', 'ulaw', 'alaw', 'u8', 's8'."""
    rates: tuple[int, ...]

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.kind == "s16" else 1


PREFERENCE = ("s16", "ulaw", "alaw", "u8", "s8")


def classify(name: str, bits: int | None) -> str | None:
    text = name.upper().replace("-", " ").replace("_", " ")
    if "ADPCM" in text or "GSM" in text or "CELP" in text:
        return None
    if "ULAW" in text or "MU LAW" in text or "U LAW" in text or "G.711U" in text:
        return "ulaw"
    if "ALAW" in text or "A LAW" in text or "G.711A" in text:
        return "alaw"
    sixteen = "16" in text or bits == 16
    if "LINEAR" in text or "PCM" in text:
        if sixteen:
            return "s16"
        if "UNSIGNED" in text or ("PCM" in text and "SIGNED" not in text):
            return "u8"
        return "s8"
    return None


_LINE = re.compile(r'^\s*(?:\+VSM:\s*)?(\d+)\s*,\s*"([^"]*)"\s*(.*)$')


def parse_vsm_capabilities(lines: list[str] | tuple[str, ...]) -> list[VoiceFormat]:
    """Each line of ``AT+VSM=?``: ``<id>,"<name>",<bits>,<tm>,(<rates>),...`` in its many
    dialects; the rates are taken from the numbers that look like sample rates."""
    formats = []
    for line in lines:
        match = _LINE.match(line)
        if not match:
            continue
        ident, name, rest = int(match.group(1)), match.group(2), match.group(3)
        numbers = [int(n) for n in re.findall(r"\d+", rest)]
        bits = next((n for n in numbers if n in (2, 3, 4, 8, 16)), None)
        rates = tuple(sorted({n for n in numbers if 4000 <= n <= 48000}))
        ranges = re.findall(r"(\d+)\s*-\s*(\d+)", rest)
        for low, high in ranges:
            if int(low) <= SAMPLE_RATE <= int(high):
                rates = tuple(sorted({*rates, SAMPLE_RATE}))
        kind = classify(name, bits)
        if kind is not None:
            formats.append(VoiceFormat(id=ident, name=name, kind=kind, rates=rates))
    return formats


def choose_format(formats: list[VoiceFormat]) -> VoiceFormat | None:
    usable = [f for f in formats if not f.rates or SAMPLE_RATE in f.rates]
    for kind in PREFERENCE:
        for fmt in usable:
            if fmt.kind == kind:
                return fmt
    return None


# G.711 (ITU-T G.711 tables, computed rather than copied) ---------------------------------

_BIAS = 0x84


def _ulaw_encode(sample: int) -> int:
    value = sample >> 2                      # 14-bit, rounded down as the G.711 reference does
    mask = 0xFF
    if value < 0:
        value, mask = -value, 0x7F
    value = min(value, 8159) + (_BIAS >> 2)
    segment = 0
    while segment < 8 and value > (0x40 << segment) - 1:
        segment += 1
    if segment >= 8:
        return 0x7F ^ mask
    return ((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask


def _ulaw_decode(code: int) -> int:
    code = ~code & 0xFF
    magnitude = ((code & 0x0F) << 3 | _BIAS) << ((code >> 4) & 0x07)
    return _BIAS - magnitude if code & 0x80 else magnitude - _BIAS


def _alaw_encode(sample: int) -> int:
    value = sample >> 3                      # 13-bit
    mask = 0xD5
    if value < 0:
        value, mask = -value - 1, 0x55
    segment = 0
    while segment < 8 and value > (0x20 << segment) - 1:
        segment += 1
    if segment >= 8:
        return 0x7F ^ mask
    shift = 1 if segment < 2 else segment
    return ((segment << 4) | ((value >> shift) & 0x0F)) ^ mask


def _alaw_decode(code: int) -> int:
    code ^= 0x55
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    if exponent == 0:
        magnitude = (mantissa << 4) + 8
    else:
        magnitude = ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if code & 0x80 else -magnitude


def _table(function, size: int) -> list[int]:
    return [function(i) for i in range(size)]


def _signed(value: int) -> int:
    return value - 65536 if value >= 32768 else value


@functools.cache
def _encode_table(kind: str) -> bytes:
    """The 65,536-entry G.711 encoder table, built on first use (not at import: start-up time
    matters and most appliances never use a G.711 voice modem)."""
    encode = _ulaw_encode if kind == "ulaw" else _alaw_encode
    return bytes(encode(_signed(i)) for i in range(65536))


_ULAW_DEC = _table(_ulaw_decode, 256)
_ALAW_DEC = _table(_alaw_decode, 256)
_U8_DEC = [(i - 128) << 8 for i in range(256)]
_S8_DEC = [(i - 256 if i >= 128 else i) << 8 for i in range(256)]


def _samples(pcm: bytes) -> array.array:
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    if sys.byteorder != "little":
        samples.byteswap()
    return samples


def _pcm(samples: array.array) -> bytes:
    if sys.byteorder != "little":
        samples.byteswap()
    return samples.tobytes()


def _round8(sample: int) -> int:
    return max(-128, min(127, (sample + 128) >> 8))


class Codec:
    """Converts 16-bit frames to and from one modem format."""

    def __init__(self, fmt: VoiceFormat) -> None:
        self.format = fmt
        self.kind = fmt.kind

    def encode(self, pcm: bytes) -> bytes:
        kind = self.kind
        if kind == "s16":
            return pcm
        samples = _samples(pcm)
        if kind in ("ulaw", "alaw"):
            table = _encode_table(kind)
            return bytes(table[s & 0xFFFF] for s in samples)
        if kind == "u8":
            return bytes(_round8(s) + 128 for s in samples)
        return bytes(_round8(s) & 0xFF for s in samples)

    def decode(self, data: bytes) -> bytes:
        kind = self.kind
        if kind == "s16":
            return data
        table = {"ulaw": _ULAW_DEC, "alaw": _ALAW_DEC, "u8": _U8_DEC, "s8": _S8_DEC}[kind]
        return _pcm(array.array("h", [table[b] for b in data]))

    def silence(self, samples: int) -> bytes:
        return self.encode(bytes(2 * samples))
