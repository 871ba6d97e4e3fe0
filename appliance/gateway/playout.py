"""Adaptive playout of the trunk's downlink audio: the jitter buffer on the trunk side.

An LTE module or voice modem delivers 20 ms frames over USB serial in bursts (USB scheduling,
the driver's read size, the network's own jitter on VoLTE, handovers that stall audio for a
few hundred milliseconds), and by its own clock, which drifts against ours. The conference
bridge pulls exactly one frame every 20 ms. In between sits this buffer:

* it starts playing once ``target`` frames are queued (prefill), so a burst gap does not
  immediately become an underrun;
* an underrun is concealed (the last frame once more at half level, then silence), the target
  grows by a frame (up to ``max_frames``) and playback waits for the new prefill;
* when the queue never fell below ``target + 1`` frames for a whole window, the surplus is
  latency nobody needs: one frame is discarded (at most one per window, inaudible in practice);
* after a long stretch without underruns the target shrinks again by one frame;
* a queue above ``max_frames`` (after a stall, a burst arrives at once) is cut back to target.

This is the policy LTE voice needs: slow to shrink, quick to grow. Pure: the caller says
when a tick happens by calling :meth:`next_frame`; the queue is anything with ``__len__``
and ``get()``.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import sys
from typing import Protocol

from drivers.trunk import FRAME_BYTES, SILENCE_FRAME


class FrameSource(Protocol):
    def __len__(self) -> int: ...

    def get(self) -> bytes | None: ...


@dataclasses.dataclass(slots=True)
class PlayoutStats:
    played: int = 0
    waiting: int = 0        # ticks of silence while prefilling
    underruns: int = 0
    concealed: int = 0
    discarded: int = 0


class PlayoutBuffer:
    def __init__(self, source: FrameSource, *, min_frames: int = 2, max_frames: int = 10,
                 window_frames: int = 100, shrink_after_frames: int = 1500) -> None:
        if not 1 <= min_frames <= max_frames:
            raise ValueError("need 1 <= min_frames <= max_frames")
        self.source = source
        self.min_frames = min_frames
        self.max_frames = max_frames
        self.target = min_frames
        self.window_frames = window_frames
        self.shrink_after_frames = shrink_after_frames
        self.stats = PlayoutStats()
        self._playing = False
        self._depths: collections.deque[int] = collections.deque(maxlen=window_frames)
        self._since_underrun = 0
        self._last: bytes | None = None
        self._concealed_in_row = 0

    @property
    def playing(self) -> bool:
        return self._playing

    def next_frame(self) -> bytes:
        """The frame to play for this 20 ms tick."""
        depth = len(self.source)
        self._depths.append(depth)
        if depth > self.max_frames:
            self._discard(depth - self.target)
            depth = self.target
            self._depths.clear()
        if not self._playing:
            if depth >= self.target:
                self._playing = True
            else:
                self.stats.waiting += 1
                return SILENCE_FRAME
        frame = self.source.get() if depth else None
        if frame is None:
            return self._underrun()
        self._concealed_in_row = 0
        self._since_underrun += 1
        if (len(self._depths) == self.window_frames
                and min(self._depths) > self.target + 1):
            self._discard(1)
            self._depths.clear()
        if self._since_underrun >= self.shrink_after_frames and self.target > self.min_frames:
            self.target -= 1
            self._since_underrun = 0
        self.stats.played += 1
        if len(frame) != FRAME_BYTES:
            frame = (frame + SILENCE_FRAME)[:FRAME_BYTES]
        self._last = frame
        return frame

    def _discard(self, count: int) -> None:
        for _ in range(max(0, count)):
            if self.source.get() is None:
                break
            self.stats.discarded += 1

    def _underrun(self) -> bytes:
        self.stats.underruns += 1
        self._playing = False
        self._since_underrun = 0
        self.target = min(self.max_frames, self.target + 1)
        if self._last is not None and self._concealed_in_row == 0:
            self._concealed_in_row += 1
            self.stats.concealed += 1
            return _attenuate(self._last)
        return SILENCE_FRAME


def _attenuate(frame: bytes) -> bytes:
    samples = array.array("h")
    samples.frombytes(frame)
    if sys.byteorder != "little":
        samples.byteswap()
    halved = array.array("h", (s >> 1 for s in samples))
    if sys.byteorder != "little":
        halved.byteswap()
    return halved.tobytes()
