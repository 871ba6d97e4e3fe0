"""'jbc data erase --confirm' leaves nothing readable and stops the sync from bringing the
directory back (issue 14, finding 5: 300 erased call records were still readable with
'strings' in jbc.sqlite3 and its WAL while jbcd ran, and the next sync re-downloaded the
erased directory, passwords included)."""

from __future__ import annotations

import pytest

from appliance.sync.config import SyncConfig
from jbcbench.fake_cloud import make_directory
from jbcbench.inprocess import InProcessAppliance

from .conftest import sync_config

MARKER = "+1555ERASEME"


def secret_password(number: str) -> str:
    return f"s3cret-{number}-TOPSECRET"


def readable(tmp_path) -> bytes:
    """Every byte of every file under the state dir, as 'strings' would see them."""
    return b"".join(p.read_bytes() for p in sorted(tmp_path.rglob("*"))
                    if p.is_file() and not p.is_symlink())


@pytest.mark.integration
async def test_erase_leaves_no_trace_on_disk_while_running_and_the_sync_stays_away(tmp_path,
                                                                                  cloud):
    cloud.publish(make_directory(5, extensions=20, password_of=secret_password))
    token = cloud.new_token()
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, token)) as app:
        assert (await app.call("sync.now"))["ok"]
        records = app.by_name("sync").call_records
        for n in range(300):
            call = records.start(direction="outbound", from_party="101",
                                 to_party=f"{MARKER}{n:04d}")
            records.ended(call, result="answered", cause="200 OK / BYE")
        records.mark_uploaded([r.id for r in records.pending_upload(1000)])
        records.delete_started_before(0)  # churn: free pages, WAL frames
        assert MARKER.encode() in readable(tmp_path)  # the test can see what it looks for
        key_before = (tmp_path / "storage.key").read_bytes()

        erased = await app.call("data.erase", {"confirm": True})
        deleted = erased["deleted"]
        assert deleted["call_records"] == 300
        assert deleted["enrolment"] == 2  # device.pem and device.json
        assert deleted["database_scrubbed"] == 1

        on_disk = readable(tmp_path)
        assert MARKER.encode() not in on_disk
        assert b"TOPSECRET" not in on_disk
        assert list((tmp_path / "bundles").iterdir()) == []
        assert (tmp_path / "storage.key").read_bytes() != key_before  # crypto-erased
        assert not (tmp_path / "identity" / "device.pem").exists()

        fetched = [op for op, _, _ in cloud.requests].count("getBundle")
        outcome = await app.call("sync.now")
        assert outcome["ok"] is False and "un-enrolled when customer content was erased" in (
            outcome["problem"])
        assert [op for op, _, _ in cloud.requests].count("getBundle") == fetched
        assert app.by_name("directory").current.version == 0

        # The same token again is refused here, whatever the cloud would say.
        await app.reconfigure(sync=sync_config(cloud, token))
        assert "un-enrolled" in (await app.call("sync.now"))["problem"]
        assert [op for op, _, _ in cloud.requests].count("getBundle") == fetched

        # An admin enrols it again with a new token: then, and only then, it syncs.
        await app.reconfigure(sync=sync_config(cloud, cloud.new_token()))
        assert (await app.call("sync.now"))["ok"]
        assert app.by_name("directory").current.version == 5


@pytest.mark.integration
async def test_erase_on_an_unenrolled_appliance_scrubs_too(tmp_path):
    async with InProcessAppliance(tmp_path, sync=SyncConfig()) as app:
        records = app.by_name("sync").call_records
        for n in range(50):
            records.ended(records.start(direction="internal", from_party="101",
                                        to_party=f"{MARKER}{n}"), result="answered")
        erased = (await app.call("data.erase", {"confirm": True}))["deleted"]
        assert erased["call_records"] == 50 and erased["database_scrubbed"] == 1
        assert MARKER.encode() not in readable(tmp_path)
