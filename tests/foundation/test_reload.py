"""SIGHUP: a good new config is applied; a broken one is refused and the old one kept."""

from __future__ import annotations

import signal
import time

import pytest

pytestmark = pytest.mark.integration


def wait_for_event(daemon, kind: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in daemon.call("events", {"subsystem": "daemon"})["events"]:
            if event["kind"] == kind:
                return event
        time.sleep(0.05)
    raise AssertionError(f"no {kind} event")


def test_sighup_with_a_broken_file_keeps_the_daemon_on_the_old_config(daemon_factory):
    daemon = daemon_factory('site_name = "hq"\n').start()
    old_digest = daemon.call("status")["config"]["digest"]
    daemon.config_path.write_text(daemon.config_path.read_text() + "\n[daemon\n")
    daemon.signal(signal.SIGHUP)
    refused = wait_for_event(daemon, "config-reload-refused")
    assert str(daemon.config_path) in refused["reason"] and "not valid TOML" in refused["reason"]
    status = daemon.call("status")
    assert status["site"] == "hq" and status["config"]["digest"] == old_digest
    assert daemon.proc.poll() is None


def test_sighup_with_a_bad_value_names_the_key_and_keeps_running(daemon_factory):
    daemon = daemon_factory('site_name = "hq"\n').start()
    daemon.write_config('site_name = "hq"\n[control]\nmax_clients = 0\n')
    daemon.signal(signal.SIGHUP)
    refused = wait_for_event(daemon, "config-reload-refused")
    assert "control.max_clients" in refused["reason"]
    assert daemon.call("status")["site"] == "hq"


def test_sighup_with_a_good_file_applies_it(daemon_factory):
    daemon = daemon_factory('site_name = "hq"\n').start()
    daemon.write_config('site_name = "branch-7"\n')
    daemon.signal(signal.SIGHUP)
    reloaded = wait_for_event(daemon, "config-reloaded")
    assert reloaded["details"]["old_digest"] != reloaded["details"]["new_digest"]
    assert daemon.call("status")["site"] == "branch-7"
