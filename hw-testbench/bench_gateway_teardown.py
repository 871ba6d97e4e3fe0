"""Gateway teardown under fire: start and stop the gateway's pjsua2 agent with a call up in every
state a stop can meet, many times over, and say whether the process survived.

    .venv/bin/python hw-testbench/bench_gateway_teardown.py [--cycles 200] [--child-timeout-s 1800]

jbcd stops or restarts its gateway on every service stop, restart and crash recovery, whatever
calls are up; a destructor that runs after what it depends on crashes the whole process there.
Each cycle starts a fresh :class:`~appliance.gateway.pjthread.PjsuaThread` with the gateway's
:class:`~appliance.gateway.agent.MediaAgent`, brings one real pjsua2 handset (its own process)
into one of the states below, and stops the thread in the middle of it:

* ``answered_tone``: answered, trunk audio attached, a tone playing to the handset;
* ``ringing``: an incoming call the gateway has not answered (180 sent);
* ``early_tone``: 183 with early media and a tone;
* ``hung_up_just_before``: the handset hung up; the stop comes right after the leg ended;
* ``message_pending``: a MESSAGE (the on-site emergency notification) awaiting its answer;
* ``outgoing_ringing``: a call the gateway placed, ringing at the handset;
* ``released_just_before``: the gateway hung up and released the leg just before the stop.

The cycles run in a child process under ``faulthandler`` with ``MALLOC_PERTURB_`` set (freed
memory is overwritten, so a use-after-free faults instead of reading stale data), and the
parent reports how far it got. One JSON object on stdout:

* ``cycles_done`` of ``cycles``, ``survived`` (the child exited 0), ``exit_status``;
* ``per_state``: cycles done per state;
* ``survivors``: pjsua2 objects found alive after ``libDestroy`` (disowned; should be 0);
* ``stop_ms``: p50 and max of the thread's stop (teardown + ``libDestroy``);
* ``crash``: the tail of the child's output (the faulthandler dump) when it did not survive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent

STATES = ("answered_tone", "ringing", "early_tone", "hung_up_just_before", "message_pending",
          "outgoing_ringing", "released_just_before")

# -- the child: the cycles themselves ----------------------------------------------------------


class LinePump:
    """A trunk driver's part at real-time pace: a tone into the downlink every 20 ms, the
    uplink drained."""

    def __init__(self) -> None:
        from drivers.trunk import FrameQueue

        self.uplink, self.downlink = FrameQueue(), FrameQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import numpy as np

        tone = (8000 * np.sin(2 * np.pi * 1000 * np.arange(160) / 8000)).astype("<i2").tobytes()
        start, n = time.monotonic(), 0
        while not self._stop.is_set():
            self.downlink.put(tone)
            while len(self.uplink):
                self.uplink.get()
            n += 1
            delay = start + n * 0.02 - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


class AgentUnderTest:
    def __init__(self) -> None:
        from appliance.gateway.agent import AgentSettings, start_agent
        from appliance.gateway.pjthread import PjsuaThread

        self.events: asyncio.Queue = asyncio.Queue()
        self.thread = PjsuaThread(start_agent(AgentSettings(sip_port=0, log_level=1),
                                              self.events.put_nowait),
                                  teardown=lambda agent: agent.shutdown())
        self.agent = None

    async def start(self) -> AgentUnderTest:
        self.agent = await self.thread.start()
        return self

    async def next(self, kind: type, timeout_s: float = 10.0):
        deadline = time.monotonic() + timeout_s
        while True:
            event = await asyncio.wait_for(self.events.get(), deadline - time.monotonic())
            if isinstance(event, kind):
                return event

    async def do(self, method: str, *args, **kwargs):
        return await self.thread.call(getattr(self.agent, method), *args, **kwargs)


async def bring_into(state: str, agent: AgentUnderTest, phone, line: LinePump) -> None:
    """Put one call into ``state``; the caller stops the agent right after."""
    from appliance.gateway.agent import LegEnded, LegMedia, LegOffered
    from appliance.gateway.bridge import BridgeSettings, TrunkAudioBridge

    th = asyncio.to_thread
    phone_uri = f"sip:handset@127.0.0.1:{phone.sip_port}"
    if state == "message_pending":
        await agent.do("send_message", phone_uri, "site alert", "drill")
        return
    if state == "outgoing_ringing":
        mark = phone.mark()
        await agent.do("make_call", phone_uri, from_uri="sip:gateway@127.0.0.1")
        await th(phone.wait_event, "incoming", after=mark)
        return
    await th(phone.call, f"sip:5551234567@127.0.0.1:{agent.agent.sip_port}")
    offer = await agent.next(LegOffered)
    bridge = TrunkAudioBridge(line.uplink, line.downlink, BridgeSettings())
    await agent.do("attach", offer.leg, bridge, "trunk-audio")
    if state == "ringing":
        await agent.do("answer", offer.leg, 180)
        return
    await agent.do("play", offer.leg, [(480, 620, 200, 100)], loop=True)
    if state == "early_tone":
        await agent.do("answer", offer.leg, 183)
        await agent.next(LegMedia)
        return
    await agent.do("answer", offer.leg, 200)
    await agent.next(LegMedia)
    if state == "hung_up_just_before":
        await th(phone.hangup)
        await agent.next(LegEnded)
    elif state == "released_just_before":
        await agent.do("stop_tone", offer.leg)
        await agent.do("hangup", offer.leg)
        await agent.next(LegEnded)


async def run_cycles(cycles: int) -> None:
    from jbcbench.audio_handset import AudioHandset

    phone = AudioHandset("teardown-handset").start()
    try:
        for index in range(cycles):
            state = STATES[index % len(STATES)]
            agent = await AgentUnderTest().start()
            line = LinePump()
            try:
                await bring_into(state, agent, phone, line)
            finally:
                began = time.monotonic()
                await agent.thread.stop()
                stop_ms = (time.monotonic() - began) * 1000
                line.stop()
            with_survivors = getattr(agent.thread, "survivors", [])  # (older trees: none)
            # The handset forgets whatever call it still has before the next cycle.
            await asyncio.to_thread(_hang_up_quietly, phone)
            print(json.dumps({"cycle": index, "state": state, "stop_ms": round(stop_ms, 1),
                              "survivors": with_survivors}), flush=True)
    finally:
        phone.stop()


def _hang_up_quietly(phone) -> None:
    with contextlib.suppress(Exception):  # no call left to hang up
        phone.hangup()


# -- the parent: run the child, read what it got through ---------------------------------------


def run(cycles: int, timeout_s: float) -> dict:
    env = dict(os.environ, MALLOC_PERTURB_="165", PYTHONFAULTHANDLER="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]))
    began = time.monotonic()
    try:
        child = subprocess.run([sys.executable, "-X", "faulthandler", __file__, "--child",
                                "--cycles", str(cycles)], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=timeout_s)
        status, stdout, stderr = child.returncode, child.stdout, child.stderr
    except subprocess.TimeoutExpired as expired:
        status = "timeout"
        stdout = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) \
            else (expired.stdout or "")
        stderr = (expired.stderr or b"").decode() if isinstance(expired.stderr, bytes) \
            else (expired.stderr or "")
    done = [json.loads(line) for line in stdout.splitlines() if line.startswith('{"cycle"')]
    stops = [d["stop_ms"] for d in done]
    survived = status == 0 and len(done) == cycles
    result = {
        "cycles": cycles,
        "cycles_done": len(done),
        "survived": survived,
        "exit_status": status,
        "per_state": {s: sum(1 for d in done if d["state"] == s) for s in STATES},
        "survivors": sum(len(d["survivors"]) for d in done),
        "survivor_types": sorted({t for d in done for t in d["survivors"]}),
        "stop_ms": {"p50": round(statistics.median(stops), 1) if stops else None,
                    "max": max(stops) if stops else None},
        "elapsed_s": round(time.monotonic() - began, 1),
        "load_average": os.getloadavg()[0],
    }
    if not survived:
        result["crash"] = [line for line in stderr.splitlines()
                           if not line[:1].isdigit()][-60:]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200,
                        help="start/stop cycles, the states taken in turn (default 200)")
    parser.add_argument("--child-timeout-s", type=float, default=1800.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        asyncio.run(run_cycles(args.cycles))
        return 0
    result = run(args.cycles, args.child_timeout_s)
    print(json.dumps(result, indent=2))
    return 0 if result["survived"] and not result["survivors"] else 1


if __name__ == "__main__":
    sys.exit(main())
