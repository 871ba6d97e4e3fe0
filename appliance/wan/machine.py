"""The WAN failover state machine: states, inputs, and the one table that joins them.

Built on ``transitions`` used narrowly: a plain ``Machine``, ``queued=True``,
``auto_transitions=False``, the states are :class:`WanState`, the table below is the whole
behaviour, conditions are pure predicates on the input, and the only callback records the
transition. The machine knows no time and no probes; :mod:`appliance.wan.decision` turns
observations into :class:`MachineInput` values (with hysteresis and damping already applied)
and feeds them here. A trigger a state does not list is a bug and raises
:class:`~appliance.wan.errors.InvalidInput`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Mapping
from typing import Any

from transitions import Machine, MachineError

from .errors import InvalidInput
from .events import WanState

# transitions logs every callback at INFO; our own journal says what matters.
logging.getLogger("transitions").setLevel(logging.WARNING)


class InputKind(enum.StrEnum):
    LINK_LOST = "link_lost"            # carrier, address, default route or the device lost
    FAILED_ROUND = "failed_round"      # no cloud region served in one round (below the fall count)
    FALL = "fall"                      # the fall count of failed rounds in a row was reached
    GOOD_UNCONFIRMED = "good_unconfirmed"  # a good round, fewer than rise_rounds in a row yet
    GOOD = "good"                      # rise_rounds good rounds in a row (and the link is fine)
    HOLD_DOWN_DONE = "hold_down_done"  # the recovering hold-down ran out with no failed round
    FORCE = "force"                    # a technician forced failover
    RELEASE = "release"                # a technician released a forced failover


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MachineInput:
    kind: InputKind
    cause: str
    evidence: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    partial: bool = False
    """GOOD / HOLD_DOWN_DONE: the cloud serves, but something is failing (region, anchor, DNS)."""
    suppressed: bool = False
    """GOOD: the flap penalty is above the suppression threshold; stay in outage."""
    cloud_up: bool = False
    """RELEASE: fresh probes say the cloud is reachable right now."""


S = WanState
_STAY = None  # an internal transition: the state does not change

# trigger, source, dest, condition (a MachineInput flag) -- read top to bottom; for one trigger
# and source the first row whose condition holds wins.
TABLE: tuple[tuple[InputKind, WanState, WanState | None, str | None], ...] = (
    # Loss of the link is an outage at once, whatever the probes say.
    (InputKind.LINK_LOST, S.STARTING, S.OUTAGE, None),
    (InputKind.LINK_LOST, S.ONLINE, S.OUTAGE, None),
    (InputKind.LINK_LOST, S.DEGRADED, S.OUTAGE, None),
    (InputKind.LINK_LOST, S.RECOVERING, S.OUTAGE, None),
    (InputKind.LINK_LOST, S.OUTAGE, _STAY, None),
    (InputKind.LINK_LOST, S.FORCED, _STAY, None),
    # One failed round: nothing yet, except that a recovering cloud must stay good throughout.
    (InputKind.FAILED_ROUND, S.STARTING, _STAY, None),
    (InputKind.FAILED_ROUND, S.ONLINE, _STAY, None),
    (InputKind.FAILED_ROUND, S.DEGRADED, _STAY, None),
    (InputKind.FAILED_ROUND, S.RECOVERING, S.OUTAGE, None),
    (InputKind.FAILED_ROUND, S.OUTAGE, _STAY, None),
    (InputKind.FAILED_ROUND, S.FORCED, _STAY, None),
    # Enough failed rounds in a row: outage.
    (InputKind.FALL, S.STARTING, S.OUTAGE, None),
    (InputKind.FALL, S.ONLINE, S.OUTAGE, None),
    (InputKind.FALL, S.DEGRADED, S.OUTAGE, None),
    (InputKind.FALL, S.RECOVERING, S.OUTAGE, None),
    (InputKind.FALL, S.OUTAGE, _STAY, None),
    (InputKind.FALL, S.FORCED, _STAY, None),
    # A good round that does not yet make rise_rounds in a row changes nothing.
    (InputKind.GOOD_UNCONFIRMED, S.STARTING, _STAY, None),
    (InputKind.GOOD_UNCONFIRMED, S.ONLINE, _STAY, None),
    (InputKind.GOOD_UNCONFIRMED, S.DEGRADED, _STAY, None),
    (InputKind.GOOD_UNCONFIRMED, S.RECOVERING, _STAY, None),
    (InputKind.GOOD_UNCONFIRMED, S.OUTAGE, _STAY, None),
    (InputKind.GOOD_UNCONFIRMED, S.FORCED, _STAY, None),
    # Confirmed good: first verdict, online <-> degraded, or the start of the hold-down.
    (InputKind.GOOD, S.STARTING, S.DEGRADED, "partial"),
    (InputKind.GOOD, S.STARTING, S.ONLINE, None),
    (InputKind.GOOD, S.ONLINE, S.DEGRADED, "partial"),
    (InputKind.GOOD, S.ONLINE, _STAY, None),
    (InputKind.GOOD, S.DEGRADED, _STAY, "partial"),
    (InputKind.GOOD, S.DEGRADED, S.ONLINE, None),
    (InputKind.GOOD, S.OUTAGE, _STAY, "suppressed"),
    (InputKind.GOOD, S.OUTAGE, S.RECOVERING, None),
    (InputKind.GOOD, S.RECOVERING, _STAY, None),
    (InputKind.GOOD, S.FORCED, _STAY, None),
    # The hold-down ran out: hand the phones back.
    (InputKind.HOLD_DOWN_DONE, S.RECOVERING, S.DEGRADED, "partial"),
    (InputKind.HOLD_DOWN_DONE, S.RECOVERING, S.ONLINE, None),
    # Technician overrides.
    (InputKind.FORCE, S.STARTING, S.FORCED, None),
    (InputKind.FORCE, S.ONLINE, S.FORCED, None),
    (InputKind.FORCE, S.DEGRADED, S.FORCED, None),
    (InputKind.FORCE, S.OUTAGE, S.FORCED, None),
    (InputKind.FORCE, S.RECOVERING, S.FORCED, None),
    (InputKind.RELEASE, S.FORCED, S.RECOVERING, "cloud_up"),
    (InputKind.RELEASE, S.FORCED, S.OUTAGE, None),
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StateChange:
    previous: WanState
    state: WanState
    input: MachineInput


class _Model:
    """The object ``transitions`` decorates with trigger methods; nothing else lives here."""

    state: WanState


class WanMachine:
    def __init__(self, initial: WanState = WanState.STARTING) -> None:
        self._model = _Model()
        self._change: StateChange | None = None
        self._machine = Machine(
            model=self._model,
            states=WanState,
            initial=initial,
            transitions=[_row(*row) for row in TABLE],
            auto_transitions=False,
            queued=True,
            send_event=True,
            ignore_invalid_triggers=False,
            after_state_change=self._record,
        )

    @property
    def state(self) -> WanState:
        return self._model.state

    def allows(self, kind: InputKind) -> bool:
        return any(k is kind and source is self.state for k, source, _, _ in TABLE)

    def feed(self, given: MachineInput) -> StateChange | None:
        """Apply one input; returns the state change it caused, if any."""
        if not self.allows(given.kind):
            raise InvalidInput(f"input {given.kind} is not allowed in state {self.state}")
        self._change = None
        try:
            self._model.trigger(str(given.kind), input=given)
        except MachineError as error:  # pragma: no cover - guarded by allows() above
            raise InvalidInput(str(error)) from None
        change, self._change = self._change, None
        return change

    def _record(self, event) -> None:
        source = event.transition.source
        dest = event.transition.dest
        if dest is None or source == dest:
            return
        # transitions names Enum states by member name
        self._change = StateChange(previous=WanState[source], state=WanState[dest],
                                   input=event.kwargs["input"])


def _row(kind: InputKind, source: WanState, dest: WanState | None,
         condition: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"trigger": str(kind), "source": source, "dest": dest}
    if condition is not None:
        row["conditions"] = [_flag(condition)]
    return row


def _flag(name: str):
    def condition(event) -> bool:
        return bool(getattr(event.kwargs["input"], name))

    condition.__name__ = f"input_is_{name}"
    return condition
