"""The real jbcd on a broken state dir: it starts, says in one line what is wrong and what to
do, keeps serving, and writes everything out when the disk takes it again (issue 14, finding
1: each of these used to exit 1 with a traceback, or crash the cloud link and then jbcd)."""

from __future__ import annotations

import time

import pytest

from appliance.store.database import DATABASE_FILE
from jbcbench.diskfaults import SmallFilesystem, can_mount, corrupt_header

pytestmark = pytest.mark.integration
needs_mount = pytest.mark.skipif(not can_mount(), reason="mounting a small tmpfs needs root")


def storage_row(daemon) -> dict:
    return next(s for s in daemon.call("status")["subsystems"] if s["name"] == "storage")


def wait_for(predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def storage_lines(daemon) -> list[str]:
    return [line for line in daemon.log().splitlines() if "appliance.store.database" in line]


def test_jbcd_starts_on_a_corrupt_database_keeps_it_and_says_so(daemon_factory):
    daemon = daemon_factory().start()
    daemon.stop()
    corrupt_header(daemon.state_dir / DATABASE_FILE)
    daemon.start()
    events = daemon.call("events", {"subsystem": "storage"})["events"]
    assert [e["kind"] for e in events] == ["database-recreated"]
    assert "kept as jbc.sqlite3.corrupt-" in events[0]["reason"]
    assert storage_row(daemon)["level"] == "ok"
    assert len(list(daemon.state_dir.glob(f"{DATABASE_FILE}.corrupt-*"))) == 1
    assert len(storage_lines(daemon)) == 1 and "Traceback" not in daemon.log()


@needs_mount
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_jbcd_starts_on_a_broken_state_dir_and_writes_out_when_it_is_fixed(daemon_factory, fault):
    daemon = daemon_factory()
    with SmallFilesystem(daemon.state_dir, size_kib=2048) as disk:
        daemon.start()
        daemon.stop()
        disk.fill() if fault == "full" else disk.read_only()
        daemon.start()
        row = storage_row(daemon)
        assert row["level"] == "warning" and f"is {fault}" in row["summary"]
        assert "running from memory" in row["summary"]
        status = daemon.cli("status")
        assert status.returncode == 1 and "storage" in status.stdout
        [line] = storage_lines(daemon)
        assert ("df -h" if fault == "full" else "remount,rw") in line
        disk.free() if fault == "full" else disk.writable()
        wait_for(lambda: storage_row(daemon)["level"] == "ok")
        kinds = [e["kind"] for e in daemon.call("events", {"subsystem": "storage"})["events"]]
        assert kinds == ["storage-degraded", "storage-restored"]
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.log()
