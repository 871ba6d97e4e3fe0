"""A full state dir while enrolled: 'jbc sync now' used to crash the cloud-link task, its
journal entry failed too and jbcd exited (issue 14, finding 1). Now the bundle waits, the link
and jbcd go on, and everything resumes when space returns."""

from __future__ import annotations

import json
import time

import pytest

from jbcbench.diskfaults import SmallFilesystem, can_mount
from jbcbench.fake_cloud import make_directory

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not can_mount(), reason="mounting a small tmpfs needs root")]


def wait_for(predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def storage_row(daemon) -> dict:
    return next(s for s in daemon.call("status")["subsystems"] if s["name"] == "storage")


def _sync_config(cloud, token: str) -> str:
    return f"""
site_name = "hq"
[daemon]
restart_min_s = 0.05
[sync]
cloud_url = "{cloud.url}"
ca_file = "{cloud.keys.ca_file}"
signing_public_key = "{cloud.keys.signing_public_key_b64}"
enrollment_token = "{token}"
retry_min_s = 0.2
retry_max_s = 1.0
"""


def test_a_full_state_dir_costs_the_bundle_not_the_cloud_link_or_jbcd(daemon_factory, cloud):
    cloud.publish(make_directory(1))
    daemon = daemon_factory(_sync_config(cloud, cloud.new_token()))
    with SmallFilesystem(daemon.state_dir, size_kib=4096) as disk:
        daemon.start()
        wait_for(lambda: daemon.call("sync.status")["directory_version"] == 1)
        disk.fill()
        cloud.publish(make_directory(2))
        heartbeats = len(cloud.heartbeats)
        started = time.monotonic()
        now = daemon.cli("sync", "now", "--json")
        assert time.monotonic() - started < 10
        assert now.returncode == 1, now.stdout
        outcome = json.loads(now.stdout)
        assert "No space left on device" in outcome["problem"] and outcome["kind"] == "local"
        assert daemon.proc.poll() is None
        sync = next(s for s in daemon.call("status")["subsystems"] if s["name"] == "sync")
        assert all(task["crashes"] == 0 for task in sync["tasks"])
        assert storage_row(daemon)["level"] == "warning"
        assert len(cloud.heartbeats) > heartbeats  # the bundle failed, the heartbeat went out
        disk.free()
        wait_for(lambda: storage_row(daemon)["level"] == "ok")
        wait_for(lambda: daemon.call("sync.status")["directory_version"] == 2)
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()
