"""End to end: pjsua2 handset -> SIP proxy -> gateway -> trunk driver -> simulated modem.

Every part is the real one (see ``jbcbench/gateway_rig.py``): the registrar/proxy subsystem
with digest authentication, the gateway's pjsua2 agent on its own thread, the LTE driver over
pseudo-terminals to the simulated Quectel EG25 and SIMCom SIM7600, handsets in their own
processes. Audio is checked by tone and level (Goertzel) at both ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
import time

import numpy as np
import pytest

from appliance.gateway.events import EmergencyCallStarted
from drivers.trunk import CallState, TrunkState
from jbcbench.audio import detect_dtmf
from jbcbench.gateway_rig import DIRECTORY, GatewayRig
from jbcbench.modems.farend import AudioFarEnd, FarEnd
from jbcbench.rtpsniff import can_capture, capture_udp, describe_rtp

pytestmark = pytest.mark.integration

MODEMS = ["eg25", "sim7600", "usr5637"]
"""Simulated Quectel EG25 and SIMCom SIM7600 (LTE), and a USR 5637 voice modem (analog)."""
OUTSIDE = "sip:95551234567@127.0.0.1"


async def th(fn, *args, **kwargs):
    """Handset calls block on pipes: run them off the event loop the rig lives on."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def far_level(far, frequency: float, seconds: float = 0.5) -> float:
    """Median per-frame level of ``frequency`` in the last ``seconds`` the far end heard
    (the test tones fit whole periods into a 20 ms frame, so frame alignment is moot)."""
    data = far.audio.heard[-int(seconds * 16000):]
    x = np.frombuffer(data[: len(data) // 320 * 320], dtype="<i2").astype(float)
    if not len(x):
        return 0.0
    phase = np.exp(-2j * np.pi * frequency / 8000 * np.arange(160))
    levels = sorted(2 * abs(np.dot(frame, phase)) / 160 for frame in x.reshape(-1, 160))
    return float(levels[len(levels) // 2])


def idle(sim) -> bool:
    """No call on the simulated modem (LTE: no call slots used; analog: on hook)."""
    calls = getattr(sim, "calls", None)
    return not calls if calls is not None else sim.line is None


def answered_by_far_end(sim) -> bool:
    calls = getattr(sim, "calls", None)
    if calls is not None:
        return any(call.stat == 0 for call in calls.values())
    return sim.line is not None and sim.line.connected


async def finished_record(rig, **match):
    """The call record matching ``match`` once it is closed. A call through the proxy has
    the proxy's record (written a moment behind), to which the gateway adds the trunk; a
    call arriving on a trunk has the gateway's."""
    await until(lambda: (r := rig.record_for(**match)) is not None and r.ended_at is not None)
    return rig.record_for(**match)


def journal_reasons(rig, kind: str) -> list[str]:
    return [e.reason for e in rig.journal.query(subsystem="gateway", limit=10000)
            if e.kind == kind]


async def until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# -- outbound --------------------------------------------------------------------------------


@pytest.mark.parametrize("modem", MODEMS)
async def test_outside_call_answered_audio_both_ways_dtmf_and_handset_hangs_up(tmp_path, modem):
    async with GatewayRig(tmp_path, modems=(modem,)) as rig:
        sim = rig.sims[0]
        far = FarEnd(answer_after_rings=2, audio=AudioFarEnd.tone_source(1000.0, 8000))
        sim.far_end = far
        alice = await rig.handset("101")
        mark = alice.mark()
        await th(alice.call, OUTSIDE)
        ringing = await th(alice.wait_state, "EARLY", after=mark, timeout_s=10)
        assert ringing["code"] == 180  # LTE: the network reported alerting; analog: dialled
        await th(alice.wait_state, "CONFIRMED", after=mark, timeout_s=10)
        if realtime_permitted():  # the call's audio threads cannot be stalled by a busy host
            assert audio_thread_policies() == {"event loop": RR, "pjsua": RR, "media": RR,
                                               "clock": RR}
        await th(alice.tone, 400)
        await asyncio.sleep(1.2)
        heard = await th(alice.level, 1000, 0.6)
        # level by the median and at most one glitch: a loaded CI machine may delay a frame
        assert heard["median"] == pytest.approx(8000, rel=0.02) and heard["gaps"] <= 1
        assert far_level(far, 400) == pytest.approx(8000, rel=0.02)
        listing = await rig.command("gateway.calls")
        (row,) = listing["active"]
        assert (row["from"], row["to"], row["state"]) == ("101", "5551234567", "active")
        assert row["trunk"] == rig.trunks.trunks()[0].name and row["codec"] == "PCMU"
        await th(alice.tone, None)

        def digits_heard() -> str:
            if modem == "usr5637":  # an analog line: DTMF goes in-band, as tones
                return detect_dtmf(far.audio.heard)
            return "".join(far.dtmf_heard)  # LTE: AT+VTS

        await th(alice.dtmf, "5", "rfc4733")
        await until(lambda: digits_heard() == "5")
        await th(alice.dtmf, "#", "info")
        await until(lambda: digits_heard() == "5#")
        await th(alice.hangup)
        await until(lambda: idle(sim))
        record = await finished_record(rig, from_party="101")
        assert record.result == "answered" and record.trunk == rig.trunks.trunks()[0].name
        assert record.answered_at and record.direction == "outbound"
        assert record.to_party == "5551234567"
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the loop thread is put back


RR = os.SCHED_RR | os.SCHED_RESET_ON_FORK


def realtime_permitted() -> bool:
    return os.geteuid() == 0  # CI and the bench run as root; a developer may not


def audio_thread_policies() -> dict[str, int]:
    """Scheduling policy of the threads that carry call audio in this (the rig's) process:
    the event loop (this thread) and pjsua2's ("pjsua", its RTP worker "media", the media
    "clock")."""
    policies = {"event loop": os.sched_getscheduler(0)}
    for thread in threading.enumerate():  # the gateway's own thread, by its Python name
        if thread.name == "pjsua" and thread.native_id is not None:
            policies["pjsua"] = os.sched_getscheduler(thread.native_id)
    for task in os.listdir("/proc/self/task"):  # pjlib's threads, by their kernel names
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/comm") as comm:
            name = comm.read().strip()
            if name in ("media", "clock"):
                policies[name] = os.sched_getscheduler(int(task))
    return policies


async def test_far_end_hangup_ends_the_handset_call(tmp_path):
    async with GatewayRig(tmp_path, modems=("eg25",)) as rig:
        rig.sims[0].far_end = FarEnd(answer_after_rings=1, hangup_after_s=1.0)
        alice = await rig.handset("101")
        mark = alice.mark()
        await th(alice.call, OUTSIDE)
        await th(alice.wait_state, "CONFIRMED", after=mark, timeout_s=10)
        ended = await th(alice.wait_state, "DISCONNECTED", after=mark, timeout_s=10)
        assert ended["code"] == 200  # a BYE from the gateway, not an error
        assert (await finished_record(rig, from_party="101")).result == "answered"
        await until(lambda: any("far end hung up" in r
                                for r in journal_reasons(rig, "call-ended")))


async def test_a_trunk_that_sends_no_audio_is_noted_on_the_call(tmp_path):
    """One-way audio, the commonest LTE voice fault: the modem's PCM port stays silent. The
    trunk's health says so; the call it happens on journals it under its own key."""
    async with GatewayRig(tmp_path, modems=("eg25",)) as rig:
        sim = rig.sims[0]
        sim.far_end = FarEnd(answer_after_rings=1)
        sim.faults.no_pcm = True
        alice = await rig.handset("101")
        mark = alice.mark()
        await th(alice.call, OUTSIDE)
        await th(alice.wait_state, "CONFIRMED", after=mark, timeout_s=10)
        await until(lambda: journal_reasons(rig, "call-audio-problem"), 10)
        (reason,) = journal_reasons(rig, "call-audio-problem")
        assert reason.endswith("audio problem on eg25-1 during this call: no-downlink")
        await th(alice.hangup)
        await until(lambda: idle(sim))


@pytest.mark.parametrize("modem", MODEMS)
async def test_busy_and_no_answer_get_486_and_480(tmp_path, modem):
    async with GatewayRig(tmp_path, modems=(modem,)) as rig:
        sim = rig.sims[0]
        alice = await rig.handset("101")
        results = {}
        for name, far in (("busy", FarEnd(busy=True)),
                          ("no-answer", FarEnd(answer_after_rings=None))):
            sim.far_end = far
            mark = alice.mark()
            await th(alice.call, OUTSIDE)
            ended = await th(alice.wait_state, "DISCONNECTED", after=mark, timeout_s=20)
            results[name] = ended["code"]
            await until(lambda: idle(sim))
        assert results == {"busy": 486, "no-answer": 480}
        await until(lambda: len(rig.records.recent(10)) == 2
                    and all(r.ended_at for r in rig.records.recent(10)))
        records = rig.records.recent(10)
        assert all(r.trunk == rig.trunks.trunks()[0].name for r in records)
        assert "busy" in [r.result for r in records]
        # The proxy closes its record as it relays the final answer; the gateway journals the
        # call's end as its session winds down, a moment later: wait for that, too.
        await until(lambda: (ended := journal_reasons(rig, "call-ended"))
                    and any("busy" in r for r in ended) and any("no-answer" in r for r in ended))


async def test_refused_number_and_no_trunk_get_their_answers(tmp_path):
    async with GatewayRig(tmp_path, modems=("eg25",)) as rig:
        sim = rig.sims[0]
        alice = await rig.handset("101")
        sim.far_end = FarEnd(reject=True)
        mark = alice.mark()
        await th(alice.call, OUTSIDE)
        ended = await th(alice.wait_state, "DISCONNECTED", after=mark, timeout_s=15)
        assert ended["code"] == 404
        sim.set_registration(3)  # denied: the trunk can only place emergency calls now
        trunk = rig.trunks.trunks()[0]
        await until(lambda: trunk.health().state is TrunkState.LIMITED, 10)
        mark = alice.mark()
        await th(alice.call, OUTSIDE)
        ended = await th(alice.wait_state, "DISCONNECTED", after=mark, timeout_s=10)
        # the gateway answers 503; the proxy passes it on as 500 (RFC 3261 16.7 step 6)
        assert ended["code"] in (500, 503)
        await until(lambda: len(rig.records.recent(10)) == 2
                    and all(r.ended_at for r in rig.records.recent(10)))
        assert sorted(r.result for r in rig.records.recent(10)) == ["failed", "rejected"]
        no_trunk = next(r for r in rig.records.recent(10) if r.result == "failed")
        assert no_trunk.trunk is None
        # journalled as the gateway's session winds down, after the proxy closed the record
        await until(lambda: any("no trunk" in r for r in journal_reasons(rig, "call-ended")))


async def test_the_gateways_no_trunk_answer_is_503_with_retry_after(tmp_path):
    """What the gateway itself answers the proxy (a UA on loopback in the proxy's place)."""
    async with GatewayRig(tmp_path, modems=("eg25",)) as rig:
        rig.sims[0].set_registration(3)
        trunk = rig.trunks.trunks()[0]
        await until(lambda: trunk.health().state is TrunkState.LIMITED, 10)
        alice = await rig.handset("101", register=False, direct=True)
        mark = alice.mark()
        await th(alice.call, f"sip:5551234567@127.0.0.1:{rig.gateway_port}")
        await th(alice.wait_state, "DISCONNECTED", after=mark, timeout_s=10)
        response = await th(alice.wait_event, "final", after=mark, timeout_s=5)
        assert response["code"] == 503
        assert response["headers"].get("retry-after") == ["30"]


async def test_trunks_are_taken_in_order_and_a_full_house_is_busy(tmp_path):
    async with GatewayRig(tmp_path, modems=("eg25", "sim7600")) as rig:
        for sim in rig.sims:
            sim.far_end = FarEnd(answer_after_rings=1)
        alice, bob, dan = [await rig.handset(e) for e in ("101", "102", "104")]
        first, second = rig.trunks.trunks()
        for handset in (alice, bob):
            mark = handset.mark()
            await th(handset.call, OUTSIDE)
            await th(handset.wait_state, "CONFIRMED", after=mark, timeout_s=10)
        assert [len(t.calls()) for t in (first, second)] == [1, 1]
        listing = await rig.command("gateway.calls")
        assert {r["from"]: r["trunk"] for r in listing["active"]} == {
            "101": first.name, "102": second.name}
        mark = dan.mark()
        await th(dan.call, OUTSIDE)
        ended = await th(dan.wait_state, "DISCONNECTED", after=mark, timeout_s=10)
        assert ended["code"] == 486


# -- SRTP --------------------------------------------------------------------------------------


async def assert_srtp_carries_the_far_end(handset, mark: int) -> None:
    """The handset's call since ``mark`` has SRTP media that decrypts to the far end's 600 Hz
    tone; as root, the packets on lo are seen to be encrypted too."""
    media = await th(handset.wait_event, "media", after=mark)
    assert media["srtp"] and media["local_crypto"]
    await asyncio.sleep(0.6)
    # it decrypts fine: the tone's level by the median (a loaded machine may drop a frame)
    assert (await th(handset.level, 600, 0.4))["median"] > 7000
    if can_capture():
        port = int(media["remote_rtp"].rsplit(":", 1)[1])
        verdict = describe_rtp(await th(capture_udp, port, 0.8))
        assert verdict.packets > 20 and verdict.looks_like_srtp(), verdict


async def test_tls_handset_call_carries_srtp_and_plain_rtp_is_refused_to_it(tmp_path):
    async with GatewayRig(tmp_path, modems=("eg25",), tls=True) as rig:
        rig.sims[0].far_end = FarEnd(answer_after_rings=1,
                                     audio=AudioFarEnd.tone_source(600.0, 8000))
        secure = await rig.handset("101", transport="tls", srtp="optional")
        mark = secure.mark()
        await th(secure.call, OUTSIDE)
        await th(secure.wait_state, "CONFIRMED", after=mark, timeout_s=10)
        await th(secure.tone, 1000)
        await assert_srtp_carries_the_far_end(secure, mark)
        await th(secure.hangup)

        plain = await rig.handset("102", transport="tls", srtp="off", sips=False)
        mark = plain.mark()
        await th(plain.call, OUTSIDE)
        refused = await th(plain.wait_state, "DISCONNECTED", after=mark, timeout_s=10)
        assert refused["code"] == 488
        assert not [e for e in plain.events[mark:] if e["event"] == "media"]


async def test_an_inbound_trunk_call_to_a_tls_handset_is_srtp_or_not_carried_at_all(tmp_path):
    """Never a downgrade, in the other direction too: a call arriving on a trunk rings a
    handset on TLS with SRTP; a TLS handset that answers without SRTP is refused (BYE) and the
    call goes on to the next target instead of reaching it in plain RTP."""
    async with GatewayRig(tmp_path, modems=("eg25",), tls=True) as rig:
        sim = rig.sims[0]
        # a desk phone on TLS registers sip:...;transport=tls (a sips: Contact: next test)
        secure = await rig.handset("102", transport="tls", srtp="optional", sips=False)
        far = FarEnd(audio=AudioFarEnd.tone_source(600.0, 8000))
        mark = secure.mark()
        sim.ring_in("+15551230000", far=far)
        await th(secure.wait_event, "incoming", after=mark, timeout_s=10)
        await th(secure.answer, 200)
        await th(secure.wait_state, "CONFIRMED", after=mark, timeout_s=10)
        await assert_srtp_carries_the_far_end(secure, mark)
        await th(secure.hangup)
        await until(lambda: idle(sim))
        await th(secure.stop)

        plain = await rig.handset("102", transport="tls", srtp="off", sips=False)
        fallback = await rig.handset("104")
        marks = plain.mark(), fallback.mark()
        sim.ring_in("+15551230001", far=FarEnd(audio=AudioFarEnd.tone_source(600.0, 8000)))
        await th(plain.wait_event, "incoming", after=marks[0], timeout_s=10)
        await th(plain.answer, 200)
        ended = await th(plain.wait_state, "DISCONNECTED", after=marks[0], timeout_s=10)
        assert ended["code"] in (200, 488)  # our BYE
        assert not answered_by_far_end(sim)  # the trunk was never answered for it
        await th(fallback.wait_event, "incoming", after=marks[1], timeout_s=10)
        await th(fallback.answer, 200)
        await th(fallback.wait_state, "CONFIRMED", after=marks[1], timeout_s=10)
        await until(lambda: answered_by_far_end(sim))
        await until(lambda: any("102" in r for r in journal_reasons(rig, "call-srtp-refused")))
        await until(lambda: any("answered by 104" in r
                                for r in journal_reasons(rig, "call-answered")))
        await th(fallback.hangup)
        assert (await finished_record(rig, from_party="+15551230001")).result == "answered"


async def test_an_inbound_trunk_call_reaches_a_tls_handset_that_registered_a_sips_contact(
        tmp_path):
    """pjsua on TLS registers a sips: Contact. Reached as sips: it refused the gateway's call
    (480, Warning 381 "SIPS Required": the gateway's Contact is sip:); the proxy reaches it
    as sip:...;transport=tls over its TLS connection instead, and the leg is SRTP."""
    async with GatewayRig(tmp_path, modems=("eg25",), tls=True) as rig:
        sim = rig.sims[0]
        handset = await rig.handset("102", transport="tls", srtp="optional", sips=True)
        mark = handset.mark()
        sim.ring_in("+15551230000", far=FarEnd(audio=AudioFarEnd.tone_source(600.0, 8000)))
        await th(handset.wait_event, "incoming", after=mark, timeout_s=10)
        await th(handset.answer, 200)
        await th(handset.wait_state, "CONFIRMED", after=mark, timeout_s=10)
        await assert_srtp_carries_the_far_end(handset, mark)
        await th(handset.hangup)
        assert (await finished_record(rig, from_party="+15551230000")).result == "answered"


@pytest.mark.skipif(os.geteuid() != 0, reason="capturing packets on lo needs root")
async def test_a_udp_handset_without_srtp_really_is_plain_rtp(tmp_path):
    """The capture's counter-check: the same measurement sees the tone in plain RTP."""
    async with GatewayRig(tmp_path, modems=("eg25",)) as rig:
        rig.sims[0].far_end = FarEnd(answer_after_rings=1)
        alice = await rig.handset("101")
        mark = alice.mark()
        await th(alice.call, OUTSIDE)
        await th(alice.wait_state, "CONFIRMED", after=mark, timeout_s=10)
        media = await th(alice.wait_event, "media", after=mark)
        await th(alice.tone, 1000)
        port = int(media["remote_rtp"].rsplit(":", 1)[1])
        verdict = describe_rtp(await th(capture_udp, port, 0.8))
        assert verdict.looks_like_plain_g711_tone(), verdict


# -- inbound -----------------------------------------------------------------------------------


@pytest.mark.parametrize("modem", MODEMS)
async def test_inbound_call_rings_the_target_with_caller_id_and_connects(tmp_path, modem):
    async with GatewayRig(tmp_path, modems=(modem,)) as rig:
        sim = rig.sims[0]
        bob = await rig.handset("102")
        far = FarEnd(audio=AudioFarEnd.tone_source(1000.0, 8000))  # talks until Bob hangs up
        mark = bob.mark()
        sim.ring_in("+15551230000", far=far)
        incoming = await th(bob.wait_event, "incoming", after=mark, timeout_s=10)
        assert "+15551230000" in incoming["from"]
        assert any("+15551230000" in v for v in incoming["headers"]["p-asserted-identity"])
        assert not answered_by_far_end(sim)  # the trunk is not answered before Bob
        await th(bob.answer, 200)
        await th(bob.wait_state, "CONFIRMED", after=mark, timeout_s=10)
        await th(bob.tone, 400)
        await asyncio.sleep(1.0)
        heard = await th(bob.level, 1000, 0.5)
        assert heard["median"] == pytest.approx(8000, rel=0.02) and heard["gaps"] <= 1
        assert far_level(far, 400) == pytest.approx(8000, rel=0.02)
        await th(bob.hangup)  # the answering handset hangs up: the trunk call ends too
        await until(lambda: idle(sim))
        record = await finished_record(rig, direction="inbound",
                                       trunk=rig.trunks.trunks()[0].name)
        assert (record.from_party, record.to_party, record.result) == (
            "+15551230000", "102", "answered")
        # One call, one record: the proxy leaves the gateway's record alone.
        assert [r.id for r in rig.records.recent(10) if "+15551230000" in r.from_party] == [
            record.id]


async def test_inbound_call_to_a_ring_group_and_a_caller_who_gives_up(tmp_path):
    """The SIM7600 line's route is ring group 600 (103 and 104, rung together by the proxy).
    A second caller hangs up while it rings: the handsets stop ringing, the call is missed."""
    directory = {**DIRECTORY, "inbound": [{"trunk": "sim7600-1", "target": "600"},
                                          *DIRECTORY["inbound"]]}
    async with GatewayRig(tmp_path, modems=("sim7600",), directory=directory) as rig:
        sim = rig.sims[0]
        carol, dan = await rig.handset("103"), await rig.handset("104")
        marks = carol.mark(), dan.mark()
        sim.ring_in("+15550001111", far=FarEnd(hangup_after_s=1.0))
        await th(carol.wait_event, "incoming", after=marks[0], timeout_s=10)
        await th(dan.wait_event, "incoming", after=marks[1], timeout_s=10)
        await th(dan.answer, 200)
        await th(dan.wait_state, "CONFIRMED", after=marks[1], timeout_s=10)
        await th(carol.wait_state, "DISCONNECTED", after=marks[0], timeout_s=10)  # cancelled
        await th(dan.wait_state, "DISCONNECTED", after=marks[1], timeout_s=10)
        answered = await finished_record(rig, direction="inbound", trunk="sim7600-1")
        assert (answered.to_party, answered.result) == ("600", "answered")

        await until(lambda: idle(sim))
        marks = carol.mark(), dan.mark()
        sim.ring_in("+15550002222", give_up_after_s=1.5)
        await th(carol.wait_event, "incoming", after=marks[0], timeout_s=10)
        ended = await th(carol.wait_state, "DISCONNECTED", after=marks[0], timeout_s=10)
        assert ended["code"] == 487  # the INVITE was cancelled when the caller gave up
        await until(lambda: (r := rig.record_for(from_party="+15550002222")) is not None
                    and r.ended_at is not None)
        missed = rig.record_for(from_party="+15550002222")
        assert missed.result == "no-answer" and "caller hung up" in missed.cause


async def test_unanswered_inbound_call_tries_the_fallback_then_is_recorded_missed(tmp_path):
    async with GatewayRig(tmp_path, modems=("eg25",),
                          gateway={"inbound_ring_timeout_s": 2.0}) as rig:
        bob, dan = await rig.handset("102"), await rig.handset("104")
        marks = bob.mark(), dan.mark()
        rig.sims[0].ring_in("+15550009999", far=FarEnd())
        await th(bob.wait_event, "incoming", after=marks[0], timeout_s=10)
        await th(dan.wait_event, "incoming", after=marks[1], timeout_s=10)  # the fallback
        await until(lambda: (r := rig.record_for(direction="inbound", trunk="eg25-1"))
                    is not None and r.ended_at is not None, 15)
        record = rig.record_for(direction="inbound", trunk="eg25-1")
        assert record.result == "no-answer" and record.cause.startswith("missed")
        assert "call-missed" in rig.journal_kinds()
        await until(lambda: idle(rig.sims[0]), 5)


async def test_a_trunk_call_while_the_proxy_is_down_ends_at_once_and_rings_once_it_is_back(
        tmp_path):
    """The SIP proxy is not running (it could not start, or stopped): a call from outside
    fails its ring at once (journalled, recorded) instead of timing out against nothing."""
    async with GatewayRig(tmp_path, modems=("eg25",)) as rig:
        sim = rig.sims[0]
        await rig.sip.__aexit__(None, None, None)
        rang_at = time.monotonic()
        sim.ring_in("+15550004444", far=FarEnd())
        await until(lambda: (r := rig.record_for(from_party="+15550004444")) is not None
                    and r.ended_at is not None, 10)
        assert time.monotonic() - rang_at < rig.gateway.config.inbound_ring_timeout_s
        [reason, *_] = journal_reasons(rig, "call-not-delivered")
        assert "the SIP proxy is not running" in reason
        await until(lambda: idle(sim), 10)

        await rig.sip.__aenter__()  # back on the same ports
        bob = await rig.handset("102")
        mark = bob.mark()
        sim.ring_in("+15550005555", far=FarEnd(hangup_after_s=1.0))
        await th(bob.wait_event, "incoming", after=mark, timeout_s=10)


# -- emergency ---------------------------------------------------------------------------------


async def test_emergency_call_preempts_a_busy_trunk_and_notifies_on_site(tmp_path):
    async with GatewayRig(tmp_path, modems=("eg25",)) as rig:
        sim = rig.sims[0]
        sim.far_end = FarEnd(answer_after_rings=1, audio=AudioFarEnd.tone_source(1000.0, 8000))
        alice, bob, carol = [await rig.handset(e) for e in ("101", "102", "103")]
        started: list[EmergencyCallStarted] = []
        rig.runtime.bus.subscribe(EmergencyCallStarted, started.append)
        bob_mark = bob.mark()
        await th(bob.call, OUTSIDE)
        await th(bob.wait_state, "CONFIRMED", after=bob_mark, timeout_s=10)
        alice_mark, carol_mark = alice.mark(), carol.mark()
        await th(alice.call, "sip:911@127.0.0.1")
        await asyncio.sleep(0.5)
        tone = await th(bob.level, 480, 0.3)  # the pre-emption tone (480+620 Hz bursts)
        assert tone["max"] > 1000
        ended = await th(bob.wait_state, "DISCONNECTED", after=bob_mark, timeout_s=10)
        assert ended["code"] == 200
        await th(alice.wait_state, "CONFIRMED", after=alice_mark, timeout_s=15)
        message = await th(carol.wait_event, "message", after=carol_mark, timeout_s=10)
        assert "101" in message["body"] and "Alice Ames" in message["body"]
        assert "1 Main St, Springfield, IL 62701 (floor 2, Reception)" in message["body"]
        ring = await th(carol.wait_event, "incoming", after=carol_mark, timeout_s=10)
        assert "EMERGENCY" in ring["from"] and "101" in ring["from"]
        await th(carol.answer, 200, ring["call"])
        await asyncio.sleep(0.8)
        assert (await th(carol.level, 1400, 0.5))["max"] > 1000  # the alert tone
        await th(alice.hangup)
        emergency = await finished_record(rig, direction="emergency")
        # never challenged, yet verified: it came over the flow Alice registered from
        assert emergency.emergency and emergency.from_party == "101"
        (alarm,) = started  # what sync turns into the cloud alert
        assert (alarm.extension, alarm.caller_verified, alarm.number) == ("101", True, "911")
        assert emergency.to_party == "911" and emergency.result == "answered"
        assert emergency.location == "1 Main St, Springfield, IL 62701 (floor 2, Reception)"
        assert emergency.trunk == "eg25-1"
        preempted = await finished_record(rig, from_party="102")
        assert preempted.trunk == "eg25-1" and preempted.result == "answered"
        await until(lambda: any("pre-empted" in r for r in journal_reasons(rig, "call-ended")))
        kinds = rig.journal_kinds()
        assert {"emergency-call", "emergency-notify", "call-preempted"} <= set(kinds)
        # the notification call to 103 is the appliance's own record, never a customer's call
        await until(lambda: (r := rig.record_for(direction="notification")) is not None
                    and r.ended_at is not None, 15)  # the alert plays for 8 s
        notified = rig.record_for(direction="notification")
        assert (notified.to_party, notified.result) == ("103", "answered")
        assert not [r for r in rig.records.recent(20) if r.direction == "inbound"]
        assert notified.id not in [r.id for r in rig.records.pending_upload(100)]


async def test_emergency_callback_rings_the_extension_that_called(tmp_path):
    async with GatewayRig(tmp_path, modems=("eg25",)) as rig:
        sim = rig.sims[0]
        sim.far_end = FarEnd(answer_after_rings=1)
        alice, bob = await rig.handset("101"), await rig.handset("102")
        mark = alice.mark()
        await th(alice.call, "sip:9911@127.0.0.1")  # with the outside prefix
        await th(alice.wait_state, "CONFIRMED", after=mark, timeout_s=10)
        await th(alice.hangup)
        await until(lambda: idle(sim))
        alice_mark, bob_mark = alice.mark(), bob.mark()
        sim.ring_in("+15559110000", far=FarEnd(hangup_after_s=1.0))
        incoming = await th(alice.wait_event, "incoming", after=alice_mark, timeout_s=10)
        assert "EMERGENCY CALLBACK" in incoming["from"]
        await th(alice.answer, 200)
        await th(alice.wait_state, "DISCONNECTED", after=alice_mark, timeout_s=10)
        assert not [e for e in bob.events[bob_mark:] if e["event"] == "incoming"]
        callback = await finished_record(rig, direction="inbound", trunk="eg25-1")
        assert callback.emergency and callback.to_party == "101"
        assert callback.result == "answered"
        assert "emergency-callback" in rig.journal_kinds()

        # a restart within the window keeps routing call-backs (from the call records)
        await rig.restart_gateway()
        await until(lambda: idle(sim))
        alice_mark = alice.mark()
        sim.ring_in("+15559110000", far=FarEnd(hangup_after_s=0.5))
        incoming = await th(alice.wait_event, "incoming", after=alice_mark, timeout_s=10)
        assert "EMERGENCY CALLBACK" in incoming["from"]


# -- the pjsua thread dying under a running gateway ------------------------------------------


class PumpFailsOnce:
    """The library's event pump raising once, as a pjsua2 internal error would (it throws
    from libHandleEvents); everything else goes to the real Endpoint."""

    def __init__(self, endpoint) -> None:
        self._endpoint = endpoint
        self._failed = False

    def libHandleEvents(self, msec: int) -> int:
        if not self._failed:
            self._failed = True
            raise RuntimeError("injected fault: libHandleEvents failed")
        return self._endpoint.libHandleEvents(msec)

    def __getattr__(self, name: str):
        return getattr(self._endpoint, name)


async def test_a_pjsua_thread_that_dies_while_running_is_journalled_shown_and_restarted(
        tmp_path):
    """Before, the gateway only logged it: its calls failed by SIP timeout for good, the
    proxy still sent it outside calls and nothing restarted it."""
    from appliance.runtime import SubsystemChanged

    async with GatewayRig(tmp_path, modems=("eg25",)) as rig:
        sim = rig.sims[0]
        sim.far_end = FarEnd(answer_after_rings=1, audio=AudioFarEnd.echo())
        changes = []
        rig.bus.subscribe(SubsystemChanged, lambda event: changes.append(event)
                          if event.name == "gateway" else None)
        alice = await rig.handset("101")
        mark = alice.mark()
        await th(alice.call, OUTSIDE)
        await th(alice.wait_state, "CONFIRMED", after=mark, timeout_s=10)
        await until(lambda: answered_by_far_end(sim))

        thread = rig.gateway.thread
        thread.post(lambda: setattr(thread, "endpoint", PumpFailsOnce(thread.endpoint)))
        await until(lambda: changes and not changes[0].up)
        down = changes[0]
        assert "SIP media agent crashed (RuntimeError: injected fault" in down.reason
        assert rig.sip.core.gateway_down is not None, "the proxy refuses outside calls at once"
        await until(lambda: idle(sim)), "the trunk call is hung up on the modem"

        # started again with backoff; shown and journalled meanwhile and after
        await until(lambda: rig.appliance.started("gateway"), timeout_s=15)
        assert changes[-1].up and rig.sip.core.gateway_down is None
        (crash,) = [e for e in rig.journal.query(subsystem="gateway", limit=100)
                    if e.kind == "crashed"]
        assert "injected fault" in crash.reason and "trying again in" in crash.reason
        assert "start-recovered" in rig.journal_kinds()
        (row,) = [(h, r) for name, h, r in rig.appliance.health_rows() if name == "gateway"]
        assert row[0].level.needs_attention and "crashed" in row[0].summary

        # and it carries calls again
        report = await rig.command("gateway.test_call", {"number": "5550100"})
        assert report["connected"] and report["audio_heard"], report


# -- test call -------------------------------------------------------------------------------


async def test_test_call_reports_connection_and_whether_audio_came_back(tmp_path):
    async with GatewayRig(tmp_path, modems=("eg25",)) as rig:
        sim = rig.sims[0]
        sim.far_end = FarEnd(answer_after_rings=1, audio=AudioFarEnd.echo())
        report = await rig.command("gateway.test_call", {"number": "5550100"})
        assert report["connected"] and report["audio_heard"], report
        assert report["trunk"] == rig.trunks.trunks()[0].name
        sim.far_end = FarEnd(answer_after_rings=1)  # answers, says nothing
        report = await rig.command("gateway.test_call", {"number": "5550100"})
        assert report["connected"] and not report["audio_heard"], report
        sim.far_end = FarEnd(busy=True)
        report = await rig.command("gateway.test_call", {"number": "5550100"})
        assert not report["connected"] and "busy" in report["error"]
        await until(lambda: all(c.state is CallState.ENDED
                                for t in rig.trunks.trunks() for c in t.calls()))


# -- echo --------------------------------------------------------------------------------------


async def test_echo_from_the_modem_is_cancelled_on_the_trunk_side(tmp_path):
    """The modem returns half of what it is sent (quirk 12: no echo profile). With the
    canceller the talker hears little of themself; turned off (same call path, next call),
    the echo is plainly there, so the measurement can tell the difference."""
    async with GatewayRig(tmp_path, modems=("eg25",)) as rig:
        sim = rig.sims[0]
        sim.faults.acoustic_echo = 0.5
        alice = await rig.handset("101")

        def cancellers():
            return [bridge.echo for session in rig.gateway.sessions.values()
                    if (bridge := getattr(session, "bridge", None)) is not None
                    and bridge.echo is not None]

        def converged() -> bool:
            return any(echo.erle_db() > 20.0 for echo in cancellers())

        def path_moves() -> list[tuple[int, ...]]:
            """What the canceller did when the echo path moved (our side shifted it, a slip
            was followed, the foreground was dropped or reset)."""
            return [tuple(echo.counters()[key] for key in (
                "shifts", "slips_followed", "foreground_dropped", "resets_from_foreground"))
                for echo in cancellers()]

        async def cancelled_level() -> float:
            """The level heard over a second in which the canceller stayed converged and the
            echo path stayed put. A loaded host slips the path now and then (the simulated
            modem's buffer runs dry, frames come bunched); the canceller follows within a few
            frames (test_echo.py), but a second that straddles a slip measures the slip, not
            the cancelling. A canceller that never settles for a second fails here."""
            windows = []
            for _ in range(5):
                await until(converged, 20.0)
                before = path_moves()
                heard = (await th(alice.listen, 0, 50))["mean"]  # the next second heard
                if converged() and path_moves() == before:
                    return heard
                windows.append((round(heard), before, path_moves()))
            raise AssertionError(f"the echo path never stayed put for a second: {windows}")

        async def echo_heard() -> float:
            sim.far_end = FarEnd(answer_after_rings=1)  # the far party says nothing
            mark = alice.mark()
            await th(alice.call, OUTSIDE)
            await th(alice.wait_state, "CONFIRMED", after=mark, timeout_s=10)
            sent_at = await th(alice.tone, "noise", 8000)
            assert sent_at is not None
            await asyncio.sleep(3.0)
            if rig.gateway.config.echo_canceller:
                # a loaded host slows convergence: wait for the canceller to say it has
                # converged (its own ERLE), not a fixed time, then listen for a second
                heard = await cancelled_level()
            else:
                heard = (await th(alice.level, 0, 1.0))["mean"]
            await th(alice.tone, None)
            await th(alice.hangup)
            await th(alice.wait_state, "DISCONNECTED", after=mark, timeout_s=10)
            await until(lambda: idle(sim))
            return heard

        with_canceller = await echo_heard()
        await rig.gateway.reconfigure(dataclasses.replace(
            rig.runtime.config, gateway=dataclasses.replace(rig.runtime.config.gateway,
                                                            echo_canceller=False)))
        without = await echo_heard()
        assert without > 800  # about half the talker's level comes back
        assert 20 * np.log10(without / max(with_canceller, 1.0)) > 15.0, (with_canceller,
                                                                          without)
