"""The long measurements, run at the same time so that they cost 30-odd seconds together:

* a 1 kHz tone sent each way arrives as 1 kHz at the same level (within 1 %, Goertzel per
  20 ms frame) with no gap for 30 s: every driver against every matching simulator, with and
  without timing jitter;
* with real-life timings (a 10 s modem reboot, the driver's default intervals), a hung AT
  port and a USB brown-out each end in READY again within 30 s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from drivers.lte.trunk import LteSettings, LteTrunk
from drivers.trunk import CallAnswered, TrunkState
from drivers.v253.trunk import VoiceModemTrunk
from jbcbench.audio import ToneGenerator, analyse_tone, first_tone_frame
from jbcbench.modems.farend import AudioFarEnd, FarEnd
from jbcbench.modems.harness import EventLog, MediaThread, lte_settings, v253_settings
from jbcbench.modems.lte import QUECTEL_EG25, SIMCOM_SIM7600, LteModemSim
from jbcbench.modems.timing import SimTiming
from jbcbench.modems.usb import UsbBus
from jbcbench.modems.v253 import GENERIC_V253, USR_5637, ZOOM_3095, V253ModemSim
from jbcbench.modems.variants import Variant, jittered, run_variants

pytestmark = pytest.mark.integration

SECONDS = 30.0
FRAMES = int(SECONDS / 0.02)
AMPLITUDE = 8000


@dataclasses.dataclass
class Result:
    name: str
    downlink: object
    uplink: object


async def test_tone_both_ways_for_30_seconds(tmp_path):
    results: list[Result] = []

    async def scenario(v: Variant) -> None:
        bus = UsbBus(tmp_path / v.name)
        if isinstance(v.profile, type(QUECTEL_EG25)):
            sim = LteModemSim(bus, profile=v.profile, timing=v.timing, seed=11)
            trunk = LteTrunk(lte_settings(sim, bus, health_interval_s=2.0))
        else:
            sim = V253ModemSim(bus, profile=v.profile, timing=v.timing, seed=11)
            trunk = VoiceModemTrunk(v253_settings(sim, bus, health_interval_s=2.0))
        far = FarEnd(answer_after_rings=1,
                     audio=AudioFarEnd.tone_source(1000.0, AMPLITUDE))
        sim.far_end = far
        async with sim, trunk:
            log = EventLog(trunk)
            await log.wait_state(TrunkState.READY)
            call = await trunk.dial("5557654321")
            await log.wait_event(CallAnswered, call=call)
            media = MediaThread(call, source=ToneGenerator(1000.0, AMPLITUDE), prefill=4)
            media.start()
            # the SIM7600's PCM may take ~2 s to start (reference 1.8), more under load
            await asyncio.sleep(SECONDS + 3.0)
            downlink = media.heard
            uplink = far.audio.heard
            await trunk.hangup(call)
            media.stop()
        reports = []
        for data in (downlink, uplink):
            start = first_tone_frame(data)
            assert start >= 0, f"{v.name}: no tone"
            tone = data[start * 320:(start + FRAMES) * 320]
            reports.append(analyse_tone(tone, expected=float(AMPLITUDE), tolerance=0.01))
        results.append(Result(v.name, *reports))

    variants = jittered([("eg25", QUECTEL_EG25), ("sim7600", SIMCOM_SIM7600),
                         ("usr5637", USR_5637), ("zoom3095", ZOOM_3095),
                         ("generic", GENERIC_V253)])
    recovery: dict[str, float] = {}
    await asyncio.gather(run_variants(scenario, variants),
                         recovery_with_real_timings(tmp_path, recovery))
    print("recovery with real timings:", recovery)
    assert recovery["hung_port_s"] < 30.0 and recovery["brown_out_s"] < 30.0, recovery
    problems = []
    for result in results:
        for direction, report in (("downlink", result.downlink), ("uplink", result.uplink)):
            if (report.frames < FRAMES or report.gaps or report.worst_error >= 0.01
                    or report.purity_min < 0.99):
                problems.append(f"{result.name} {direction}: {report}")
    assert not problems, "\n".join(problems)


async def recovery_with_real_timings(tmp_path, measured: dict[str, float]) -> None:
    bus = UsbBus(tmp_path / "real-timings")
    sim = LteModemSim(bus, profile=QUECTEL_EG25, timing=SimTiming(), seed=2)
    settings = LteSettings(name="lte-real", usb_id=sim.usb_id, usb_serial=sim.identity.serial,
                           sysfs=bus.sysfs, dev=bus.dev)  # the driver's own defaults
    async with sim, LteTrunk(settings) as trunk:
        log = EventLog(trunk)
        await log.wait_state(TrunkState.READY, within_s=20.0)
        sim.faults.at_silent = True  # only a reset clears it
        started = time.monotonic()
        await log.wait_state(TrunkState.RECOVERING, within_s=20.0)
        await log.wait_state(TrunkState.READY, within_s=40.0)
        measured["hung_port_s"] = time.monotonic() - started
        assert sim.plug_count == 2
        sim.unplug()
        await asyncio.sleep(3.0)
        started = time.monotonic()
        sim.plug()
        await log.wait_state(TrunkState.READY, within_s=40.0)
        measured["brown_out_s"] = time.monotonic() - started
