"""Handset -> SIP proxy -> gateway, with no trunk in service: what the gateway refuses and how,
and what it still does (on-site notification of an emergency call that found no line).

Real parts: the registrar/proxy subsystem (UDP, TCP, TLS), the gateway's pjsua2 agent,
pjsua2 handsets in their own processes (see ``jbcbench/gateway_rig.py``).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from jbcbench.gateway_rig import GatewayRig

pytestmark = pytest.mark.integration

OUTSIDE = "sip:95551234567@127.0.0.1"


async def th(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


async def until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_no_trunk_is_503_with_retry_after_at_the_gateway_and_recorded(tmp_path):
    async with GatewayRig(tmp_path, modems=()) as rig:
        alice = await rig.handset("101")
        mark = alice.mark()
        await th(alice.call, OUTSIDE)
        ended = await th(alice.wait_state, "DISCONNECTED", after=mark, timeout_s=10)
        assert ended["code"] == 500  # the proxy passes a 503 on as 500 (RFC 3261 16.7)
        await until(lambda: (r := rig.record_for(from_party="101")) is not None
                    and r.ended_at is not None)
        record = rig.record_for(from_party="101")
        assert (record.direction, record.result, record.trunk) == ("outbound", "failed", None)
        assert len(rig.records.recent(10)) == 1  # the proxy's record; the gateway made none

        # what the gateway itself answered (a UA on loopback in the proxy's place)
        direct = await rig.handset("102", register=False, direct=True)
        mark = direct.mark()
        await th(direct.call, f"sip:5551234567@127.0.0.1:{rig.gateway_port}")
        final = await th(direct.wait_event, "final", after=mark, timeout_s=10)
        assert final["code"] == 503 and final["headers"]["retry-after"] == ["30"]
        assert any("no trunks are configured" in w for w in final["headers"]["warning"])


async def test_incomplete_and_undiallable_numbers(tmp_path):
    async with GatewayRig(tmp_path, modems=()) as rig:
        direct = await rig.handset("101", register=False, direct=True)
        for number, status in (("55512", 484), ("1234567890123456789", 404)):
            mark = direct.mark()
            await th(direct.call, f"sip:{number}@127.0.0.1:{rig.gateway_port}")
            final = await th(direct.wait_event, "final", after=mark, timeout_s=10)
            assert final["code"] == status, number


async def test_a_tls_handset_offering_plain_rtp_is_refused_never_downgraded(tmp_path):
    async with GatewayRig(tmp_path, modems=(), tls=True) as rig:
        plain = await rig.handset("101", transport="tls", srtp="off")
        mark = plain.mark()
        await th(plain.call, OUTSIDE)
        ended = await th(plain.wait_state, "DISCONNECTED", after=mark, timeout_s=10)
        assert ended["code"] == 488
        assert not [e for e in plain.events[mark:] if e["event"] == "media"]
        await until(lambda: any("no SRTP" in e.reason for e in rig.journal.query(
            subsystem="gateway", limit=100) if e.kind == "call-ended"))


async def test_an_emergency_call_without_any_line_still_alerts_the_site(tmp_path):
    async with GatewayRig(tmp_path, modems=()) as rig:
        alice, carol = await rig.handset("101"), await rig.handset("103")
        carol_mark = carol.mark()
        await th(alice.call, "sip:911@127.0.0.1")
        message = await th(carol.wait_event, "message", after=carol_mark, timeout_s=10)
        # the proxy routes emergency calls even unauthenticated: the message says so
        assert "EMERGENCY CALL: ext 101 (Alice Ames" in message["body"]
        assert "1 Main St, Springfield, IL 62701 (floor 2, Reception)" in message["body"]
        ring = await th(carol.wait_event, "incoming", after=carol_mark, timeout_s=10)
        assert "EMERGENCY 911" in ring["from"]
        await until(lambda: (r := rig.record_for(direction="emergency")) is not None
                    and r.ended_at is not None)
        record = rig.record_for(direction="emergency")
        assert record.emergency and record.result == "failed"
        assert record.location == "1 Main St, Springfield, IL 62701 (floor 2, Reception)"
