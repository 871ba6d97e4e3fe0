"""The gateway's pjsua2 agent with a real pjsua2 handset (its own process) on loopback:
early media, audio both ways through the trunk frame queues (G.711 and resampled G.722),
DTMF by RFC 4733 and SIP INFO, SRTP when the handset asks, hang-up from either side.

The trunk side here is the TrunkCall frame-queue pair itself, fed and drained by a thread at
real-time pace (what a driver's serial pump does); the drivers have their own tests.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time

import numpy as np
import pytest

from appliance.gateway.agent import (
    AgentSettings,
    LegDtmf,
    LegEnded,
    LegMedia,
    LegOffered,
    start_agent,
)
from appliance.gateway.bridge import BridgeSettings, TrunkAudioBridge
from appliance.gateway.pjthread import PjsuaThread
from drivers.trunk import FrameQueue
from jbcbench.audio_handset import AudioHandset

pytestmark = pytest.mark.integration

RATE = 8000


def level(frames: list[bytes], freq: float) -> float:
    x = np.frombuffer(b"".join(frames), dtype="<i2").astype(float)
    phase = np.exp(-2j * np.pi * freq / RATE * np.arange(len(x)))
    return float(2 * abs(np.dot(x, phase)) / max(len(x), 1))


class LinePump:
    """Plays a trunk driver's part at real-time pace: puts a 1 kHz tone (the far party) into
    the downlink queue every 20 ms and keeps what arrives on the uplink queue."""

    def __init__(self, frequency: float = 1000.0, amplitude: float = 8000.0) -> None:
        self.uplink, self.downlink = FrameQueue(), FrameQueue()
        self.frequency, self.amplitude = frequency, amplitude
        self.heard: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LinePump:
        self._thread.start()
        return self

    def _run(self) -> None:
        start, n = time.monotonic(), 0
        while not self._stop.is_set():
            t = (np.arange(160) + n * 160) / RATE
            self.downlink.put((self.amplitude * np.sin(2 * np.pi * self.frequency * t))
                              .astype("<i2").tobytes())
            while len(self.uplink):
                self.heard.append(self.uplink.get())
            n += 1
            delay = start + n * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


class Agent:
    def __init__(self, log_level: int = 1) -> None:
        self.events: asyncio.Queue = asyncio.Queue()
        self.thread = PjsuaThread(start_agent(AgentSettings(sip_port=0, log_level=log_level),
                                              self.events.put_nowait),
                                  teardown=lambda agent: agent.shutdown())
        self.agent = None

    async def start(self) -> Agent:
        self.agent = await self.thread.start()
        return self

    async def next(self, kind, timeout_s: float = 5.0):
        deadline = time.monotonic() + timeout_s
        while True:
            event = await asyncio.wait_for(self.events.get(), deadline - time.monotonic())
            if isinstance(event, kind):
                return event

    def uri(self, number: str = "5551234567") -> str:
        return f"sip:{number}@127.0.0.1:{self.agent.sip_port}"

    async def do(self, method, *args, **kwargs):
        return await self.thread.call(getattr(self.agent, method), *args, **kwargs)


@pytest.fixture
async def agent():
    started = await Agent().start()
    yield started
    await started.thread.stop()


@pytest.fixture
def handsets():
    made: list[AudioHandset] = []

    def make(**options) -> AudioHandset:
        handset = AudioHandset(f"handset{len(made)}", **options).start()
        made.append(handset)
        return handset

    yield make
    for handset in made:
        handset.stop()


async def in_thread(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_early_media_then_answer_carries_audio_both_ways_and_dtmf(agent, handsets):
    phone = handsets()
    line = LinePump().start()
    try:
        await in_thread(phone.call, agent.uri())
        offer = await agent.next(LegOffered)
        assert offer.invite.request_user == "5551234567"
        bridge = TrunkAudioBridge(line.uplink, line.downlink, BridgeSettings())
        await agent.do("attach", offer.leg, bridge, "trunk-test")
        await agent.do("answer", offer.leg, 183)
        await in_thread(phone.wait_state, "EARLY")
        await asyncio.sleep(0.6)
        early = await in_thread(phone.level, 1000, 0.4)
        assert early["mean"] > 7000  # the far party's audio before the answer
        await agent.do("answer", offer.leg, 200)
        await in_thread(phone.wait_state, "CONFIRMED")
        media = await agent.next(LegMedia)
        assert media.codec == "PCMU" and not media.srtp
        sent_at = await in_thread(phone.tone, 400)
        assert sent_at is not None
        await asyncio.sleep(0.8)
        heard = await in_thread(phone.level, 1000, 0.5)
        assert heard["mean"] == pytest.approx(8000, rel=0.02) and heard["gaps"] == 0
        assert level(line.heard[-20:], 400) == pytest.approx(8000, rel=0.02)
        await in_thread(phone.dtmf, "5", "rfc4733")
        assert (await agent.next(LegDtmf)) == LegDtmf(leg=offer.leg, digit="5", method="rfc4733")
        await in_thread(phone.dtmf, "#", "info")
        assert (await agent.next(LegDtmf)) == LegDtmf(leg=offer.leg, digit="#", method="info")
        mark = phone.mark()
        await agent.do("hangup", offer.leg)
        await in_thread(phone.wait_state, "DISCONNECTED", after=mark)
        ended = await agent.next(LegEnded)
        assert ended.leg == offer.leg
        assert bridge.stats.callback_errors == 0
    finally:
        line.stop()


async def test_wideband_handset_is_resampled_to_the_trunks_8_khz(agent, handsets):
    phone = handsets(codecs=("G722",))
    line = LinePump(frequency=1000.0).start()
    try:
        await in_thread(phone.call, agent.uri())
        offer = await agent.next(LegOffered)
        bridge = TrunkAudioBridge(line.uplink, line.downlink, BridgeSettings())
        await agent.do("attach", offer.leg, bridge, "trunk-g722")
        await agent.do("answer", offer.leg, 200)
        media = await agent.next(LegMedia)
        assert (media.codec, media.clock_rate) == ("G722", 16000)
        await in_thread(phone.tone, 400)
        await asyncio.sleep(1.0)
        heard = await in_thread(phone.level, 1000, 0.5)
        assert heard["mean"] == pytest.approx(8000, rel=0.03) and heard["gaps"] == 0
        assert level(line.heard[-20:], 400) == pytest.approx(8000, rel=0.03)
        assert level(line.heard[-20:], 800) < 100  # no imaging/aliasing worth the name
        mark = phone.mark()
        await in_thread(phone.hangup)
        await in_thread(phone.wait_state, "DISCONNECTED", after=mark)
        assert (await agent.next(LegEnded)).leg == offer.leg
    finally:
        line.stop()


@pytest.mark.parametrize("mode", ["optional", "mandatory"])
async def test_srtp_is_answered_whenever_the_handset_offers_it(agent, handsets, mode):
    phone = handsets(srtp=mode)
    await in_thread(phone.call, agent.uri())
    offer = await agent.next(LegOffered)
    assert offer.invite.sdp.has_sdes
    await agent.do("require_srtp", offer.leg)
    await agent.do("answer", offer.leg, 200)
    media = await agent.next(LegMedia)
    assert media.srtp
    event = await in_thread(phone.wait_event, "media")
    assert event["srtp"]
    await in_thread(phone.hangup)
    await agent.next(LegEnded)


async def test_trunk_ports_and_tone_generators_are_reused_and_only_removed_by_libdestroy(
        handsets, caplog):
    """pjmedia's conference bridge removes a port on its next clock tick (asynchronously, since
    pjsip 2.15.1), while a pjsua2 port's destructor frees the port at once: a port destroyed
    while the bridge runs is read and written after it is freed (a rare segfault in a later
    garbage collection). So a trunk port and a tone generator, once made, serve every later
    call and are only ever removed by libDestroy, which removes them synchronously."""
    caplog.set_level(logging.DEBUG, logger="pjsua2")
    agent = Agent(log_level=4)
    await agent.start()
    phone = handsets()
    line = LinePump().start()
    try:
        for _ in range(2):
            mark = phone.mark()
            await in_thread(phone.call, agent.uri())
            offer = await agent.next(LegOffered)
            bridge = TrunkAudioBridge(line.uplink, line.downlink, BridgeSettings())
            await agent.do("attach", offer.leg, bridge, "trunk-test")
            await agent.do("play", offer.leg, [(480, 620, 200, 100)], loop=True)
            await agent.do("answer", offer.leg, 200)
            await agent.next(LegMedia)
            await in_thread(phone.wait_state, "CONFIRMED", after=mark)
            await in_thread(phone.hangup)
            await agent.next(LegEnded)
    finally:
        line.stop()
        await agent.thread.stop()
    said = [record.getMessage() for record in caplog.records if record.name == "pjsua2"]
    added = {match[1]: match[2] for line_ in said
             if (match := re.search(r"Added port (\d+) \((trunk-audio-\d+|tonegen)\)", line_))}
    assert sorted(added.values()) == ["tonegen", "trunk-audio-1"], said  # one each, reused
    destroying = next(i for i, line_ in enumerate(said) if "Destroying..." in line_)
    removed_while_running = [line_ for line_ in said[:destroying]
                             if (match := re.search(r"Remove port (\d+)", line_))
                             and match[1] in added]
    assert removed_while_running == []
    removed_by_libdestroy = {match[1] for line_ in said[destroying:]
                             if (match := re.search(r"Removed port (\d+)", line_))}
    assert set(added) <= removed_by_libdestroy
