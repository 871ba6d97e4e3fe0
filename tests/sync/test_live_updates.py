"""Bundles reach the rest of the appliance live; polling follows the WAN state."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from appliance.directory.config import DirectoryConfig
from appliance.directory.events import DirectoryUpdated
from appliance.trunks.config import TrunkConfig
from appliance.wan.events import WanState, WanStateChanged
from jbcbench.fake_cloud import make_directory
from jbcbench.inprocess import InProcessAppliance

from .conftest import sync_config


@pytest.mark.integration
async def test_new_bundle_is_announced_live_with_new_credentials(tmp_path, cloud):
    cloud.publish(make_directory(1))
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, cloud.new_token())) as app:
        directory_service = app.by_name("directory")
        assert (await app.call("sync.now"))["ok"]
        seen: list[DirectoryUpdated] = []
        app.bus.subscribe(DirectoryUpdated, seen.append)
        cloud.publish(make_directory(2))
        assert (await app.call("sync.now"))["ok"]
        assert app.by_name("directory") is directory_service  # same object: nothing restarted
        assert [(e.previous_version, e.directory.version) for e in seen] == [(1, 2)]
        device = seen[0].directory.device_for_username("101")
        assert device.password == "pw-101-v2"
        assert directory_service.current.device_for_username("101").password != "pw-101-v1"
        assert seen[0].source == "cloud bundle v2"


@pytest.mark.integration
async def test_stored_bundle_wins_over_the_local_file(tmp_path, cloud):
    local = tmp_path / "directory.json"
    local.write_text(json.dumps(make_directory(99, site="local")))
    cloud.publish(make_directory(3))
    sections = {"sync": sync_config(cloud, cloud.new_token()),
                "directory": DirectoryConfig(file=local)}
    async with InProcessAppliance(tmp_path / "state", directory=sections["directory"]) as app:
        assert app.by_name("directory").current.version == 99  # no bundle yet: the file
    async with InProcessAppliance(tmp_path / "state", **sections) as app:
        assert (await app.call("sync.now"))["ok"]
        assert app.by_name("directory").current.version == 3
        await app.reconfigure(directory=DirectoryConfig(file=local))  # SIGHUP
        assert app.by_name("directory").current.version == 3
    async with InProcessAppliance(tmp_path / "state", **sections) as app:
        directory = app.by_name("directory")
        assert (directory.current.version, directory.source) == (3, "cloud bundle v3")


@pytest.mark.integration
async def test_polls_while_online_conditionally_and_not_during_an_outage(tmp_path, cloud):
    cloud.publish(make_directory(1))
    config = sync_config(cloud, cloud.new_token(), poll_interval_s=0.2,
                         heartbeat_interval_s=60.0)
    async with InProcessAppliance(tmp_path, sync=config) as app:
        app.bus.publish(WanStateChanged(previous=WanState.STARTING, state=WanState.ONLINE,
                                        cause="probes ok", since=0.0))
        await asyncio.sleep(1.0)
        polls = [s for op, _, s in cloud.requests if op == "getBundle"]
        assert polls[0] == 200 and len(polls) >= 3 and set(polls[1:]) == {304}
        app.bus.publish(WanStateChanged(previous=WanState.ONLINE, state=WanState.OUTAGE,
                                        cause="all cloud regions unreachable", since=0.0))
        await asyncio.sleep(0.1)
        count = len([op for op, _, _ in cloud.requests if op == "getBundle"])
        await asyncio.sleep(0.6)
        assert len([op for op, _, _ in cloud.requests if op == "getBundle"]) == count
        assert cloud.heartbeats[-1]["state"] == "failover"


@pytest.mark.integration
async def test_heartbeat_reports_state_versions_trunks_and_pending(tmp_path, cloud):
    cloud.publish(make_directory(5))
    trunk = TrunkConfig(name="lte1", kind="lte", at_port="/dev/null")
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, cloud.new_token()),
                                  trunks=(trunk,)) as app:
        assert (await app.call("sync.now"))["ok"]
        app.bus.publish(WanStateChanged(previous=WanState.ONLINE, state=WanState.DEGRADED,
                                        cause="2 of 3 probes failing", since=123.0))
        for _ in range(100):
            if cloud.heartbeats[-1]["state"] == "degraded":
                break
            await asyncio.sleep(0.02)
        beat = cloud.heartbeats[-1]
        assert dataclasses.asdict(trunk)["name"] == beat["trunks"][0]["name"]
        assert beat["state"] == "degraded" and beat["wan_state"] == "degraded"
        assert beat["cause"] == "2 of 3 probes failing" and beat["since"] == 123.0
        assert beat["versions"]["directory"] == 5 and beat["versions"]["firmware"]
        (reported,) = beat["trunks"]  # the trunk pool's real health, in the cloud API's shape
        assert (reported["name"], reported["kind"]) == ("lte1", "lte")
        assert reported["state"] in ("degraded", "down") and "AT port" in reported["detail"]
        assert set(beat["pending"]) == {"events", "call_records", "drill_reports"}
        assert beat["uplink"] == "wan"


@pytest.mark.integration
async def test_rollback_restores_the_previous_bundle_and_keeps_the_floor(tmp_path, cloud):
    cloud.publish(make_directory(1))
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, cloud.new_token())) as app:
        assert (await app.call("sync.now"))["ok"]
        cloud.publish(make_directory(2))
        assert (await app.call("sync.now"))["ok"]
        assert await app.call("sync.rollback") == {"version": 1}
        directory = app.by_name("directory")
        assert directory.current.device_for_username("101").password == "pw-101-v1"
        # The cloud still offers v2: not newer than what was applied, so it stays rolled back.
        await app.call("sync.now")
        assert directory.current.version == 1
        cloud.publish(make_directory(3))
        assert (await app.call("sync.now"))["ok"]
        assert directory.current.version == 3
    async with InProcessAppliance(tmp_path) as app:
        assert app.by_name("directory").current.version == 3


@pytest.mark.parametrize("kind", ["fifo", "deep", "huge"])
def test_a_hostile_local_directory_file_is_refused_at_once(tmp_path, kind):
    import os

    from appliance.directory.model import DirectoryError
    from appliance.directory.service import load_directory_file

    path = tmp_path / "directory.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "deep":
        path.write_text('{"version": 1, "site": "x", "extensions": ' + "[" * 5000 + "]" * 5000
                        + "}")
    else:
        with open(path, "wb") as file:
            file.truncate(100 * 1024 * 1024)
    with pytest.raises(DirectoryError) as refused:
        load_directory_file(path)
    words = {"fifo": "not a regular file", "deep": "nested deeper", "huge": "the limit is"}
    assert words[kind] in str(refused.value)
