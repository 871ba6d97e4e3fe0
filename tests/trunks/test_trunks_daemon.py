"""jbcd with simulated modems attached: 'jbc trunks', the admin modem passthrough, the
journal, and a reload that removes a trunk. The simulators run in this test's event loop;
the daemon finds them by USB identity in the sysfs tree they publish."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from jbcbench.daemon import DaemonProcess
from jbcbench.modems.lte import QUECTEL_EG25, LteModemSim
from jbcbench.modems.timing import SimTiming
from jbcbench.modems.usb import UsbBus
from jbcbench.modems.v253 import USR_5637, V253ModemSim

from .conftest import jbc, trunk_config, wait_trunks

pytestmark = pytest.mark.integration


async def test_trunks_through_jbcd_and_jbc(tmp_path):
    bus = UsbBus(tmp_path / "bench")
    lte = LteModemSim(bus, profile=QUECTEL_EG25, timing=SimTiming.fast())
    pots = V253ModemSim(bus, profile=USR_5637, timing=SimTiming.fast())
    async with lte, pots:
        (tmp_path / "jbcd").mkdir()
        daemon = DaemonProcess(tmp_path / "jbcd", trunk_config(bus))
        await asyncio.to_thread(daemon.start)
        try:
            trunks = await wait_trunks(daemon, lambda ts: all(t["state"] == "ready"
                                                              for t in ts))
            assert [(t["name"], t["kind"]) for t in trunks] == [("lte1", "lte"),
                                                               ("pots1", "voice-modem")]
            lte1 = trunks[0]
            assert (lte1["operator"], lte1["signal_dbm"], lte1["ims"]) == ("JBC Mobile", -73,
                                                                           "ready")
            assert trunks[1]["details"]["codec"] == "133 LINEAR 16"

            table = await jbc(daemon, "trunks")
            assert table.returncode == 0, table.stderr
            assert all(len(line) <= 80 for line in table.stdout.splitlines())
            assert "lte1" in table.stdout and "JBC Mobile" in table.stdout

            answer = await jbc(daemon, "modem", "lte1", "at", "AT+CSQ")
            assert answer.returncode == 0, answer.stderr
            assert answer.stdout.split() == ["+CSQ:", "20,99", "OK"]
            failed = await jbc(daemon, "modem", "lte1", "at", "AT+NOSUCH")
            assert failed.returncode == 1 and "ERROR" in failed.stdout

            # a call is up (ringing in): the passthrough is refused unless forced
            lte.ring_in("+15551234567")
            await wait_trunks(daemon, lambda ts: ts[0]["calls"])
            refused = await jbc(daemon, "modem", "lte1", "at", "AT")
            assert refused.returncode == 1 and "--force" in refused.stderr
            forced = await jbc(daemon, "modem", "lte1", "at", "AT", "--force")
            assert forced.returncode == 0 and forced.stdout.strip() == "OK"
            lte.remote_hangup()

            # a trunk goes down: journalled with the reason, and 'jbc trunks' exits 1
            lte.set_registration(3)
            trunks = await wait_trunks(daemon, lambda ts: ts[0]["state"] == "limited")
            assert (await jbc(daemon, "trunks")).returncode == 1
            events = json.loads((await jbc(daemon, "events", "--json")).stdout)
            reasons = [e["reason"] for e in events if e["subsystem"] == "trunks"]
            assert any(r.startswith("lte1: limited: not registered") for r in reasons)
            modem_runs = [e for e in events if e["kind"] == "technician-action"
                          and e["details"]["command"] == "trunks.at"]
            assert len(modem_runs) == 4 and all(e["actor"] for e in modem_runs)
            assert modem_runs[0]["details"]["args"]["command"] == "AT+CSQ"
            lte.set_registration(1)
            await wait_trunks(daemon, lambda ts: ts[0]["state"] == "ready")

            # reload without the analog line: it is stopped and gone from the list
            daemon.write_config(trunk_config(bus, with_pots=False))
            daemon.signal(signal.SIGHUP)
            await wait_trunks(daemon, lambda ts: [t["name"] for t in ts] == ["lte1"])
        finally:
            await asyncio.to_thread(daemon.stop)
        assert "Traceback" not in daemon.log(), daemon.log()
