"""What the WAN monitor observes: probe results and the WAN link's state.

Small frozen values, produced by the probes and the netlink link watch (the I/O shell) and
consumed by the pure decision core. Nothing from pyroute2 or ``socket`` leaks past them.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class ProbeOutcome(enum.StrEnum):
    OK = "ok"                    # answered as expected
    DEGRADED = "degraded"        # answered, but says it cannot serve (SIP or HTTP 503)
    TIMEOUT = "timeout"          # no answer in time
    REFUSED = "refused"          # actively refused (TCP reset, ICMP port unreachable)
    UNREACHABLE = "unreachable"  # no route / host or network unreachable
    ERROR = "error"              # anything else: TLS verification, protocol error, local error

    @property
    def answered(self) -> bool:
        """The far end itself answered: the path to it works (even if it cannot serve)."""
        return self in (ProbeOutcome.OK, ProbeOutcome.DEGRADED)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    outcome: ProbeOutcome
    rtt_s: float | None = None
    """Round-trip time of the answer that decided the outcome, when there was one."""
    detail: str = ""
    """A few words for humans: 'SIP 503 Service Unavailable', 'certificate verify failed'..."""
    addresses: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """DNS probes only: (name, addresses) pairs resolved by this probe."""
    attempts: tuple[float | None, ...] = ()
    """Datagram probes with one answer per attempt (ICMP echo, SIP OPTIONS over UDP): the
    fate of every attempt whose fate is known, in the order sent: its RTT when it was
    answered, None when it was lost. What a voice stream would have lost (see
    :mod:`appliance.wan.quality`); empty for the other probes."""

    def describe(self) -> str:
        text = str(self.outcome)
        if self.rtt_s is not None and self.outcome.answered:
            text += f" {self.rtt_s * 1000:.1f} ms"
        if self.detail:
            text += f" ({self.detail})"
        return text


def timeout(detail: str = "", attempts: tuple[float | None, ...] = ()) -> ProbeResult:
    return ProbeResult(outcome=ProbeOutcome.TIMEOUT, detail=detail, attempts=attempts)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LinkStatus:
    """The WAN interface as netlink reports it."""

    interface: str
    present: bool
    index: int = 0
    admin_up: bool = False
    carrier: bool = False
    operstate: str = "UNKNOWN"
    addresses: tuple[str, ...] = ()
    default_route: bool = False
    require_default_route: bool = True

    @property
    def problem(self) -> str | None:
        """Why the link cannot carry traffic to the cloud, or None when it can."""
        name = self.interface
        if not self.present:
            return f"{name} is gone (no such interface)"
        if not self.admin_up:
            return f"{name} is administratively down"
        if not self.carrier:
            return f"carrier lost on {name}"
        if self.operstate in ("DOWN", "LOWERLAYERDOWN", "NOTPRESENT", "DORMANT"):
            return f"{name} is {self.operstate.lower()}"
        if not self.addresses:
            return f"{name} has no IP address"
        if self.require_default_route and not self.default_route:
            return f"default route via {name} lost"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"interface": self.interface, "present": self.present, "admin_up": self.admin_up,
                "carrier": self.carrier, "operstate": self.operstate,
                "addresses": list(self.addresses), "default_route": self.default_route,
                "problem": self.problem}
