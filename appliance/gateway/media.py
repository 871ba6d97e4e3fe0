"""pjsua2 media ports: the trunk call's audio as a conference-bridge port, and tones.

:class:`TrunkMediaPort` is a :class:`pjsua2.AudioMediaPort` (8 kHz, mono, 16-bit, 20 ms) whose
callbacks run on pjsua2's media clock thread and delegate to a :class:`TrunkAudioBridge`.
Everything here is created, connected and destroyed on the pjsua thread; the callbacks never
raise (an exception escaping a SWIG director would abort the media clock).

Reading a frame out of pjsua2's ``ByteVector`` element by element costs ~0.4 ms per frame in
Python; :func:`vector_bytes` reads the vector's storage directly (the libstdc++ layout of
``std::vector``: begin and end pointers first), after :func:`fast_vector_read_works` has
checked that layout once against the slow, safe path.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import pjsua2 as pj

from drivers.trunk import FRAME_BYTES, SAMPLE_RATE

from . import scheduling
from .bridge import TrunkAudioBridge

log = logging.getLogger(__name__)

_POINTER_PAIR = ctypes.POINTER(ctypes.c_void_p * 2)
_fast_read: bool | None = None


def _vector_bytes_fast(vector: pj.ByteVector) -> bytes:
    begin, end = ctypes.cast(int(vector.this), _POINTER_PAIR).contents
    if not begin or not end or end < begin:
        return b""
    return ctypes.string_at(begin, end - begin)


def fast_vector_read_works() -> bool:
    """Check once that the direct read returns exactly what the element-wise read does."""
    global _fast_read
    if _fast_read is None:
        probe = bytes(range(256)) + bytes(reversed(range(64)))
        vector = pj.ByteVector(probe)
        try:
            _fast_read = (_vector_bytes_fast(vector) == probe == bytes(vector)
                          and vector.size() == len(probe))
        except Exception:
            _fast_read = False
        if not _fast_read:
            log.warning("reading pjsua2 frames the slow way (unexpected std::vector layout)")
    return _fast_read


def vector_bytes(vector: pj.ByteVector) -> bytes:
    if _fast_read or (_fast_read is None and fast_vector_read_works()):
        return _vector_bytes_fast(vector)
    return bytes(vector)


def audio_format(clock_rate: int = SAMPLE_RATE) -> pj.MediaFormatAudio:
    fmt = pj.MediaFormatAudio()
    fmt.type = pj.PJMEDIA_TYPE_AUDIO
    fmt.id = pj.PJMEDIA_FORMAT_PCM
    fmt.clockRate = clock_rate
    fmt.channelCount = 1
    fmt.bitsPerSample = 16
    fmt.frameTimeUsec = 20000
    fmt.avgBps = clock_rate * 16
    fmt.maxBps = clock_rate * 16
    return fmt


_SILENCE = bytes(FRAME_BYTES)


class TrunkMediaPort(pj.AudioMediaPort):
    """A trunk call's audio in the conference bridge. Ports outlive calls: the agent keeps
    them and hands an idle one (``bridge`` None, connected to nothing) to the next call."""

    realtime_priority = 0
    """Set by the agent: the media clock thread's SCHED_RR priority (see ``scheduling``)."""
    _clock_thread: int | None = None
    """The media clock thread seen last (pjmedia's own; it is raised on its first tick)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.bridge: TrunkAudioBridge | None = None
        fast_vector_read_works()
        self.createPort(name, audio_format())

    @classmethod
    def clock_stopped(cls) -> None:
        """pjsua2 is gone, and its media clock thread with it."""
        if cls._clock_thread is not None:
            scheduling.forget(cls._clock_thread)
            cls._clock_thread = None

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:
        native_id = threading.get_native_id()
        if native_id != TrunkMediaPort._clock_thread:
            TrunkMediaPort._clock_thread = native_id
            scheduling.raise_this_thread(self.realtime_priority, "media clock")
        bridge = self.bridge
        data = _SILENCE
        try:
            if bridge is not None:
                data = bridge.downlink_frame()
        except Exception:
            bridge.stats.callback_errors += 1
            if bridge.stats.callback_errors == 1:
                log.exception("downlink audio callback failed")
        try:
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
            frame.buf = pj.ByteVector(data)
            frame.size = len(data)
        except Exception:
            log.exception("cannot hand a frame to pjsua2")

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        bridge = self.bridge
        if bridge is None:
            return
        try:
            if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size:
                bridge.uplink_frame(vector_bytes(frame.buf))
            else:
                bridge.uplink_frame(None)
        except Exception:
            bridge.stats.callback_errors += 1
            if bridge.stats.callback_errors == 1:
                log.exception("uplink audio callback failed")


def tone_descriptions(tones: list[tuple[int, int, int, int]]) -> pj.ToneDescVector:
    """(freq1, freq2, on_ms, off_ms) tuples as pjsua2 tone descriptions."""
    vector = pj.ToneDescVector()
    for freq1, freq2, on_ms, off_ms in tones:
        tone = pj.ToneDesc()
        tone.freq1 = freq1
        tone.freq2 = freq2
        tone.on_msec = on_ms
        tone.off_msec = off_ms
        vector.append(tone)
    return vector
