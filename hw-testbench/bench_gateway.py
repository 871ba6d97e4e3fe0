"""Gateway benchmark: what the trunk gateway adds to a call, measured end to end.

    /work/venv/bin/python hw-testbench/bench_gateway.py [--call-s 300] [--dials 20]

Set-up: two simulated Quectel EG25 modems (realistic timings) in this process; the real jbcd
(directory, SIP proxy, trunk pool with the LTE driver, gateway, call records) in its own
process, so that its CPU can be measured alone; pjsua2 handsets in their own processes,
registered with the proxy.

Figures (one JSON object on stdout):

* ``invite_to_dial_ms``: from the handset's INVITE leaving (its CALLING state) to the ``ATD``
  command arriving on the modem's serial port: proxy, gateway, trunk choice and AT write.
* ``audio_latency_ms``: tone onset to tone onset through the whole path, both directions:
  ``trunk_to_handset`` (the modem's PCM port -> driver -> playout buffer -> echo canceller ->
  conference bridge -> RTP -> the handset's jitter buffer) and ``handset_to_trunk``. Onsets
  are detected per 20 ms frame, so each figure carries up to 20 ms of quantisation.
* ``frame_loss``: over one long call with tones both ways: frames heard at each end whose
  tone level was off by more than half (lost, silent or concealed) or by more than 10 %,
  plus the bridge's own counters (playout underruns, concealed, discarded, uplink drops).
* ``cpu_percent``: the appliance process's CPU (user+system, % of one core) when idle with
  phones registered, during one trunk call and during two simultaneous trunk calls.
* ``double_talk``: both sides talking at once, the echo canceller's hard case (issue 13
  finding 7): the handset sends 440 Hz while the far end sends 1000 Hz; the modem returns
  part of the uplink as echo (``--echo``, 0.3 by default) and the handset's loudspeaker leaks
  into its microphone (``--speaker-leak``, 0.3 by default: a desk phone on speaker), so the
  reference carries the far party's own voice too. The far end's 1000 Hz is measured at the
  handset second by second for ``--double-talk-s`` seconds. Figures: its level in dB against
  the level with the handset silent (same call, same path), the worst second, the last, and
  how much the level varies inside a second (a warble). The goal: within 1 dB, every
  second. The echo's residue at 440 Hz, with the far end silent after it, is reported too
  (the canceller must still cancel).

    python hw-testbench/bench_gateway.py --only double-talk [--double-talk-s 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import sys
import tempfile
import time

from jbcbench.gateway_rig import ApplianceProcess, SimBank, TimedFarEnd
from jbcbench.modems.farend import FarEnd
from jbcbench.modems.lte import LteModemSim

OUTSIDE = "sip:95551234567@127.0.0.1"
AMPLITUDE = 8000


class TimedLteModemSim(LteModemSim):
    """The simulated modem, noting when each dial command arrived on its AT port."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dial_times: list[float] = []

    def handle_line(self, line: str) -> None:
        if line.strip().upper().startswith("ATD"):
            self.dial_times.append(time.monotonic())
        super().handle_line(line)


async def th(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {"n": len(ordered), "p50": round(statistics.median(ordered), 1),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            "min": round(ordered[0], 1), "max": round(ordered[-1], 1)}


async def invite_to_dial(sim, handset, count: int) -> dict[str, float]:
    sim.far_end = FarEnd(busy=True)
    delays = []
    for _ in range(count):
        mark = handset.mark()
        dials = len(sim.dial_times)
        await th(handset.call, OUTSIDE)
        calling = await th(handset.wait_state, "CALLING", after=mark, timeout_s=10)
        await th(handset.wait_state, "DISCONNECTED", after=mark, timeout_s=30)
        if len(sim.dial_times) > dials:
            delays.append((sim.dial_times[dials] - calling["t"]) * 1000.0)
        await asyncio.sleep(0.3)
    return summary(delays)


async def connect(sim, handset, far: TimedFarEnd) -> None:
    sim.far_end = FarEnd(answer_after_rings=1, audio=far.audio)
    mark = handset.mark()
    await th(handset.call, OUTSIDE)
    await th(handset.wait_state, "CONFIRMED", after=mark, timeout_s=30)
    await asyncio.sleep(1.0)


async def latency(handset, far: TimedFarEnd, repeats: int) -> dict[str, dict]:
    down, up = [], []
    threshold = AMPLITUDE / 2
    for _ in range(repeats):
        far.tone(1000.0)
        await asyncio.sleep(1.5)
        started = far.tone_started
        onset = await th(handset.onset, 1000.0, threshold=threshold, after=started - 0.05)
        if started is not None and onset is not None:
            down.append((onset - started) * 1000.0)
        far.tone(None)
        await asyncio.sleep(0.8)
        sent = await th(handset.tone, 400.0)
        await asyncio.sleep(1.5)
        onset = far.onset(sent, threshold) if sent is not None else None
        if onset is not None:
            up.append((onset - sent) * 1000.0)
        await th(handset.tone, None)
        await asyncio.sleep(0.8)
    return {"trunk_to_handset": summary(down), "handset_to_trunk": summary(up)}


async def cpu_percent(appliance: ApplianceProcess, seconds: float) -> float:
    before, start = appliance.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return round(100.0 * (appliance.cpu_seconds() - before) / (time.monotonic() - start), 1)


async def long_call(handset, far: TimedFarEnd, appliance: ApplianceProcess,
                    seconds: float) -> dict:
    far.tone(1000.0)
    await th(handset.tone, 400.0)
    await asyncio.sleep(2.0)
    start = time.monotonic()
    before = (await th(appliance.command, "gateway.calls"))["active"][0].get("audio", {})
    await asyncio.sleep(seconds)
    after = (await th(appliance.command, "gateway.calls"))["active"][0].get("audio", {})
    heard_far = far.levels_since(start)[: int(seconds * 50)]
    at_handset = await th(handset.level, 1000.0, seconds, expected=AMPLITUDE)
    counters = {k: after.get(k, 0) - before.get(k, 0)
                for k in ("underruns", "concealed", "discarded", "uplink_dropped",
                          "downlink_frames", "uplink_frames")}
    return {
        "seconds": seconds,
        "trunk_to_handset": {"frames": at_handset["frames"], "lost": at_handset["gaps"],
                             "off_by_10pct": at_handset["off_by_10pct"],
                             "loss_percent": round(100.0 * at_handset["gaps"]
                                                   / max(1, at_handset["frames"]), 3)},
        "handset_to_trunk": {
            "frames": len(heard_far),
            "lost": sum(1 for level in heard_far if level < AMPLITUDE / 2),
            "off_by_10pct": sum(1 for level in heard_far
                                if abs(level - AMPLITUDE) > 0.1 * AMPLITUDE),
            "loss_percent": round(100.0 * sum(1 for level in heard_far
                                              if level < AMPLITUDE / 2)
                                  / max(1, len(heard_far)), 3)},
        "bridge_counters": counters,
        "playout_target_ms": after.get("playout_target_ms"),
    }


async def double_talk(sim, handset, far: TimedFarEnd, seconds: float, *, echo: float,
                      leak: float, appliance: ApplianceProcess | None = None) -> dict:
    """The far end's 1000 Hz at the handset, second by second: first with the handset
    silent (the reference), then with the handset sending 440 Hz the whole time."""
    import math

    def db(level: float, reference: float) -> float:
        return round(20 * math.log10(max(level, 1e-6) / max(reference, 1e-6)), 2)

    sim.faults.acoustic_echo = echo
    await th(handset.speaker_leak, leak)
    far.tone(1000.0)
    await th(handset.tone, None)
    await asyncio.sleep(3.0)
    reference = (await th(handset.level, 1000.0, 2.0))["mean"]
    await th(handset.tone, 440.0)
    per_second, warble = [], []
    for _ in range(int(seconds)):
        await asyncio.sleep(1.0)
        level = await th(handset.level, 1000.0, 1.0)
        per_second.append(db(level["mean"], reference))
        warble.append(db(level["max"], level["min"]) if level["min"] > 0 else 99.0)
    far.tone(None)
    await asyncio.sleep(3.0)  # the handset alone: single talk, the canceller cancels
    residue = (await th(handset.level, 440.0, 1.0))["mean"]
    canceller = {}
    if appliance is not None:
        active = (await th(appliance.command, "gateway.calls"))["active"]
        audio = active[0].get("audio", {}) if active else {}
        canceller = {key: audio.get(key) for key in ("echo_erle_db", "echo_delay_ms",
                                                     "echo_double_talk_frames")}
    await th(handset.tone, None)
    await th(handset.speaker_leak, 0.0)
    sim.faults.acoustic_echo = 0.0
    return {
        "seconds": seconds, "echo_share": echo, "speaker_leak": leak,
        "reference_level": round(reference, 1),
        "level_db_per_second": per_second,
        "worst_db": min(per_second), "last_db": per_second[-1],
        "warble_db_max": max(warble),
        "echo_residue_db_after": db(residue, AMPLITUDE * echo) if echo else None,
        "canceller": canceller,
        "goal": "within 1 dB of the level with a silent handset, every second",
        "met": all(abs(value) <= 1.0 for value in per_second),
    }


async def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        workdir = pathlib.Path(tmp)
        async with SimBank(workdir / "sims", ("eg25", "eg25"), sim_class=TimedLteModemSim,
                           seed=11) as bank:
            appliance = await th(ApplianceProcess(workdir / "jbcd", bank).start)
            handsets = []
            try:
                for extension in ("101", "102"):
                    handset = await th(appliance.handset, extension)
                    handsets.append(handset)
                    await th(handset.wait_event, "registered", timeout_s=10)
                alice, bob = handsets
                results: dict = {"setup": {
                    "modems": "2 x simulated Quectel EG25 (realistic timings)",
                    "codec": "PCMU", "appliance": "jbcd in its own process: SIP proxy, trunk "
                    "pool (LTE driver), gateway (pjsua2), call records"}}
                if args.only == "double-talk":
                    far = TimedFarEnd(listen_hz=440.0)
                    await connect(bank.sims[0], alice, far)
                    results["double_talk"] = await double_talk(
                        bank.sims[0], alice, far, args.double_talk_s, echo=args.echo,
                        leak=args.speaker_leak, appliance=appliance)
                    await th(alice.hangup)
                    return results
                results["invite_to_dial_ms"] = await invite_to_dial(bank.sims[0], alice,
                                                                    args.dials)
                results["cpu_percent"] = {"idle": await cpu_percent(appliance, 10.0)}
                far_a, far_b = TimedFarEnd(listen_hz=400.0), TimedFarEnd(listen_hz=400.0)
                await connect(bank.sims[0], alice, far_a)
                results["audio_latency_ms"] = await latency(alice, far_a, args.repeats)
                far_a.tone(1000.0)
                await th(alice.tone, 400.0)
                results["cpu_percent"]["one_call"] = await cpu_percent(appliance, 20.0)
                await connect(bank.sims[1], bob, far_b)
                far_b.tone(1000.0)
                await th(bob.tone, 400.0)
                await asyncio.sleep(1.0)
                calls = await th(appliance.command, "gateway.calls")
                results["cpu_percent"]["two_calls"] = await cpu_percent(appliance, 20.0)
                results["cpu_percent"]["trunks_in_use"] = sorted(r["trunk"]
                                                                 for r in calls["active"])
                await th(bob.hangup)
                await asyncio.sleep(2.0)
                results["frame_loss"] = await long_call(alice, far_a, appliance, args.call_s)
                await th(alice.hangup)
                await asyncio.sleep(1.0)
                far_c = TimedFarEnd(listen_hz=440.0)
                await connect(bank.sims[0], alice, far_c)
                results["double_talk"] = await double_talk(
                    bank.sims[0], alice, far_c, args.double_talk_s, echo=args.echo,
                    leak=args.speaker_leak, appliance=appliance)
                await th(alice.hangup)
            finally:
                for handset in handsets:
                    await th(handset.stop)
                await th(appliance.stop)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--call-s", type=float, default=300.0,
                        help="length of the frame-loss call (default 300 s)")
    parser.add_argument("--dials", type=int, default=20, help="calls for the dial delay")
    parser.add_argument("--repeats", type=int, default=5, help="tone onsets per direction")
    parser.add_argument("--double-talk-s", type=float, default=15.0,
                        help="length of the double-talk measurement (default 15 s)")
    parser.add_argument("--echo", type=float, default=0.3,
                        help="share of the uplink the modem returns as echo (default 0.3)")
    parser.add_argument("--speaker-leak", type=float, default=0.3,
                        help="share of what the handset hears that its microphone picks up "
                        "(default 0.3)")
    parser.add_argument("--only", choices=("double-talk",),
                        help="run one scenario alone (a minute instead of ten)")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
