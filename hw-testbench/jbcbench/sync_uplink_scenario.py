"""Scenario run inside the appliance's namespace: heartbeat over the WAN, then the WAN fails and
the failover heartbeat, and the alert of an emergency call made then, must leave through the
backup uplink's policy route.

    ip netns exec APP python -m jbcbench.sync_uplink_scenario '<json settings>'

Settings: cloud_url, ca_file, signing_public_key, token, backup_interface, backup_gateway,
wan_down_command (argv list run to cut the WAN), state_dir. Prints one JSON object:
the heartbeat results and the policy rules seen while in failover and after stopping.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
import time

import jbcbench  # noqa: F401 - puts this checkout's appliance package on the path
from appliance.gateway.events import EmergencyCallStarted
from appliance.sync.config import SyncConfig
from appliance.wan.events import WanState, WanStateChanged
from jbcbench.inprocess import InProcessAppliance


def _rules() -> list[str]:
    out = subprocess.run(["ip", "-4", "rule", "show"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


async def main(settings: dict) -> dict:
    config = SyncConfig(cloud_url=settings["cloud_url"],
                        ca_file=pathlib.Path(settings["ca_file"]),
                        signing_public_key=settings["signing_public_key"],
                        enrollment_token=settings["token"], request_timeout_s=3.0,
                        backup_interface=settings["backup_interface"],
                        backup_gateway=settings["backup_gateway"], retry_min_s=0.2,
                        retry_max_s=1.0)
    result: dict = {}
    async with InProcessAppliance(pathlib.Path(settings["state_dir"]), sync=config) as app:
        online = await app.call("sync.now")
        result["online"] = {"ok": online["ok"], "problem": online.get("problem"),
                            "heartbeat": online["status"]["last_heartbeat"]}
        subprocess.run(settings["wan_down_command"], check=True)  # noqa: ASYNC221 - instant
        app.bus.publish(WanStateChanged(previous=WanState.ONLINE, state=WanState.OUTAGE,
                                        cause="carrier lost on WAN", since=time.time()))
        failover = await app.call("sync.now")
        result["failover"] = {"ok": failover["ok"], "problem": failover.get("problem"),
                              "heartbeat": failover["status"]["last_heartbeat"]}
        # An emergency call during the outage: its alert must leave by the backup uplink too.
        app.bus.publish(EmergencyCallStarted(call="c1", extension="101", caller_verified=True,
                                             number="911", location=None,
                                             started_at=time.time()))
        for _ in range(500):
            delivered = app.events("emergency-alert-delivered") + app.events(
                "emergency-alert-failed")
            if delivered:
                result["alert"] = {"kind": delivered[0].kind, **delivered[0].details}
                break
            await asyncio.sleep(0.02)
        result["rules_in_failover"] = _rules()
    result["rules_after_stop"] = _rules()
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
