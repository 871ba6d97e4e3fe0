"""Events the gateway publishes on the bus (other subsystems may react; sync uploads records)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EmergencyCallStarted:
    call: str
    """The gateway's call key (see 'jbc calls')."""
    extension: str | None
    number: str
    trunk: str | None
    location: str | None
    """The dispatchable location recorded for the call."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrunkCallEnded:
    call: str
    direction: str
    trunk: str | None
    answered: bool
    result: str
    cause: str
    emergency: bool
