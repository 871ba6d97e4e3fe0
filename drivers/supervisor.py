"""The life of a modem, as one pure table: the ModemSupervisor core both trunk drivers run on.

A modem (LTE module or V.253 voice modem) is found, initialised, watched, and brought back
when it fails. The *what next* is decided here, from inputs and ``now``; the *how* (opening a
port, sending the vendor's init commands, touching the second AT port, asking for a USB
reset) is the driver's, which only supplies its init steps and its recovery ladder. No I/O,
no clock, no asyncio: inputs in, actions and one deadline out (``take_actions()``,
``get_timer()``, ``handle_timer(now)``), like the AT and SIP cores.

States:

============= ============= ============= ============ =========================== ================
state        input         guard         next         actions                     wait
============ ============= ============= ============ =========================== ================
starting     port-appeared               initialising init-step                   step_timeout_s
starting     timer                       down         open                        -
initialising step-ok       steps-left    initialising init-step                   step_timeout_s
initialising step-ok                     initialising poll                        step_timeout_s
initialising healthy                     ready        monitor                     -
initialising limited                     limited      monitor                     -
initialising step-failed   ladder-left   recovering   fail-calls reset            reset_wait_s
initialising step-failed                 down         fail-calls stop             down_retry_s
initialising poll-timeout  ladder-left   recovering   fail-calls reset            reset_wait_s
initialising poll-timeout                down         fail-calls stop             down_retry_s
initialising timer         ladder-left   recovering   fail-calls reset            reset_wait_s
initialising timer                       down         fail-calls stop             down_retry_s
initialising unusable                    down         fail-calls stop             unusable_retry_s
initialising port-lost                   recovering   fail-calls stop open        port_wait_s
initialising rebooted                    initialising fail-calls init-step        step_timeout_s
ready        healthy                     ready                                    keep
ready        limited                     limited                                  keep
ready        poll-timeout  patience-left ready                                    keep
ready        poll-timeout  ladder-left   recovering   stop fail-calls reset       reset_wait_s
ready        poll-timeout                down         stop fail-calls             down_retry_s
ready        audio-failed                recovering   stop fail-calls reset-modem reset_wait_s
ready        port-lost                   recovering   stop fail-calls open        port_wait_s
ready        rebooted                    initialising stop fail-calls init-step   step_timeout_s
limited      healthy                     ready                                    keep
limited      limited                     limited                                  keep
limited      poll-timeout  patience-left limited                                  keep
limited      poll-timeout  ladder-left   recovering   stop fail-calls reset       reset_wait_s
limited      poll-timeout                down         stop fail-calls             down_retry_s
limited      audio-failed                recovering   stop fail-calls reset-modem reset_wait_s
limited      port-lost                   recovering   stop fail-calls open        port_wait_s
limited      rebooted                    initialising stop fail-calls init-step   step_timeout_s
recovering   answers                     initialising init-step                   step_timeout_s
recovering   resetting                   recovering                               reset_wait_s
recovering   rung-failed   ladder-left   recovering   reset                       reset_wait_s
recovering   rung-failed                 down         stop                        down_retry_s
recovering   port-lost                   recovering   stop open                   port_wait_s
recovering   port-appeared               initialising init-step                   step_timeout_s
recovering   rebooted                    initialising init-step                   step_timeout_s
recovering   timer         port-open     initialising init-step                   step_timeout_s
recovering   timer                       down         stop open                   -
down         timer         port-open     initialising init-step                   step_timeout_s
down         timer                       down         open                        -
down         port-appeared               initialising init-step                   step_timeout_s
down         port-lost                   down         open                        keep
down         rebooted                    initialising init-step                   step_timeout_s
============ ============= ============= ============ =========================== ================

Why a ``recovering`` timer with the port open goes back to initialising rather than to the
next rung: after ``AT+CFUN=1,1`` some modems restart without leaving USB; the first init
step (does it answer AT?) tells within seconds, and a modem still hung fails it and climbs
on to the next rung, because the ladder only restarts once the modem is in service again.
"""

from __future__ import annotations

import dataclasses
import enum

from drivers.errors import DriverError


class SupervisorState(enum.StrEnum):
    STARTING = "starting"
    INITIALISING = "initialising"
    READY = "ready"
    LIMITED = "limited"
    RECOVERING = "recovering"
    DOWN = "down"


class Input(enum.StrEnum):
    PORT_APPEARED = "port-appeared"
    PORT_LOST = "port-lost"
    STEP_OK = "step-ok"
    STEP_FAILED = "step-failed"
    UNUSABLE = "unusable"
    HEALTHY = "healthy"
    LIMITED = "limited"
    POLL_TIMEOUT = "poll-timeout"
    REBOOTED = "rebooted"
    AUDIO_FAILED = "audio-failed"
    ANSWERS = "answers"
    RESETTING = "resetting"
    RUNG_FAILED = "rung-failed"
    TIMER = "timer"


class ActionKind(enum.StrEnum):
    OPEN = "open"
    STOP = "stop"
    FAIL_CALLS = "fail-calls"
    INIT_STEP = "init-step"
    POLL = "poll"
    MONITOR = "monitor"
    RESET = "reset"
    RESET_MODEM = "reset-modem"


class Rung(enum.StrEnum):
    """One step up the recovery ladder; each driver lists the ones its hardware has."""

    REOPEN = "reopen"
    """Close and reopen the AT port (clears host-side trouble; the modem is not touched)."""
    TOUCH_AUX = "touch-aux"
    """Write AT on the modem's other AT port, then ping the main one (quirk 8)."""
    RESET_BY_AT = "reset-by-at"
    """Restart the modem with a command on its AT port (LTE: AT+CFUN=1,1)."""
    RESET_BY_AUX = "reset-by-aux"
    """The same command on the other AT port, for when the main one is hung (quirk 4)."""
    RESET_BY_USB = "reset-by-usb"
    """Drop the modem off USB and back (its ``authorized`` attribute, through the
    privileged helper under the shipped unit)."""

    @property
    def restarts_modem(self) -> bool:
        return self in (Rung.RESET_BY_AT, Rung.RESET_BY_AUX, Rung.RESET_BY_USB)


class Guard(enum.StrEnum):
    STEPS_LEFT = "steps-left"
    LADDER_LEFT = "ladder-left"
    PATIENCE_LEFT = "patience-left"
    PORT_OPEN = "port-open"


KEEP = "keep"
"""A row's wait: leave the deadline as it is."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorSettings:
    """The supervisor's waits, in seconds, and its patience."""

    ladder: tuple[Rung, ...]
    """The recovery rungs this driver's hardware has, cheapest first."""
    port_wait_s: float = 45.0
    """How long the AT port may be away (at start, or after it vanished) before 'down'. A
    modem restarting takes about 10 s (reference 1.2); a slow USB hub more."""
    step_timeout_s: float = 60.0
    """No init step (nor the first health poll) may take longer; the steps' own command
    timeouts are shorter, this only guards against a step that never ends."""
    reset_wait_s: float = 45.0
    """After a rung: how long the modem may take to answer again or come back on USB."""
    poll_failures_before_reset: int = 2
    """Health or call polls in a row without an answer before the modem counts as hung
    (liveness is judged by replies, never URCs: quirk 4)."""
    down_retry_s: float = 60.0
    """After the whole ladder failed: rest this long in 'down', then start over."""
    unusable_retry_s: float = 600.0
    """A modem that cannot serve (no voice firmware, unsupported model) is tried again this
    seldom, not hammered (quirk 16); replugging it tries at once."""

    @classmethod
    def of(cls, driver_settings: object, ladder: tuple[Rung, ...]) -> SupervisorSettings:
        """The waits a driver's settings carry under the same names, with its ladder."""
        return cls(ladder=ladder, **{
            field.name: getattr(driver_settings, field.name)
            for field in dataclasses.fields(cls) if field.name != "ladder"})

    def wait(self, name: str) -> float:
        value = getattr(self, name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise AttributeError(f"{name} is not a wait")
        return float(value)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    kind: ActionKind
    step: int | None = None
    """INIT_STEP: which of the driver's steps (0-based)."""
    rung: Rung | None = None
    """RESET / RESET_MODEM: which rung to apply."""
    reason: str = ""
    """FAIL_CALLS / RESET: why, in words for the call records and the journal."""


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    state: SupervisorState
    input: Input
    guard: Guard | None
    next: SupervisorState
    actions: tuple[ActionKind, ...]
    wait: str | None
    """A SupervisorSettings wait name, KEEP, or None (no deadline)."""


class InvalidInput(DriverError):
    """An input the supervisor's table does not allow in the current state (a driver bug)."""


S, I, A, G = SupervisorState, Input, ActionKind, Guard  # noqa: E741 - the table reads better


def _in_service(state: SupervisorState) -> tuple[Row, ...]:
    """READY and LIMITED take the same inputs the same way; only the verdicts differ."""
    return (
        Row(state, I.HEALTHY, None, S.READY, (), KEEP),
        Row(state, I.LIMITED, None, S.LIMITED, (), KEEP),
        Row(state, I.POLL_TIMEOUT, G.PATIENCE_LEFT, state, (), KEEP),
        Row(state, I.POLL_TIMEOUT, G.LADDER_LEFT, S.RECOVERING,
             (A.STOP, A.FAIL_CALLS, A.RESET), "reset_wait_s"),
        Row(state, I.POLL_TIMEOUT, None, S.DOWN, (A.STOP, A.FAIL_CALLS), "down_retry_s"),
        Row(state, I.AUDIO_FAILED, None, S.RECOVERING, (A.STOP, A.FAIL_CALLS, A.RESET_MODEM),
             "reset_wait_s"),
        Row(state, I.PORT_LOST, None, S.RECOVERING, (A.STOP, A.FAIL_CALLS, A.OPEN),
             "port_wait_s"),
        Row(state, I.REBOOTED, None, S.INITIALISING, (A.STOP, A.FAIL_CALLS, A.INIT_STEP),
             "step_timeout_s"),
    )


TABLE: tuple[Row, ...] = (
    Row(S.STARTING, I.PORT_APPEARED, None, S.INITIALISING, (A.INIT_STEP,), "step_timeout_s"),
    Row(S.STARTING, I.TIMER, None, S.DOWN, (A.OPEN,), None),

    Row(S.INITIALISING, I.STEP_OK, G.STEPS_LEFT, S.INITIALISING, (A.INIT_STEP,),
         "step_timeout_s"),
    Row(S.INITIALISING, I.STEP_OK, None, S.INITIALISING, (A.POLL,), "step_timeout_s"),
    Row(S.INITIALISING, I.HEALTHY, None, S.READY, (A.MONITOR,), None),
    Row(S.INITIALISING, I.LIMITED, None, S.LIMITED, (A.MONITOR,), None),
    *(row for failure in (I.STEP_FAILED, I.POLL_TIMEOUT, I.TIMER) for row in (
        Row(S.INITIALISING, failure, G.LADDER_LEFT, S.RECOVERING, (A.FAIL_CALLS, A.RESET),
             "reset_wait_s"),
        Row(S.INITIALISING, failure, None, S.DOWN, (A.FAIL_CALLS, A.STOP), "down_retry_s"),
    )),
    Row(S.INITIALISING, I.UNUSABLE, None, S.DOWN, (A.FAIL_CALLS, A.STOP), "unusable_retry_s"),
    Row(S.INITIALISING, I.PORT_LOST, None, S.RECOVERING, (A.FAIL_CALLS, A.STOP, A.OPEN),
         "port_wait_s"),
    Row(S.INITIALISING, I.REBOOTED, None, S.INITIALISING, (A.FAIL_CALLS, A.INIT_STEP),
         "step_timeout_s"),

    *_in_service(S.READY),
    *_in_service(S.LIMITED),

    Row(S.RECOVERING, I.ANSWERS, None, S.INITIALISING, (A.INIT_STEP,), "step_timeout_s"),
    Row(S.RECOVERING, I.RESETTING, None, S.RECOVERING, (), "reset_wait_s"),
    Row(S.RECOVERING, I.RUNG_FAILED, G.LADDER_LEFT, S.RECOVERING, (A.RESET,), "reset_wait_s"),
    Row(S.RECOVERING, I.RUNG_FAILED, None, S.DOWN, (A.STOP,), "down_retry_s"),
    Row(S.RECOVERING, I.PORT_LOST, None, S.RECOVERING, (A.STOP, A.OPEN), "port_wait_s"),
    Row(S.RECOVERING, I.PORT_APPEARED, None, S.INITIALISING, (A.INIT_STEP,), "step_timeout_s"),
    Row(S.RECOVERING, I.REBOOTED, None, S.INITIALISING, (A.INIT_STEP,), "step_timeout_s"),
    Row(S.RECOVERING, I.TIMER, G.PORT_OPEN, S.INITIALISING, (A.INIT_STEP,), "step_timeout_s"),
    Row(S.RECOVERING, I.TIMER, None, S.DOWN, (A.STOP, A.OPEN), None),

    Row(S.DOWN, I.TIMER, G.PORT_OPEN, S.INITIALISING, (A.INIT_STEP,), "step_timeout_s"),
    Row(S.DOWN, I.TIMER, None, S.DOWN, (A.OPEN,), None),
    Row(S.DOWN, I.PORT_APPEARED, None, S.INITIALISING, (A.INIT_STEP,), "step_timeout_s"),
    Row(S.DOWN, I.PORT_LOST, None, S.DOWN, (A.OPEN,), KEEP),
    Row(S.DOWN, I.REBOOTED, None, S.INITIALISING, (A.INIT_STEP,), "step_timeout_s"),
)

IN_SERVICE = (SupervisorState.READY, SupervisorState.LIMITED)


class ModemSupervisor:
    def __init__(self, settings: SupervisorSettings, *, steps: int) -> None:
        if steps < 1:
            raise ValueError("a modem needs at least one init step (does it answer?)")
        self.settings = settings
        self.steps = steps
        self._state = SupervisorState.STARTING
        self._reason = "waiting for the AT port"
        self._deadline: float | None = None
        self._actions: list[Action] = []
        self._step = 0
        """The init step to run next."""
        self._rung = 0
        """Index into the ladder of the rung to apply next."""
        self._last_rung: Rung | None = None
        self._unanswered = 0
        self._port_open = False
        self._started = False
        self.recoveries = 0
        """Times the modem left service (to recover, or to initialise again)."""

    # -- inputs ----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin: open the port and give it ``port_wait_s`` to appear."""
        if self._started:
            return
        self._started = True
        self._actions.append(Action(kind=ActionKind.OPEN))
        self._deadline = now + self.settings.port_wait_s

    def handle(self, given: Input, now: float, detail: str = "") -> None:
        """Apply one input. ``detail`` says what happened, in words: it becomes the reason
        shown while recovering, limited or down, and the reason calls are failed with."""
        if given is Input.PORT_APPEARED:
            self._port_open = True
        elif given is Input.PORT_LOST:
            self._port_open = False
        row = self._match(given)
        previous = self._state
        self._state = row.next
        if previous in IN_SERVICE and row.next not in IN_SERVICE:
            self.recoveries += 1
        if previous is SupervisorState.DOWN and row.next is not SupervisorState.DOWN:
            self._rung = 0  # after a rest or a replug: the whole ladder again
        if previous is SupervisorState.INITIALISING and row.next in IN_SERVICE:
            self._rung = 0  # in service again: the ladder starts from the bottom next time
        if given is Input.POLL_TIMEOUT and row.next is previous:
            self._unanswered += 1
        else:
            self._unanswered = 0
        self._reason = self._reason_after(row, given, detail or _DETAILS.get(given, ""))
        for kind in row.actions:
            self._act(kind, given)
        if row.wait is None:
            self._deadline = None
        elif row.wait != KEEP:
            self._deadline = now + self.settings.wait(row.wait)

    def handle_timer(self, now: float) -> None:
        """Call at or after :meth:`get_timer`; nothing happens before the deadline."""
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        self.handle(Input.TIMER, now)

    # -- outputs ---------------------------------------------------------------------------

    @property
    def state(self) -> SupervisorState:
        return self._state

    @property
    def reason(self) -> str:
        """Why the state is what it is ('' when ready)."""
        return self._reason

    @property
    def rung(self) -> Rung | None:
        """The rung applied last (what 'recovering' is doing), None before any."""
        return self._last_rung

    @property
    def port_open(self) -> bool:
        return self._port_open

    @property
    def in_service(self) -> bool:
        return self._state in IN_SERVICE

    def get_timer(self) -> float | None:
        return self._deadline

    def take_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def allows(self, given: Input) -> bool:
        return any(row.state is self._state and row.input is given for row in TABLE)

    # -- internals -------------------------------------------------------------------------

    def _match(self, given: Input) -> Row:
        candidates = [row for row in TABLE if row.state is self._state and row.input is given]
        if not candidates:
            raise InvalidInput(f"modem supervisor: input {given} is not allowed in state "
                               f"{self._state}")
        for row in candidates:
            if row.guard is None or self._guard(row.guard):
                return row
        raise InvalidInput(f"modem supervisor: no row for {given} in {self._state} "
                           "(each pair must end with an unguarded row)")

    def _guard(self, guard: Guard) -> bool:
        if guard is Guard.STEPS_LEFT:
            return self._step < self.steps
        if guard is Guard.LADDER_LEFT:
            return self._rung < len(self.settings.ladder)
        if guard is Guard.PATIENCE_LEFT:
            return self._unanswered + 1 < self.settings.poll_failures_before_reset
        return self._port_open  # Guard.PORT_OPEN

    def _act(self, kind: ActionKind, given: Input) -> None:
        if kind is ActionKind.INIT_STEP:
            if given is not Input.STEP_OK:
                self._step = 0  # a fresh start of initialisation
            self._actions.append(Action(kind=kind, step=self._step))
            self._step += 1
        elif kind in (ActionKind.RESET, ActionKind.RESET_MODEM):
            ladder = self.settings.ladder
            if kind is ActionKind.RESET_MODEM:
                restarting = [i for i, rung in enumerate(ladder) if rung.restarts_modem]
                self._rung = max(self._rung, restarting[0]) if restarting else len(ladder)
            if self._rung >= len(ladder):
                # nothing on this ladder restarts the modem: the wait ends in initialising
                self._actions.append(Action(kind=ActionKind.STOP))
                return
            rung = self._last_rung = ladder[self._rung]
            self._rung += 1
            self._actions.append(Action(kind=kind, rung=rung, reason=self._reason))
        elif kind is ActionKind.FAIL_CALLS:
            self._actions.append(Action(kind=kind, reason=self._reason))
        else:
            self._actions.append(Action(kind=kind))

    def _reason_after(self, row: Row, given: Input, detail: str) -> str:
        """Why the supervisor is where it is now. While recovering, the reason stays the
        cause that started the recovery (the rung in progress is :attr:`rung`)."""
        state = row.next
        s = self.settings
        cause = self._reason if row.state is SupervisorState.RECOVERING else (
            detail or self._reason)
        if state is SupervisorState.READY:
            return ""
        if state is SupervisorState.INITIALISING:
            return "initialising the modem"
        if state in (SupervisorState.LIMITED, SupervisorState.RECOVERING):
            return cause
        # DOWN: why, by the wait the row starts
        if row.wait == "down_retry_s":
            return (f"{cause}; resetting it did not help (check the modem's power supply and "
                    f"USB cable); trying again in {s.down_retry_s:g} s")
        if row.wait == "unusable_retry_s":
            return cause
        if row.wait == KEEP or row.state is SupervisorState.DOWN:
            return self._reason
        if row.state is SupervisorState.STARTING:
            return f"the AT port has not appeared within {s.port_wait_s:g} s"
        return f"the modem left USB and has not come back within {s.reset_wait_s:g} s"


_DETAILS = {
    Input.PORT_LOST: "the AT port vanished",
    Input.REBOOTED: "the modem restarted by itself",
    Input.POLL_TIMEOUT: "the modem stopped answering commands",
    Input.AUDIO_FAILED: "the last call's audio path failed",
    Input.STEP_FAILED: "initialisation failed",
    Input.RUNG_FAILED: "the reset did not help",
    Input.TIMER: "no answer in time",
}
