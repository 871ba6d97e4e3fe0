"""What the WAN monitor tells the rest of the appliance.

The subsystems that behave differently during an outage subscribe to :class:`WanStateChanged`
on the bus and ask a :class:`WanView` for the state at start: cloud sync and fire drills
directly; the SIP registrar and proxy through ``appliance/assembly.py``, which turns every
:class:`WanStateChanged` and :class:`CallPolicyChanged` into the ``WanVerdict`` SIP follows
(``appliance/sip`` imports nothing of ``appliance/wan``). The trunk gateway does not: it
serves whatever calls the SIP proxy routes to it, in any state. Calls in progress are never
torn down by a change.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, Protocol


class WanState(enum.StrEnum):
    STARTING = "starting"      # no verdict yet
    ONLINE = "online"          # cloud reachable: phones use the cloud
    DEGRADED = "degraded"      # some probes failing, not enough for an outage: warn, keep cloud
    OUTAGE = "outage"          # cloud unreachable: local registrar, proxy and trunks serve
    RECOVERING = "recovering"  # cloud back, holding down: resync, upload, keep serving locally
    FORCED = "forced"          # a technician forced failover: as outage, until released

    @property
    def serves_locally(self) -> bool:
        """True when handsets must be served by the appliance itself."""
        return self in (WanState.OUTAGE, WanState.RECOVERING, WanState.FORCED)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WanStateChanged:
    previous: WanState
    state: WanState
    cause: str
    """Why, in a few words: 'carrier lost on eth0', 'all cloud regions unreachable', ..."""
    since: float
    """Wall-clock time of the transition."""
    evidence: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallPolicyChanged:
    """A sustained brownout under ``wan.brownout_policy = "local-calls"`` began (new calls are
    to be served locally, as in an outage, although the cloud is reachable) or ended."""

    local_calls: bool
    cause: str
    since: float
    """Wall-clock time of the change."""


class WanView(Protocol):
    """Read-only view of the WAN monitor for other subsystems."""

    @property
    def state(self) -> WanState: ...

    @property
    def since(self) -> float: ...

    @property
    def cause(self) -> str: ...

    @property
    def configured(self) -> bool:
        """False when no WAN interface or targets are configured: no verdict will ever come."""
        ...

    @property
    def local_calls(self) -> bool:
        """New calls are to be served locally (see :class:`CallPolicyChanged`)."""
        ...


def initial_wan_state(wan: WanView | None, fallback: WanState) -> WanState:
    """The state a subsystem starting after the WAN monitor should begin in.

    Subscribing to WanStateChanged only tells about later changes; a monitor that resumed a
    persisted outage (or a forced failover) at start has already decided. Until the monitor has
    a verdict, ``fallback`` (e.g. the SIP section's assume_wan_state) applies.
    """
    if wan is None or wan.state is WanState.STARTING:
        return fallback
    return wan.state
