"""Outage upload: every event and call record reaches the cloud exactly once, across network
cuts, answers lost after the cloud stored a batch, 503s, timeouts and restarts."""

from __future__ import annotations

import asyncio
import time

import pytest

from jbcbench.fake_cloud import make_directory
from jbcbench.inprocess import InProcessAppliance

from .conftest import sync_config

RECORDS = 1200


def _make_calls(app, count: int, start: int = 0) -> list[str]:
    records = app.by_name("sync").call_records
    base = time.time() - 86400  # yesterday's outage (older than 13 months would expire)
    ids = []
    for n in range(start, start + count):
        call = records.start(direction="emergency" if n % 97 == 0 else "outbound",
                             from_party=str(101 + n % 5), to_party=f"+1555{n:07d}",
                             trunk="lte1", emergency=n % 97 == 0,
                             location="1 Main St (floor 2)" if n % 97 == 0 else None,
                             at=base + n)
        records.answered(call, at=base + 1 + n)
        records.ended(call, result="answered", cause="200 OK / BYE", at=base + 30 + n)
        ids.append(call)
    # One call still in progress: not uploaded until it ends.
    ids.append(records.start(direction="internal", from_party="101", to_party="102"))
    return ids


async def _sync_until_drained(app, attempts: int = 40) -> None:
    for _ in range(attempts):
        result = await app.call("sync.now")
        if result["ok"] and result["status"]["pending_uploads"]["call_records"] == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"uploads did not drain: {result}")


@pytest.mark.integration
async def test_uploads_exactly_once_across_cuts_and_restarts(tmp_path, cloud):
    cloud.publish(make_directory(1))
    # Retries only when the test says so (sync.now), so the faults land where intended.
    config = sync_config(cloud, cloud.new_token(), upload_batch=100, request_timeout_s=1.0,
                         retry_min_s=30, retry_max_s=60)
    async with InProcessAppliance(tmp_path, sync=config) as app:
        assert (await app.call("sync.now"))["ok"]
        ids = _make_calls(app, RECORDS)
        in_progress = ids.pop()
        # The next three uploads are stored by the cloud but the answer never arrives.
        cloud.faults.cut_after_store = 3
        for _ in range(3):
            result = await app.call("sync.now")
            assert not result["ok"]
        assert "cut" in app.events("cloud-unreachable")[-1].reason
    # Restart (a new process would see exactly this state dir), into a cloud answering 503.
    cloud.faults.status_operations = frozenset({"uploadCallRecords"})
    cloud.faults.status, cloud.faults.status_count = 503, 2
    async with InProcessAppliance(tmp_path, sync=config) as app:
        result = await app.call("sync.now")
        assert not result["ok"] and "503" in result["problem"], (result, cloud.requests[-6:])
        # A slow cloud: the client gives up waiting, the cloud stores the batch anyway.
        cloud.faults.slow_s = 1.3
        result = await app.call("sync.now")
        assert not result["ok"]
        cloud.faults.slow_s = 0.0
        await asyncio.sleep(0.5)  # let the slow handler finish storing
        await _sync_until_drained(app)
        # Every finished record exactly once; the unfinished one not at all (yet).
        assert set(cloud.call_records) == set(ids)
        assert in_progress not in cloud.call_records
        resent = [i for i in ids if cloud.received_ids[i] > 1]
        assert resent, "the faults should have caused retries"
        # The cloud stored each id once; retries were reported as duplicates.
        records = app.by_name("sync").call_records
        assert records.count_pending_upload() == 0
        emergency = [r for r in cloud.call_records.values() if r["emergency"]]
        assert emergency and all(r["location"] for r in emergency)
        # Events too: every journal entry up to now is in the cloud once.
        journal_ids = {f"{app.by_name('sync').outbox.installation}/event/{e.id}"
                       for e in app.events()}
        missing = journal_ids - set(cloud.events)
        # Entries journalled by this very cycle may still be pending; nothing else.
        assert len(missing) <= 3, missing
        records.ended(in_progress, result="answered", cause="BYE")
        await _sync_until_drained(app)
        assert in_progress in cloud.call_records
        assert all(count >= 1 for count in cloud.received_ids.values())


def test_emergency_notification_calls_are_kept_but_never_uploaded_as_customer_calls(tmp_path):
    from appliance.store.call_records import CallRecordStore
    from appliance.store.database import Database

    records = CallRecordStore(Database(tmp_path / "jbc.sqlite3"))
    for direction in ("emergency", "notification"):
        call = records.start(direction=direction, from_party="101", to_party="103")
        records.ended(call, result="answered")
    assert [r.direction for r in records.recent(10)] == ["notification", "emergency"]
    assert [r.direction for r in records.pending_upload(10)] == ["emergency"]
    assert records.count_pending_upload() == 1
