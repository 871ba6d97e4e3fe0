"""The modem supervisor, checked against a table of every (state, input) pair on fake time.

EXPECTED below is written from the behaviour we want, independently of supervisor.TABLE, so
that each checks the other. Each state is reached through real inputs, with settings chosen
so that a guard holds or fails: ``steps`` (3 leaves steps after the first, 1 leaves none),
the ladder (two rungs leave one after the first reset; an empty one leaves none), patience
(2 polls tolerates one timeout; 1 none) and whether the AT port is open.
"""

from __future__ import annotations

import re

import pytest

from drivers import supervisor as sv
from drivers.supervisor import (
    KEEP,
    ActionKind,
    Input,
    InvalidInput,
    ModemSupervisor,
    Rung,
    SupervisorSettings,
    SupervisorState,
)

S = SupervisorState
I = Input  # noqa: E741 - reads like the table
A = ActionKind
BAD = "invalid"
NOW = 100.0

# (state, input) -> {context: (next state, action kinds, wait)}; context None is the plain
# case, otherwise the name of the condition that makes a guard fail or hold.
EXPECTED: dict[tuple[SupervisorState, Input], dict[str | None, object]] = {
    (S.STARTING, I.PORT_APPEARED): {None: (S.INITIALISING, [A.INIT_STEP], "step_timeout_s")},
    (S.STARTING, I.TIMER): {None: (S.DOWN, [A.OPEN], None)},
    **{(S.STARTING, given): {None: BAD} for given in (
        I.PORT_LOST, I.STEP_OK, I.STEP_FAILED, I.UNUSABLE, I.HEALTHY, I.LIMITED,
        I.POLL_TIMEOUT, I.REBOOTED, I.AUDIO_FAILED, I.ANSWERS, I.RESETTING, I.RUNG_FAILED)},

    (S.INITIALISING, I.STEP_OK): {
        "steps left": (S.INITIALISING, [A.INIT_STEP], "step_timeout_s"),
        "no steps left": (S.INITIALISING, [A.POLL], "step_timeout_s")},
    (S.INITIALISING, I.HEALTHY): {None: (S.READY, [A.MONITOR], None)},
    (S.INITIALISING, I.LIMITED): {None: (S.LIMITED, [A.MONITOR], None)},
    **{(S.INITIALISING, given): {
        None: (S.RECOVERING, [A.FAIL_CALLS, A.RESET], "reset_wait_s"),
        "no ladder": (S.DOWN, [A.FAIL_CALLS, A.STOP], "down_retry_s")}
       for given in (I.STEP_FAILED, I.POLL_TIMEOUT, I.TIMER)},
    (S.INITIALISING, I.UNUSABLE): {None: (S.DOWN, [A.FAIL_CALLS, A.STOP], "unusable_retry_s")},
    (S.INITIALISING, I.PORT_LOST): {
        None: (S.RECOVERING, [A.FAIL_CALLS, A.STOP, A.OPEN], "port_wait_s")},
    (S.INITIALISING, I.REBOOTED): {
        None: (S.INITIALISING, [A.FAIL_CALLS, A.INIT_STEP], "step_timeout_s")},
    **{(S.INITIALISING, given): {None: BAD} for given in (
        I.PORT_APPEARED, I.AUDIO_FAILED, I.ANSWERS, I.RESETTING, I.RUNG_FAILED)},

    **{(state, given): outcome for state in (S.READY, S.LIMITED) for given, outcome in {
        I.HEALTHY: {None: (S.READY, [], KEEP)},
        I.LIMITED: {None: (S.LIMITED, [], KEEP)},
        I.POLL_TIMEOUT: {
            None: (state, [], KEEP),
            "no patience": (S.RECOVERING, [A.STOP, A.FAIL_CALLS, A.RESET], "reset_wait_s"),
            "no patience, no ladder": (S.DOWN, [A.STOP, A.FAIL_CALLS], "down_retry_s")},
        I.AUDIO_FAILED: {
            None: (S.RECOVERING, [A.STOP, A.FAIL_CALLS, A.RESET_MODEM], "reset_wait_s")},
        I.PORT_LOST: {None: (S.RECOVERING, [A.STOP, A.FAIL_CALLS, A.OPEN], "port_wait_s")},
        I.REBOOTED: {
            None: (S.INITIALISING, [A.STOP, A.FAIL_CALLS, A.INIT_STEP], "step_timeout_s")},
        **{given: {None: BAD} for given in (
            I.PORT_APPEARED, I.STEP_OK, I.STEP_FAILED, I.UNUSABLE, I.ANSWERS, I.RESETTING,
            I.RUNG_FAILED, I.TIMER)},
    }.items()},

    (S.RECOVERING, I.ANSWERS): {None: (S.INITIALISING, [A.INIT_STEP], "step_timeout_s")},
    (S.RECOVERING, I.RESETTING): {None: (S.RECOVERING, [], "reset_wait_s")},
    (S.RECOVERING, I.RUNG_FAILED): {
        None: (S.RECOVERING, [A.RESET], "reset_wait_s"),
        "ladder used up": (S.DOWN, [A.STOP], "down_retry_s")},
    (S.RECOVERING, I.PORT_LOST): {None: (S.RECOVERING, [A.STOP, A.OPEN], "port_wait_s")},
    (S.RECOVERING, I.PORT_APPEARED): {
        "port closed": (S.INITIALISING, [A.INIT_STEP], "step_timeout_s")},
    (S.RECOVERING, I.REBOOTED): {None: (S.INITIALISING, [A.INIT_STEP], "step_timeout_s")},
    (S.RECOVERING, I.TIMER): {
        None: (S.INITIALISING, [A.INIT_STEP], "step_timeout_s"),
        "port closed": (S.DOWN, [A.STOP, A.OPEN], None)},
    **{(S.RECOVERING, given): {None: BAD} for given in (
        I.STEP_OK, I.STEP_FAILED, I.UNUSABLE, I.HEALTHY, I.LIMITED, I.POLL_TIMEOUT,
        I.AUDIO_FAILED)},

    (S.DOWN, I.TIMER): {
        None: (S.INITIALISING, [A.INIT_STEP], "step_timeout_s"),
        "port closed": (S.DOWN, [A.OPEN], None)},
    (S.DOWN, I.PORT_APPEARED): {
        "port closed": (S.INITIALISING, [A.INIT_STEP], "step_timeout_s")},
    (S.DOWN, I.PORT_LOST): {None: (S.DOWN, [A.OPEN], KEEP)},
    (S.DOWN, I.REBOOTED): {None: (S.INITIALISING, [A.INIT_STEP], "step_timeout_s")},
    **{(S.DOWN, given): {None: BAD} for given in (
        I.STEP_OK, I.STEP_FAILED, I.UNUSABLE, I.HEALTHY, I.LIMITED, I.POLL_TIMEOUT,
        I.AUDIO_FAILED, I.ANSWERS, I.RESETTING, I.RUNG_FAILED)},
}

CASES = [(state, given, context, expected)
         for (state, given), outcomes in EXPECTED.items()
         for context, expected in outcomes.items()]


def make(context: str | None, *, steps: int = 3) -> ModemSupervisor:
    ladder: tuple[Rung, ...] = (Rung.TOUCH_AUX, Rung.RESET_BY_AT)
    patience = 2
    if context in ("no ladder", "no patience, no ladder"):
        ladder = ()
    elif context == "ladder used up":
        ladder = (Rung.RESET_BY_AT,)
    if context and context.startswith("no patience"):
        patience = 1
    if context == "no steps left":
        steps = 1
    settings = SupervisorSettings(ladder=ladder, port_wait_s=40.0, step_timeout_s=30.0,
                                  reset_wait_s=20.0, poll_failures_before_reset=patience,
                                  down_retry_s=50.0, unusable_retry_s=500.0)
    return ModemSupervisor(settings, steps=steps)


def reach(state: SupervisorState, context: str | None) -> ModemSupervisor:
    """A supervisor in ``state`` at NOW, got there through real inputs."""
    sup = make(context)
    sup.start(0.0)
    port_closed = context == "port closed"
    if state is S.STARTING:
        pass
    elif state is S.DOWN:
        sup.handle(I.PORT_APPEARED, 1.0)
        sup.handle(I.UNUSABLE, 2.0, "no voice firmware")
        if port_closed:
            sup.handle(I.PORT_LOST, 3.0)  # and then it was unplugged
    else:
        sup.handle(I.PORT_APPEARED, 1.0)
        if state is S.RECOVERING:
            sup.handle(I.STEP_FAILED, 2.0, "no answer to AT")
            if port_closed:
                sup.handle(I.PORT_LOST, 3.0)
        elif state is not S.INITIALISING:
            for _ in range(sup.steps):
                sup.handle(I.STEP_OK, 2.0)
            sup.handle(I.HEALTHY if state is S.READY else I.LIMITED, 3.0, "no SIM")
    sup.take_actions()
    assert sup.state is state, (state, context, sup.state)
    return sup


def test_the_expected_table_covers_every_state_and_input():
    assert {(state, given) for state, given, _, _ in CASES} == {
        (state, given) for state in SupervisorState for given in Input}


@pytest.mark.parametrize(("state", "given", "context", "expected"), CASES,
                         ids=[f"{s}-{i}-{c or 'plain'}" for s, i, c, _ in CASES])
def test_each_state_and_input_goes_where_the_table_says(state, given, context, expected):
    sup = reach(state, context)
    deadline = sup.get_timer()
    if expected == BAD:
        with pytest.raises(InvalidInput):
            sup.handle(given, NOW)
        assert sup.state is state and sup.take_actions() == []
        return
    next_state, kinds, wait = expected
    if given is I.TIMER:
        assert deadline is not None
        sup.handle_timer(deadline + 0.001)
        now = deadline + 0.001
    else:
        sup.handle(given, NOW, "what happened")
        now = NOW
    assert sup.state is next_state
    assert [action.kind for action in sup.take_actions()] == kinds
    if wait is None:
        assert sup.get_timer() is None
    elif wait == KEEP:
        assert sup.get_timer() == deadline
    else:
        assert sup.get_timer() == pytest.approx(now + getattr(sup.settings, wait))


def test_the_module_table_has_no_rows_the_expected_table_lacks():
    for row in sv.TABLE:
        assert (row.state, row.input) in EXPECTED
        assert EXPECTED[(row.state, row.input)] != {None: BAD}


def test_the_docstring_table_is_the_module_table():
    doc = sv.__doc__
    rows = []
    for line in doc.splitlines():
        fields = re.split(r"\s{1,}", line.strip())
        if fields and fields[0] in {s.value for s in SupervisorState} and len(fields) >= 3:
            rows.append(line)
    assert len(rows) == len(sv.TABLE)
    for line, row in zip(rows, sv.TABLE, strict=True):
        assert line.split()[0] == row.state.value and line.split()[1] == row.input.value
        assert row.next.value in line.split()
        for action in row.actions:
            assert action.value in line.split()
        wait = "-" if row.wait is None else row.wait
        assert line.split()[-1] == wait


# Behaviour over time ---------------------------------------------------------------------


def settings(**changes) -> SupervisorSettings:
    values = dict(ladder=(Rung.TOUCH_AUX, Rung.RESET_BY_AT, Rung.RESET_BY_AUX,
                          Rung.RESET_BY_USB),
                  port_wait_s=45.0, step_timeout_s=60.0, reset_wait_s=45.0,
                  poll_failures_before_reset=2, down_retry_s=60.0, unusable_retry_s=600.0)
    values.update(changes)
    return SupervisorSettings(**values)


def in_service(sup: ModemSupervisor, now: float = 1.0) -> None:
    sup.start(0.0)
    sup.handle(I.PORT_APPEARED, now)
    for _ in range(sup.steps):
        sup.handle(I.STEP_OK, now)
    sup.handle(I.HEALTHY, now)
    sup.take_actions()


def test_init_steps_run_in_order_then_a_poll_decides():
    sup = ModemSupervisor(settings(), steps=3)
    sup.start(0.0)
    assert [a.kind for a in sup.take_actions()] == [A.OPEN]
    assert sup.get_timer() == 45.0
    sup.handle(I.PORT_APPEARED, 1.0)
    steps = [a.step for a in sup.take_actions()]
    for _ in range(3):
        sup.handle(I.STEP_OK, 2.0)
        steps += [a.step for a in sup.take_actions() if a.kind is A.INIT_STEP]
    assert steps == [0, 1, 2]
    assert sup.state is S.INITIALISING  # the third OK asked for the poll
    sup.handle(I.LIMITED, 3.0, "no SIM card: emergency calls only")
    assert sup.state is S.LIMITED and sup.reason == "no SIM card: emergency calls only"
    sup.handle(I.HEALTHY, 4.0)
    assert sup.state is S.READY and sup.reason == ""


def test_a_restarted_initialisation_begins_at_the_first_step():
    sup = ModemSupervisor(settings(), steps=4)
    sup.start(0.0)
    sup.handle(I.PORT_APPEARED, 1.0)
    sup.handle(I.STEP_OK, 1.5)
    sup.take_actions()
    sup.handle(I.REBOOTED, 2.0)  # RDY half way through
    assert [a.step for a in sup.take_actions() if a.kind is A.INIT_STEP] == [0]


def test_the_ladder_is_climbed_rung_by_rung_then_rest_then_again():
    sup = ModemSupervisor(settings(), steps=1)
    in_service(sup)
    sup.handle(I.POLL_TIMEOUT, 10.0)
    assert sup.state is S.READY  # one unanswered poll is patience, not a verdict
    sup.handle(I.POLL_TIMEOUT, 11.0, "AT+CSQ: no answer within 2 s")
    rungs = [a.rung for a in sup.take_actions() if a.kind is A.RESET]
    assert sup.reason == "AT+CSQ: no answer within 2 s"
    for _ in range(3):
        sup.handle(I.RUNG_FAILED, 12.0)
        rungs += [a.rung for a in sup.take_actions() if a.kind is A.RESET]
    assert rungs == [Rung.TOUCH_AUX, Rung.RESET_BY_AT, Rung.RESET_BY_AUX, Rung.RESET_BY_USB]
    sup.handle(I.RUNG_FAILED, 13.0)
    assert sup.state is S.DOWN
    assert sup.reason == ("AT+CSQ: no answer within 2 s; resetting it did not help (check the "
                          "modem's power supply and USB cable); trying again in 60 s")
    sup.handle_timer(72.9)
    assert sup.state is S.DOWN  # not before its time
    sup.handle_timer(73.0)
    assert sup.state is S.INITIALISING
    sup.handle(I.STEP_FAILED, 74.0, "no answer to AT")
    assert [a.rung for a in sup.take_actions() if a.kind is A.RESET] == [Rung.TOUCH_AUX]


def test_a_modem_back_in_service_starts_the_ladder_from_the_bottom():
    sup = ModemSupervisor(settings(), steps=1)
    in_service(sup)
    sup.handle(I.POLL_TIMEOUT, 10.0)
    sup.handle(I.POLL_TIMEOUT, 11.0)
    sup.handle(I.RUNG_FAILED, 12.0)      # touch-aux did nothing
    sup.handle(I.RESETTING, 12.5)        # AT+CFUN=1,1 taken
    sup.handle(I.PORT_LOST, 13.0)
    sup.handle(I.PORT_APPEARED, 20.0)
    sup.handle(I.STEP_OK, 21.0)
    sup.handle(I.HEALTHY, 22.0)
    assert sup.state is S.READY and sup.recoveries == 1
    sup.take_actions()
    sup.handle(I.POLL_TIMEOUT, 30.0)
    sup.handle(I.POLL_TIMEOUT, 31.0)
    assert [a.rung for a in sup.take_actions() if a.kind is A.RESET] == [Rung.TOUCH_AUX]


def test_a_step_failing_during_recovery_climbs_on_rather_than_starting_over():
    sup = ModemSupervisor(settings(), steps=2)
    in_service(sup)
    sup.handle(I.POLL_TIMEOUT, 10.0)
    sup.handle(I.POLL_TIMEOUT, 11.0)
    sup.handle(I.ANSWERS, 12.0)          # touching the other port woke it up...
    sup.handle(I.STEP_FAILED, 13.0)      # ...but not for long
    assert [a.rung for a in sup.take_actions() if a.kind is A.RESET] == [
        Rung.TOUCH_AUX, Rung.RESET_BY_AT]


def test_audio_failure_skips_the_rungs_that_only_wake_a_port():
    sup = ModemSupervisor(settings(), steps=1)
    in_service(sup)
    sup.handle(I.AUDIO_FAILED, 10.0, "no audio from the modem on the last call")
    actions = sup.take_actions()
    assert [a.rung for a in actions if a.kind is A.RESET_MODEM] == [Rung.RESET_BY_AT]
    assert sup.reason == "no audio from the modem on the last call"


def test_a_modem_that_resets_without_leaving_usb_is_initialised_after_the_wait():
    sup = ModemSupervisor(settings(), steps=1)
    in_service(sup)
    sup.handle(I.POLL_TIMEOUT, 10.0)
    sup.handle(I.POLL_TIMEOUT, 11.0)
    sup.handle(I.RUNG_FAILED, 12.0)
    sup.handle(I.RESETTING, 13.0)
    assert sup.get_timer() == 58.0 and sup.rung is Rung.RESET_BY_AT
    assert sup.reason == "the modem stopped answering commands"
    sup.take_actions()
    sup.handle_timer(58.0)
    assert sup.state is S.INITIALISING
    assert [a.step for a in sup.take_actions()] == [0]


def test_a_modem_that_leaves_usb_and_stays_away_is_down_until_it_returns():
    sup = ModemSupervisor(settings(), steps=1)
    in_service(sup)
    sup.handle(I.PORT_LOST, 10.0, "the AT port vanished (read failed: EIO)")
    assert sup.state is S.RECOVERING and sup.get_timer() == 55.0
    assert [a.kind for a in sup.take_actions()] == [A.STOP, A.FAIL_CALLS, A.OPEN]
    sup.handle_timer(55.0)
    assert sup.state is S.DOWN and sup.get_timer() is None
    assert sup.reason == "the modem left USB and has not come back within 45 s"
    sup.handle(I.PORT_APPEARED, 300.0)
    assert sup.state is S.INITIALISING


def test_a_port_that_never_appears_is_down_with_a_reason_and_still_sought():
    sup = ModemSupervisor(settings(), steps=1)
    sup.start(0.0)
    sup.take_actions()
    sup.handle_timer(45.0)
    assert sup.state is S.DOWN
    assert sup.reason == "the AT port has not appeared within 45 s"
    assert [a.kind for a in sup.take_actions()] == [A.OPEN]
    sup.handle(I.PORT_APPEARED, 100.0)
    assert sup.state is S.INITIALISING


def test_an_unusable_modem_is_not_hammered():
    sup = ModemSupervisor(settings(), steps=3)
    sup.start(0.0)
    sup.handle(I.PORT_APPEARED, 1.0)
    sup.handle(I.UNUSABLE, 2.0, "the firmware has no USB voice support")
    assert sup.state is S.DOWN and sup.reason == "the firmware has no USB voice support"
    assert sup.get_timer() == 602.0
    sup.handle(I.PORT_LOST, 3.0)
    sup.handle(I.PORT_APPEARED, 4.0)  # replugged: worth a try at once
    assert sup.state is S.INITIALISING


def test_the_ladder_of_a_modem_without_restarting_rungs_still_ends():
    sup = ModemSupervisor(settings(ladder=(Rung.REOPEN,)), steps=1)
    in_service(sup)
    sup.handle(I.AUDIO_FAILED, 10.0)
    assert sup.state is S.RECOVERING
    assert [a.kind for a in sup.take_actions()] == [A.STOP, A.FAIL_CALLS, A.STOP]
    sup.handle_timer(55.0)
    assert sup.state is S.INITIALISING


def test_nothing_happens_before_the_deadline_and_no_deadline_means_no_timer():
    sup = ModemSupervisor(settings(), steps=1)
    in_service(sup)
    assert sup.get_timer() is None
    sup.handle_timer(1e9)
    assert sup.state is S.READY and sup.take_actions() == []
