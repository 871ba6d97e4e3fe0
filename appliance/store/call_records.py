"""Call records: one row per call the appliance handled, kept 13 months, uploaded once.

The SIP proxy and the trunk gateway write them; cloud sync uploads the finished ones and
retention deletes them 13 months after the call started. Each record gets a stable id (a
UUID) when the call starts, so an upload that is retried is recognised by the cloud as the
same record and never counted twice::

    records = CallRecordStore(runtime.database)
    call = records.start(direction="outbound", from_party="101", to_party="+15551234567",
                         trunk="lte1")
    records.answered(call)
    records.ended(call, result="answered", cause="200 OK / BYE")

A record is "finished" once it has an end time; only finished records are uploaded, and
never the ``notification`` ones: the gateway's calls that tell an on-site extension about an
emergency call are the appliance's own, not the customer's calls.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from appliance.store.database import Database
from appliance.store.errors import StoreError

Direction = Literal["internal", "outbound", "inbound", "emergency", "notification"]
Result = Literal["answered", "busy", "no-answer", "failed", "cancelled", "rejected"]
DIRECTIONS = ("internal", "outbound", "inbound", "emergency", "notification")
NOT_UPLOADED = "notification"
"""The direction of records that stay on the appliance (see the module docstring)."""
_TO_UPLOAD = f"uploaded_at IS NULL AND ended_at IS NOT NULL AND direction != '{NOT_UPLOADED}'"
RESULTS = ("answered", "busy", "no-answer", "failed", "cancelled", "rejected")

SCHEMA = [
    """
    CREATE TABLE call_records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        direction TEXT NOT NULL,
        from_party TEXT NOT NULL,
        to_party TEXT NOT NULL,
        trunk TEXT,
        started_at REAL NOT NULL,
        answered_at REAL,
        ended_at REAL,
        result TEXT,
        cause TEXT NOT NULL DEFAULT '',
        emergency INTEGER NOT NULL DEFAULT 0,
        location TEXT,
        uploaded_at REAL
    );
    CREATE INDEX call_records_started ON call_records(started_at);
    CREATE INDEX call_records_to_upload ON call_records(seq)
        WHERE uploaded_at IS NULL AND ended_at IS NOT NULL
    """,
]


class UnknownCall(StoreError, KeyError):
    pass


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    id: str
    direction: Direction
    from_party: str
    to_party: str
    trunk: str | None
    started_at: float
    answered_at: float | None
    ended_at: float | None
    result: Result | None
    cause: str
    emergency: bool
    location: str | None
    """The dispatchable location sent with an emergency call."""
    uploaded_at: float | None = None

    def to_upload(self) -> dict[str, Any]:
        """The cloud API's CallRecord shape (see appliance/sync/cloud-api.json)."""
        return {"id": self.id, "direction": self.direction, "from": self.from_party,
                "to": self.to_party, "trunk": self.trunk, "started_at": self.started_at,
                "answered_at": self.answered_at, "ended_at": self.ended_at,
                "result": self.result, "cause": self.cause, "emergency": self.emergency,
                "location": self.location}


class CallRecordStore:
    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.clock = clock
        database.migrate("call_records", SCHEMA)

    # -- writing (SIP proxy, gateway) --------------------------------------------------------

    def start(self, *, direction: Direction, from_party: str, to_party: str,
              trunk: str | None = None, emergency: bool = False, location: str | None = None,
              record_id: str | None = None, at: float | None = None) -> str:
        """Open a record for a call that starts now; returns its stable id."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
        record_id = record_id or str(uuid.uuid4())
        self.database.connection.execute(
            "INSERT INTO call_records (id, direction, from_party, to_party, trunk, started_at,"
            " emergency, location) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record_id, direction, from_party, to_party, trunk,
             self.clock() if at is None else at, int(emergency), location))
        return record_id

    def answered(self, record_id: str, *, at: float | None = None) -> None:
        self._update(record_id, "answered_at = ?", self.clock() if at is None else at)

    def ended(self, record_id: str, *, result: Result, cause: str = "",
              at: float | None = None) -> None:
        if result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}, not {result!r}")
        cursor = self.database.connection.execute(
            "UPDATE call_records SET ended_at = ?, result = ?, cause = ? "
            "WHERE id = ? AND ended_at IS NULL",
            (self.clock() if at is None else at, result, cause, record_id))
        if cursor.rowcount == 0:
            self.get(record_id)  # raises UnknownCall if absent; otherwise already ended

    def annotate(self, record_id: str, *, trunk: str | None = None,
                 location: str | None = None) -> None:
        """Fill in what another component learns about a call it did not open: the trunk
        the gateway put a proxied call on, a dispatchable location. Only empty fields are
        filled; raises UnknownCall while the record is not (yet) written."""
        cursor = self.database.connection.execute(
            "UPDATE call_records SET trunk = COALESCE(trunk, ?), "
            "location = COALESCE(location, ?) WHERE id = ?", (trunk, location, record_id))
        if cursor.rowcount == 0:
            raise UnknownCall(record_id)

    def _update(self, record_id: str, assignment: str, value: Any) -> None:
        cursor = self.database.connection.execute(
            f"UPDATE call_records SET {assignment} WHERE id = ?", (value, record_id))
        if cursor.rowcount == 0:
            raise UnknownCall(record_id)

    # -- reading -----------------------------------------------------------------------------

    def get(self, record_id: str) -> CallRecord:
        row = self.database.connection.execute(
            "SELECT * FROM call_records WHERE id = ?", (record_id,)).fetchone()
        if row is None:
            raise UnknownCall(record_id)
        return _record(row)

    def recent(self, limit: int = 50) -> list[CallRecord]:
        rows = self.database.connection.execute(
            "SELECT * FROM call_records ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [_record(row) for row in rows]

    def count(self) -> int:
        return self.database.connection.execute("SELECT COUNT(*) FROM call_records").fetchone()[0]

    # -- upload (cloud sync) -----------------------------------------------------------------

    def pending_upload(self, limit: int) -> list[CallRecord]:
        rows = self.database.connection.execute(
            f"SELECT * FROM call_records WHERE {_TO_UPLOAD} ORDER BY seq LIMIT ?",
            (limit,)).fetchall()
        return [_record(row) for row in rows]

    def count_pending_upload(self) -> int:
        return self.database.connection.execute(
            f"SELECT COUNT(*) FROM call_records WHERE {_TO_UPLOAD}").fetchone()[0]

    def mark_uploaded(self, record_ids: Iterable[str], *, at: float | None = None) -> None:
        when = self.clock() if at is None else at
        with self.database.transaction() as connection:
            connection.executemany("UPDATE call_records SET uploaded_at = ? WHERE id = ?",
                                   [(when, rid) for rid in record_ids])

    # -- retention and erasure ---------------------------------------------------------------

    def delete_started_before(self, cutoff: float) -> int:
        return self.database.connection.execute(
            "DELETE FROM call_records WHERE started_at < ?", (cutoff,)).rowcount

    def erase_all(self) -> int:
        return self.database.connection.execute("DELETE FROM call_records").rowcount

    def insert_many(self, records: Sequence[CallRecord]) -> None:
        """Bulk insert of finished records (imports, the benchmark)."""
        with self.database.transaction() as connection:
            connection.executemany(
                "INSERT INTO call_records (id, direction, from_party, to_party, trunk, "
                "started_at, answered_at, ended_at, result, cause, emergency, location) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.id, r.direction, r.from_party, r.to_party, r.trunk, r.started_at,
                  r.answered_at, r.ended_at, r.result, r.cause, int(r.emergency), r.location)
                 for r in records])


def _record(row) -> CallRecord:
    return CallRecord(id=row["id"], direction=row["direction"], from_party=row["from_party"],
                      to_party=row["to_party"], trunk=row["trunk"], started_at=row["started_at"],
                      answered_at=row["answered_at"], ended_at=row["ended_at"],
                      result=row["result"], cause=row["cause"], emergency=bool(row["emergency"]),
                      location=row["location"], uploaded_at=row["uploaded_at"])
