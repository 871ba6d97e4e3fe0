"""Emergency-call alerts: the cloud learns the moment an emergency call starts.

The gateway publishes :class:`~appliance.gateway.events.EmergencyCallStarted` when a handset
dials an emergency number, before a trunk is even chosen. Sync answers with an alert
(operation ``sendAlert`` of cloud-api.json) in a task of its own: it waits neither for the next
cycle of the cloud link nor for that link's retry backoff. During an outage the alert leaves
over the backup uplink, as the failover heartbeat does.

Every alert has a stable id, so the cloud counts a retry once. It is retried with backoff
until delivered or until ``give_up_s`` has passed. Its delivery (path, attempts, delay) or its
failure is journalled; so is the first failed attempt, so that a technician sees at once that
the cloud has not heard. An alert not yet delivered is kept in sync's state, so a restart
(a crash, a SIGKILL mid-outage) resumes it; a storage fault never holds an alert back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from appliance.gateway.events import EmergencyCallStarted
from appliance.journal import EventJournal

from .errors import SyncError
from .state import SyncState

log = logging.getLogger(__name__)

GIVE_UP_S = 600.0
PENDING_KEY = "pending_emergency_alerts"
"""Sync state key: the alerts not yet delivered (a list of EmergencyAlert fields + first_try)."""


class AlertNotSent(SyncError):
    """This attempt failed; ``final`` when retrying cannot help (not configured, not
    enrolled)."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EmergencyAlert:
    id: str
    call: str
    extension: str | None
    caller_verified: bool
    number: str
    location: str | None
    started_at: float

    @classmethod
    def of(cls, event: EmergencyCallStarted) -> EmergencyAlert:
        return cls(id=str(uuid.uuid4()), call=event.call, extension=event.extension,
                   caller_verified=event.caller_verified, number=event.number,
                   location=event.location, started_at=event.started_at)

    def body(self, *, sent_at: float, wan_state: str, uplink: str) -> dict[str, Any]:
        """The cloud API's Alert (see appliance/sync/cloud-api.json)."""
        return {"id": self.id, "kind": "emergency-call", "call": self.call,
                "extension": self.extension, "caller_verified": self.caller_verified,
                "number": self.number, "location": self.location,
                "started_at": self.started_at, "sent_at": sent_at, "wan_state": wan_state,
                "uplink": uplink}


Deliver = Callable[[EmergencyAlert], Awaitable[str]]
"""Send one alert once; returns the uplink it left by ("wan" or "backup"), raises
AlertNotSent."""


class EmergencyAlerts:
    """Sends an alert for every emergency call, each in its own supervised task."""

    def __init__(self, *, deliver: Deliver, journal: EventJournal, clock: Callable[[], float],
                 spawn: Callable[..., asyncio.Task], retry_min_s: float, retry_max_s: float,
                 give_up_s: float = GIVE_UP_S, state: SyncState | None = None) -> None:
        self.deliver = deliver
        self.state = state
        self.journal = journal
        self.clock = clock
        self.spawn = spawn
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.give_up_s = give_up_s
        self.tasks: set[asyncio.Task] = set()
        self.last: dict[str, Any] | None = None
        """The latest alert's outcome, for 'jbc sync'."""

    def on_emergency_call(self, event: EmergencyCallStarted) -> None:
        alert = EmergencyAlert.of(event)
        first_try = self.clock()
        self._keep(alert, first_try)
        self._start(alert, first_try)

    def resume(self) -> None:
        """After a start: send again what a previous run did not deliver, as the same alerts;
        what is past its give-up time is journalled as failed."""
        for saved in self._pending():
            fields = {k: v for k, v in saved.items() if k != "first_try"}
            try:
                alert = EmergencyAlert(**fields)
            except TypeError:
                log.error("unreadable pending emergency alert dropped: %r", saved)
                self._forget(saved.get("id"))
                continue
            first_try = float(saved.get("first_try", 0.0))
            if self.clock() - first_try > self.give_up_s:
                self._outcome(alert, "emergency-alert-failed", (
                    f"the cloud was NOT alerted of emergency call {alert.call} to "
                    f"{alert.number}: still undelivered when jbcd restarted after the "
                    "give-up time"), {"attempts": None, "error": "restart"})
                continue
            self.journal.record("sync", "emergency-alert-resumed", (
                f"alert of emergency call {alert.call} to {alert.number} not delivered before "
                "the restart: sending it again"), {"alert": alert.id, "call": alert.call})
            self._start(alert, first_try)

    def _start(self, alert: EmergencyAlert, first_try: float) -> None:
        task = self.spawn(self.send(alert, since=first_try), name=f"alert-{alert.call}",
                          subsystem="sync")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- what is kept across a restart (a storage fault never holds an alert back) ----------

    def _pending(self) -> list[dict[str, Any]]:
        if self.state is None:
            return []
        try:
            pending = self.state.get(PENDING_KEY, [])
        except Exception:
            log.exception("cannot read the pending emergency alerts")
            return []
        return [p for p in pending if isinstance(p, dict)] if isinstance(pending, list) else []

    def _keep(self, alert: EmergencyAlert, first_try: float) -> None:
        if self.state is None:
            return
        try:
            self.state.set(PENDING_KEY, [*self._pending(), {**dataclasses.asdict(alert),
                                                           "first_try": first_try}])
        except Exception:
            log.exception("cannot keep emergency alert %s for a restart; sending it anyway",
                          alert.id)

    def _forget(self, alert_id: str | None) -> None:
        if self.state is None:
            return
        try:
            self.state.set(PENDING_KEY, [p for p in self._pending() if p.get("id") != alert_id])
        except Exception:
            log.exception("cannot update the pending emergency alerts")

    # -- sending -----------------------------------------------------------------------------

    async def send(self, alert: EmergencyAlert, *, since: float | None = None) -> bool:
        started = self.clock() if since is None else since
        delay = self.retry_min_s
        attempt = 0
        while True:
            attempt += 1
            try:
                uplink = await self.deliver(alert)
            except AlertNotSent as error:
                waited = self.clock() - started
                if error.final or waited + delay > self.give_up_s:
                    self._outcome(alert, "emergency-alert-failed", f"the cloud was NOT alerted "
                                  f"of emergency call {alert.call} to {alert.number}: {error} "
                                  f"({attempt} attempt(s) in {waited:.0f} s)",
                                  {"attempts": attempt, "error": str(error)})
                    return False
                if attempt == 1:
                    self.journal.record("sync", "emergency-alert-retrying", (
                        f"alert of emergency call {alert.call} to {alert.number} not delivered "
                        f"yet: {error}; retrying"), {**self._details(alert),
                                                     "error": str(error)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            waited = self.clock() - started
            self._outcome(alert, "emergency-alert-delivered", f"the cloud was alerted of "
                          f"emergency call {alert.call} to {alert.number} over the {uplink} "
                          f"uplink in {waited:.2f} s ({attempt} attempt(s))",
                          {"uplink": uplink, "attempts": attempt, "delay_s": round(waited, 3)})
            return True

    @staticmethod
    def _details(alert: EmergencyAlert) -> dict[str, Any]:
        return {"alert": alert.id, "call": alert.call, "number": alert.number,
                "extension": alert.extension}

    def _outcome(self, alert: EmergencyAlert, kind: str, reason: str,
                 extra: dict[str, Any]) -> None:
        self._forget(alert.id)
        details = {**self._details(alert), **extra}
        self.last = {"kind": kind, "at": self.clock(), **details}
        if kind.endswith("failed"):
            log.error("%s", reason)
        self.journal.record("sync", kind, reason, details)
