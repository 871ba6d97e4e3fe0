"""What is waiting to go to the cloud, and the bookkeeping that makes uploads exactly-once.

Events come from the journal (append-only; a cursor remembers the last id the cloud confirmed).
Call records come from :class:`CallRecordStore` (finished ones without ``uploaded_at``). Each
item carries a stable id, so when the answer to an upload is lost (cut, timeout, restart) the
retry sends the same ids and the cloud reports them as duplicates instead of storing them
twice. Local bookkeeping moves only after the cloud has confirmed every id of the batch, in
one SQLite transaction, so a crash at any point either repeats a batch (harmless) or not.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Protocol

from appliance.journal import EventJournal
from appliance.store.call_records import CallRecordStore

from .errors import SyncError
from .state import SyncState

EVENTS_CURSOR = "events_cursor"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    kind: str
    """'events' or 'call_records' (the key of the upload body)."""
    operation: str
    items: list[dict[str, Any]]
    last_event_id: int | None = None

    @property
    def ids(self) -> list[str]:
        return [item["id"] for item in self.items]

    def body(self) -> dict[str, Any]:
        return {self.kind: self.items}


class UploadSource(Protocol):
    """Another kind of record uploaded exactly once, like call records (drill reports)."""

    kind: str
    operation: str

    def count_pending_upload(self) -> int: ...

    def pending_upload(self, limit: int) -> list[dict[str, Any]]: ...

    def mark_uploaded(self, ids: list[str]) -> None: ...


class UploadMismatch(SyncError):
    """The cloud's receipt does not account for every id of the batch."""


class Outbox:
    def __init__(self, *, journal: EventJournal, call_records: CallRecordStore,
                 state: SyncState, sources: tuple[UploadSource, ...] = ()) -> None:
        self.journal = journal
        self.call_records = call_records
        self.sources = {source.kind: source for source in sources}
        self.state = state
        self.installation = state.installation_id()

    def event_id(self, journal_id: int) -> str:
        return f"{self.installation}/event/{journal_id}"

    def pending(self) -> dict[str, int]:
        cursor = self.state.get(EVENTS_CURSOR, 0)
        events = self.journal.database.connection.execute(
            "SELECT COUNT(*) FROM events WHERE id > ?", (cursor,)).fetchone()[0]
        pending = {"events": events, "call_records": self.call_records.count_pending_upload()}
        for kind, source in self.sources.items():
            pending[kind] = source.count_pending_upload()
        return pending

    def next_batches(self, limit: int) -> list[Batch]:
        """Up to one batch of each kind, oldest first."""
        batches = []
        cursor = self.state.get(EVENTS_CURSOR, 0)
        rows = self.journal.database.connection.execute(
            "SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (cursor, limit)).fetchall()
        if rows:
            items = [{"id": self.event_id(row["id"]), "time": row["time"],
                      "subsystem": row["subsystem"], "kind": row["kind"],
                      "reason": row["reason"], "details": json.loads(row["details"]),
                      "actor": row["actor"]} for row in rows]
            batches.append(Batch(kind="events", operation="uploadEvents", items=items,
                                 last_event_id=rows[-1]["id"]))
        records = self.call_records.pending_upload(limit)
        if records:
            batches.append(Batch(kind="call_records", operation="uploadCallRecords",
                                 items=[r.to_upload() for r in records]))
        for kind, source in self.sources.items():
            items = source.pending_upload(limit)
            if items:
                batches.append(Batch(kind=kind, operation=source.operation, items=items))
        return batches

    def confirm(self, batch: Batch, receipt: dict[str, Any]) -> int:
        """Record that the cloud has ``batch``; returns how many were new to it."""
        confirmed = set(receipt["stored"]) | set(receipt["duplicates"])
        missing = [i for i in batch.ids if i not in confirmed]
        if missing:
            raise UploadMismatch(f"the cloud's receipt lacks {len(missing)} of {len(batch.ids)}"
                                 f" ids (first: {missing[0]}); the batch will be sent again")
        if batch.kind == "events":  # one statement: atomic
            self.state.set(EVENTS_CURSOR, max(batch.last_event_id,
                                              self.state.get(EVENTS_CURSOR, 0)))
        elif batch.kind in self.sources:  # one transaction
            self.sources[batch.kind].mark_uploaded(batch.ids)
        else:  # one transaction
            self.call_records.mark_uploaded(batch.ids)
        return len(receipt["stored"])
