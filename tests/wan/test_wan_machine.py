"""The failover state machine, checked against a table of every (state, input) pair."""

from __future__ import annotations

import pytest

from appliance.wan.events import WanState
from appliance.wan.machine import TABLE, InputKind, InvalidInput, MachineInput, WanMachine

S = WanState
I = InputKind  # noqa: E741 - reads like the table in the module
BAD = "invalid"
SAME = "same"

# (state, input) -> next state, per condition flag: None = the plain input, or the value when
# the named flag is set. Written independently of machine.TABLE so that each checks the other.
EXPECTED: dict[tuple[WanState, InputKind], dict[str | None, object]] = {
    (S.STARTING, I.LINK_LOST): {None: S.OUTAGE},
    (S.ONLINE, I.LINK_LOST): {None: S.OUTAGE},
    (S.DEGRADED, I.LINK_LOST): {None: S.OUTAGE},
    (S.OUTAGE, I.LINK_LOST): {None: SAME},
    (S.RECOVERING, I.LINK_LOST): {None: S.OUTAGE},
    (S.FORCED, I.LINK_LOST): {None: SAME},

    (S.STARTING, I.FAILED_ROUND): {None: SAME},
    (S.ONLINE, I.FAILED_ROUND): {None: SAME},
    (S.DEGRADED, I.FAILED_ROUND): {None: SAME},
    (S.OUTAGE, I.FAILED_ROUND): {None: SAME},
    (S.RECOVERING, I.FAILED_ROUND): {None: S.OUTAGE},
    (S.FORCED, I.FAILED_ROUND): {None: SAME},

    (S.STARTING, I.FALL): {None: S.OUTAGE},
    (S.ONLINE, I.FALL): {None: S.OUTAGE},
    (S.DEGRADED, I.FALL): {None: S.OUTAGE},
    (S.OUTAGE, I.FALL): {None: SAME},
    (S.RECOVERING, I.FALL): {None: S.OUTAGE},
    (S.FORCED, I.FALL): {None: SAME},

    **{(state, I.GOOD_UNCONFIRMED): {None: SAME} for state in S},

    (S.STARTING, I.GOOD): {None: S.ONLINE, "partial": S.DEGRADED},
    (S.ONLINE, I.GOOD): {None: SAME, "partial": S.DEGRADED},
    (S.DEGRADED, I.GOOD): {None: S.ONLINE, "partial": SAME},
    (S.OUTAGE, I.GOOD): {None: S.RECOVERING, "partial": S.RECOVERING, "suppressed": SAME},
    (S.RECOVERING, I.GOOD): {None: SAME, "partial": SAME},
    (S.FORCED, I.GOOD): {None: SAME, "partial": SAME},

    (S.STARTING, I.HOLD_DOWN_DONE): {None: BAD},
    (S.ONLINE, I.HOLD_DOWN_DONE): {None: BAD},
    (S.DEGRADED, I.HOLD_DOWN_DONE): {None: BAD},
    (S.OUTAGE, I.HOLD_DOWN_DONE): {None: BAD},
    (S.RECOVERING, I.HOLD_DOWN_DONE): {None: S.ONLINE, "partial": S.DEGRADED},
    (S.FORCED, I.HOLD_DOWN_DONE): {None: BAD},

    **{(state, I.FORCE): {None: S.FORCED} for state in S if state is not S.FORCED},
    (S.FORCED, I.FORCE): {None: BAD},

    **{(state, I.RELEASE): {None: BAD} for state in S if state is not S.FORCED},
    (S.FORCED, I.RELEASE): {None: S.OUTAGE, "cloud_up": S.RECOVERING},
}

CASES = [(state, kind, flag, expected)
         for (state, kind), outcomes in EXPECTED.items()
         for flag, expected in outcomes.items()]


def test_the_expected_table_covers_every_state_and_input():
    assert {(state, kind) for state, kind, _, _ in CASES} == {
        (state, kind) for state in WanState for kind in InputKind}


@pytest.mark.parametrize(("state", "kind", "flag", "expected"), CASES,
                         ids=[f"{s}-{k}-{f or 'plain'}" for s, k, f, _ in CASES])
def test_each_state_and_input_goes_where_the_table_says(state, kind, flag, expected):
    machine = WanMachine(state)
    given = MachineInput(kind=kind, cause="why", **({flag: True} if flag else {}))
    if expected == BAD:
        with pytest.raises(InvalidInput):
            machine.feed(given)
        assert machine.state is state
        return
    change = machine.feed(given)
    if expected == SAME:
        assert change is None and machine.state is state
    else:
        assert machine.state is expected
        assert change is not None and change.previous is state and change.state is expected
        assert change.input is given


def test_the_module_table_has_no_rows_the_expected_table_lacks():
    for kind, source, _dest, _condition in TABLE:
        assert (source, kind) in EXPECTED
