"""Who gets a control connection, decided at accept from the peer's credentials (pure: no
sockets, time passed in).

* A peer with no role is refused at once: it never holds a slot, so no number of idle
  connections from local users without a role can lock anybody out.
* At most ``max_clients`` connections in all; the last ``admin_reserved_clients`` of them only
  for admins, so root's ``jbc status`` always finds a slot.
* At most ``max_clients_per_user`` connections per non-admin uid.

Refusals (at accept, or a command above the peer's role) are journalled, at most once a
minute per user and kind of refusal; the next entry says how many were left out.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from .commands import Peer, Role

REFUSAL_JOURNAL_INTERVAL_S = 60.0
MAX_TRACKED_REFUSERS = 1024


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    code: str
    """Stable error code for the client: permission_denied or busy."""
    message: str


class ConnectionLimits:
    def __init__(self, *, max_clients: int, per_user: int, admin_reserved: int) -> None:
        self.max_clients = max_clients
        self.per_user = per_user
        self.admin_reserved = admin_reserved
        self.open = 0
        self._by_uid: collections.Counter[int] = collections.Counter()

    def reconfigure(self, *, max_clients: int, per_user: int, admin_reserved: int) -> None:
        self.max_clients, self.per_user, self.admin_reserved = (max_clients, per_user,
                                                                admin_reserved)

    def admit(self, peer: Peer, no_role: str) -> Refusal | None:
        """None and a slot taken, or why not. ``no_role`` is what to tell a peer without one."""
        if peer.role is Role.NONE:
            return Refusal(code="permission_denied", message=no_role)
        if self.open >= self.max_clients:
            return Refusal(code="busy", message=f"{self.open} control clients are connected, "
                           "the most allowed; try again shortly")
        if peer.role is not Role.ADMIN:
            if self.open >= self.max_clients - self.admin_reserved:
                return Refusal(code="busy", message=(
                    f"{self.open} control clients are connected and the remaining "
                    f"{self.max_clients - self.open} slots are kept for admins; try again "
                    "shortly"))
            if self._by_uid[peer.uid] >= self.per_user:
                return Refusal(code="busy", message=(
                    f"{peer.user} already has {self._by_uid[peer.uid]} control connections "
                    f"open, the most one user may; close one (another 'jbc ... --follow'?)"))
        self.open += 1
        self._by_uid[peer.uid] += 1
        return None

    def release(self, peer: Peer) -> None:
        self.open -= 1
        self._by_uid[peer.uid] -= 1
        if self._by_uid[peer.uid] <= 0:
            del self._by_uid[peer.uid]


@dataclasses.dataclass(slots=True)
class _Seen:
    journalled_at: float
    left_out: int = 0


class RefusalLog:
    """Decides which refusals reach the journal: the first of each (uid, code) per interval,
    then one entry carrying the count of those left out."""

    def __init__(self, *, interval_s: float = REFUSAL_JOURNAL_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.total = 0
        self._seen: dict[tuple[int, str], _Seen] = {}

    def note(self, peer: Peer, code: str, now: float) -> dict[str, Any] | None:
        """Count one refusal; returns the journal details when it is to be journalled."""
        self.total += 1
        key = (peer.uid, code)
        seen = self._seen.get(key)
        if seen is not None and now - seen.journalled_at < self.interval_s:
            seen.left_out += 1
            return None
        left_out = seen.left_out if seen is not None else 0
        if seen is None and len(self._seen) >= MAX_TRACKED_REFUSERS:
            self._forget_before(now - self.interval_s)
        self._seen[key] = _Seen(journalled_at=now)
        return {"uid": peer.uid, "user": peer.user, "pid": peer.pid, "role": peer.role.label,
                "code": code, "left_out_since_last_entry": left_out}

    def _forget_before(self, cutoff: float) -> None:
        for key in [k for k, v in self._seen.items() if v.journalled_at < cutoff]:
            del self._seen[key]
        while len(self._seen) >= MAX_TRACKED_REFUSERS:  # all recent: drop the oldest
            del self._seen[min(self._seen, key=lambda k: self._seen[k].journalled_at)]
