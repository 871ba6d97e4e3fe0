"""The gateway's media agent calls itself on loopback: the smallest real check that pjsua2,
its SIP transport, RTP and the conference bridge work on this machine (an arm64 build of
pjproject included).

    python -m appliance.gateway.loopback [--json]

A separate process (pjsua2 allows one library per process, and jbcd's gateway may hold it):
it starts the same :class:`~appliance.gateway.agent.MediaAgent` jbcd uses, on an ephemeral
loopback port, places a call to its own address, answers it with a trunk audio bridge
attached, plays a 1 kHz tone from the calling leg and checks that the tone arrives on the
answering leg's trunk side. Exit 0 when it did; prints what it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

TONE_HZ = 1000
LISTEN_S = 1.5
MIN_TONE_LEVEL = 500.0
"""Amplitude (16-bit linear) of the 1 kHz component that counts as 'the tone arrived'."""


def tone_level(frames: list[bytes], frequency: float, rate: int = 8000) -> float:
    """Amplitude of one frequency in 16-bit little-endian mono frames (a single DFT bin)."""
    import numpy as np

    samples = np.frombuffer(b"".join(frames), dtype="<i2").astype(float)
    if not len(samples):
        return 0.0
    phase = np.exp(-2j * np.pi * frequency / rate * np.arange(len(samples)))
    return float(2 * abs(np.dot(samples, phase)) / len(samples))


async def loopback_call(timeout_s: float = 20.0) -> dict[str, Any]:
    import pjsua2 as pj

    from drivers.trunk import FrameQueue

    from .agent import AgentSettings, start_agent
    from .bridge import BridgeSettings, TrunkAudioBridge
    from .leg_events import LegEnded, LegMedia, LegOffered
    from .pjthread import PjsuaThread

    started = time.monotonic()
    events: asyncio.Queue = asyncio.Queue()
    thread = PjsuaThread(start_agent(AgentSettings(sip_port=0, log_level=1), events.put_nowait),
                         teardown=lambda agent: agent.shutdown())
    result: dict[str, Any] = {"ok": False, "pjsua2": None}

    async def next_event(kind, legs=None):
        deadline = started + timeout_s
        while True:
            event = await asyncio.wait_for(events.get(), max(0.1, deadline - time.monotonic()))
            if isinstance(event, kind) and (legs is None or event.leg in legs):
                return event

    agent = await thread.start()
    try:
        result["pjsua2"] = await thread.call(lambda: agent.endpoint.libVersion().full)
        uri = f"sip:loopback@127.0.0.1:{agent.sip_port}"
        caller = await thread.call(agent.make_call, uri, from_uri="sip:selftest@127.0.0.1")
        offer = await next_event(LegOffered)
        uplink, downlink = FrameQueue(), FrameQueue()
        bridge = TrunkAudioBridge(uplink, downlink, BridgeSettings(echo_canceller=False))
        await thread.call(agent.attach, offer.leg, bridge, "loopback-check")
        await thread.call(agent.answer, offer.leg, 200)
        media = await next_event(LegMedia, {offer.leg})
        await thread.call(agent.play, caller, [(TONE_HZ, 0, 1000, 0)], loop=True)
        await asyncio.sleep(LISTEN_S)
        heard = []
        while len(uplink):
            heard.append(uplink.get())
        stats = await thread.call(agent.stream_stats, offer.leg) or {}
        level = tone_level(heard, TONE_HZ)
        await thread.call(agent.hangup, caller)
        await next_event(LegEnded, {caller})
        result.update(ok=level >= MIN_TONE_LEVEL and stats.get("rx_packets", 0) > 0,
                      codec=media.codec, srtp=media.srtp, rx_packets=stats.get("rx_packets"),
                      tone_level=round(level, 1), heard_frames=len(heard))
    except Exception as error:  # a diagnostic: any failure is the answer, with its reason
        detail = error.info() if isinstance(error, pj.Error) else str(error)
        result["error"] = f"{type(error).__name__}: {detail}"
    finally:
        await thread.stop()
    result["took_s"] = round(time.monotonic() - started, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.gateway.loopback",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    result = asyncio.run(loopback_call(args.timeout))
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "ok" if result["ok"] else "FAILED"
        print(f"gateway loopback call: {verdict}; pjsua2 {result.get('pjsua2')}, codec "
              f"{result.get('codec')}, {result.get('rx_packets')} RTP packets, tone level "
              f"{result.get('tone_level')} in {result['took_s']} s"
              + (f"; {result['error']}" if result.get("error") else ""))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
