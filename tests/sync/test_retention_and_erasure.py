"""Retention deletes exactly what is older than 13 months; erase and purge delete content."""

from __future__ import annotations

import datetime
import time

import pytest

from appliance.control.commands import CommandError
from appliance.sync.retention import retention_cutoff
from jbcbench.fake_cloud import make_directory
from jbcbench.inprocess import InProcessAppliance

from .conftest import sync_config


def _ts(*args) -> float:
    return datetime.datetime(*args, tzinfo=datetime.UTC).timestamp()


@pytest.mark.parametrize("now, cutoff", [
    (_ts(2026, 11, 28, 12, 0), _ts(2025, 10, 28, 12, 0)),
    (_ts(2026, 3, 31, 0, 0), _ts(2025, 2, 28, 0, 0)),     # clamped to February's end
    (_ts(2028, 3, 31, 0, 0), _ts(2027, 2, 28, 0, 0)),
    (_ts(2029, 3, 29, 0, 0), _ts(2028, 2, 29, 0, 0)),     # leap day exists
    (_ts(2026, 1, 15, 6, 30), _ts(2024, 12, 15, 6, 30)),  # across a year boundary
])
def test_retention_cutoff_is_13_calendar_months(now, cutoff):
    assert retention_cutoff(now) == cutoff


@pytest.mark.integration
async def test_retention_deletes_exactly_the_expired_records_and_events(tmp_path):
    now = _ts(2026, 11, 28, 3, 0)
    cutoff = retention_cutoff(now)
    async with InProcessAppliance(tmp_path) as app:
        sync = app.by_name("sync")
        sync.clock = lambda: now
        records = sync.call_records
        ages = {"expired-long-ago": cutoff - 86400 * 40, "expired-by-1s": cutoff - 1,
                "exactly-13-months": cutoff, "fresh-by-1s": cutoff + 1, "today": now - 60}
        for name, started in ages.items():
            records.start(direction="outbound", from_party="101", to_party="+15551230000",
                          record_id=name, at=started)
            records.ended(name, result="answered", at=started + 30)
        journal = app.journal
        for name, at in ages.items():
            journal.clock = lambda at=at: at
            journal.record("test", "marker", name)
        journal.clock = time.time
        before = {e.reason for e in app.events("marker")}
        deleted = sync.run_retention()
        assert deleted == {"call_records": 2, "events": 2}
        kept = {r.id for r in records.recent(100)}
        assert kept == {"exactly-13-months", "fresh-by-1s", "today"}
        after = {e.reason for e in app.events("marker")}
        assert before - after == {"expired-long-ago", "expired-by-1s"}
        assert app.events("retention")
        assert sync.run_retention() == {"call_records": 0, "events": 0}


@pytest.mark.integration
async def test_data_erase_needs_confirm_and_deletes_all_customer_content(tmp_path, cloud):
    cloud.publish(make_directory(3))
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, cloud.new_token())) as app:
        assert (await app.call("sync.now"))["ok"]
        records = app.by_name("sync").call_records
        records.ended(records.start(direction="internal", from_party="101", to_party="102"),
                      result="answered")
        recordings = tmp_path / "recordings"
        recordings.mkdir()
        (recordings / "vm-101-1.opus").write_bytes(b"\0" * 100)
        with pytest.raises(CommandError) as refused:
            await app.call("data.erase")
        assert refused.value.code == "confirm_required"
        assert app.by_name("directory").current.version == 3
        result = await app.call("data.erase", {"confirm": True})
        assert result["deleted"]["call_records"] == 1
        assert result["deleted"]["recordings"] == 1
        assert result["deleted"]["directory"] >= 2  # stored bundles + the live directory
        assert app.by_name("directory").current.version == 0
        assert records.count() == 0
        assert list((tmp_path / "bundles").iterdir()) == []
        assert list(recordings.iterdir()) == []
        assert app.events("erased")
    # After a restart there is still nothing.
    async with InProcessAppliance(tmp_path) as app:
        assert app.by_name("directory").current.version == 0


@pytest.mark.integration
async def test_content_is_purged_30_days_after_the_subscription_ends(tmp_path, cloud):
    cloud.publish(make_directory(3))
    ended = time.time() - 86400
    cloud.end_subscription(ended)
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, cloud.new_token())) as app:
        sync = app.by_name("sync")
        assert (await app.call("sync.now"))["ok"]
        assert app.events("subscription-ended")
        assert sync.status()["purge_at"] == pytest.approx(ended + 30 * 86400)
        assert sync.purge_if_due() is None  # not yet: day 1 of 30
        assert app.by_name("directory").current.version == 3
        sync.clock = lambda: ended + 30 * 86400 + 1
        report = sync.purge_if_due()
        assert report is not None and report["directory"] >= 1
        assert app.by_name("directory").current.version == 0
        assert app.events("content-purged")
