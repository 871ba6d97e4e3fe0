"""jbc wan and jbc failover against the real daemon: unconfigured, and in the testbed."""

from __future__ import annotations

import json

import pytest

from appliance.cli.commands.wan import render_wan
from jbcbench.topology import can_build_namespaces
from jbcbench.wanlab import WanLab


@pytest.mark.integration
def test_an_unconfigured_wan_says_so_everywhere(daemon):
    result = daemon.cli("wan")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("UNCONFIGURED since ")
    assert "WAN not configured: set wan.interface and wan.targets" in result.stdout
    assert all(len(line) <= 80 for line in lines), result.stdout
    data = json.loads(daemon.cli("--json", "wan").stdout)
    assert data["configured"] is False and data["state"] == "unconfigured"
    forced = daemon.cli("failover", "force")
    assert forced.returncode == 1 and "cannot force failover: WAN not configured" in forced.stderr
    status = daemon.cli("status")
    assert status.stdout.startswith("UNCONFIGURED since ")
    assert any(line.split()[:2] == ["wan", "warning"] for line in status.stdout.splitlines())


def test_the_wan_screen_fits_80_columns_and_marks_failing_targets():
    report = {
        "configured": True, "interface": "eth0", "state": "degraded", "since": 0.0,
        "for_s": 75.0, "cause": "cloud region west unreachable; internet anchor a2 unreachable",
        "forced_by": None, "failure": None, "restart_needed": None, "verdict": "degraded",
        "problems": ["cloud region west unreachable", "internet anchor a2 unreachable"],
        "link": {"interface": "eth0", "problem": None, "addresses": ["192.0.2.10"],
                 "default_route": True},
        "penalty": 1.25, "suppressed": False, "hold_down_s": 12.5, "hold_down_left_s": None,
        "targets": [
            {"name": "west-sip-over-a-long-name", "group": "west", "kind": "sip/udp",
             "healthy": False, "rtt_ms": None, "loss_pct": 100.0,
             "last": "timeout (no answer to 4 requests within the round, again and again)"},
            {"name": "east-icmp", "group": "east", "kind": "icmp", "healthy": True,
             "rtt_ms": {"avg": 23.456, "last": 20.0, "min": 1.0, "max": 40.0},
             "loss_pct": 0.0, "last": "ok 20.0 ms",
             "quality": {"round_trip_loss_pct": 21.7, "mos": 3.21}},
            {"name": "east-https", "group": "east", "kind": "https", "healthy": True,
             "rtt_ms": {"avg": 3.0, "last": 3.0, "min": 1.0, "max": 4.0},
             "loss_pct": 1.7, "last": "ok 3.0 ms (HTTP 200 OK)", "quality": None},
        ],
        "quality": {"mos": 3.21, "r": 61.4, "round_trip_loss_pct": 21.7, "packets": 96,
                    "jitter_ms": 2.4, "rtt_ms": 23.0},
        "brownout": True, "brownout_for_s": 12.0, "local_calls": False,
    }
    text = render_wan(report)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    assert lines[0].startswith("DEGRADED since ") and "(1m15s) on eth0" in lines[0]
    row = next(line for line in lines if line.startswith("west-sip-over-a-long-name !"))
    assert "100%" in row
    # per packet, not per round: the retries that hid the loss are counted
    assert any(line.startswith("east-icmp") and "23.5" in line and "22%" in line
               and "3.2" in line for line in lines)
    assert any(line.startswith("east-https") and "2%*" in line for line in lines)
    assert "voice: MOS 3.2 (R 61); 22% of 96 probe packets lost" in " ".join(lines)
    assert "BROWNOUT for 12s" in text
    assert "flap penalty 1.2" in text or "flap penalty 1.3" in text


@pytest.mark.integration
@pytest.mark.netns
@pytest.mark.skipif(not can_build_namespaces()[0], reason=can_build_namespaces()[1])
def test_wan_and_failover_commands_in_the_testbed(tmp_path):
    with WanLab(tmp_path, tls_targets=False, wan={"hold_down_s": 1.0}) as lab:
        daemon = lab.daemon
        shown = daemon.cli("wan")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith("ONLINE since ") and lines[0].endswith("on wan0")
        assert all(len(line) <= 80 for line in lines), shown.stdout
        for name in ("east-icmp", "east-sip", "west-icmp", "anchor1", "dns:10.65.0.53"):
            row = next(line for line in lines if line.startswith(name + " "))
            assert "0%" in row and " ok " in f" {row} "

        forced = daemon.cli("failover", "force", "--reason", "drill")
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout.startswith("FORCED since ") and "drill" in forced.stdout
        again = daemon.cli("failover", "force")
        assert again.returncode == 1 and "already forced" in again.stderr
        status = daemon.cli("status")
        assert status.stdout.startswith("FORCED since ") and status.returncode == 1
        assert "failover forced by root: drill" in status.stdout
        assert daemon.cli("wan").returncode == 1

        released = daemon.cli("failover", "release")
        assert released.returncode == 0 and released.stdout.startswith("RECOVERING since ")
        lab.wait_for(lambda s: s["state"] == "online", 5.0, "online after the hold-down")
        assert daemon.cli("failover", "release").returncode == 1
        events = json.loads(daemon.cli("events", "--subsystem", "wan", "--json").stdout)
        by_root = [e for e in events if e["kind"] == "transition" and e["actor"]]
        assert [e["details"]["state"] for e in by_root] == ["forced", "recovering"]
        assert all(e["actor"].startswith("root") for e in by_root)
