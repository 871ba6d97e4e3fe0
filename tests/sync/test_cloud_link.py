"""Enrolment, bundle apply, heartbeat and upload against the fake cloud, end to end."""

from __future__ import annotations

import asyncio
import stat

import pytest

from appliance.wan.events import WanState, WanStateChanged
from jbcbench.fake_cloud import make_directory
from jbcbench.inprocess import InProcessAppliance

from .conftest import sync_config


@pytest.mark.integration
async def test_first_start_enrols_with_the_token_and_applies_the_bundle(tmp_path, cloud):
    cloud.publish(make_directory(7))
    token = cloud.new_token()
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, token)) as app:
        result = await app.call("sync.now")
        assert result["ok"], result
        status = result["status"]
        assert status["enrolled"] and status["device_id"] in cloud.devices
        assert status["directory_version"] == 7
        assert app.by_name("directory").current.version == 7
        assert [e.kind for e in app.events(subsystem="sync")][:2] == ["enrolled",
                                                                      "bundle-applied"]
        assert cloud.heartbeats[-1]["state"] == "starting"
        assert token not in cloud.tokens  # used up
    identity = tmp_path / "identity"
    for path in identity.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(identity.stat().st_mode) == 0o700


@pytest.mark.integration
async def test_unconfigured_sync_starts_and_says_so(tmp_path):
    async with InProcessAppliance(tmp_path) as app:
        health = app.by_name("sync").health()
        assert health.level == "disabled"
        assert "not configured" in health.summary
        status = await app.call("sync.status")
        assert status["configured"] is False


@pytest.mark.integration
async def test_recovery_resyncs_at_once_and_uploads_the_outage(tmp_path, cloud):
    cloud.publish(make_directory(1))
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, cloud.new_token(),
                                                              poll_interval_s=3600)) as app:
        assert (await app.call("sync.now"))["ok"]
        records = app.by_name("sync").call_records
        for n in range(30):
            call = records.start(direction="outbound", from_party="101",
                                 to_party=f"+1555000{n:04d}", trunk="lte1")
            records.ended(call, result="answered", cause="200 OK / BYE")
        cloud.publish(make_directory(2))
        app.bus.publish(WanStateChanged(previous=WanState.OUTAGE, state=WanState.RECOVERING,
                                        cause="cloud reachable again",
                                        since=app.runtime.started_at))
        for _ in range(250):
            if app.events("recovery-synced") and cloud.heartbeats[-1]["state"] == "failover":
                break
            await asyncio.sleep(0.02)
        assert app.events("recovery-synced")
        assert app.by_name("directory").current.version == 2
        assert len(cloud.call_records) == 30
        assert cloud.heartbeats[-1]["state"] == "failover"


@pytest.mark.integration
async def test_each_recovery_reports_its_own_start(tmp_path, cloud):
    cloud.publish(make_directory(1))
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, cloud.new_token(),
                                                              poll_interval_s=3600)) as app:
        assert (await app.call("sync.now"))["ok"]
        sync = app.by_name("sync")
        for since in (app.runtime.started_at, app.runtime.started_at + 100.0):
            app.bus.publish(WanStateChanged(previous=WanState.OUTAGE,
                                            state=WanState.RECOVERING,
                                            cause="cloud reachable again", since=since))
            for _ in range(250):
                if (sync.last_recovery or {}).get("since") == since:
                    break
                await asyncio.sleep(0.02)
            assert sync.last_recovery["since"] == since
            assert sync.last_recovery["uploads_confirmed_s"] is not None


@pytest.mark.integration
async def test_certificate_is_renewed_before_it_expires(tmp_path, cloud):
    cloud.faults.certificate_lifetime_s = 3600
    config = sync_config(cloud, cloud.new_token(), renew_before_s=7200)
    async with InProcessAppliance(tmp_path, sync=config) as app:
        assert (await app.call("sync.now"))["ok"]
        sync = app.by_name("sync")
        enrolment = sync.identity.enrolment()
        serials = cloud.devices[enrolment.device_id].serials
        assert len(serials) == 2 and enrolment.serial == serials[-1]
        assert app.events("certificate-renewed")
        # Once renewed with a long life, no more renewals.
        cloud.faults.certificate_lifetime_s = 86400 * 365
        assert (await app.call("sync.now"))["ok"]
        assert len(cloud.devices[enrolment.device_id].serials) == 3
        assert (await app.call("sync.now"))["ok"]
        assert len(cloud.devices[enrolment.device_id].serials) == 3
        assert not (tmp_path / "identity" / "pending.key").exists()


@pytest.mark.integration
async def test_a_used_enrolment_token_is_not_tried_again(tmp_path, cloud):
    token = cloud.new_token()
    cloud.tokens.pop(token)  # somebody used it already
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, token)) as app:
        result = await app.call("sync.now")
        assert not result["ok"]
        assert app.events("enrolment-refused")
        before = len(cloud.requests)
        result = await app.call("sync.now")
        assert "refused before" in result["problem"]
        assert len(cloud.requests) == before
        assert app.by_name("sync").health().level == "warning"


@pytest.mark.integration
async def test_a_failing_renewal_does_not_stop_the_link_while_the_certificate_works(
        tmp_path, cloud):
    cloud.faults.certificate_lifetime_s = 10 * 86400  # inside the 30-day renewal window
    cloud.faults.status = 503
    cloud.faults.status_operations = frozenset({"renewCertificate"})
    cloud.publish(make_directory(2))
    config = sync_config(cloud, cloud.new_token())
    async with InProcessAppliance(tmp_path, sync=config) as app:
        outcome = await app.call("sync.now")
        status = outcome["status"]
        assert outcome["ok"], outcome
        assert status["directory_version"] == 2  # the bundle still came
        assert "certificate renewal failed" in status["problem"]
        expires = status["certificate_expires_at"]
        cloud.faults.status = None
        cloud.faults.certificate_lifetime_s = 365 * 86400
        status = (await app.call("sync.now"))["status"]  # 'jbc sync now' retries at once
        assert status["problem"] is None
        assert status["certificate_expires_at"] > expires + 300 * 86400
