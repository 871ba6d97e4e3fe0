"""How a desk phone chooses between its primary server (the cloud) and its backup (the
appliance): the profiles the bench's handsets run with, and the phone's decision logic.

The logic is Yealink's "successive registration" server redundancy (Polycom calls the same
thing re-registration on fail-over): the phone registers to one server at a time, the
primary first. A registration attempt fails when the server does not answer before the
transaction times out (RFC 3261 Timer F, 64 x T1), or answers with a failure. After
``failover_after`` failed attempts in a row (Yealink ``account.X.sip_server.Y.retry_counts``,
Polycom ``reg.x.server.y.retryMaxCount``, both 3 by default), ``retry_interval_s`` apart
(Yealink ``account.X.reg_fail_retry_interval``, 30 s), it moves to the other server. While on
the backup it asks the primary with a REGISTER every ``primary_probe_s`` (Yealink
``account.X.fallback.timeout``, 120 s) and returns as soon as the primary accepts; it also
moves on when the backup itself starts refusing (the appliance answers 503 once the cloud is
back). A registration is refreshed ``refresh_margin_s`` before it expires (Polycom
``reg.x.server.y.expires.overlap``, 60 s), so a phone registered to the cloud only notices an
outage at its next refresh (or call): the expiry the cloud grants bounds failover time.

Defaults read from the vendors' administrator guides: Yealink T2/T4 series auto-provisioning
guides (``sip_server.Y.expires`` 3600, ``retry_counts`` 3, ``reg_fail_retry_interval`` 30,
``fallback.timeout`` 120, ``failback_mode`` 0 and ``failback_timeout`` 3600) and the Polycom
UC Software administrator's guide (``expires`` 3600, ``expires.overlap`` 60, ``retryMaxCount``
3, ``retryTimeOut`` 0 = RFC 3261 timers). Yealink's default redundancy type is concurrent
registration (to both servers at once); "factory" here is successive registration with every
timer at its default, which is the mode the appliance's backup registrar (``sip.online_register
= "refuse"``) is made for.

Pure: results and ``now`` in, actions out; :meth:`ServerChoice.next_deadline` tells the caller
when to call :meth:`ServerChoice.on_timer`. The handset process (:mod:`jbcbench.handset`)
drives it with pjsua2.
"""

from __future__ import annotations

import dataclasses
import enum


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PhoneProfile:
    name: str
    expires_s: int
    """Registration expiry the phone asks for (a server may grant less)."""
    refresh_margin_s: int
    """Re-register this long before the granted expiry ends."""
    attempt_timeout_s: float
    """An unanswered request fails after this long (RFC 3261 Timer F: 64 x T1 = 32 s; phones
    that let it be set call it a server retry timeout)."""
    failover_after: int
    """Failed attempts in a row on one server before moving to the other."""
    retry_interval_s: float
    """Wait between failed attempts on the same server."""
    primary_probe_s: float
    """While on the backup, try the primary this often (0: only when the backup fails)."""
    summary: str

    def refresh_after_s(self, granted_s: float) -> float:
        """When a registration granted for ``granted_s`` is refreshed (pjsua's rule: the
        margin before expiry, or at once when the grant is shorter than the margin)."""
        return max(granted_s - self.refresh_margin_s, 0.0)

    def failover_bound_s(self, granted_primary_s: float) -> float:
        """Longest time from a silent primary to the phone registered at the backup: it
        notices at its next refresh, then spends its failed attempts."""
        return (self.refresh_after_s(granted_primary_s)
                + self.failover_after * self.attempt_timeout_s
                + (self.failover_after - 1) * self.retry_interval_s)

    def failback_bound_s(self, granted_backup_s: float) -> float:
        """Longest time from the primary answering again to the phone back on it: its next
        probe of the primary, or the backup's refusals, whichever comes first."""
        by_refusal = (self.refresh_after_s(granted_backup_s)
                      + (self.failover_after - 1) * self.retry_interval_s)
        if self.primary_probe_s:
            return min(self.primary_probe_s, by_refusal)
        return by_refusal

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


FACTORY = PhoneProfile(
    name="factory", expires_s=3600, refresh_margin_s=60, attempt_timeout_s=32.0,
    failover_after=3, retry_interval_s=30.0, primary_probe_s=120.0,
    summary="desk-phone factory defaults (Yealink/Polycom): expires 3600 s, RFC 3261 timers "
    "(an unanswered REGISTER fails after 32 s), backup after 3 failed attempts 30 s apart, "
    "primary retried every 120 s while on the backup")

TUNED = PhoneProfile(
    name="tuned", expires_s=60, refresh_margin_s=5, attempt_timeout_s=4.0,
    failover_after=1, retry_interval_s=2.0, primary_probe_s=10.0,
    summary="provisioned for an appliance site: expires 60 s, an unanswered REGISTER fails "
    "after 4 s, backup after the first failed attempt, primary retried every 10 s")

PROFILES = {profile.name: profile for profile in (FACTORY, TUNED)}


class Server(enum.StrEnum):
    PRIMARY = "primary"
    BACKUP = "backup"

    @property
    def other(self) -> Server:
        return Server.BACKUP if self is Server.PRIMARY else Server.PRIMARY


@dataclasses.dataclass(frozen=True, slots=True)
class Register:
    """Send (or refresh) a registration to ``server``."""

    server: Server


@dataclasses.dataclass(frozen=True, slots=True)
class Unregister:
    """Remove the registration at ``server`` (the phone has moved back to the primary)."""

    server: Server


@dataclasses.dataclass(frozen=True, slots=True)
class Moved:
    """The phone's working server changed (for the phone's own log)."""

    server: Server
    reason: str


Action = Register | Unregister | Moved


class ServerChoice:
    """Successive-registration server redundancy for one account (see the module docstring).

    ``on_result(server, ok, now)`` is called with the outcome of every registration attempt
    (first registration, refresh or probe); the phone's SIP stack refreshes a live
    registration by itself."""

    def __init__(self, profile: PhoneProfile) -> None:
        self.profile = profile
        self.working = Server.PRIMARY
        """The server the phone uses for calls and keeps registered to."""
        self.registered: Server | None = None
        self.failures = 0
        self.retry_at: float | None = None
        self.probe_at: float | None = None
        self.probing = False

    def start(self, now: float) -> list[Action]:
        return [Register(Server.PRIMARY)]

    def next_deadline(self) -> float | None:
        times = [t for t in (self.retry_at, None if self.probing else self.probe_at)
                 if t is not None]
        return min(times) if times else None

    def on_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            actions.append(Register(self.working))
        if (self.probe_at is not None and not self.probing and now >= self.probe_at
                and self.working is Server.BACKUP):
            self.probe_at = None
            self.probing = True
            actions.append(Register(Server.PRIMARY))
        return actions

    def on_result(self, server: Server, ok: bool, now: float) -> list[Action]:
        if server is self.working:
            return self._working_result(ok, now)
        if server is Server.PRIMARY and self.probing:
            self.probing = False
            if not ok:
                self.probe_at = now + self.profile.primary_probe_s
                return []
            # The primary is back: it is the working server again.
            self.working = self.registered = Server.PRIMARY
            self.failures, self.retry_at, self.probe_at = 0, None, None
            return [Unregister(Server.BACKUP),
                    Moved(Server.PRIMARY, "the primary accepted a registration again")]
        return []  # a late answer from the server we left: nothing to do

    def _working_result(self, ok: bool, now: float) -> list[Action]:
        server = self.working
        if ok:
            self.registered = server
            self.failures = 0
            self.retry_at = None
            if server is Server.BACKUP and self.probe_at is None and not self.probing \
                    and self.profile.primary_probe_s:
                self.probe_at = now + self.profile.primary_probe_s
            return []
        if self.registered is server:
            self.registered = None
        self.failures += 1
        if self.failures < self.profile.failover_after:
            self.retry_at = now + self.profile.retry_interval_s
            return []
        # Give up on this server: move to the other one at once.
        self.working = server.other
        self.failures = 0
        self.retry_at = None
        self.probing = False
        self.probe_at = None
        return [Register(self.working),
                Moved(self.working, f"{self.profile.failover_after} failed registration "
                      f"attempt{'s' if self.profile.failover_after > 1 else ''} at the "
                      f"{server.value} server")]
