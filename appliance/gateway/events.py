"""Events the gateway publishes on the bus.

``EmergencyCallStarted``: sync sends the cloud an alert at once (``appliance/sync/alerts.py``).
Call records reach the cloud through the record store, not through events.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EmergencyCallStarted:
    """A handset dialled an emergency number (published before a trunk is chosen)."""

    call: str
    """The gateway's call key (see 'jbc calls')."""
    extension: str | None
    caller_verified: bool
    """The extension authenticated, or matched a live registration (see the SIP proxy)."""
    number: str
    location: str | None
    """The dispatchable location recorded for the call."""
    started_at: float
    """Wall-clock time the call reached the gateway."""
