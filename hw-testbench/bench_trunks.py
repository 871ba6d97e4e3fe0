"""Benchmark: the trunk drivers against the simulated modems.

* AT command round trip through the AT channel (asyncio shell + pure core) against a
  simulator that answers at once, compared with a bare blocking write/read on the same pty:
  the difference is the channel's overhead.
* One simulated call per modem kind (Quectel EG25, SIMCom SIM7600, USR 5637 voice modem),
  60 s long by default, with a 1 kHz tone each way: audio frame pacing (the driver's tick
  lateness, and the frame inter-arrival jitter seen at the modem), underruns, the tone's level
  and gaps, and the CPU the driver's event-loop thread used per call.
* Recovery (issue 13): each trunk fault injected into a simulator with real-life timings (a
  10 s restart) and the driver on its default settings; the seconds from the fault's end (or
  start, for a hung port that only a reset ends) to READY again, against the 30 s goal
  (``jbcbench/trunk_recovery.py`` says what each scenario does).

The simulators run in their own thread with their own event loop (they are "the hardware");
the media engine is played by a thread feeding 20 ms frames (as pjsua2 will); only the
driver runs on the measured loop thread. Prints one JSON object.

    python hw-testbench/bench_trunks.py [--duration 60] [--commands 500]
        [--kinds eg25,sim7600,usr5637] [--no-recovery | --recovery-only]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pathlib
import statistics
import sys
import tempfile
import termios
import threading
import time
import tty

# isort: off
import jbcbench  # noqa: F401 - first: it puts this checkout's drivers/ on sys.path
# isort: on
from drivers.at.channel import AtChannel
from drivers.lte.trunk import LteTrunk
from drivers.trunk import CallAnswered, TrunkState
from drivers.v253.trunk import VoiceModemTrunk
from jbcbench.audio import ToneGenerator, analyse_tone, first_tone_frame
from jbcbench.modems.farend import AudioFarEnd, FarEnd
from jbcbench.modems.harness import EventLog, MediaThread, lte_settings, v253_settings
from jbcbench.modems.lte import QUECTEL_EG25, SIMCOM_SIM7600, LteModemSim
from jbcbench.modems.timing import SimTiming
from jbcbench.modems.usb import UsbBus
from jbcbench.modems.v253 import USR_5637, V253ModemSim
from jbcbench.trunk_recovery import measure_all

AMPLITUDE = 8000


class SimThread:
    """Runs a simulator on its own loop in its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sim", daemon=True)
        self._thread.start()

    def call(self, coroutine_function, *args):
        async def run():
            return await coroutine_function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


async def at_round_trip(bus: UsbBus, sims: SimThread, commands: int) -> dict:
    timing = SimTiming(command_s=0.0)

    async def make():
        sim = LteModemSim(bus, profile=QUECTEL_EG25, timing=timing)
        await sim.__aenter__()
        sim.echo = False
        return sim

    sim = sims.call(make)
    path = sim.path("at")
    # baseline: blocking write/read on the same pty, no framing, no loop
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd, termios.TCSANOW)
    raw = []
    for _ in range(commands):
        started = time.perf_counter()
        os.write(fd, b"AT\r")
        got = b""
        while not got.endswith(b"OK\r\n"):
            got += os.read(fd, 64)
        raw.append((time.perf_counter() - started) * 1000)
    os.close(fd)
    channel = AtChannel(path, name="bench")
    await channel.open()
    through = []
    for _ in range(commands):
        started = time.perf_counter()
        await channel.command("AT", timeout_s=2.0)
        through.append((time.perf_counter() - started) * 1000)
    await channel.close()
    sims.call(sim.__aexit__, None, None, None)
    raw_p50, channel_p50 = statistics.median(raw), statistics.median(through)
    return {
        "commands": commands,
        "raw_pty_ms": {"p50": rounded(raw_p50), "p99": rounded(percentile(raw, 99))},
        "channel_ms": {"p50": rounded(channel_p50), "p99": rounded(percentile(through, 99))},
        "overhead_ms_p50": rounded(channel_p50 - raw_p50),
    }


def arrival_jitter(arrivals: list[tuple[float, int]], frame_bytes: int = 320) -> dict:
    """When each whole frame had arrived at the modem, and how far apart frames were."""
    times, total, next_edge = [], 0, frame_bytes
    for when, count in arrivals:
        total += count
        while total >= next_edge:
            times.append(when)
            next_edge += frame_bytes
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    deviation = [abs(g - 20.0) for g in gaps]
    return {"frames": len(times), "interval_ms_p50": rounded(percentile(gaps, 50)),
            "deviation_ms_p50": rounded(percentile(deviation, 50)),
            "deviation_ms_p99": rounded(percentile(deviation, 99)),
            "deviation_ms_max": rounded(max(deviation, default=None))}


async def one_call(kind: str, bus: UsbBus, sims: SimThread, duration: float) -> dict:
    far = FarEnd(answer_after_rings=1, audio=AudioFarEnd.tone_source(1000.0, AMPLITUDE))

    async def make():
        if kind in ("eg25", "sim7600"):
            profile = QUECTEL_EG25 if kind == "eg25" else SIMCOM_SIM7600
            sim = LteModemSim(bus, profile=profile, timing=SimTiming.fast())
        else:
            sim = V253ModemSim(bus, profile=USR_5637, timing=SimTiming.fast())
        await sim.__aenter__()
        sim.far_end = far
        sim.arrivals = []
        return sim

    sim = sims.call(make)
    if kind in ("eg25", "sim7600"):
        trunk = LteTrunk(lte_settings(sim, bus, health_interval_s=5.0, call_poll_s=2.0))
    else:
        trunk = VoiceModemTrunk(v253_settings(sim, bus, health_interval_s=10.0))
    async with trunk:
        log = EventLog(trunk)
        await log.wait_state(TrunkState.READY, within_s=20.0)
        call = await trunk.dial("5557654321")
        await log.wait_event(CallAnswered, call=call, within_s=20.0)
        media = MediaThread(call, source=ToneGenerator(1000.0, AMPLITUDE), prefill=3).start()
        await asyncio.sleep(0.5)
        sim.arrivals.clear()
        cpu_start, wall_start = time.thread_time(), time.monotonic()
        await asyncio.sleep(duration)
        cpu = time.thread_time() - cpu_start
        wall = time.monotonic() - wall_start
        arrivals = list(sim.arrivals)
        if isinstance(trunk, LteTrunk):
            audio = trunk.audio.pcm
            pacer, stats = audio.pacer, audio.stats.to_json()
            underruns = stats["underruns"]
        else:
            pacer, stats = trunk._pacer, dict(trunk.stats)
            underruns = stats["underruns"]
        lateness = {"p50": rounded(pacer.lateness.percentile(50)),
                    "p99": rounded(pacer.lateness.percentile(99)), "slips": pacer.slips}
        heard_down = media.heard
        await trunk.hangup(call)
        media.stop()
    heard_up = far.audio.heard
    sims.call(sim.__aexit__, None, None, None)
    tone = {}
    for name, data in (("downlink", heard_down), ("uplink", heard_up)):
        start = max(first_tone_frame(data), 0)
        report = analyse_tone(data[start * 320:-320], expected=float(AMPLITUDE))
        tone[name] = {"seconds": round(report.duration_s, 2), "gaps": report.gaps,
                      "worst_level_error_pct": rounded(report.worst_error * 100, 4)}
    return {
        "duration_s": round(wall, 2),
        "driver_tick_lateness_ms": lateness,
        "uplink_at_modem": arrival_jitter(arrivals),
        "underruns": underruns,
        "driver_audio_stats": stats,
        "cpu_percent_of_one_core": rounded(100 * cpu / wall, 2),
        "tone_1khz": tone,
    }


async def run(args) -> dict:
    result = {"benchmark": "trunks", "python": sys.version.split()[0], "cpus": os.cpu_count(),
              "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="jbc-bench-trunks-") as tmp:
        if not args.recovery_only:
            bus = UsbBus(pathlib.Path(tmp))
            sims = SimThread()
            try:
                result["at_round_trip"] = await at_round_trip(bus, sims, args.commands)
                result["calls"] = {}
                for kind in args.kinds.split(","):
                    result["calls"][kind] = await one_call(kind, bus, sims, args.duration)
            finally:
                sims.stop()
        if not args.no_recovery:
            result["recovery"] = await measure_all(pathlib.Path(tmp) / "recovery")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per call")
    parser.add_argument("--commands", type=int, default=500, help="AT round trips to time")
    parser.add_argument("--kinds", default="eg25,sim7600,usr5637")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-recovery", action="store_true",
                       help="skip the recovery measurements (about a minute)")
    which.add_argument("--recovery-only", action="store_true",
                       help="only the recovery measurements")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
