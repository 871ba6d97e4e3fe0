"""Emergency-call alerts: the cloud learns the moment an emergency call starts.

The gateway publishes :class:`~appliance.gateway.events.EmergencyCallStarted` when a handset
dials an emergency number, before a trunk is even chosen. Sync answers with an alert
(operation ``sendAlert`` of cloud-api.json) in a task of its own: it waits neither for the next
cycle of the cloud link nor for that link's retry backoff. During an outage the alert leaves
over the backup uplink, as the failover heartbeat does.

Every alert has a stable id, so the cloud counts a retry once. It is retried with backoff
until delivered or until ``give_up_s`` has passed. Its delivery (path, attempts, delay) or its
failure is journalled; so is the first failed attempt, so that a technician sees at once that
the cloud has not heard.
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

log = logging.getLogger(__name__)

GIVE_UP_S = 600.0


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
                 give_up_s: float = GIVE_UP_S) -> None:
        self.deliver = deliver
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
        task = self.spawn(self.send(alert), name=f"alert-{alert.call}", subsystem="sync")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def send(self, alert: EmergencyAlert) -> bool:
        started = self.clock()
        delay = self.retry_min_s
        details = {"alert": alert.id, "call": alert.call, "number": alert.number,
                   "extension": alert.extension}
        for attempt in range(1, 1_000_000):
            try:
                uplink = await self.deliver(alert)
            except AlertNotSent as error:
                waited = self.clock() - started
                if error.final or waited + delay > self.give_up_s:
                    self._outcome("emergency-alert-failed", f"the cloud was NOT alerted of "
                                  f"emergency call {alert.call} to {alert.number}: {error} "
                                  f"({attempt} attempt(s) in {waited:.0f} s)",
                                  {**details, "attempts": attempt, "error": str(error)})
                    return False
                if attempt == 1:
                    self.journal.record("sync", "emergency-alert-retrying", (
                        f"alert of emergency call {alert.call} to {alert.number} not delivered "
                        f"yet: {error}; retrying"), {**details, "error": str(error)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            waited = self.clock() - started
            self._outcome("emergency-alert-delivered", f"the cloud was alerted of emergency "
                          f"call {alert.call} to {alert.number} over the {uplink} uplink in "
                          f"{waited:.2f} s ({attempt} attempt(s))",
                          {**details, "uplink": uplink, "attempts": attempt,
                           "delay_s": round(waited, 3)})
            return True
        return False

    def _outcome(self, kind: str, reason: str, details: dict[str, Any]) -> None:
        self.last = {"kind": kind, "at": self.clock(), **details}
        if kind.endswith("failed"):
            log.error("%s", reason)
        self.journal.record("sync", kind, reason, details)
