"""Abuse resistance, as a pure core: per-source rate limits and authentication lockouts.

* Every packet or message from a source address spends a token from that address's bucket
  (``rate`` per second, up to ``burst``); with none left it is dropped and counted.
* Failed authentications are counted per source address and per user name. ``N`` failures
  within the window lock the source out (everything from it is dropped) for the lockout time.
  The per-user threshold is higher, so one source flooding a user name is locked out long
  before that user is; a locked user is refused (with the same 401 as a wrong password) to
  every source except those that hold a live registration for it.
* Tables are bounded: the least recently seen entries are forgotten first.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AbusePolicy:
    rate_per_s: float = 50.0
    burst: float = 200.0
    failures_per_source: int = 10
    failures_per_user: int = 30
    window_s: float = 60.0
    lockout_s: float = 300.0
    max_tracked: int = 20000


@dataclasses.dataclass(frozen=True, slots=True)
class Lockout:
    """A lockout that has just engaged (for the journal)."""

    kind: str  # "source" or "user"
    subject: str
    until: float
    failures: int


class AbuseGuard:
    def __init__(self, policy: AbusePolicy, *, exempt: Iterable[str] = ()) -> None:
        self.policy = policy
        self.exempt = frozenset(exempt)
        self._buckets: dict[str, list[float]] = {}
        self._source_failures: collections.OrderedDict[str, collections.deque[float]] = \
            collections.OrderedDict()
        self._user_failures: collections.OrderedDict[str, collections.deque[float]] = \
            collections.OrderedDict()
        self._locked_sources: dict[str, float] = {}
        self._locked_users: dict[str, float] = {}
        self.dropped_rate = 0
        self.dropped_locked = 0

    def admit(self, source: str, now: float) -> bool:
        """Whether to look at a packet from ``source`` at all (rate limit and lockout)."""
        if source in self.exempt:
            return True
        if self._locked_sources and self.source_locked(source, now):
            self.dropped_locked += 1
            return False
        bucket = self._buckets.get(source)
        policy = self.policy
        if bucket is None:
            if len(self._buckets) >= policy.max_tracked:
                self._forget_full_buckets(now)
            self._buckets[source] = [policy.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * policy.rate_per_s
        tokens = min(tokens, policy.burst)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            self.dropped_rate += 1
            return False
        bucket[0] = tokens - 1.0
        return True

    def source_locked(self, source: str, now: float) -> bool:
        until = self._locked_sources.get(source)
        if until is None:
            return False
        if now >= until:
            del self._locked_sources[source]
            return False
        return True

    def user_locked(self, user: str, now: float) -> bool:
        until = self._locked_users.get(user)
        if until is None:
            return False
        if now >= until:
            del self._locked_users[user]
            return False
        return True

    def record_failure(self, source: str, user: str | None, now: float) -> list[Lockout]:
        """Count one failed authentication; return the lockouts it engaged."""
        engaged: list[Lockout] = []
        if source not in self.exempt:
            lock = self._count(self._source_failures, source, now,
                               self.policy.failures_per_source)
            if lock is not None:
                self._locked_sources[source] = now + self.policy.lockout_s
                engaged.append(Lockout("source", source, now + self.policy.lockout_s, lock))
        if user:
            lock = self._count(self._user_failures, user, now, self.policy.failures_per_user)
            if lock is not None:
                self._locked_users[user] = now + self.policy.lockout_s
                engaged.append(Lockout("user", user, now + self.policy.lockout_s, lock))
        return engaged

    def record_success(self, source: str, user: str) -> None:
        self._source_failures.pop(source, None)

    def _count(self, table: collections.OrderedDict[str, collections.deque[float]],
               subject: str, now: float, threshold: int) -> int | None:
        times = table.get(subject)
        if times is None:
            if len(table) >= self.policy.max_tracked:
                table.popitem(last=False)
            times = table[subject] = collections.deque(maxlen=threshold)
        else:
            table.move_to_end(subject)
        times.append(now)
        if len(times) == threshold and now - times[0] <= self.policy.window_s:
            times.clear()
            return threshold
        return None

    def _forget_full_buckets(self, now: float) -> None:
        policy = self.policy
        refill = policy.burst / policy.rate_per_s
        for source in [s for s, (_, last) in self._buckets.items() if now - last >= refill]:
            del self._buckets[source]
        while len(self._buckets) >= policy.max_tracked:
            del self._buckets[next(iter(self._buckets))]

    def snapshot(self, now: float) -> dict:
        return {
            "locked_sources": sorted(s for s in list(self._locked_sources)
                                     if self.source_locked(s, now)),
            "locked_users": sorted(u for u in list(self._locked_users)
                                   if self.user_locked(u, now)),
            "dropped_rate_limited": self.dropped_rate,
            "dropped_locked_out": self.dropped_locked,
        }
