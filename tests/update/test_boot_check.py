"""jbc-boot-check: commit a slot that passes, roll back a trial that does not, and never
roll back the committed slot (fake time; the check's inputs are given, not probed)."""

from __future__ import annotations

import json

import pytest

from appliance.update.boot_check import decide, judge_status, wait_for_verdict
from appliance.update.records import (
    FACTORY_SLOT,
    KEEP_BOOT_CHECKS,
    append_boot_check,
    read_boot_checks,
    read_committed,
    write_committed,
)


@pytest.mark.parametrize(("booted", "committed", "passed", "action"), [
    ("B", "A", True, "commit"),       # the update works: keep it
    ("B", "A", False, "roll-back"),   # the update does not: back to A by itself
    ("A", "A", True, "commit"),       # an ordinary boot
    ("A", "A", False, "keep"),        # jbcd broken on the committed slot: no older one is better
    ("A", "B", False, "roll-back"),   # an update into A tried from B
])
def test_decision_table(booted, committed, passed, action):
    assert decide(booted=booted, committed=committed, passed=passed) == action


def subsystem(name, level, summary="fine"):
    return {"name": name, "level": level, "summary": summary}


def test_status_with_warnings_passes_the_self_check():
    ok, reason = judge_status({"version": "1.2", "state": "outage", "subsystems": [
        subsystem("control", "ok"), subsystem("wan", "warning", "all probes failing"),
        subsystem("gateway", "warning", "no trunks configured"),
        subsystem("update", "disabled")]})
    assert ok, reason
    assert "jbcd 1.2 ready" in reason


@pytest.mark.parametrize("level", ["failed", "starting"])
def test_a_failed_or_unstarted_subsystem_fails_the_self_check(level):
    ok, reason = judge_status({"subsystems": [subsystem("control", "ok"),
                                              subsystem("sip", level, "port 5060 in use")]})
    assert not ok
    assert "sip: port 5060 in use" in reason


def test_status_without_subsystems_fails_the_self_check():
    assert not judge_status({"state": "running"})[0]


class ScriptedSystem:
    """What the boot looks like at each poll: (jbcd ready, self-check passes)."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.now = 10.0
        self.polls = 0

    def _step(self):
        return self.steps[min(self.polls, len(self.steps) - 1)]

    def jbcd_ready(self):
        return self._step()[0]

    def self_check(self):
        passed = self._step()[1]
        return passed, "healthy" if passed else "gateway: pjsua thread died"

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.polls += 1
        self.now += seconds


def test_waits_for_jbcd_then_passes():
    system = ScriptedSystem([(False, False)] * 5 + [(True, False)] * 3 + [(True, True)])
    passed, reason = wait_for_verdict(system, timeout_s=300, clock=system.clock,
                                      sleep=system.sleep)
    assert passed and reason == "healthy"
    assert system.polls == 8


def test_gives_up_at_the_deadline_with_the_last_reason():
    system = ScriptedSystem([(True, False)])
    passed, reason = wait_for_verdict(system, timeout_s=60, clock=system.clock,
                                      sleep=system.sleep)
    assert not passed
    assert reason == "gateway: pjsua thread died (60 s after boot)"
    assert 60 <= system.now < 63


def test_jbcd_never_ready_is_the_reason():
    system = ScriptedSystem([(False, False)])
    passed, reason = wait_for_verdict(system, timeout_s=30, clock=system.clock,
                                      sleep=system.sleep)
    assert not passed and "jbcd is not ready" in reason


def test_committed_slot_defaults_to_the_factory_slot_and_survives_garbage(tmp_path):
    assert read_committed(tmp_path) == FACTORY_SLOT
    write_committed(tmp_path, "B")
    assert read_committed(tmp_path) == "B"
    (tmp_path / "committed").write_text("../../etc\n")
    assert read_committed(tmp_path) == FACTORY_SLOT


def test_boot_checks_are_kept_bounded_and_in_order(tmp_path):
    for index in range(KEEP_BOOT_CHECKS + 5):
        append_boot_check(tmp_path, {"n": index})
    checks = read_boot_checks(tmp_path)
    assert [c["n"] for c in checks] == list(range(5, KEEP_BOOT_CHECKS + 5))
    (tmp_path / "boot-checks.json").write_text(json.dumps({"not": "a list"}))
    assert read_boot_checks(tmp_path) == []
