"""The gateway's decisions: trunk choice, pre-emption, call-back routing, numbers, answers."""

from __future__ import annotations

import re

import pytest

from appliance.gateway import policy
from appliance.gateway.policy import (
    ActiveCall,
    CallKind,
    EmergencyCallMemo,
    NumberVerdict,
    SelectionOutcome,
    TrunkView,
)
from drivers.trunk import EndCause, TrunkHealth, TrunkState


def view(name, order, state=TrunkState.READY, *, active=0, max_calls=1, reason=""):
    return TrunkView(name=name, order=order, health=TrunkHealth(state=state, reason=reason),
                     active_calls=active, max_calls=max_calls)


# -- trunk selection ---------------------------------------------------------------------------


def test_configured_order_decides_among_ready_trunks_with_free_slots():
    selection = policy.select_trunks([view("pots", 1), view("lte", 0)])
    assert selection.outcome is SelectionOutcome.CHOSEN
    assert selection.candidates == ("lte", "pots")


def test_unhealthy_and_full_trunks_are_skipped():
    selection = policy.select_trunks([
        view("lte1", 0, TrunkState.DOWN), view("lte2", 1, active=1),
        view("pots", 2, TrunkState.RECOVERING), view("lte3", 3)])
    assert selection.candidates == ("lte3",)
    assert selection.full == ("lte2",)


def test_free_capacity_counts_slots_not_trunks():
    selection = policy.select_trunks([view("lte", 0, active=1, max_calls=2)])
    assert selection.candidates == ("lte",)


def test_every_slot_taken_is_all_busy():
    selection = policy.select_trunks([view("lte", 0, active=1), view("pots", 1, active=1)])
    assert selection.outcome is SelectionOutcome.ALL_BUSY
    assert selection.full == ("lte", "pots")


def test_no_trunk_in_service_says_why():
    selection = policy.select_trunks([view("lte", 0, TrunkState.DOWN, reason="no SIM"),
                                      view("pots", 1, TrunkState.LIMITED)])
    assert selection.outcome is SelectionOutcome.NONE_IN_SERVICE
    assert "lte: down (no SIM)" in selection.reason and "pots: limited" in selection.reason


def test_no_trunks_at_all():
    selection = policy.select_trunks([])
    assert selection.outcome is SelectionOutcome.NONE_IN_SERVICE
    assert selection.reason == "no trunks are configured"


def test_emergency_calls_may_use_limited_trunks_but_prefer_ready_ones():
    trunks = [view("nosim", 0, TrunkState.LIMITED), view("lte", 1), view("dead", 2,
                                                                         TrunkState.DOWN)]
    assert policy.select_trunks(trunks).candidates == ("lte",)
    assert policy.select_trunks(trunks, emergency=True).candidates == ("lte", "nosim")


def test_only_restricts_to_the_named_trunk():
    trunks = [view("lte", 0), view("pots", 1)]
    assert policy.select_trunks(trunks, only="pots").candidates == ("pots",)
    unknown = policy.select_trunks(trunks, only="nope")
    assert unknown.outcome is SelectionOutcome.UNKNOWN_TRUNK


# -- pre-emption -------------------------------------------------------------------------------


def call(key, kind=CallKind.OUTBOUND, *, trunk="lte", emergency=False, answered=True, at=0.0):
    return ActiveCall(key=key, trunk=trunk, kind=kind, emergency=emergency, answered=answered,
                      started_at=at)


def test_test_calls_go_first_then_outbound_then_inbound():
    calls = [call("in", CallKind.INBOUND), call("out", CallKind.OUTBOUND),
             call("test", CallKind.TEST)]
    assert policy.preemption_victim(calls, ["lte"]).key == "test"
    assert policy.preemption_victim(calls[:2], ["lte"]).key == "out"


def test_a_call_still_ringing_goes_before_an_answered_one_of_the_same_kind():
    calls = [call("talking", answered=True, at=5), call("ringing", answered=False, at=1)]
    assert policy.preemption_victim(calls, ["lte"]).key == "ringing"


def test_the_newest_call_goes_first_among_equals():
    calls = [call("old", at=1.0), call("new", at=9.0), call("mid", at=5.0)]
    assert policy.preemption_victim(calls, ["lte"]).key == "new"


def test_emergency_calls_are_never_preempted():
    calls = [call("e1", emergency=True), call("e2", emergency=True, kind=CallKind.TEST)]
    assert policy.preemption_victim(calls, ["lte"]) is None


def test_only_calls_on_the_full_trunks_are_candidates():
    calls = [call("elsewhere", trunk="pots", kind=CallKind.TEST), call("here", trunk="lte",
                                                                      kind=CallKind.INBOUND)]
    assert policy.preemption_victim(calls, ["lte"]).key == "here"


# -- call-backs --------------------------------------------------------------------------------


def test_callback_within_the_window_on_the_same_trunk_rings_the_caller():
    memos = [EmergencyCallMemo(extension="101", trunk="lte", dialled="911", at=1000.0)]
    found = policy.callback_extension(memos, trunk="lte", now=1000.0 + 3599, window_s=3600)
    assert found.extension == "101"


@pytest.mark.parametrize(("trunk", "now"), [("lte", 1000.0 + 3601), ("pots", 1100.0),
                                            ("lte", 999.0)])
def test_no_callback_outside_the_window_or_on_another_trunk(trunk, now):
    memos = [EmergencyCallMemo(extension="101", trunk="lte", dialled="911", at=1000.0)]
    assert policy.callback_extension(memos, trunk=trunk, now=now, window_s=3600) is None


def test_the_latest_emergency_caller_wins():
    memos = [EmergencyCallMemo(extension="101", trunk="lte", dialled="911", at=1000.0),
             EmergencyCallMemo(extension="102", trunk="lte", dialled="911", at=1500.0)]
    assert policy.callback_extension(memos, trunk="lte", now=1600.0,
                                     window_s=3600).extension == "102"


# -- numbers -----------------------------------------------------------------------------------

PATTERNS = (re.compile(r"\+?[0-9]{7,15}"),)


@pytest.mark.parametrize(("dialled", "marked", "verdict", "number"), [
    ("911", False, NumberVerdict.EMERGENCY, "911"),
    ("9911", False, NumberVerdict.EMERGENCY, "911"),      # outside prefix + emergency
    ("112", False, NumberVerdict.EMERGENCY, "112"),
    ("5551234", True, NumberVerdict.EMERGENCY, "5551234"),  # the proxy marked it
    ("95551234567", False, NumberVerdict.EXTERNAL, "5551234567"),
    ("+15551234567", False, NumberVerdict.EXTERNAL, "+15551234567"),
    ("955512", False, NumberVerdict.INCOMPLETE, "55512"),
    ("12", False, NumberVerdict.INCOMPLETE, "12"),
    ("1234567890123456789", False, NumberVerdict.INVALID, "1234567890123456789"),
    ("alice", False, NumberVerdict.INVALID, "alice"),
])
def test_classify_number(dialled, marked, verdict, number):
    classified = policy.classify_number(dialled, emergency_numbers=("911", "112"),
                                        outside_prefix="9", external_patterns=PATTERNS,
                                        emergency_marked=marked)
    assert (classified.verdict, classified.number) == (verdict, number)


# -- answers and records -----------------------------------------------------------------------


@pytest.mark.parametrize(("cause", "status", "retry"), [
    (EndCause.BUSY, 486, None),
    (EndCause.NO_ANSWER, 480, None),
    (EndCause.REJECTED, 404, None),
    (EndCause.NO_SERVICE, 503, 30),
    (EndCause.FAILED, 503, 30),
    (EndCause.LOCAL_HANGUP, 487, None),
    (EndCause.NORMAL, 480, None),
])
def test_failure_answers(cause, status, retry):
    answer = policy.failure_answer(cause, retry_after_s=30)
    assert (answer.status, answer.retry_after_s) == (status, retry)


def test_no_trunk_answers():
    busy = policy.Selection(outcome=SelectionOutcome.ALL_BUSY)
    none = policy.Selection(outcome=SelectionOutcome.NONE_IN_SERVICE)
    assert policy.no_trunk_answer(busy, retry_after_s=30).status == 486
    answer = policy.no_trunk_answer(none, retry_after_s=30)
    assert (answer.status, answer.retry_after_s) == (503, 30)


@pytest.mark.parametrize(("cause", "answered", "gave_up", "result"), [
    (EndCause.NORMAL, True, False, "answered"),
    (None, False, True, "cancelled"),
    (EndCause.BUSY, False, False, "busy"),
    (EndCause.NO_ANSWER, False, False, "no-answer"),
    (EndCause.MISSED, False, False, "no-answer"),
    (EndCause.REJECTED, False, False, "rejected"),
    (EndCause.FAILED, False, False, "failed"),
])
def test_record_results(cause, answered, gave_up, result):
    assert policy.record_result(cause, answered=answered, caller_gave_up=gave_up) == result
