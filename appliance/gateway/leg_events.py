"""What happens to the gateway's SIP call legs, as the pjsua thread reports it to the loop.

Plain frozen dataclasses (no pjsua2 here), so the call logic can be imported, and the daemon
can start, without loading pjsua2 until the gateway is actually enabled.
"""

from __future__ import annotations

import dataclasses

from .sipmsg import InboundInvite


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LegOffered:
    """An INVITE arrived (100 Trying has gone out); the call logic must answer it."""

    leg: int
    invite: InboundInvite | None
    problem: str = ""
    """Why the request could not be read (the logic answers 400)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LegProgress:
    leg: int
    status: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LegConfirmed:
    leg: int
    srtp: bool = False
    """The leg's audio is SRTP (as negotiated by the time the answer was confirmed)."""
    secure_signalling: bool = False
    """The handset that answered an outgoing leg is on TLS (the proxy's Record-Route toward
    it says transport=tls): it must get SRTP (see ``sipmsg.answered_over_tls``)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LegMedia:
    leg: int
    codec: str
    clock_rate: int
    srtp: bool


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LegEnded:
    leg: int
    status: int
    reason: str
    srtp_refused: bool = False
    """The agent ended it: a handset on TLS whose media came up without SRTP."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LegDtmf:
    leg: int
    digit: str
    method: str
    """'rfc4733' or 'info'."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MessageStatus:
    tag: str
    status: int
    reason: str


AgentEvent = LegOffered | LegProgress | LegConfirmed | LegMedia | LegEnded | LegDtmf | MessageStatus
