"""The V.253 voice-modem driver against simulated USR 5637, Zoom 3095 (Conexant) and generic
V.253 modems, each with and without timing jitter (variants run concurrently)."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from drivers.trunk import (
    CallAnswered,
    CallEnded,
    DtmfReceived,
    EndCause,
    IncomingCall,
    Presentation,
    TrunkError,
    TrunkState,
)
from drivers.v253.codecs import Codec
from drivers.v253.trunk import VoiceModemTrunk
from jbcbench.audio import ToneGenerator, analyse_tone, detect_dtmf, first_tone_frame
from jbcbench.modems.farend import AudioFarEnd, FarEnd
from jbcbench.modems.harness import EventLog, MediaThread, until, v253_settings
from jbcbench.modems.usb import UsbBus
from jbcbench.modems.v253 import GENERIC_V253, USR_5637, ZOOM_3095, V253ModemSim
from jbcbench.modems.variants import Variant, jittered, run_variants

pytestmark = pytest.mark.integration

VARIANTS = jittered([("usr5637", USR_5637), ("zoom3095", ZOOM_3095),
                     ("generic", GENERIC_V253)])
EXPECTED_FORMAT = {"USR 5637": "s16", "Zoom 3095 (Conexant)": "u8", "generic V.253": "ulaw"}


def dle_rich_amplitude(codec: Codec) -> int:
    """A tone amplitude whose trough encodes to a 0x10 byte in this codec: every frame then
    carries DLE bytes that must be shielded and unshielded exactly."""
    width = codec.format.bytes_per_sample
    (sample,) = struct.unpack("<h", codec.decode(b"\x10" * width))
    amplitude = abs(sample)
    assert 0x10 in codec.encode(struct.pack("<h", sample))
    return amplitude


def check_tone(data: bytes, amplitude: int, *, min_frames: int) -> None:
    start = first_tone_frame(data)
    assert start >= 0, "no tone at all"
    frames = len(data) // 320
    report = analyse_tone(data[start * 320:(frames - 1) * 320], expected=float(amplitude))
    assert report.frames >= min_frames, report
    assert report.gaps == 0 and report.worst_error < 0.01, report


async def test_voice_modem_calls(tmp_path):
    async def scenario(v: Variant) -> None:
        bus = UsbBus(tmp_path / v.name)
        sim = V253ModemSim(bus, profile=v.profile, timing=v.timing, seed=5)
        sim.faults.split_dle = True
        async with sim, VoiceModemTrunk(v253_settings(sim, bus)) as trunk:
            log = EventLog(trunk)
            await log.wait_state(TrunkState.READY)
            assert trunk.codec.kind == EXPECTED_FORMAT[v.profile.name]
            assert sim.vcid == 1

            # answered after ringback; audio both ways full of DLE bytes; DTMF both ways
            amplitude = dle_rich_amplitude(trunk.codec)
            far = FarEnd(answer_after_rings=1,
                         audio=AudioFarEnd.tone_source(1000.0, amplitude))
            sim.far_end = far
            call = await trunk.dial("5557654321")
            assert not call.answer_supervised
            await log.wait_event(CallAnswered, call=call)
            media = MediaThread(call, source=ToneGenerator(1000.0, amplitude), prefill=3)
            media.start()
            await asyncio.sleep(1.5)
            sim.send_dtmf_to_host("47")
            await log.wait_event(DtmfReceived, call=call, digit="7")
            assert [e.digit for e in log.of(DtmfReceived)] == ["4", "7"]
            uplink_before_dtmf = far.audio.heard
            await trunk.send_dtmf(call, "9#")
            await asyncio.sleep(0.2)
            sent_dtmf = far.audio.heard[len(uplink_before_dtmf):]
            assert detect_dtmf(sent_dtmf) == "9#"
            far.audio.recording = False
            downlink = media.heard
            sim.far_hangs_up()
            ended = await log.wait_event(CallEnded, call=call)
            assert ended.cause is EndCause.NORMAL and "busy tone" in ended.detail
            media.stop()
            check_tone(downlink, amplitude, min_frames=60)
            check_tone(uplink_before_dtmf, amplitude, min_frames=60)
            assert sim.dle_pairs_sent > 50 and trunk.stats["dle_pairs"] > 50
            assert trunk.health().line == "dial-tone"

            # busy, no answer, and a far end that never answers yet yields VCON
            for far_end, cause in ((FarEnd(busy=True), EndCause.BUSY),
                                   (FarEnd(answer_after_rings=None), EndCause.NO_ANSWER)):
                sim.far_end = far_end
                call = await trunk.dial("5550002")
                ended = await log.wait_event(CallEnded, call=call, within_s=15.0)
                assert ended.cause is cause
            sim.far_end = FarEnd(answer_after_rings=None, ringback=False)
            call = await trunk.dial("5550003")
            await log.wait_event(CallAnswered, call=call)  # a guess, and flagged as one
            assert not call.answer_supervised
            await asyncio.sleep(0.3)
            await trunk.hangup(call)
            assert (await log.wait_event(CallEnded, call=call)).cause is EndCause.LOCAL_HANGUP

            # incoming, caller ID variants (reference 2.3; the rest of the variants are in
            # test_v253_core.py, on the parser alone)
            for style, number, name, presentation in (
                    ("spaced", "5551234567", "JBC BENCH", Presentation.ALLOWED),
                    ("compact", "5551234567", "JBC BENCH", Presentation.ALLOWED),
                    ("mesg", "5551234567", "JBC BENCH", Presentation.ALLOWED),
                    ("private", None, None, Presentation.WITHHELD),
                    ("none", None, None, Presentation.UNAVAILABLE)):
                log.clear()
                sim.faults.caller_id = style
                sim.ring_in("5551234567", give_up_after_s=0.7)
                incoming = (await log.wait_event(IncomingCall)).call
                caller = incoming.caller
                assert (caller.number, caller.name, caller.presentation) == \
                    (number, name, presentation), style
                ended = await log.wait_event(CallEnded, call=incoming)
                assert ended.cause is EndCause.MISSED
                await until(lambda: sim.line is None)

            # incoming answered; the far end hangs up (dial tone this time); extension pickup
            log.clear()
            sim.faults.caller_id = "spaced"
            sim.faults.hangup_signal = "dial-tone"
            sim.ring_in("5559876543", far=FarEnd(hangup_after_s=1.0))
            incoming = (await log.wait_event(IncomingCall)).call
            await trunk.answer(incoming)
            assert incoming.answer_supervised
            await asyncio.sleep(0.3)
            sim.extension_offhook()
            ended = await log.wait_event(CallEnded, call=incoming, within_s=5.0)
            assert ended.cause is EndCause.NORMAL and "dial tone" in ended.detail
            assert trunk.stats["extension_offhook"] == 1
            assert trunk.stats["stopped_with_dles"] == v.profile.stop_dles
            assert trunk.health().state is TrunkState.READY

    await run_variants(scenario, VARIANTS)


async def test_voice_modem_faults(tmp_path):
    async def scenario(v: Variant) -> None:
        bus = UsbBus(tmp_path / v.name)
        sim = V253ModemSim(bus, profile=v.profile, timing=v.timing, seed=9)
        async with sim, VoiceModemTrunk(v253_settings(sim, bus)) as trunk:
            log = EventLog(trunk)
            await log.wait_state(TrunkState.READY)

            # the modem forgets caller ID (quirk 2): re-enabled at the next health check
            sim.lose_caller_id_setting()
            await until(lambda: sim.vcid == 1, within_s=3.0)

            # a technician's ATZ: echo back on, voice mode gone; the driver notices
            lines = await trunk.at_passthrough("ATZ")
            assert lines[-1] == "OK" and sim.echo
            await until(lambda: sim.fclass == 8 and not sim.echo, within_s=3.0)
            await log.wait_state(TrunkState.READY)

            # the modem leaves voice mode by itself mid-call (+VIT, quirk 11)
            sim.faults.vit_drop_after_s = 0.4
            sim.far_end = FarEnd(answer_after_rings=1)
            call = await trunk.dial("5550004")
            ended = await log.wait_event(CallEnded, call=call, within_s=5.0)
            assert ended.cause is EndCause.FAILED and "voice mode" in ended.detail
            sim.faults.vit_drop_after_s = None
            await until(lambda: sim.line is None and not sim.off_hook)
            call = await trunk.dial("5550005")
            await log.wait_event(CallAnswered, call=call)
            await trunk.hangup(call)

            # no dial tone: the line is down, and comes back
            sim.faults.no_dial_tone = True
            call = await trunk.dial("5550006")
            ended = await log.wait_event(CallEnded, call=call)
            assert ended.cause is EndCause.NO_SERVICE
            await log.wait_state(TrunkState.DOWN)
            assert trunk.health().line == "no-dial-tone"
            with pytest.raises(TrunkError) as refused:
                await trunk.dial("5550007")
            assert refused.value.cause is EndCause.NO_SERVICE
            sim.faults.no_dial_tone = False
            await log.wait_state(TrunkState.READY, within_s=5.0)
            assert trunk.health().line == "dial-tone"

            # we give up while it still rings: the dial is aborted and the line released
            sim.far_end = FarEnd(answer_after_rings=None)
            call = await trunk.dial("5550010")
            await asyncio.sleep(0.4)
            await trunk.hangup(call)
            assert (await log.wait_event(CallEnded, call=call)).cause is EndCause.LOCAL_HANGUP
            await until(lambda: sim.line is None and not sim.off_hook, within_s=2.0)
            sim.far_end = FarEnd(answer_after_rings=1)

            # the modem leaves USB mid-call and comes back
            call = await trunk.dial("5550008")
            await log.wait_event(CallAnswered, call=call)
            sim.unplug()
            assert (await log.wait_event(CallEnded, call=call)).cause is EndCause.FAILED
            await log.wait_state(TrunkState.RECOVERING)
            sim.plug()
            await log.wait_state(TrunkState.READY, within_s=10.0)
            call = await trunk.dial("5550009")
            await log.wait_event(CallAnswered, call=call)
            await trunk.hangup(call)

    await run_variants(scenario, VARIANTS)


async def test_a_hung_voice_modem_climbs_its_own_ladder_and_is_back(tmp_path):
    """Issue 13 finding 5 for the analog trunk: a voice modem that stops answering is
    reopened (host-side trouble clears that way), then reset through USB, and is READY again
    within 30 s; a line that carries only digital silence is reported (finding 6)."""

    async def scenario(v: Variant) -> None:
        bus = UsbBus(tmp_path / v.name)
        sim = V253ModemSim(bus, profile=v.profile, timing=v.timing, seed=4)
        async with sim, VoiceModemTrunk(v253_settings(sim, bus, silent_after_s=1.5)) as trunk:
            log = EventLog(trunk)
            await log.wait_state(TrunkState.READY)
            sim.faults.at_silent = True
            started = time.monotonic()
            await log.wait_state(TrunkState.RECOVERING, within_s=10.0)
            await log.wait_state(TrunkState.READY, within_s=30.0)
            assert time.monotonic() - started < 30.0
            tried = [entry["rung"] for entry in trunk.recovery_log if "rung" in entry]
            assert tried == ["reopen", "reset-by-usb"], list(trunk.recovery_log)
            assert sim.plug_count == 2

            sim.faults.silent_line = True
            sim.far_end = FarEnd(answer_after_rings=1, audio=AudioFarEnd.tone_source())
            call = await trunk.dial("5550011")
            await log.wait_event(CallAnswered, call=call)
            await until(lambda: trunk.health().audio == "silent-downlink", within_s=5.0)
            assert call.downlink.problem == "silent-downlink"
            await trunk.hangup(call)
            assert call.downlink.problem is None
            sim.faults.silent_line = False  # the same talking far end, heard this time
            call = await trunk.dial("5550012")
            await log.wait_event(CallAnswered, call=call)
            await until(lambda: trunk.health().audio is None, within_s=3.0)
            await trunk.hangup(call)

    await run_variants(scenario, VARIANTS[::2])
