"""Injected LTE faults (reference section 4) end in a clear trunk state, never a hang, and the
trunk recovers once the fault clears. Each scenario runs on both vendors, with and without
jitter, concurrently."""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.lte.trunk import LteTrunk
from drivers.trunk import (
    CallAnswered,
    CallEnded,
    EndCause,
    IncomingCall,
    TrunkError,
    TrunkState,
)
from jbcbench.audio import analyse_tone, first_tone_frame
from jbcbench.modems.farend import AudioFarEnd, FarEnd
from jbcbench.modems.harness import EventLog, MediaThread, lte_in_service, lte_settings, until
from jbcbench.modems.lte import QUECTEL_EG25, SIMCOM_SIM7600, LteModemSim
from jbcbench.modems.usb import UsbBus
from jbcbench.modems.variants import Variant, jittered, run_variants

pytestmark = pytest.mark.integration

VARIANTS = jittered([("eg25", QUECTEL_EG25), ("sim7600", SIMCOM_SIM7600)])

async def connected_call(trunk, sim, log, far: FarEnd | None = None):
    sim.far_end = far or FarEnd(answer_after_rings=1)
    call = await trunk.dial("+15557654321")
    await log.wait_event(CallAnswered, call=call)
    return call

async def tone_heard_on_a_call(trunk, sim, log, far: FarEnd, *, seconds: float):
    """Place a call, send our 1 kHz tone for ``seconds``, and measure what came back."""
    call = await connected_call(trunk, sim, log, far)
    media = MediaThread(call).start()
    await asyncio.sleep(seconds)
    await trunk.hangup(call)
    media.stop()
    heard = media.heard
    start = first_tone_frame(heard)
    return analyse_tone(heard[start * 320:-320], expected=8000.0)


async def test_at_port_quirks_do_not_upset_the_trunk(tmp_path):
    """URCs inside responses, a late answer after a timeout, unknown lines, an SMS mid-call,
    URCs routed to the other port: calls and health stay right, no reset."""

    async def scenario(v: Variant) -> None:
        bus = UsbBus(tmp_path / v.name)
        sim = LteModemSim(bus, profile=v.profile, timing=v.timing, seed=3)
        sim.faults.urc_port = "aux"  # RING would go to the other port until QURCCFG
        sim.faults.urc_in_response = True
        sim.faults.unknown_lines = True
        async with sim, LteTrunk(lte_settings(sim, bus)) as trunk:
            log = EventLog(trunk)
            await log.wait_state(TrunkState.READY)
            sim.set_signal(11)
            await asyncio.sleep(1.2)
            assert trunk.health().signal_dbm == -91
            # a late answer: AT+CSQ answers 0.4 s after its 1 s timeout
            sim.faults.late["AT+CSQ"] = 1.4
            await until(lambda: trunk.details()["late_answers_dropped"] >= 1, within_s=6.0)
            sim.set_signal(15)
            await asyncio.sleep(1.5)
            health = trunk.health()
            assert health.signal_dbm == -83, health  # no off-by-one: +CSQ lands on AT+CSQ
            assert health.operator == "JBC Mobile", health
            call = await connected_call(trunk, sim, log)
            sim.sms_arrives()
            await asyncio.sleep(0.4)
            assert call.state.value == "active"
            await trunk.hangup(call)
            sim.ring_in("+15550100", give_up_after_s=0.6)
            incoming = (await log.wait_event(IncomingCall)).call
            assert (await log.wait_event(CallEnded, call=incoming)).cause is EndCause.MISSED
            assert trunk.recoveries == 0
            assert trunk.health().state is TrunkState.READY

    await run_variants(scenario, VARIANTS)

async def test_sim_and_network_states(tmp_path):
    """No SIM: emergency only (and it works); registration denied or searching; VoLTE not
    ready on an LTE-only network. Each clears back to READY."""

    async def scenario(v: Variant) -> None:
        bus = UsbBus(tmp_path / v.name)
        sim = LteModemSim(bus, profile=v.profile, timing=v.timing, sim_state="missing")
        async with sim, LteTrunk(lte_settings(sim, bus)) as trunk:
            log = EventLog(trunk)
            await log.wait_state(TrunkState.LIMITED)
            assert "SIM" in trunk.health().reason and trunk.health().sim == "missing"
            with pytest.raises(TrunkError) as refused:
                await trunk.dial("+15557654321")
            assert refused.value.cause is EndCause.NO_SERVICE
            sim.far_end = FarEnd(answer_after_rings=1, hangup_after_s=0.2)
            call = await trunk.dial("999")  # an emergency number without a SIM
            assert call.emergency
            await log.wait_event(CallAnswered, call=call)
            await log.wait_event(CallEnded, call=call)
            sim.sim_state = "ready"
            await log.wait_state(TrunkState.READY)

            sim.set_registration(3)
            await log.wait_state(TrunkState.LIMITED)
            assert trunk.health().registration == "denied"
            sim.set_registration(2)
            await until(lambda: trunk.health().registration == "searching")
            sim.set_registration(5)
            await log.wait_state(TrunkState.READY)
            assert trunk.health().registration == "roaming"

            sim.cs_registered = False
            sim.ims_available = False
            await log.wait_state(TrunkState.LIMITED)
            assert trunk.health().ims == "not-ready"
            with pytest.raises(TrunkError) as refused:
                await trunk.dial("+15557654321")
            assert refused.value.cause is EndCause.NO_SERVICE
            sim.ims_available = True
            await log.wait_state(TrunkState.READY)
            assert trunk.health().ims == "ready"

    await run_variants(scenario, VARIANTS)

async def test_sim_pin(tmp_path):
    """The configured PIN unlocks the SIM; a wrong one is tried once only; with fewer than two
    attempts left the driver does not risk a PUK lock."""

    async def scenario(v: Variant) -> None:
        for pin, retries, expect_state, expect_retries in (
                ("1234", 3, TrunkState.READY, 3),
                ("0000", 3, TrunkState.LIMITED, 2),
                ("1234", 1, TrunkState.LIMITED, 1)):
            bus = UsbBus(tmp_path / f"{v.name}-{pin}-{retries}")
            sim = LteModemSim(bus, profile=v.profile, timing=v.timing, sim_state="pin")
            sim.pin_retries = retries
            async with sim, LteTrunk(lte_settings(sim, bus, pin=pin)) as trunk:
                log = EventLog(trunk)
                await log.wait_state(expect_state)
                await asyncio.sleep(1.2)  # a few health polls: no more attempts
                assert sim.pin_retries == expect_retries, (pin, retries)
                assert trunk.health().state is expect_state

    await run_variants(scenario, VARIANTS[:2])

async def test_hung_at_port_is_reset_and_found_again_under_new_names(tmp_path):
    """The AT port stops answering while URCs go on (quirk 4): the driver judges liveness by
    replies, resets the modem (the port is too hung for AT+CFUN, so through USB), finds it
    again by USB identity under new tty names and is READY again."""

    async def scenario(v: Variant) -> None:
        async with lte_in_service(tmp_path / v.name, v.profile, v.timing) as (sim, trunk, log):
            before = trunk.details()["at_port"]
            call = await connected_call(trunk, sim, log)
            sim.faults.at_silent = True
            started = time.monotonic()
            ended = await log.wait_event(CallEnded, call=call, within_s=15.0)
            assert ended.cause is EndCause.FAILED
            await log.wait_state(TrunkState.RECOVERING)
            await log.wait_state(TrunkState.READY, within_s=20.0)
            assert time.monotonic() - started < 30.0
            assert trunk.details()["at_port"] != before
            assert sim.plug_count == 2
            call = await connected_call(trunk, sim, log)
            await trunk.hangup(call)

    await run_variants(scenario, VARIANTS)

async def test_port_that_wakes_when_the_other_port_is_touched(tmp_path):
    async def scenario(v: Variant) -> None:
        async with lte_in_service(tmp_path / v.name, v.profile, v.timing) as (sim, _trunk, log):
            sim.faults.silent_until_aux_touched = True
            await log.wait_state(TrunkState.RECOVERING, within_s=10.0)
            await log.wait_state(TrunkState.READY, within_s=10.0)
            assert sim.plug_count == 1  # no reset was needed

    await run_variants(scenario, VARIANTS)

async def test_modem_resets_or_leaves_usb_mid_call(tmp_path):
    """A reboot (CFUN=1,1-style, or a brown-out) and a USB unplug during a call: the call
    ends FAILED at once, the trunk says why, and it is READY again once the modem is back."""

    async def scenario(v: Variant) -> None:
        async with lte_in_service(tmp_path / v.name, v.profile, v.timing) as (sim, trunk, log):
            call = await connected_call(trunk, sim, log)
            sim.reboot()
            assert (await log.wait_event(CallEnded, call=call)).cause is EndCause.FAILED
            assert trunk.health().state is TrunkState.RECOVERING
            await log.wait_state(TrunkState.READY, within_s=15.0)
            call = await connected_call(trunk, sim, log)
            sim.unplug()
            assert (await log.wait_event(CallEnded, call=call)).cause is EndCause.FAILED
            await asyncio.sleep(1.5)
            assert trunk.health().state is TrunkState.RECOVERING
            started = time.monotonic()
            sim.plug()
            await log.wait_state(TrunkState.READY, within_s=15.0)
            assert time.monotonic() - started < 30.0
            call = await connected_call(trunk, sim, log)
            await trunk.hangup(call)

    await run_variants(scenario, VARIANTS)

async def test_audio_faults(tmp_path):
    """NMEA sentences in the PCM stream are taken out (the tone arrives intact); an uplink
    that stalls is reported during the call and cured by a reset after it; firmware without
    voice support reads DOWN with the reason."""

    async def scenario(v: Variant) -> None:
        bus = UsbBus(tmp_path / v.name)
        sim = LteModemSim(bus, profile=v.profile, timing=v.timing)
        sim.faults.nmea_in_pcm = True
        async with sim, LteTrunk(lte_settings(sim, bus)) as trunk:
            log = EventLog(trunk)
            await log.wait_state(TrunkState.READY)
            far = FarEnd(answer_after_rings=1, audio=AudioFarEnd.tone_source(1000.0, 8000))
            report = await tone_heard_on_a_call(trunk, sim, log, far, seconds=2.5)
            assert report.gaps == 0 and report.frames > 80, report
            # both vendors: the SIM7600 leaks NMEA into its PCM port too (finding 8)
            assert trunk.audio.last_stats["nmea_removed"] >= 1
            sim.faults.nmea_in_pcm = False

            # a far end that echoes: our tone comes back at our own level
            echo = FarEnd(answer_after_rings=1, audio=AudioFarEnd.echo())
            report = await tone_heard_on_a_call(trunk, sim, log, echo, seconds=1.5)
            assert report.gaps == 0 and report.frames > 50, report

            # no PCM at all from the modem: reported during the call, reset after it
            sim.faults.no_pcm = True
            call = await connected_call(trunk, sim, log)
            await until(lambda: trunk.health().audio == "no-downlink", within_s=5.0)
            await trunk.hangup(call)
            sim.faults.no_pcm = False
            await log.wait_state(TrunkState.RECOVERING, within_s=5.0)
            await log.wait_state(TrunkState.READY, within_s=15.0)
            log.clear()

            sim.faults.downlink_only = True
            call = await connected_call(trunk, sim, log)
            media = MediaThread(call).start()
            # the pty takes ~64 KB before it pushes back, as a USB stall would at once
            await until(lambda: trunk.health().audio == "uplink-stalled", within_s=10.0)
            media.stop()
            await trunk.hangup(call)
            sim.faults.downlink_only = False
            await log.wait_state(TrunkState.RECOVERING, within_s=5.0)
            await log.wait_state(TrunkState.READY, within_s=15.0)
            assert trunk.health().audio is None
            call = await connected_call(trunk, sim, log)
            media = MediaThread(call).start()
            await asyncio.sleep(1.5)
            assert trunk.health().audio is None
            await trunk.hangup(call)
            media.stop()

        bus = UsbBus(tmp_path / f"{v.name}-novoice")
        sim = LteModemSim(bus, profile=v.profile, timing=v.timing)
        sim.faults.no_voice_firmware = True
        async with sim, LteTrunk(lte_settings(sim, bus)) as trunk:
            log = EventLog(trunk)
            await log.wait_state(TrunkState.DOWN)
            assert "voice" in trunk.health().reason
            probes = len(sim.commands_seen)
            await asyncio.sleep(1.0)
            assert len(sim.commands_seen) == probes  # no retrying (quirk 16)

    await run_variants(scenario, VARIANTS)
