"""How the outage bench reads its recovery figure from jbcd's WAN transitions. Under heavy
loss some probes get through, so the monitor can already be 'recovering' (its hold-down
running) when the bench restores the WAN: that is a recovery time of 0, not "never" (a
fresh-clone CI run failed on it: hand-back 2.78 s after the restore with a 3 s hold-down)."""

from __future__ import annotations

import types

import pytest

from jbcbench.outage import OutageScenario
from jbcbench.timeline import JournalWatch

RESTORED = 100.0


def recovering_after(*transitions: tuple[float, str]):
    journal = JournalWatch(lab=None, timeline=None)
    journal.transitions = [{"time": at, "details": {"state": state,
                                                    "evidence": {"hold_down_s": 3.0}}}
                           for at, state in transitions]
    scenario = types.SimpleNamespace(journal=journal,
                                     wan=types.SimpleNamespace(hold_down_s=3.0))
    found = OutageScenario._recovering_after(scenario, RESTORED)
    return None if found is None else found["time"]


@pytest.mark.parametrize(("transitions", "recovering_at"), [
    ([(10, "outage"), (100.6, "recovering"), (103.6, "online")], 100.6),
    ([(10, "outage"), (99.8, "recovering"), (102.8, "degraded")], 99.8),
    ([(10, "outage"), (99, "recovering"), (100.4, "outage"), (101, "recovering"),
      (104, "online")], 101),
    ([(10, "outage"), (99, "recovering"), (102, "online"), (150, "outage"),
      (160, "recovering")], 99),
], ids=["after-the-restore", "already-at-the-restore", "fell-back-then-recovered",
        "a-later-flap-is-not-it"])
def test_the_recovering_that_led_to_the_hand_back(transitions, recovering_at):
    assert recovering_after(*transitions) == recovering_at
