"""Test signals and their measurement: tones, DTMF, Goertzel level, gaps.

Audio is 8 kHz signed 16-bit little-endian mono, as everywhere in the trunk drivers.
A 20 ms frame (160 samples) holds exactly 20 periods of 1 kHz, so a Goertzel filter on one
frame measures the tone's amplitude independently of where the frame starts.
"""

from __future__ import annotations

import array
import dataclasses
import math
import sys

RATE = 8000
FRAME_SAMPLES = 160
FRAME_BYTES = 320

DTMF_LOW = (697, 770, 852, 941)
DTMF_HIGH = (1209, 1336, 1477, 1633)
DTMF_KEYS = ("123A", "456B", "789C", "*0#D")


def _to_bytes(samples: array.array) -> bytes:
    if sys.byteorder != "little":
        samples = array.array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def samples_of(data: bytes) -> array.array:
    samples = array.array("h")
    samples.frombytes(data[: len(data) - len(data) % 2])
    if sys.byteorder != "little":
        samples.byteswap()
    return samples


class ToneGenerator:
    """A continuous sine (or the sum of two, for DTMF) cut into 20 ms frames."""

    def __init__(self, frequency: float = 1000.0, amplitude: int = 8000,
                 second: float | None = None) -> None:
        self.frequency = frequency
        self.amplitude = amplitude
        self.second = second
        self._n = 0

    def frame(self) -> bytes:
        step1 = 2 * math.pi * self.frequency / RATE
        step2 = 2 * math.pi * self.second / RATE if self.second else 0.0
        scale = self.amplitude if not self.second else self.amplitude / 2
        out = array.array("h", bytes(FRAME_BYTES))
        n = self._n
        for i in range(FRAME_SAMPLES):
            value = math.sin(step1 * (n + i))
            if self.second:
                value += math.sin(step2 * (n + i))
            out[i] = round(scale * value)
        self._n = (n + FRAME_SAMPLES) % (RATE * 100)
        return _to_bytes(out)


def goertzel(samples, frequency: float) -> float:
    """Amplitude of the ``frequency`` component of ``samples`` (2|X|/N)."""
    n = len(samples)
    if n == 0:
        return 0.0
    k = 2 * math.cos(2 * math.pi * frequency / RATE)
    s1 = s2 = 0.0
    for x in samples:
        s0 = x + k * s1 - s2
        s2, s1 = s1, s0
    power = s1 * s1 + s2 * s2 - k * s1 * s2
    return 2 * math.sqrt(max(power, 0.0)) / n


def rms(samples) -> float:
    if not samples:
        return 0.0
    return math.sqrt(sum(x * x for x in samples) / len(samples))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ToneReport:
    frames: int
    duration_s: float
    level_min: float
    level_max: float
    expected: float
    worst_error: float
    """Largest relative level error of any frame."""
    purity_min: float
    """Smallest share of a frame's energy that was the tone (1.0 = a pure tone)."""
    gaps: int
    """Frames whose level was off by more than the tolerance (silence, clicks, loss)."""
    longest_gap_frames: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def analyse_tone(data: bytes, *, frequency: float = 1000.0, expected: float,
                 tolerance: float = 0.01, skip_frames: int = 0) -> ToneReport:
    """Measure a received tone frame by frame with a Goertzel filter."""
    samples = samples_of(data)
    frames = len(samples) // FRAME_SAMPLES
    levels, purities = [], []
    gaps = longest = run = 0
    for index in range(skip_frames, frames):
        block = samples[index * FRAME_SAMPLES:(index + 1) * FRAME_SAMPLES]
        level = goertzel(block, frequency)
        total = rms(block) * math.sqrt(2)
        levels.append(level)
        purities.append((level / total) ** 2 if total else 0.0)
        if abs(level - expected) > tolerance * expected:
            gaps += 1
            run += 1
            longest = max(longest, run)
        else:
            run = 0
    counted = max(frames - skip_frames, 0)
    errors = [abs(level - expected) / expected for level in levels] or [1.0]
    return ToneReport(frames=counted, duration_s=counted * FRAME_SAMPLES / RATE,
                      level_min=min(levels, default=0.0), level_max=max(levels, default=0.0),
                      expected=expected, worst_error=max(errors),
                      purity_min=min(purities, default=0.0), gaps=gaps,
                      longest_gap_frames=longest)


def first_tone_frame(data: bytes, *, frequency: float = 1000.0, minimum: float = 100.0) -> int:
    """Index of the first frame carrying the tone (audio starts with call set-up silence)."""
    samples = samples_of(data)
    for index in range(len(samples) // FRAME_SAMPLES):
        block = samples[index * FRAME_SAMPLES:(index + 1) * FRAME_SAMPLES]
        if goertzel(block, frequency) > minimum:
            return index
    return -1


def detect_dtmf(data: bytes, *, minimum: float = 1000.0, purity: float = 0.8) -> str:
    """The DTMF digits in ``data``, one per burst (frame by frame Goertzel on the 8 tones;
    a frame counts when one low and one high tone carry most of its energy)."""
    samples = samples_of(data)
    digits = []
    previous = None
    for index in range(len(samples) // FRAME_SAMPLES):
        block = samples[index * FRAME_SAMPLES:(index + 1) * FRAME_SAMPLES]
        low = [goertzel(block, f) for f in DTMF_LOW]
        high = [goertzel(block, f) for f in DTMF_HIGH]
        row, col = max(range(4), key=low.__getitem__), max(range(4), key=high.__getitem__)
        power = rms(block) ** 2
        share = (low[row] ** 2 + high[col] ** 2) / 2 / power if power else 0.0
        key = (DTMF_KEYS[row][col] if low[row] > minimum and high[col] > minimum
               and share > purity else None)
        if key is not None and key != previous:
            digits.append(key)
        previous = key
    return "".join(digits)

