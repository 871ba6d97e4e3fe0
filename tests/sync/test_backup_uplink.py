"""The failover heartbeat leaves through the backup uplink (policy route set up with pyroute2)
when the WAN is down: two namespaces, two veth pairs (WAN and LTE), the fake cloud on the far
side, the WAN cut by taking its link down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from jbcbench.daemon import REPO_ROOT, _pythonpath

pytestmark = [
    pytest.mark.integration, pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
]

CLOUD_IP = "10.231.9.1"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def topology():
    tag = f"{os.getpid() % 100000}"
    app, cloud = f"jbsync-app-{tag}", f"jbsync-cloud-{tag}"
    wan_a, wan_c, lte_a, lte_c = (f"jsw{tag}a", f"jsw{tag}c", f"jsl{tag}a", f"jsl{tag}c")
    _ip("netns", "add", app)
    _ip("netns", "add", cloud)
    try:
        for ns in (app, cloud):
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", wan_a, "netns", app, "type", "veth", "peer", wan_c, "netns", cloud)
        _ip("link", "add", lte_a, "netns", app, "type", "veth", "peer", lte_c, "netns", cloud)
        for ns, dev, address in ((app, wan_a, "10.231.1.2/24"), (cloud, wan_c, "10.231.1.1/24"),
                                 (app, lte_a, "10.231.2.2/24"), (cloud, lte_c, "10.231.2.1/24")):
            _ip("-n", ns, "addr", "add", address, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", cloud, "addr", "add", f"{CLOUD_IP}/32", "dev", "lo")
        _ip("-n", app, "route", "add", "default", "via", "10.231.1.1")
        yield {"app": app, "cloud": cloud, "wan": wan_a, "wan_far": wan_c, "lte": lte_a}
    finally:
        subprocess.run(["ip", "netns", "del", app], check=False)
        subprocess.run(["ip", "netns", "del", cloud], check=False)


def test_failover_heartbeat_and_emergency_alert_go_out_through_the_backup_uplink(
        topology, tmp_path):
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    cloud = subprocess.Popen(
        ["ip", "netns", "exec", topology["cloud"], sys.executable, "-m", "jbcbench.fake_cloud",
         "--dir", str(tmp_path / "cloud"), "--host", CLOUD_IP, "--port", "8443",
         "--extensions", "3"], cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(cloud.stdout.readline())
        settings = {"cloud_url": info["url"], "ca_file": info["ca_file"],
                    "signing_public_key": info["signing_public_key"], "token": info["token"],
                    "backup_interface": topology["lte"], "backup_gateway": "10.231.2.1",
                    "state_dir": str(tmp_path / "state"),
                    "wan_down_command": ["ip", "link", "set", topology["wan"], "down"]}
        started = time.monotonic()
        run = subprocess.run(
            ["ip", "netns", "exec", topology["app"], sys.executable, "-m",
             "jbcbench.sync_uplink_scenario", json.dumps(settings)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        cloud.stdin.write("stats\n")
        cloud.stdin.flush()
        stats = json.loads(cloud.stdout.readline())
    finally:
        cloud.stdin.close()
        cloud.wait(10)
    assert result["online"]["ok"], result
    assert result["online"]["heartbeat"]["uplink"] == "wan"
    assert result["failover"]["ok"], result
    assert result["failover"]["heartbeat"] == {**result["failover"]["heartbeat"],
                                               "state": "failover", "uplink": "backup"}
    failover_beats = [h for h in stats["heartbeats"] if h["state"] == "failover"]
    assert failover_beats and failover_beats[-1]["peer"] == "10.231.2.2"  # left by the LTE link
    assert failover_beats[-1]["uplink"] == "backup"
    assert result["alert"]["kind"] == "emergency-alert-delivered", result["alert"]
    assert result["alert"]["uplink"] == "backup"
    (alert,) = stats["alerts"]
    assert (alert["peer"], alert["uplink"], alert["wan_state"]) == ("10.231.2.2", "backup",
                                                                    "outage")
    assert any("from 10.231.2.2 lookup 201" in rule for rule in result["rules_in_failover"])
    assert not any("lookup 201" in rule for rule in result["rules_after_stop"])
    assert stats["violations"] == []
    assert time.monotonic() - started < 30
