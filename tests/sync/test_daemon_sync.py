"""The real jbcd syncing with the fake cloud, seen through the real 'jbc' CLI."""

from __future__ import annotations

import json
import time

import pytest

from jbcbench.fake_cloud import make_directory

pytestmark = pytest.mark.integration


def _config(cloud, token: str) -> str:
    return f"""
site_name = "hq"
[sync]
cloud_url = "{cloud.url}"
ca_file = "{cloud.keys.ca_file}"
signing_public_key = "{cloud.keys.signing_public_key_b64}"
enrollment_token = "{token}"
retry_min_s = 0.2
retry_max_s = 1.0
"""


def _wait_for(predicate, timeout_s: float = 15.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_jbcd_enrols_applies_and_restarts_on_the_stored_bundle(daemon_factory, cloud):
    cloud.publish(make_directory(3))
    jbcd = daemon_factory(_config(cloud, cloud.new_token())).start()
    _wait_for(lambda: jbcd.call("sync.status")["directory_version"] == 3)
    result = jbcd.cli("sync")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bundle v3" in result.stdout and "not enrolled" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    cloud.publish(make_directory(4))
    now = jbcd.cli("sync", "now", "--json")
    assert now.returncode == 0, now.stdout + now.stderr
    assert json.loads(now.stdout)["status"]["directory_version"] == 4
    assert jbcd.call("status")["directory_version"] == "4"
    jbcd.stop()
    # The cloud is gone: the restarted daemon runs on the bundle stored (sealed) last time.
    cloud.faults.status = 503
    jbcd.start()
    assert jbcd.call("status")["directory_version"] == "4"
    sync = jbcd.cli("sync")
    assert sync.returncode == 1 and "503" in _wait_for(
        lambda: jbcd.cli("sync").stdout if "503" in jbcd.cli("sync").stdout else None)
    cloud.faults.status = None


def test_unconfigured_jbcd_reports_sync_not_configured(daemon):
    result = daemon.cli("sync")
    assert result.returncode == 0
    assert "not configured" in result.stdout
    status = daemon.call("status")
    sync = next(s for s in status["subsystems"] if s["name"] == "sync")
    assert sync["level"] == "disabled" and "not configured" in sync["summary"]
    assert daemon.cli("sync", "now").returncode == 1


def test_data_erase_needs_confirm(daemon):
    refused = daemon.cli("data", "erase")
    assert refused.returncode == 2 and "--confirm" in refused.stdout
    erased = daemon.cli("data", "erase", "--confirm")
    assert erased.returncode == 0, erased.stderr
    assert "call_records" in erased.stdout and "directory" in erased.stdout


def test_jbcd_killed_during_sync_restarts_with_old_or_new_bundle(daemon_factory, cloud):
    """The whole daemon, SIGKILLed at random instants of a 'sync now' that applies a
    500-extension bundle (the 60-trial version of this, on the apply itself, is
    test_apply_crash.py)."""
    import random
    import signal
    import socket

    from appliance.control.protocol import request_message
    from appliance.directory.model import parse_directory
    from appliance.store.sealed import SealingKey
    from appliance.sync.bundle import load_public_key
    from appliance.sync.bundle_store import BundleStore

    rng = random.Random(7)
    cloud.publish(make_directory(1, extensions=500))
    jbcd = daemon_factory(_config(cloud, cloud.new_token())).start()
    _wait_for(lambda: jbcd.call("sync.status")["directory_version"] == 1)
    version, seen = 1, set()
    for _ in range(5):
        cloud.publish(make_directory(version + 1, extensions=500))
        with socket.socket(socket.AF_UNIX) as control:  # 'jbc sync now', not waiting for it
            control.connect(str(jbcd.socket_path))
            control.sendall(request_message("sync.now"))
            time.sleep(rng.uniform(0.0, 0.25))
            jbcd.signal(signal.SIGKILL)
            jbcd.proc.wait()
        store = BundleStore(jbcd.state_dir, SealingKey.load_or_create(jbcd.state_dir),
                            load_public_key(cloud.keys.signing_public_key_b64))
        directory, _ = store.load_applied()
        assert directory.version in (version, version + 1)
        assert directory == parse_directory(make_directory(directory.version, extensions=500),
                                            source="expected")
        seen.add(directory.version - version)
        cloud.faults.status = 503  # so what we read is what was stored, not a fresh fetch
        jbcd.stop()
        jbcd.start()
        assert jbcd.call("status")["directory_version"] == str(directory.version)
        cloud.faults.status = None
        version = directory.version
    assert seen  # both outcomes are allowed; a mix or corruption is not
