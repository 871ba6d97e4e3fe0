"""The outage demo's shortened variant, as CI runs it: the whole appliance (real jbcd) in the
bench's site -- desk phones on a LAN, the cloud, simulated LTE and analog modems -- through
the four kinds of outage back to back in one site and one jbcd. Every figure must meet its
goal and every call must work, or the build fails.

As root the site is made of network namespaces; otherwise it runs on loopback behind the
bench's WAN stand-in (and says so in the output)."""

from __future__ import annotations

import json

import pytest

from jbcbench.demo import quick_settings, run_bench
from jbcbench.sitelab import OUTAGE_KINDS

pytestmark = pytest.mark.integration

FIGURES = {"detection_s", "all_local_s", "first_local_call_s", "recovery_s", "handback_s",
           "failback_s", "resync_s", "records_uploaded", "calls_dropped"}


def test_four_outages_back_to_back_meet_every_goal(tmp_path, capsys):
    out = tmp_path / "out"
    report, ok = run_bench(quick_settings(), OUTAGE_KINDS, out,
                           command="tests/bench/test_outage_bench.py")
    printed = capsys.readouterr().out
    assert ok, "\n".join(report["failures"]) + "\n\n" + printed[-6000:]
    written = json.loads((out / "outage.json").read_text())
    assert written["ok"] is True and (out / "outage.png").stat().st_size > 10000
    assert [o["kind"] for o in written["outages"]] == list(OUTAGE_KINDS)
    for outage in written["outages"]:
        figures = outage["figures"]
        assert set(figures) >= FIGURES, outage["kind"]
        assert all(f["met"] and "goal" in f for f in figures.values())
        assert figures["calls_dropped"]["value"] == 0
        assert figures["records_uploaded"]["value"] == figures["records_uploaded"]["goal_value"]
        assert figures["records_uploaded"]["value"] == len(outage["calls"])
        assert not outage["untested"], outage["untested"]
        assert set(outage["first_trunk_call_s"]) == {"lte-eg25", "pots-usr5637"}
        kinds = [call["kind"] for call in outage["calls"]]
        assert kinds.count("outside") == 2 and kinds.count("inbound") == 1
        assert kinds.count("local") == 1 and kinds.count("through-restore") == 1
        assert all(call["ok"] for call in outage["calls"])
    assert "WAN cut" in printed and "every phone is registered at the appliance" in printed


def test_in_path_phones_are_served_at_once_through_two_outages(tmp_path, capsys):
    # Issue 11's CI variant: the phones use the appliance as their outbound proxy; the
    # appliance serves them from its mirrored bindings the moment it declares the outage.
    out = tmp_path / "out"
    report, ok = run_bench(quick_settings(mode="in-path"), ("carrier", "blackhole"), out,
                           command="tests/bench/test_outage_bench.py (in-path)")
    printed = capsys.readouterr().out
    assert ok, "\n".join(report["failures"]) + "\n\n" + printed[-6000:]
    for outage in report["outages"]:
        assert outage["mode"] == "in-path"
        figures = outage["figures"]
        assert figures["all_local_s"]["value"] <= figures["detection_s"]["value"] + 1.0
        assert figures["calls_dropped"]["value"] == 0
        assert all(call["ok"] for call in outage["calls"])
    assert "from their mirrored bindings" in printed
