"""The LTE driver against the simulated Quectel EG25 and SIMCom SIM7600, each with and
without timing jitter (the variants of one scenario run concurrently)."""

from __future__ import annotations

import asyncio

import pytest

from drivers.lte.trunk import LteTrunk
from drivers.trunk import (
    CallAlerting,
    CallAnswered,
    CallEnded,
    DtmfReceived,
    EndCause,
    IncomingCall,
    Presentation,
    TrunkError,
    TrunkState,
)
from jbcbench.audio import analyse_tone, first_tone_frame
from jbcbench.modems.farend import AudioFarEnd, FarEnd
from jbcbench.modems.harness import EventLog, MediaThread, lte_settings, until
from jbcbench.modems.lte import QUECTEL_EG25, SIMCOM_SIM7600, LteModemSim
from jbcbench.modems.usb import UsbBus
from jbcbench.modems.variants import Variant, jittered, run_variants

pytestmark = pytest.mark.integration

VARIANTS = jittered([("eg25", QUECTEL_EG25), ("sim7600", SIMCOM_SIM7600)])


def check_tone(data: bytes, *, min_frames: int) -> None:
    start = first_tone_frame(data)
    assert start >= 0, "no tone at all"
    frames = len(data) // 320
    report = analyse_tone(data[start * 320:(frames - 1) * 320], expected=8000.0)
    assert report.frames >= min_frames, report
    assert report.gaps == 0, report
    assert report.worst_error < 0.01, report
    assert report.purity_min > 0.99, report


async def test_call_flows(tmp_path):
    async def scenario(v: Variant) -> None:
        bus = UsbBus(tmp_path / v.name)
        sim = LteModemSim(bus, profile=v.profile, timing=v.timing, seed=7)
        async with sim, LteTrunk(lte_settings(sim, bus)) as trunk:
            log = EventLog(trunk)
            await log.wait_state(TrunkState.READY)
            health = trunk.health()
            assert health.operator == "JBC Mobile"
            assert health.signal_dbm == -73 and health.signal_bars == 5
            assert (health.sim, health.registration, health.ims) == ("ready", "home", "ready")
            assert health.access_technology == "LTE"

            # answered, audio both ways (tone measured with Goertzel), DTMF both ways, we hang up
            far = FarEnd(answer_after_rings=1, audio=AudioFarEnd.tone_source(1000.0, 8000))
            sim.far_end = far
            call = await trunk.dial("+15557654321")
            await log.wait_event(CallAlerting, call=call)
            await log.wait_event(CallAnswered, call=call)
            media = MediaThread(call, prefill=3).start()
            await asyncio.sleep(1.5)
            await trunk.send_dtmf(call, "5#")
            assert far.dtmf_heard == ["5", "#"]
            sim.far_end_dtmf("7")
            await log.wait_event(DtmfReceived, call=call, digit="7")
            await trunk.hangup(call)
            assert (await log.wait_event(CallEnded, call=call)).cause is EndCause.LOCAL_HANGUP
            media.stop()
            check_tone(media.heard, min_frames=50)
            check_tone(far.audio.heard, min_frames=50)
            assert not sim.calls

            # the far end hangs up
            sim.far_end = FarEnd(answer_after_rings=1, hangup_after_s=0.3)
            call = await trunk.dial("+15550001")
            assert (await log.wait_event(CallEnded, call=call)).cause is EndCause.NORMAL

            # busy, no answer, rejected
            for far_end, cause in ((FarEnd(busy=True), EndCause.BUSY),
                                   (FarEnd(answer_after_rings=None), EndCause.NO_ANSWER),
                                   (FarEnd(reject=True), EndCause.REJECTED)):
                sim.far_end = far_end
                call = await trunk.dial("+15550002")
                ended = await log.wait_event(CallEnded, call=call)
                assert ended.cause is cause, (far_end, ended)
                assert not [e for e in log.of(CallAnswered) if e.call is call]

            # we give up while it rings at the far end
            sim.far_end = FarEnd(answer_after_rings=None)
            call = await trunk.dial("+15550007")
            await log.wait_event(CallAlerting, call=call)
            await trunk.hangup(call)
            assert (await log.wait_event(CallEnded, call=call)).cause is EndCause.LOCAL_HANGUP
            await until(lambda: not sim.calls)

            # incoming with caller ID, answered, far end hangs up
            sim.ring_in("+15551234567", far=FarEnd(hangup_after_s=0.4))
            incoming = (await log.wait_event(IncomingCall)).call
            assert incoming.caller.number == "+15551234567"
            assert incoming.caller.presentation is Presentation.ALLOWED
            await trunk.answer(incoming)
            await log.wait_event(CallAnswered, call=incoming)
            assert (await log.wait_event(CallEnded, call=incoming)).cause is EndCause.NORMAL

            # withheld number, turned down by us
            log.clear()
            sim.ring_in("+15559999999", presentation=1)
            incoming = (await log.wait_event(IncomingCall)).call
            assert incoming.caller.presentation is Presentation.WITHHELD
            assert incoming.caller.number is None
            await trunk.hangup(incoming)
            assert (await log.wait_event(CallEnded, call=incoming)).cause is EndCause.LOCAL_HANGUP
            await until(lambda: not sim.calls)

            # RING without +CLIP and duplicated RINGs: one call, number from the call report
            log.clear()
            sim.faults.ring_without_clip = sim.faults.duplicate_ring = True
            sim.ring_in("+15550003", give_up_after_s=0.8)
            incoming = (await log.wait_event(IncomingCall)).call
            assert incoming.caller.number == "+15550003"
            ended = await log.wait_event(CallEnded, call=incoming)
            assert ended.cause is EndCause.MISSED
            assert len(log.of(IncomingCall)) == 1
            sim.faults.ring_without_clip = sim.faults.duplicate_ring = False

            # the caller hangs up while we answer
            log.clear()
            sim.faults.hangup_during_answer = True
            sim.ring_in("+15550004")
            incoming = (await log.wait_event(IncomingCall)).call
            with pytest.raises(TrunkError) as refused:
                await trunk.answer(incoming)
            assert refused.value.cause is EndCause.MISSED
            assert (await log.wait_event(CallEnded, call=incoming)).cause is EndCause.MISSED
            sim.faults.hangup_during_answer = False

            # a slow ATA (quirk 2) is still an answer
            log.clear()
            sim.faults.answer_delay_s = 2.5
            sim.ring_in("+15550005")
            incoming = (await log.wait_event(IncomingCall)).call
            await trunk.answer(incoming)
            assert incoming.state.value == "active"
            sim.faults.answer_delay_s = None

            # call waiting during a call is turned away; the call goes on
            sim.ring_in("+15550006")
            await asyncio.sleep(0.8)
            assert [c.idx for c in sim.calls.values()] == [1]
            assert not log.of(IncomingCall)[1:]
            # no call-end URC at all (quirk 13): the AT+CLCC poll ends it
            sim.faults.no_end_urc = True
            sim.remote_hangup()
            ended = await log.wait_event(CallEnded, call=incoming, within_s=3.0)
            assert ended.cause is EndCause.NORMAL
            sim.faults.no_end_urc = False
            assert trunk.health().state is TrunkState.READY
            assert trunk.recoveries == 0

    await run_variants(scenario, VARIANTS)
