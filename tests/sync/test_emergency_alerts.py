"""The cloud learns the moment an emergency call starts: an alert per call, sent at once (not at
the next sync cycle), retried through a failing cloud with the same id, its delivery journalled.
The backup-uplink path during an outage is in test_backup_uplink.py (needs root and netns)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from appliance.gateway.events import EmergencyCallStarted
from appliance.store.database import Database
from appliance.sync.alerts import AlertNotSent, EmergencyAlert, EmergencyAlerts
from appliance.sync.state import SyncState
from jbcbench.fake_cloud import make_directory
from jbcbench.inprocess import InProcessAppliance

from .conftest import sync_config


def emergency(call: str = "c7") -> EmergencyCallStarted:
    return EmergencyCallStarted(call=call, extension="101", caller_verified=True,
                                number="911", location="1 Main St (floor 2)",
                                started_at=time.time())


async def until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.integration  # a real TLS fake cloud on loopback
async def test_an_emergency_call_alerts_the_cloud_at_once_and_the_delivery_is_journalled(
        tmp_path, cloud):
    cloud.publish(make_directory(1))
    # A cloud link that would not retry for a minute: the alert must not wait for it.
    config = sync_config(cloud, cloud.new_token(), retry_min_s=60, retry_max_s=60)
    async with InProcessAppliance(tmp_path, sync=config) as app:
        assert (await app.call("sync.now"))["ok"]
        cloud.faults.status_operations = frozenset({"sendAlert"})
        cloud.faults.status, cloud.faults.status_count = 503, 2  # the first two attempts fail
        app.bus.publish(emergency())
        await until(lambda: app.events("emergency-alert-delivered"))
        (alert,) = cloud.alerts.values()
        assert (alert["kind"], alert["call"], alert["extension"], alert["number"]) == (
            "emergency-call", "c7", "101", "911")
        assert alert["caller_verified"] and alert["uplink"] == "wan"
        assert alert["location"] == "1 Main St (floor 2)"
        assert cloud.received_ids[alert["id"]] == 1  # the 503s were not stored
        assert [r[2] for r in cloud.requests if r[0] == "sendAlert"] == [503, 503, 200]
        (delivered,) = app.events("emergency-alert-delivered")
        assert delivered.details["attempts"] == 3 and delivered.details["uplink"] == "wan"
        assert "over the wan uplink" in delivered.reason
        assert app.events("emergency-alert-retrying")


@pytest.mark.integration
async def test_an_alert_that_cannot_be_sent_says_so_in_the_journal(tmp_path, cloud):
    config = sync_config(cloud)  # no enrolment token: never enrolled
    async with InProcessAppliance(tmp_path, sync=config) as app:
        app.bus.publish(emergency())
        await until(lambda: app.events("emergency-alert-failed"))
        (failed,) = app.events("emergency-alert-failed")
        assert "NOT alerted" in failed.reason and "not enrolled" in failed.reason
    assert not cloud.alerts


class Journal:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict]] = []

    def record(self, subsystem: str, kind: str, reason: str, details=None) -> None:
        self.entries.append((kind, reason, details or {}))


async def test_a_retried_alert_keeps_its_id_and_gives_up_after_its_time():
    sent: list[str] = []
    now = [0.0]

    async def deliver(alert: EmergencyAlert) -> str:
        sent.append(alert.id)
        now[0] += 100.0  # each attempt takes a long time: the give-up time comes
        raise AlertNotSent("cloud unreachable")

    journal = Journal()
    alerts = EmergencyAlerts(deliver=deliver, journal=journal, clock=lambda: now[0],
                             spawn=None, retry_min_s=0.0, retry_max_s=0.0, give_up_s=250.0)
    assert not await alerts.send(EmergencyAlert.of(emergency()))
    assert len(sent) == 3 and len(set(sent)) == 1
    assert [e[0] for e in journal.entries] == ["emergency-alert-retrying",
                                               "emergency-alert-failed"]


async def test_an_alert_not_delivered_before_a_restart_is_sent_again_as_the_same_alert(
        tmp_path):
    state = SyncState(Database(tmp_path / "jbc.sqlite3"))
    sent: list[str] = []
    now = [1000.0]

    def spawn(coroutine, *, name, subsystem):
        return asyncio.get_running_loop().create_task(coroutine, name=name)

    async def unreachable(alert: EmergencyAlert) -> str:
        sent.append(alert.id)
        raise AlertNotSent("cloud unreachable")

    before = EmergencyAlerts(deliver=unreachable, journal=Journal(), clock=lambda: now[0],
                             spawn=spawn, retry_min_s=30.0, retry_max_s=30.0, state=state)
    before.on_emergency_call(emergency("c9"))
    await until(lambda: sent)
    for task in before.tasks:  # jbcd is killed while the alert waits to retry
        task.cancel()

    async def reachable(alert: EmergencyAlert) -> str:
        sent.append(alert.id)
        return "backup"

    journal = Journal()
    now[0] += 60.0
    after = EmergencyAlerts(deliver=reachable, journal=journal, clock=lambda: now[0],
                            spawn=spawn, retry_min_s=1.0, retry_max_s=1.0, state=state)
    after.resume()
    await until(lambda: any(e[0] == "emergency-alert-delivered" for e in journal.entries))
    assert len(sent) == 2 and sent[0] == sent[1]  # the same alert id: the cloud counts it once
    assert [e[0] for e in journal.entries] == ["emergency-alert-resumed",
                                               "emergency-alert-delivered"]
    assert state.get("pending_emergency_alerts") == []
    after.resume()  # nothing left to send
    assert len(sent) == 2


async def test_an_alert_left_over_past_its_give_up_time_is_journalled_as_failed(tmp_path):
    state = SyncState(Database(tmp_path / "jbc.sqlite3"))
    alert = EmergencyAlert.of(emergency("c3"))
    state.set("pending_emergency_alerts", [{**dataclasses.asdict(alert), "first_try": 0.0}])
    journal = Journal()
    alerts = EmergencyAlerts(deliver=None, journal=journal, clock=lambda: 10_000.0, spawn=None,
                             retry_min_s=1.0, retry_max_s=1.0, state=state)
    alerts.resume()
    assert [e[0] for e in journal.entries] == ["emergency-alert-failed"]
    assert state.get("pending_emergency_alerts") == []
