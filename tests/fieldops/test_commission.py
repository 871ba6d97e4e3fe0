"""The technician's walkthrough (hw-testbench/commission) on the bench site: every fault the
bench can inject is caught by the selftest with its fix, fixing them makes it pass, the drill
passes and its report reaches the cloud, and the site's Prometheus scrapes the appliance."""

from __future__ import annotations

import pytest

from jbcbench import prometheus
from jbcbench.commission import FRONT_DESK, Walkthrough

pytestmark = pytest.mark.integration


def test_commissioning_the_bench_site_with_jbc_alone(tmp_path):
    lines: list[str] = []
    walkthrough = Walkthrough(tmp_path / "commission", out=lines.append, handsets=1,
                              prometheus=prometheus.available(), fast_modems=True)
    walkthrough.build()
    passed = walkthrough.run()
    transcript = "\n".join(lines)
    assert passed, transcript
    results = walkthrough.results
    faults = results["faults"]
    assert set(faults) == {"SIM removed", "no signal", "cloud certificate near expiry",
                           "clock unsynchronised", "a phone with a 3600 s refresh"}
    assert all(fault["caught"] and fault["fix"] for fault in faults.values()), faults
    assert faults["a phone with a 3600 s refresh"]["line"] == f"phones.{FRONT_DESK}"
    assert results["second_selftest"]["verdict"] == "pass"
    assert results["second_selftest"]["duration_s"] < 60
    drill = results["drill"]
    assert drill["passed"] and drill["uploaded_at"]
    assert {s["id"] for s in drill["steps"]} >= {"local-sip", "trunk:lte-eg25"}
    full = results["full_drill"]
    assert full["kind"] == "full" and full["passed"]
    assert [s["id"] for s in full["steps"]][:2] == ["failover", "serving"]
    assert full["steps"][-1]["id"] == "release"
    assert all(step.ok for step in walkthrough.steps)
    assert all(step.command.startswith("jbc ") for step in walkthrough.steps)
    if prometheus.available():
        [(labels, value)] = results["prometheus"]["jbc_wan_state == 1"]  # the current state
        assert labels["state"] in ("online", "recovering", "forced") and value == "1"
        assert results["prometheus"]["jbc_drill_last_success"][0][1] == "1"
