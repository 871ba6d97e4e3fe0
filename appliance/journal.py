"""The event journal: every state change anywhere, with its reason, in SQLite.

This is the appliance's audit trail and what ``jbc events`` shows. Subsystems call
:meth:`EventJournal.record`; technician actions carry the ``actor`` who did them. Followers
(``jbc events --follow``) get new entries pushed through bounded queues; a follower too slow
to keep up is cut off rather than allowed to grow memory without bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

from appliance.store.database import Database

log = logging.getLogger(__name__)

SCHEMA = [
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        subsystem TEXT NOT NULL,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        details TEXT NOT NULL,
        actor TEXT
    );
    CREATE INDEX events_time ON events(time)
    """,
]

SECRET_KEYS = frozenset(
    {"password", "passwd", "secret", "ha1", "token", "key", "private_key", "enrollment_token",
     "authorization", "nonce"}
)
REDACTED = "<redacted>"
FOLLOWER_QUEUE_SIZE = 1000
UNWRITTEN_LOG_INTERVAL_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JournalEntry:
    id: int
    time: float
    subsystem: str
    kind: str
    reason: str
    details: Mapping[str, Any]
    actor: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "subsystem": self.subsystem,
            "kind": self.kind,
            "reason": self.reason,
            "details": dict(self.details),
            "actor": self.actor,
        }


class EventJournal:
    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.clock = clock
        self._followers: set[asyncio.Queue[JournalEntry | None]] = set()
        self.unwritten = 0
        """Entries that could not be stored (they were logged instead)."""
        self._unwritten_logged_at = float("-inf")
        database.migrate("journal", SCHEMA)

    def record(
        self,
        subsystem: str,
        kind: str,
        reason: str,
        details: Mapping[str, Any] | None = None,
        *,
        actor: str | None = None,
    ) -> JournalEntry:
        """Store one event and hand it to followers. Secret-looking keys are redacted.

        Never raises: the database goes on from memory when the disk fails, and should even
        that fail the entry is logged instead (its ``id`` is then 0)."""
        clean = redact(dict(details or {}))
        now = self.clock()
        try:
            entry_id = self.database.connection.execute(
                "INSERT INTO events (time, subsystem, kind, reason, details, actor) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (now, subsystem, kind, reason, json.dumps(clean, sort_keys=True, default=str),
                 actor),
            ).lastrowid
        except (sqlite3.Error, ValueError) as error:
            entry_id = 0
            self._unwritten(error, subsystem, kind, reason)
        entry = JournalEntry(
            id=entry_id, time=now, subsystem=subsystem, kind=kind, reason=reason,
            details=clean, actor=actor,
        )
        log.info("%s %s: %s%s", subsystem, kind, reason, f" (by {actor})" if actor else "")
        for queue in list(self._followers):
            try:
                queue.put_nowait(entry)
            except asyncio.QueueFull:
                self._followers.discard(queue)
                queue.get_nowait()  # make room for the end marker
                queue.put_nowait(None)
        return entry

    def _unwritten(self, error: Exception, subsystem: str, kind: str, reason: str) -> None:
        self.unwritten += 1
        now = self.clock()
        if now - self._unwritten_logged_at < UNWRITTEN_LOG_INTERVAL_S:
            return
        self._unwritten_logged_at = now
        log.error("the journal cannot write (%s); %d entries only logged so far, this one: "
                  "%s %s: %s", error, self.unwritten, subsystem, kind, reason)

    def query(
        self,
        *,
        since: float | None = None,
        after_id: int | None = None,
        subsystem: str | None = None,
        limit: int = 1000,
    ) -> list[JournalEntry]:
        """Entries oldest first: the newest ``limit`` of those matching the filters."""
        clauses, params = [], []
        if since is not None:
            clauses.append("time >= ?")
            params.append(since)
        if after_id is not None:
            clauses.append("id > ?")
            params.append(after_id)
        if subsystem is not None:
            clauses.append("subsystem = ?")
            params.append(subsystem)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.database.connection.execute(
            f"SELECT * FROM (SELECT * FROM events {where} ORDER BY id DESC LIMIT ?) ORDER BY id",
            (*params, limit),
        ).fetchall()
        return [_entry_from_row(row) for row in rows]

    def last_id(self) -> int:
        row = self.database.connection.execute("SELECT MAX(id) AS id FROM events").fetchone()
        return row["id"] or 0

    def follow(self) -> asyncio.Queue[JournalEntry | None]:
        """A queue receiving every new entry; ``None`` means the follower fell behind."""
        queue: asyncio.Queue[JournalEntry | None] = asyncio.Queue(FOLLOWER_QUEUE_SIZE)
        self._followers.add(queue)
        return queue

    def unfollow(self, queue: asyncio.Queue[JournalEntry | None]) -> None:
        self._followers.discard(queue)

    def delete_older_than(self, cutoff: float) -> int:
        cursor = self.database.connection.execute("DELETE FROM events WHERE time < ?", (cutoff,))
        return cursor.rowcount


def redact(value: Any) -> Any:
    """Replace the values of secret-looking keys, at any depth, with a fixed marker."""
    if isinstance(value, Mapping):
        return {
            key: REDACTED if str(key).lower() in SECRET_KEYS else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def _entry_from_row(row) -> JournalEntry:
    return JournalEntry(
        id=row["id"], time=row["time"], subsystem=row["subsystem"], kind=row["kind"],
        reason=row["reason"], details=json.loads(row["details"]), actor=row["actor"],
    )
