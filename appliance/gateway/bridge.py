"""The audio path of one trunk call, between pjsua2's conference bridge and the trunk's queues.

Called once per 20 ms tick from pjsua2's media clock thread (through the media port in
``media.py``); touches only the trunk call's thread-safe :class:`~drivers.trunk.FrameQueue`
objects and its own state, never pjsua2 or asyncio.

Downlink (phone network -> handset): trunk ``downlink`` queue -> adaptive playout buffer
(``playout.py``, the LTE-grade jitter buffer) -> echo canceller (``echo.py``) -> conference.
Uplink (handset -> phone network): conference -> echo canceller's reference -> trunk
``uplink`` queue, kept short so a slow consumer adds no latency (the oldest audio is dropped).

Both sides are 8 kHz 16-bit mono (the trunk contract); a handset codec at another rate
(G.722 at 16 kHz) is resampled by pjmedia's conference bridge, which converts every port to
the bridge's clock rate.

Dead air: while the trunk driver flags the call's downlink as broken (``downlink.problem``:
no frames at all, or frames of digital silence only, issue 13 finding 6), the handset hears
a short double beep every few seconds over whatever plays, so the caller knows the line, not
the far party, has gone quiet (the journal learns it from the trunk's health). An assumption
where the reference is silent: a tone, because a recorded announcement would need a
language and a voice; quiet, because the far party may still be listening.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import math
import sys
import threading
from collections.abc import Callable

from drivers.trunk import FRAME_BYTES, FrameQueue

from .playout import PlayoutBuffer

AUDIBLE_RMS = 64.0
"""A frame quieter than this (about -54 dBFS) counts as silence for early-media detection."""

NOTICE_HZ = 950.0
NOTICE_AMPLITUDE = 2600
"""About -22 dBFS: heard, not startling."""
NOTICE_FRAMES = (0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15)
"""Frames of each period that carry the beep: 120 ms on, 80 ms off, 120 ms on."""
NOTICE_PERIOD = 250
"""Frames between the starts of two double beeps (5 s)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BridgeSettings:
    echo_canceller: bool = True
    echo_tail_ms: int = 200
    jitter_min_ms: int = 40
    jitter_max_ms: int = 200
    uplink_max_ms: int = 120
    dead_air_notice: bool = True
    """Beep to the handset while the trunk says its downlink is dead (see the module doc)."""


@dataclasses.dataclass(slots=True)
class BridgeStats:
    downlink_frames: int = 0
    uplink_frames: int = 0
    uplink_dropped: int = 0
    callback_errors: int = 0


class TrunkAudioBridge:
    def __init__(self, uplink: FrameQueue, downlink: FrameQueue, settings: BridgeSettings, *,
                 on_first_audio: Callable[[], None] | None = None) -> None:
        self.uplink = uplink
        self.downlink = downlink
        self.settings = settings
        self.playout = PlayoutBuffer(downlink, min_frames=max(1, settings.jitter_min_ms // 20),
                                     max_frames=max(1, settings.jitter_max_ms // 20))
        self.echo = None
        if settings.echo_canceller:
            from .echo import EchoCanceller  # numpy: loaded with the first call that needs it

            self.echo = EchoCanceller(tail_ms=settings.echo_tail_ms)
        self.stats = BridgeStats()
        self._uplink_limit = max(1, settings.uplink_max_ms // 20)
        self._far_frames: collections.deque[bytes] = collections.deque()
        """What went up the trunk, in order, not yet given to the canceller as reference:
        one per tick, so frames that came bunched are not lost from the reference."""
        self._far_extra = 0
        """Reference frames this side inserted (silence: nothing went up that tick) minus
        those it skipped (a backlog cut): the reference stream's own slips."""
        self._lock = threading.Lock()
        self._on_first_audio = on_first_audio
        self.heard_audio = False
        self._inserted_seen = uplink.underruns
        self._removed_seen = downlink.dropped
        self._notice_tick = 0
        self.notices = 0
        """Double beeps played (each a notice to the caller that the line went dead)."""

    # -- media clock thread --------------------------------------------------------------------

    def downlink_frame(self) -> bytes:
        """The next frame for the handset (one per tick)."""
        frame = self.playout.next_frame()
        far = self._next_far()
        if self.echo is not None:
            self.echo.shift(self._delay_change())
            self.echo.far(far)
            frame = self.echo.near(frame)
        self.stats.downlink_frames += 1
        if self.settings.dead_air_notice and self.downlink.problem is not None:
            frame = self._with_notice(frame)
        else:
            self._notice_tick = 0
        if not self.heard_audio and rms(frame) >= AUDIBLE_RMS:
            self.heard_audio = True
            if self._on_first_audio is not None:
                self._on_first_audio()
        return frame

    def _next_far(self) -> bytes | None:
        """This tick's reference: the oldest frame sent up and not yet referenced."""
        with self._lock:
            frames = self._far_frames
            while len(frames) > self._uplink_limit:  # the canceller fell behind: catch up
                frames.popleft()
                self._far_extra -= 1
            if frames:
                return frames.popleft()
            self._far_extra += 1
            return None

    def _with_notice(self, frame: bytes) -> bytes:
        """``frame`` with this tick's share of the dead-air double beep mixed in."""
        tick = self._notice_tick % NOTICE_PERIOD
        self._notice_tick += 1
        if tick == 0:
            self.notices += 1
        if tick not in NOTICE_FRAMES:
            return frame
        samples = array.array("h")
        samples.frombytes(frame[: FRAME_BYTES].ljust(FRAME_BYTES, b"\0"))
        if sys.byteorder != "little":
            samples.byteswap()
        start = tick * 160
        step = 2 * math.pi * NOTICE_HZ / 8000
        for i in range(160):
            value = samples[i] + int(NOTICE_AMPLITUDE * math.sin(step * (start + i)))
            samples[i] = max(-32768, min(32767, value))
        if sys.byteorder != "little":
            samples.byteswap()
        return samples.tobytes()

    def _delay_change(self) -> int:
        """Frames by which our own side moved the echo's arrival since the last tick: later
        for each tick the playout buffer filled with silence and for each tick the trunk
        driver found no uplink frame (it sent silence: the modem played a frame that is in
        no reference), earlier for each frame the playout buffer discarded, each frame
        dropped before reaching the trunk, and each the driver's downlink queue overflowed.
        Frames that arrive bunched (a loaded host) make the uplink queue overflow now and
        run dry then: counting only one of the two moved the canceller by frames the echo
        never moved (the e2e echo test that failed under load)."""
        stats = self.playout.stats
        with self._lock:
            reference_slips = self._far_extra
        # a silence the reference got that never went up makes the echo come earlier
        # against the reference; a reference frame skipped, later
        inserted = stats.waiting + stats.underruns + self.uplink.underruns - reference_slips
        removed = stats.discarded + self.stats.uplink_dropped + self.downlink.dropped
        change = (inserted - self._inserted_seen) - (removed - self._removed_seen)
        self._inserted_seen, self._removed_seen = inserted, removed
        return change

    def uplink_frame(self, frame: bytes | None) -> None:
        """A frame from the handset side (None: the bridge had nothing this tick)."""
        if frame is None:
            return
        if len(frame) != FRAME_BYTES:
            frame = (frame + bytes(FRAME_BYTES))[:FRAME_BYTES]
        with self._lock:
            self._far_frames.append(frame)
        if len(self.uplink) >= self._uplink_limit:
            self.uplink.get()  # keep latency bounded: the oldest audio goes
            self.stats.uplink_dropped += 1
        self.uplink.put(frame)
        self.stats.uplink_frames += 1

    def snapshot(self) -> dict[str, object]:
        playout = self.playout.stats
        return {
            "downlink_frames": self.stats.downlink_frames,
            "uplink_frames": self.stats.uplink_frames,
            "uplink_dropped": self.stats.uplink_dropped,
            "playout_target_ms": self.playout.target * 20,
            "underruns": playout.underruns,
            "concealed": playout.concealed,
            "discarded": playout.discarded,
            "echo_erle_db": round(self.echo.erle_db(), 1) if self.echo else None,
            "echo_delay_ms": self.echo.echo_delay_ms() if self.echo else None,
            "echo_double_talk_frames": self.echo.double_talk_frames if self.echo else None,
            "echo_counters": self.echo.counters() if self.echo else None,
            "dead_air_notices": self.notices,
            "callback_errors": self.stats.callback_errors,
        }


def rms(frame: bytes) -> float:
    samples = array.array("h")
    samples.frombytes(frame[: len(frame) - len(frame) % 2])
    if sys.byteorder != "little":
        samples.byteswap()
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))
