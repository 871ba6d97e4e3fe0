"""A full drill cut short by a restart never leaves the site's failover forced for good."""

from __future__ import annotations

import os

import pytest

from appliance.wan.config import WanConfig, WanTargetConfig
from jbcbench.inprocess import InProcessAppliance

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="probes bind to a device: needs "
                                 "CAP_NET_RAW")]

WAN = WanConfig(interface="lo", targets=(
    WanTargetConfig(name="local", role="cloud", region="here", kind="icmp",
                    address="127.0.0.1"),))


async def test_a_forced_failover_left_by_a_full_drill_is_released_at_start(tmp_path):
    async with InProcessAppliance(tmp_path, wan=WAN) as app:
        await app.call("failover.force", {"reason": "full fire drill 1234"})
        assert (await app.call("wan.status"))["state"] == "forced"
    # jbcd stopped in the middle of the drill: the WAN monitor resumes the forced failover,
    # and the drill service releases it since no drill holds it any more
    async with InProcessAppliance(tmp_path, wan=WAN) as app:
        assert (await app.call("wan.status"))["state"] != "forced"
        assert app.events(kind="failover-released", subsystem="drill")


async def test_a_failover_forced_by_a_person_stays_forced(tmp_path):
    async with InProcessAppliance(tmp_path, wan=WAN) as app:
        await app.call("failover.force", {"reason": "storm coming"})
    async with InProcessAppliance(tmp_path, wan=WAN) as app:
        assert (await app.call("wan.status"))["state"] == "forced"
