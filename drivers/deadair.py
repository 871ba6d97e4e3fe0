"""Telling a dead call leg from a quiet one. Pure: frames and ``now`` in, a verdict out.

A downlink that delivers no frames at all is easy to see. One that delivers paced frames of
digital silence is not: a SIM7600E-H gave exactly that (silence both ways after ATA and
AT+CPCMREG=1, reference 1.11 #11), and it went unnoticed for the whole call (finding 6).
Real speech paths are never digitally silent for long: the far end's line, microphone and
codec leave noise, and VoLTE decoders play comfort noise in pauses. So a downlink whose
every sample stays within :data:`DEAD_LEVEL` of zero for ``after_s`` is reported dead.

A legitimately silent far end (a caller on mute behind a digital exchange) can look the
same; that is why this only *reports* (the caller is told, the journal says it) and a
modem is reset after such a call only if its downlink never carried a single sound.
"""

from __future__ import annotations

import array
import sys

DEAD_LEVEL = 4
"""|sample| at or below this (about -78 dBFS) is digital silence, not line noise."""


def is_dead(frame: bytes) -> bool:
    """True when every 16-bit little-endian sample of ``frame`` is digital silence."""
    if not frame:
        return True
    if not frame.strip(b"\x00"):
        return True  # the common case, cheaply
    samples = array.array("h")
    samples.frombytes(frame[: len(frame) - len(frame) % 2])
    if sys.byteorder != "little":
        samples.byteswap()
    return max(samples) <= DEAD_LEVEL and min(samples) >= -DEAD_LEVEL


class DeadAir:
    """Watches one call's downlink: when it last carried sound, and whether it ever did."""

    def __init__(self, *, after_s: float, started: float) -> None:
        self.after_s = after_s
        self.started = started
        self.last_sound: float | None = None
        self.frames = 0

    def frame(self, frame: bytes, now: float) -> None:
        self.frames += 1
        if not is_dead(frame):
            self.last_sound = now

    @property
    def ever_sounded(self) -> bool:
        return self.last_sound is not None

    def dead(self, now: float) -> bool:
        """Frames have come, and none carried sound for ``after_s``."""
        if not self.frames:
            return False  # no frames at all is another problem ('no-downlink')
        since = self.last_sound if self.last_sound is not None else self.started
        return now - since >= self.after_s
