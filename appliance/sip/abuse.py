"""Abuse resistance, as a pure core: what a source address may cost, and who may guess.

**Budget, per source address.** Every message is charged one token from its source's bucket
before it is parsed (``rate_per_s`` refill, up to ``burst``); with none left it is dropped and
counted. Honest traffic gives its tokens back: a request that authenticates refunds itself
and the challenge it answered, a response to one of our requests or a request inside a known
dialog refunds itself. What stays charged is what handsets do not send when all is well:
challenges never answered, malformed messages, wrong credentials, stray responses. So a NAT,
an SBC or a DECT base with hundreds of handsets behind one address registers at full speed,
while a source flooding us is held to ``rate_per_s`` once its burst is spent.

**Guesses.** A *guess* is a well-formed digest answer (a user name, a nonce, qop=auth, a hex
response) that is wrong. Malformed credentials are *junk*: they cost their source, never a
user.

* address and user: ``failures_per_source`` guesses for one user name from one address within
  the window lock that pair out for ``lockout_s``: requests from the address for that user are
  dropped unanswered. A password cracker is stopped; the other phones behind the same address
  are not.
* address: guesses for ``users_per_source`` different user names, or ``failures_per_source``
  junk credentials, within the window lock the whole address (everything from it is dropped):
  an enumeration, a password spray or a fuzzer.
* user: ``failures_per_user`` guesses from any addresses within the window put the user
  *under guard* for ``lockout_s``. The core then lets only the user's known devices
  authenticate (see :meth:`~appliance.sip.core.SipCore`), and answers anything else with the
  same 401 as a wrong password, right password or not. A distributed guesser learns nothing;
  the user's own phones, even one whose address changed, carry on.

Every table is bounded (``max_tracked``): the least recently seen entries are forgotten first,
and expired locks are swept (:meth:`AbuseGuard.sweep`).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Hashable, Iterable


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AbusePolicy:
    rate_per_s: float = 50.0
    burst: float = 2000.0
    failures_per_source: int = 10
    users_per_source: int = 5
    failures_per_user: int = 30
    window_s: float = 60.0
    lockout_s: float = 300.0
    max_tracked: int = 20000


@dataclasses.dataclass(frozen=True, slots=True)
class Lockout:
    """A lockout that has just engaged (for the journal). ``kind`` is "source" (the whole
    address), "pair" (one user name from one address) or "user" (the user under guard)."""

    kind: str
    subject: str
    until: float
    failures: int
    user: str | None = None


class _Bucket:
    __slots__ = ("challenges", "last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last
        self.challenges = 0
        """Challenges sent to this source that no successful authentication answered yet."""


class AbuseGuard:
    def __init__(self, policy: AbusePolicy, *, exempt: Iterable[str] = ()) -> None:
        self.policy = policy
        self.exempt = frozenset(exempt)
        self._buckets: dict[str, _Bucket] = {}
        self._junk: collections.OrderedDict[str, collections.deque[float]] = \
            collections.OrderedDict()
        self._pair_guesses: collections.OrderedDict[tuple[str, str],
                                                    collections.deque[float]] = \
            collections.OrderedDict()
        self._source_users: collections.OrderedDict[str, dict[str, float]] = \
            collections.OrderedDict()
        self._user_guesses: collections.OrderedDict[str, collections.deque[float]] = \
            collections.OrderedDict()
        self._locked_sources: dict[str, float] = {}
        self._locked_pairs: dict[tuple[str, str], float] = {}
        self._guarded_users: dict[str, float] = {}
        self.dropped_rate = 0
        self.dropped_locked = 0

    # -- the budget ---------------------------------------------------------------------------

    def admit(self, source: str, now: float) -> bool:
        """Whether to look at a message from ``source`` at all (budget and lockout)."""
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
            self._buckets[source] = _Bucket(policy.burst - 1.0, now)
            return True
        tokens = bucket.tokens + (now - bucket.last) * policy.rate_per_s
        tokens = min(tokens, policy.burst)
        bucket.last = now
        if tokens < 1.0:
            bucket.tokens = tokens
            self.dropped_rate += 1
            return False
        bucket.tokens = tokens - 1.0
        return True

    def refund(self, source: str, tokens: float = 1.0) -> None:
        """The message from ``source`` was honest: give back what it cost."""
        bucket = self._buckets.get(source)
        if bucket is not None:
            bucket.tokens = min(self.policy.burst, bucket.tokens + tokens)

    def challenged(self, source: str) -> None:
        """We answered ``source`` with a digest challenge."""
        bucket = self._buckets.get(source)
        if bucket is not None and bucket.challenges < self.policy.burst:
            bucket.challenges += 1

    def authenticated(self, source: str) -> None:
        """A request from ``source`` authenticated: refund it and the challenge it answered."""
        bucket = self._buckets.get(source)
        if bucket is None:
            return
        refund = 1.0
        if bucket.challenges > 0:
            bucket.challenges -= 1
            refund += 1.0
        bucket.tokens = min(self.policy.burst, bucket.tokens + refund)

    # -- guesses and junk ---------------------------------------------------------------------

    def record_junk(self, source: str, now: float) -> list[Lockout]:
        """Malformed credentials from ``source``: they count against the address only."""
        if source in self.exempt:
            return []
        policy = self.policy
        if self._count(self._junk, source, now, policy.failures_per_source):
            return [self._lock_source(source, now, policy.failures_per_source)]
        return []

    def record_guess(self, source: str, user: str, now: float, *,
                     known_user: bool) -> list[Lockout]:
        """A wrong digest for ``user`` from ``source``; returns the lockouts it engaged.
        ``known_user``: the user exists (only real users are put under guard)."""
        engaged: list[Lockout] = []
        policy = self.policy
        if source not in self.exempt:
            if self._count(self._pair_guesses, (source, user), now,
                           policy.failures_per_source):
                until = now + policy.lockout_s
                self._locked_pairs[(source, user)] = until
                self._bound(self._locked_pairs)
                engaged.append(Lockout("pair", source, until, policy.failures_per_source,
                                       user))
            users = self._source_users.get(source)
            if users is None:
                users = self._source_users[source] = {}
                self._bound(self._source_users)
            else:
                self._source_users.move_to_end(source)
            users.pop(user, None)
            users[user] = now
            while len(users) > policy.users_per_source:
                del users[next(iter(users))]
            if len(users) >= policy.users_per_source and \
                    now - next(iter(users.values())) <= policy.window_s:
                users.clear()
                engaged.append(self._lock_source(source, now, policy.users_per_source))
        if known_user and self._count(self._user_guesses, user, now, policy.failures_per_user):
            already = self.user_guarded(user, now)
            self._guarded_users[user] = now + policy.lockout_s
            self._bound(self._guarded_users)
            if not already:
                engaged.append(Lockout("user", user, now + policy.lockout_s,
                                       policy.failures_per_user))
        return engaged

    def _lock_source(self, source: str, now: float, failures: int) -> Lockout:
        until = now + self.policy.lockout_s
        self._locked_sources[source] = until
        self._bound(self._locked_sources)
        return Lockout("source", source, until, failures)

    # -- questions ----------------------------------------------------------------------------

    def source_locked(self, source: str, now: float) -> bool:
        return self._still(self._locked_sources, source, now)

    @property
    def any_pair_locked(self) -> bool:
        """Whether any (address, user) lock exists (lets the core skip finding the user)."""
        return bool(self._locked_pairs)

    def pair_locked(self, source: str, user: str, now: float) -> bool:
        return bool(self._locked_pairs) and self._still(self._locked_pairs, (source, user), now)

    def user_guarded(self, user: str, now: float) -> bool:
        return bool(self._guarded_users) and self._still(self._guarded_users, user, now)

    @staticmethod
    def _still(table: dict, key: Hashable, now: float) -> bool:
        until = table.get(key)
        if until is None:
            return False
        if now >= until:
            del table[key]
            return False
        return True

    # -- tables -------------------------------------------------------------------------------

    def _count(self, table: collections.OrderedDict, subject: Hashable, now: float,
               threshold: int) -> bool:
        """Note one event for ``subject``; True when ``threshold`` fell within the window."""
        times = table.get(subject)
        if times is None:
            times = table[subject] = collections.deque(maxlen=threshold)
            self._bound(table)
        else:
            table.move_to_end(subject)
        times.append(now)
        if len(times) == threshold and now - times[0] <= self.policy.window_s:
            times.clear()
            return True
        return False

    def _bound(self, table: dict) -> None:
        while len(table) > self.policy.max_tracked:
            del table[next(iter(table))]

    def _forget_full_buckets(self, now: float) -> None:
        policy = self.policy
        refill = policy.burst / policy.rate_per_s
        for source in [s for s, b in self._buckets.items() if now - b.last >= refill]:
            del self._buckets[source]
        while len(self._buckets) >= policy.max_tracked:
            del self._buckets[next(iter(self._buckets))]

    def sweep(self, now: float) -> None:
        """Forget expired locks and failure counts older than the window."""
        for table in (self._locked_sources, self._locked_pairs, self._guarded_users):
            for key in [k for k, until in table.items() if now >= until]:
                del table[key]
        horizon = now - self.policy.window_s
        for counts in (self._junk, self._pair_guesses, self._user_guesses):
            for key in [k for k, times in counts.items() if not times or times[-1] < horizon]:
                del counts[key]
        for source in [s for s, users in self._source_users.items()
                       if not users or max(users.values()) < horizon]:
            del self._source_users[source]

    def snapshot(self, now: float) -> dict:
        return {
            "locked_sources": sorted(s for s in list(self._locked_sources)
                                     if self.source_locked(s, now)),
            "locked_pairs": sorted(f"{user}@{source}" for source, user
                                   in list(self._locked_pairs)
                                   if self.pair_locked(source, user, now)),
            "guarded_users": sorted(u for u in list(self._guarded_users)
                                    if self.user_guarded(u, now)),
            "dropped_rate_limited": self.dropped_rate,
            "dropped_locked_out": self.dropped_locked,
        }
