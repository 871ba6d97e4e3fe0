"""The real jbcd with one trunk's modem absent, then present, then gone, beside a healthy
analog trunk: a missing device is not a config error (issue 13 finding 1), the technician
passthrough sends one command and never a call (finding 2), and a gone port leaves no stale
SIM, signal or operator behind (finding 8)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import pytest

from jbcbench.daemon import REPO_ROOT, DaemonProcess
from jbcbench.modems.lte import QUECTEL_EG25, LteModemSim
from jbcbench.modems.timing import SimTiming
from jbcbench.modems.usb import UsbBus
from jbcbench.modems.v253 import USR_5637, V253ModemSim

from .conftest import jbc, trunk_config, wait_trunks

pytestmark = pytest.mark.integration


async def test_an_absent_modem_degrades_its_trunk_and_nothing_else(tmp_path):
    bus = UsbBus(tmp_path / "bench")
    by_id = tmp_path / "serial" / "by-id"
    by_id.mkdir(parents=True)
    link = by_id / "usb-Quectel_EG25-if02-port0"  # not there yet: the modem is unplugged
    lte = LteModemSim(bus, profile=QUECTEL_EG25, timing=SimTiming.fast())
    pots = V253ModemSim(bus, profile=USR_5637, timing=SimTiming.fast())
    async with lte, pots:
        (tmp_path / "jbcd").mkdir()
        daemon = DaemonProcess(tmp_path / "jbcd", trunk_config(bus, lte_at_port=link))
        check = await asyncio.to_thread(subprocess.run, [*daemon.command(), "--check-config"],
                                        capture_output=True, text=True, cwd=REPO_ROOT)
        assert check.returncode == 0, check.stderr  # ExecStartPre: no exit 78
        await asyncio.to_thread(daemon.start)
        try:
            found = await wait_trunks(daemon, lambda ts: ts["pots1"]["state"] == "ready",
                                      by_name=True)
            assert found["lte1"]["state"] in ("starting", "down"), found["lte1"]
            assert str(link) in found["lte1"]["reason"]
            status = await jbc(daemon, "status", "--json")
            assert status.stdout and json.loads(status.stdout)  # the rest of jbcd serves

            # a reload while the device is away (its by-id link vanishes on every reset)
            daemon.write_config(trunk_config(bus, lte_at_port=link))
            daemon.signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert daemon.proc.poll() is None

            # the modem appears: the trunk finds it by itself
            link.symlink_to(lte.path("at"))
            found = await wait_trunks(daemon, lambda ts: ts["lte1"]["state"] == "ready",
                                      by_name=True)
            assert found["lte1"]["operator"] == "JBC Mobile"

            # finding 2: one command per request, never a call
            for line in ("AT+CSQ\r\nATD112;", "AT+CSQ;D112;", "ATD112;", "AT+CSQ;+CHUP"):
                refused = await jbc(daemon, "modem", "lte1", "at", line)
                assert refused.returncode == 1, refused
                assert "not sent" in refused.stderr, refused.stderr
            answer = await jbc(daemon, "modem", "lte1", "at", "AT+CSQ")
            assert answer.returncode == 0 and answer.stdout.split() == ["+CSQ:", "20,99", "OK"]
            assert not [c for c in lte.commands_seen if "D1" in c.upper()], lte.commands_seen

            # finding 8: the port goes: no old SIM, signal or operator on show
            lte.unplug()
            found = await wait_trunks(daemon, lambda ts: ts["lte1"]["state"] != "ready",
                                      by_name=True)
            lte1 = found["lte1"]
            assert (lte1["sim"], lte1["signal_dbm"], lte1["operator"], lte1["registration"]) \
                == (None, None, None, None), lte1
            assert found["pots1"]["state"] == "ready"
        finally:
            await asyncio.to_thread(daemon.stop)
        assert daemon.proc.returncode == 0, daemon.log()
        assert "Traceback" not in daemon.log(), daemon.log()
