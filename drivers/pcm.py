"""PCM audio over a USB serial port (LTE modules): 320-byte frames each way every 20 ms.

Uplink frames come from the call's thread-safe ``uplink`` queue (the media engine's thread
fills it); one goes out per 20 ms tick, a silence frame when the queue is empty (an underrun,
counted). Downlink bytes are cut into 320-byte frames for the ``downlink`` queue. On Quectel
modules the PCM port is also the GPS NMEA port, so complete NMEA sentences (valid checksum)
are taken out of the downlink byte stream before framing (quirk 10).

The port's health is judged from what actually flows: no downlink bytes for a while means no
audio from the network side; downlink frames of nothing but digital silence for a while mean
the same, politely paced (:mod:`drivers.deadair`); a write backlog that does not drain means
the modem stopped taking uplink audio (the SIM7600 bulk-OUT stall, quirk 11). NMEA sentences
are taken out on every vendor: the SIM7600 leaks them too (finding 8), and only complete,
checksum-valid sentences are removed, so audio that merely contains a '$' passes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from drivers.deadair import DeadAir
from drivers.logcontext import TrunkLog
from drivers.pacing import FramePacer
from drivers.serialport import SerialLink
from drivers.trunk import FRAME_BYTES, SILENCE_FRAME, TrunkCall

log = logging.getLogger(__name__)

NMEA_TALKERS = (b"GP", b"GN", b"GL", b"GA", b"GB", b"GQ", b"BD")
NMEA_MAX = 82
MAX_BACKLOG_FRAMES = 3


class NmeaFilter:
    """Takes complete, checksum-valid NMEA sentences out of a byte stream; everything else
    passes unchanged (a possible sentence start at the end of a chunk waits for more)."""

    def __init__(self) -> None:
        self._hold = b""
        self.removed = 0

    def feed(self, data: bytes) -> bytes:
        buf = self._hold + data
        self._hold = b""
        out = bytearray()
        i = 0
        while True:
            j = buf.find(b"$", i)
            if j < 0:
                out += buf[i:]
                break
            out += buf[i:j]
            rest = buf[j:]
            if len(rest) < 3:
                if any(t.startswith(rest[1:]) for t in NMEA_TALKERS):
                    self._hold = rest
                    break
                out += rest
                break
            if rest[1:3] not in NMEA_TALKERS:
                out += b"$"
                i = j + 1
                continue
            end = rest.find(b"\r\n", 0, NMEA_MAX + 2)
            if end < 0:
                if len(rest) < NMEA_MAX + 2:
                    self._hold = rest
                    break
                out += b"$"
                i = j + 1
                continue
            if _valid_sentence(rest[1:end]):
                self.removed += 1
                i = j + end + 2
                continue
            out += b"$"
            i = j + 1
        return bytes(out)


def _valid_sentence(body: bytes) -> bool:
    star = body.rfind(b"*")
    if star < 0 or len(body) - star != 3:
        return False
    checksum = 0
    for byte in body[:star]:
        checksum ^= byte
    try:
        return checksum == int(body[star + 1:], 16)
    except ValueError:
        return False


@dataclasses.dataclass(slots=True)
class AudioStats:
    frames_out: int = 0
    frames_in: int = 0
    underruns: int = 0
    """Ticks with no uplink frame ready: a silence frame was sent instead."""
    stalled: int = 0
    """Uplink frames dropped because the modem was not taking them."""
    nmea_removed: int = 0
    bytes_in: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class PcmAudio:
    def __init__(self, call: TrunkCall, *, name: str, strip_nmea: bool = True,
                 no_audio_after_s: float = 3.0, silent_after_s: float = 5.0) -> None:
        self.call = call
        self.name = name
        self.log = TrunkLog(log, name, call.id)
        self.stats = AudioStats()
        self._filter = NmeaFilter() if strip_nmea else None
        self.silent_after_s = silent_after_s
        self.dead_air: DeadAir | None = None
        self._buffer = bytearray()
        self._link: SerialLink | None = None
        self._pacer: FramePacer | None = None
        self._loop = asyncio.get_running_loop()
        self._started_at = 0.0
        self._last_rx: float | None = None
        self.no_audio_after_s = no_audio_after_s
        self.lost = False

    @property
    def pacer(self) -> FramePacer | None:
        return self._pacer

    async def open(self, path: str) -> None:
        self._link = await SerialLink.open(path, on_data=self._on_data, on_lost=self._on_lost)
        self._started_at = self._loop.time()
        self.dead_air = DeadAir(after_s=self.silent_after_s, started=self._started_at)
        self._pacer = FramePacer(self._tick)
        self._pacer.start()
        self.log.info("audio on %s", path)

    def close(self) -> None:
        if self._pacer is not None:
            self._pacer.stop()
        if self._link is not None:
            self._link.close()
        if self._filter is not None:
            self.stats.nmea_removed = self._filter.removed

    def problem(self) -> str | None:
        """'no-downlink', 'silent-downlink' or 'uplink-stalled' once the audio path has
        visibly failed; the call's downlink queue carries the same word for the gateway."""
        problem = self._problem()
        self.call.downlink.problem = problem if problem != "uplink-stalled" else None
        return problem

    def _problem(self) -> str | None:
        now = self._loop.time()
        if self.lost:
            return "port-lost"
        if self.stats.stalled > 25:
            return "uplink-stalled"
        since = self._last_rx if self._last_rx is not None else self._started_at
        if now - since > self.no_audio_after_s:
            return "no-downlink"
        if self.dead_air is not None and self.dead_air.dead(now):
            return "silent-downlink"
        return None

    @property
    def never_sounded(self) -> bool:
        """The whole call's downlink was digital silence (or nothing)."""
        return self.dead_air is None or not self.dead_air.ever_sounded

    def _tick(self) -> None:
        link = self._link
        if link is None or link.closed:
            return
        frame = self.call.uplink.get()
        if frame is None:
            frame = SILENCE_FRAME
            self.stats.underruns += 1
        elif len(frame) != FRAME_BYTES:
            frame = (frame + SILENCE_FRAME)[:FRAME_BYTES]
        if link.buffered > MAX_BACKLOG_FRAMES * FRAME_BYTES:
            self.stats.stalled += 1
            return
        link.write(frame)
        self.stats.frames_out += 1

    def _on_data(self, data: bytes) -> None:
        self.stats.bytes_in += len(data)
        if self._filter is not None:
            data = self._filter.feed(data)
        if not data:
            return
        self._last_rx = self._loop.time()
        self._buffer += data
        while len(self._buffer) >= FRAME_BYTES:
            frame = bytes(self._buffer[:FRAME_BYTES])
            del self._buffer[:FRAME_BYTES]
            self.call.downlink.put(frame)
            self.dead_air.frame(frame, self._last_rx)
            self.stats.frames_in += 1

    def _on_lost(self, reason: str) -> None:
        self.lost = True
        if self._pacer is not None:
            self._pacer.stop()
        self.log.warning("audio port lost: %s", reason)
