"""jbcd itself with the gateway on: a handset calls out through the real daemon to a simulated
LTE modem, 'jbc calls' shows the call with its trunk and duration, 'jbc test-call' (admin)
reports connect and audio, and technicians may look but not place test calls."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from jbcbench.audio_handset import AudioHandset
from jbcbench.daemon import DaemonProcess
from jbcbench.gateway_rig import DIRECTORY, free_port
from jbcbench.modems.farend import AudioFarEnd, FarEnd
from jbcbench.modems.lte import QUECTEL_EG25, LteModemSim
from jbcbench.modems.timing import SimTiming
from jbcbench.modems.usb import UsbBus

pytestmark = pytest.mark.integration


def config(bus: UsbBus, directory_file, sip_port: int, gateway_port: int) -> str:
    return f"""
[directory]
file = "{directory_file}"

[sip]
enabled = true
listen_address = "127.0.0.1"
udp_port = {sip_port}
tcp_port = {sip_port}
assume_wan_state = "outage"
gateway_uri = "sip:127.0.0.1:{gateway_port}"

[gateway]
enabled = true
test_call_listen_s = 1.0

[[trunks]]
name = "lte1"
kind = "lte"
usb_id = "2c7c:0125"
health_interval_s = 1.0
sysfs_root = "{bus.sysfs}"
dev_root = "{bus.dev}"
"""


async def jbc(daemon: DaemonProcess, *argv: str):
    return await asyncio.to_thread(daemon.cli, *argv)


async def test_jbcd_bridges_a_handset_to_the_lte_modem_and_jbc_shows_it(tmp_path):
    bus = UsbBus(tmp_path / "bench")
    sim = LteModemSim(bus, profile=QUECTEL_EG25, timing=SimTiming.fast(boot_s=1.0))
    directory_file = tmp_path / "directory.json"
    directory_file.write_text(json.dumps(DIRECTORY))
    sip_port, gateway_port = free_port(), free_port()
    async with sim:
        (tmp_path / "jbcd").mkdir()
        daemon = DaemonProcess(tmp_path / "jbcd",
                               config(bus, directory_file, sip_port, gateway_port))
        await asyncio.to_thread(daemon.start)
        alice = None
        try:
            deadline = time.monotonic() + 20
            while True:
                status = json.loads((await jbc(daemon, "calls", "--json")).stdout)
                if status["trunk"]["trunks"] and \
                        status["trunk"]["trunks"][0]["state"] == "ready":
                    break
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.3)
            alice = AudioHandset("alice", user="101", password="pw-101", register=True,
                                 proxy=f"sip:127.0.0.1:{sip_port};lr")
            await asyncio.to_thread(alice.start)
            await asyncio.to_thread(alice.wait_event, "registered", timeout_s=10)
            sim.far_end = FarEnd(answer_after_rings=1,
                                 audio=AudioFarEnd.tone_source(1000.0, 8000))
            mark = alice.mark()
            await asyncio.to_thread(alice.call, "sip:95551234567@127.0.0.1")
            await asyncio.to_thread(alice.wait_state, "CONFIRMED", after=mark, timeout_s=15)
            await asyncio.sleep(1.5)
            heard = await asyncio.to_thread(alice.level, 1000, 0.5)
            assert heard["median"] == pytest.approx(8000, rel=0.02)

            shown = await jbc(daemon, "calls")
            assert shown.returncode == 0, shown.stderr
            assert all(len(line) <= 80 for line in shown.stdout.splitlines()), shown.stdout
            row = next(line for line in shown.stdout.splitlines() if "5551234567" in line
                       and "lte1" in line)
            assert "active" in row and "PCMU" in row
            listing = json.loads((await jbc(daemon, "calls", "--json")).stdout)
            (active,) = listing["trunk"]["active"]
            assert active["trunk"] == "lte1" and active["duration_s"] >= 1.0

            await asyncio.to_thread(alice.hangup)
            await asyncio.sleep(1.0)
            shown = await jbc(daemon, "calls", "--recent", "5")
            assert "lte1" in shown.stdout and "answered" in shown.stdout

            # technicians may look, only admins test (the control layer enforces roles);
            # each test call is journalled with who ran it
            offered = {c["name"]: c["role"] for c in daemon.call("commands")["commands"]}
            assert offered["gateway.calls"] == "technician"
            assert offered["gateway.test_call"] == "admin"
            sim.far_end = FarEnd(answer_after_rings=1, audio=AudioFarEnd.echo())
            tested = await jbc(daemon, "test-call", "5550100", "--trunk", "lte1")
            assert tested.returncode == 0, tested.stdout + tested.stderr
            assert "connected" in tested.stdout and "audio heard back: yes" in tested.stdout
            sim.far_end = FarEnd(busy=True)
            failed = await jbc(daemon, "test-call", "5550100")
            assert failed.returncode == 1 and "NOT connected" in failed.stdout
            unknown = await jbc(daemon, "test-call", "5550100", "--trunk", "nope")
            assert unknown.returncode == 1 and "no trunk named" in unknown.stderr
            events = json.loads((await jbc(daemon, "events", "--json")).stdout)
            runs = [e for e in events if e["kind"] == "technician-action"
                    and e["details"]["command"] == "gateway.test_call"]
            assert runs and all(e["actor"] for e in runs)
        finally:
            if alice is not None:
                await asyncio.to_thread(alice.stop)
            await asyncio.to_thread(daemon.stop)
        assert "Traceback" not in daemon.log(), daemon.log()
