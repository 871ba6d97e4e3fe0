"""The gateway's decisions, as pure functions of what is known now: which trunk a call takes,
which call an emergency call pre-empts, where a call from outside rings, what a failed attempt
answers to the handset, and what goes in the call record. No I/O, no clocks: time comes in as
an argument, so tests drive every rule with fake time.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Sequence

from drivers.trunk import EndCause, TrunkHealth, TrunkState

# ---------------------------------------------------------------------------------------------
# Trunk selection


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrunkView:
    """A trunk as the selection rule sees it: configured position, health, occupancy."""

    name: str
    order: int
    health: TrunkHealth
    active_calls: int
    max_calls: int

    @property
    def has_free_slot(self) -> bool:
        return self.active_calls < self.max_calls


class SelectionOutcome(enum.StrEnum):
    CHOSEN = "chosen"            # candidates holds the trunks to try, best first
    ALL_BUSY = "all-busy"        # trunks are in service but every slot is taken
    NONE_IN_SERVICE = "none-in-service"
    UNKNOWN_TRUNK = "unknown-trunk"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    outcome: SelectionOutcome
    candidates: tuple[str, ...] = ()
    """Trunks to try in this order; the next one is tried when a dial fails on the trunk."""
    full: tuple[str, ...] = ()
    """Trunks that could take the call but have no free slot (pre-emption looks here)."""
    reason: str = ""


def _usable(health: TrunkHealth, emergency: bool) -> bool:
    return health.can_place_emergency_calls if emergency else health.can_place_calls


def select_trunks(trunks: Sequence[TrunkView], *, emergency: bool = False,
                  only: str | None = None) -> Selection:
    """Candidates in policy order: configured order among trunks that are in service and have
    a free slot. Emergency calls may also use LIMITED trunks (no SIM, registration denied:
    the network still takes emergency calls), but READY trunks come first because only they
    can receive the emergency service's call back. ``only`` restricts to one named trunk."""
    pool = sorted(trunks, key=lambda t: t.order)
    if only is not None:
        pool = [t for t in pool if t.name == only]
        if not pool:
            return Selection(outcome=SelectionOutcome.UNKNOWN_TRUNK,
                             reason=f"no trunk named {only!r}")
    usable = [t for t in pool if _usable(t.health, emergency)]
    if emergency:
        usable.sort(key=lambda t: (t.health.state is not TrunkState.READY, t.order))
    free = tuple(t.name for t in usable if t.has_free_slot)
    full = tuple(t.name for t in usable if not t.has_free_slot)
    if free:
        return Selection(outcome=SelectionOutcome.CHOSEN, candidates=free, full=full)
    if full:
        return Selection(outcome=SelectionOutcome.ALL_BUSY, full=full,
                         reason="every trunk in service is busy with other calls")
    reasons = "; ".join(f"{t.name}: {t.health.state.value}"
                        + (f" ({t.health.reason})" if t.health.reason else "") for t in pool)
    return Selection(outcome=SelectionOutcome.NONE_IN_SERVICE,
                     reason=reasons or "no trunks are configured")


# ---------------------------------------------------------------------------------------------
# Pre-emption


class CallKind(enum.IntEnum):
    """Priority among non-emergency calls; a lower value is ended first."""

    TEST = 0
    OUTBOUND = 1
    INBOUND = 2


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ActiveCall:
    key: str
    trunk: str
    kind: CallKind
    emergency: bool
    answered: bool
    started_at: float


def preemption_victim(calls: Iterable[ActiveCall], trunks: Sequence[str]) -> ActiveCall | None:
    """The call an emergency call ends to free a slot on one of ``trunks`` (in service for
    emergency calls but full), or None when only emergency calls hold them.

    Lowest priority first: test calls, then outbound, then inbound calls (a customer calling
    the business); within a kind, a call still being set up before an answered one; then the
    most recently started (it has the least conversation to lose). Emergency calls and
    emergency call-backs are never pre-empted."""
    eligible = [c for c in calls if not c.emergency and c.trunk in trunks]
    if not eligible:
        return None
    return min(eligible, key=lambda c: (c.kind, c.answered, -c.started_at))


# ---------------------------------------------------------------------------------------------
# Emergency call-backs


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EmergencyCallMemo:
    extension: str
    trunk: str
    dialled: str
    at: float
    """When the emergency call ended (or started, while it is still going on)."""


def callback_extension(memos: Iterable[EmergencyCallMemo], *, trunk: str, now: float,
                       window_s: float) -> EmergencyCallMemo | None:
    """The emergency call an incoming call on ``trunk`` is presumed to call back: the latest
    emergency call placed on that same trunk (the emergency service calls back the number
    that called, i.e. this trunk's line) within ``window_s``. Caller ID is not required:
    emergency services often call back from numbers that are withheld or differ from the
    number dialled."""
    recent = [m for m in memos if m.trunk == trunk and 0 <= now - m.at <= window_s]
    return max(recent, key=lambda m: m.at) if recent else None


# ---------------------------------------------------------------------------------------------
# Numbers


class NumberVerdict(enum.StrEnum):
    EMERGENCY = "emergency"
    EXTERNAL = "external"
    INCOMPLETE = "incomplete"   # a prefix of a valid number: 484 Address Incomplete
    INVALID = "invalid"         # cannot become a valid number: 404 Not Found


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClassifiedNumber:
    verdict: NumberVerdict
    number: str
    """What goes to the trunk (outside prefix removed)."""


_DIALLABLE = re.compile(r"^\+?[0-9*#]+$")


def classify_number(dialled: str, *, emergency_numbers: Sequence[str], outside_prefix: str,
                    external_patterns: Sequence[re.Pattern[str]],
                    emergency_marked: bool = False) -> ClassifiedNumber:
    """Decide what a number dialled towards the gateway is. Emergency numbers are recognised
    with or without the outside prefix (people dial 9-911 as well as 911), and a call the
    proxy marked as an emergency is one whatever its digits."""
    number = dialled.strip()
    candidates = [number]
    if outside_prefix and number.startswith(outside_prefix) and len(number) > len(outside_prefix):
        candidates.append(number[len(outside_prefix):])
    for candidate in candidates:
        if candidate in emergency_numbers:
            return ClassifiedNumber(verdict=NumberVerdict.EMERGENCY, number=candidate)
    if emergency_marked:
        return ClassifiedNumber(verdict=NumberVerdict.EMERGENCY, number=candidates[-1])
    for candidate in reversed(candidates):  # the prefix-stripped form first
        if _DIALLABLE.match(candidate) and any(p.fullmatch(candidate) for p in external_patterns):
            return ClassifiedNumber(verdict=NumberVerdict.EXTERNAL, number=candidate)
    for candidate in reversed(candidates):
        if _DIALLABLE.match(candidate) and _could_complete(candidate, external_patterns):
            return ClassifiedNumber(verdict=NumberVerdict.INCOMPLETE, number=candidate)
    return ClassifiedNumber(verdict=NumberVerdict.INVALID, number=candidates[-1])


def _could_complete(number: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    """True when appending digits could make ``number`` match (numbers are at most 15 digits,
    ITU-T E.164, so trying every length up to that is exhaustive for digit patterns)."""
    digits = len(number.lstrip("+"))
    for extra in range(1, max(1, 16 - digits)):
        for filler in ("0", "1", "5", "9"):
            if any(p.fullmatch(number + filler * extra) for p in patterns):
                return True
    return False


# ---------------------------------------------------------------------------------------------
# Answers to the handset and call-record results


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FailureAnswer:
    status: int
    reason: str
    retry_after_s: int | None = None


def failure_answer(cause: EndCause, *, retry_after_s: int) -> FailureAnswer:
    """The final response for an outbound call that ended before it was answered."""
    if cause is EndCause.BUSY:
        return FailureAnswer(status=486, reason="Busy Here")
    if cause is EndCause.NO_ANSWER:
        return FailureAnswer(status=480, reason="Temporarily Unavailable")
    if cause is EndCause.REJECTED:
        return FailureAnswer(status=404, reason="Not Found")
    if cause is EndCause.LOCAL_HANGUP:
        return FailureAnswer(status=487, reason="Request Terminated")
    if cause in (EndCause.NO_SERVICE, EndCause.FAILED):
        return FailureAnswer(status=503, reason="Service Unavailable",
                             retry_after_s=retry_after_s)
    # NORMAL before an answer (the network dropped the attempt) or MISSED (never outbound)
    return FailureAnswer(status=480, reason="Temporarily Unavailable")


def no_trunk_answer(selection: Selection, *, retry_after_s: int) -> FailureAnswer:
    if selection.outcome is SelectionOutcome.ALL_BUSY:
        return FailureAnswer(status=486, reason="Busy Here")
    if selection.outcome is SelectionOutcome.UNKNOWN_TRUNK:
        return FailureAnswer(status=404, reason="Not Found")
    return FailureAnswer(status=503, reason="Service Unavailable", retry_after_s=retry_after_s)


def record_result(cause: EndCause | None, *, answered: bool, caller_gave_up: bool) -> str:
    """The call-record result (see appliance/store/call_records.py) for how a call ended."""
    if answered:
        return "answered"
    if caller_gave_up:
        return "cancelled"
    return {
        EndCause.BUSY: "busy",
        EndCause.NO_ANSWER: "no-answer",
        EndCause.MISSED: "no-answer",
        EndCause.REJECTED: "rejected",
    }.get(cause, "failed")
