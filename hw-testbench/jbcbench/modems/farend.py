"""The other end of a simulated phone call: how it behaves and what it sounds like.

:class:`FarEnd` scripts the call (answer after N rings, busy, never answer, reject, hang up
after T seconds). :class:`AudioFarEnd` is its voice: a tone generator, silence, or an echo of
what it hears, and a recorder of everything it heard (what our uplink carried).
"""

from __future__ import annotations

import dataclasses
import threading

from jbcbench.audio import FRAME_BYTES, ToneGenerator

SILENCE = bytes(FRAME_BYTES)


class AudioFarEnd:
    def __init__(self, *, source: str = "silence", frequency: float = 1000.0,
                 amplitude: int = 8000, echo_delay_frames: int = 5) -> None:
        if source not in ("silence", "tone", "echo"):
            raise ValueError(f"unknown far-end audio source {source!r}")
        self.source = source
        self.tone = ToneGenerator(frequency, amplitude)
        self._echo = bytearray()
        self._echo_delay = echo_delay_frames
        self._echo_started = False
        self._heard = bytearray()
        self._lock = threading.Lock()
        self.recording = True

    @classmethod
    def tone_source(cls, frequency: float = 1000.0, amplitude: int = 8000) -> AudioFarEnd:
        return cls(source="tone", frequency=frequency, amplitude=amplitude)

    @classmethod
    def echo(cls) -> AudioFarEnd:
        return cls(source="echo")

    def next_frame(self) -> bytes:
        """What the far end says for the next 20 ms."""
        if self.source == "tone":
            return self.tone.frame()
        if self.source == "echo":
            # what was heard comes back once a delay's worth has built up (a network echo)
            if not self._echo_started and len(self._echo) >= self._echo_delay * FRAME_BYTES:
                self._echo_started = True
            if self._echo_started and len(self._echo) >= FRAME_BYTES:
                frame = bytes(self._echo[:FRAME_BYTES])
                del self._echo[:FRAME_BYTES]
                return frame
        return SILENCE

    def hear(self, data: bytes) -> None:
        """Audio arriving at the far end (our uplink)."""
        with self._lock:
            if self.recording:
                self._heard += data
        if self.source == "echo":
            self._echo += data
            if len(self._echo) > 50 * FRAME_BYTES:
                del self._echo[:-50 * FRAME_BYTES]

    @property
    def heard(self) -> bytes:
        with self._lock:
            return bytes(self._heard)



@dataclasses.dataclass(slots=True, kw_only=True)
class FarEnd:
    """How the called party behaves. Times are in seconds of simulated (real) time."""

    answer_after_rings: int | None = 1
    """None: never answers (the network gives up with NO ANSWER)."""
    busy: bool = False
    reject: bool = False
    """The network refuses the number at once (invalid/barred)."""
    reject_cause: int = 1
    """The release cause (3GPP TS 24.008) a rejecting network gives: 1 unassigned number,
    21 call rejected, 34 no circuit... (what AT+CEER reports)."""
    hangup_after_s: float | None = None
    """Hang up this long after answering."""
    ringback: bool = True
    """Analog lines: whether the far end sends ringback tone while ringing."""
    audio: AudioFarEnd = dataclasses.field(default_factory=AudioFarEnd)
    dtmf_heard: list[str] = dataclasses.field(default_factory=list)
