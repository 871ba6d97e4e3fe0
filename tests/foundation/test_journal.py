"""The event journal: stored in SQLite (WAL), queried by time and subsystem, secrets redacted."""

from __future__ import annotations

import asyncio

import pytest

from appliance.journal import REDACTED, EventJournal, redact
from appliance.store.database import Database


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def journal(tmp_path):
    database = Database.open_in(tmp_path)
    clock = FakeClock()
    journal = EventJournal(database, clock=clock)
    journal.clock_handle = clock
    yield journal
    database.close()


def test_database_runs_in_wal_mode(journal):
    mode = journal.database.connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_record_stores_time_subsystem_kind_reason_details_and_actor(journal):
    entry = journal.record("wan", "transition", "online -> outage: carrier lost",
                           {"from": "online", "to": "outage"}, actor="alice (uid 1000, admin)")
    (stored,) = journal.query()
    assert stored == entry
    assert stored.time == 1_000_000.0 and stored.details == {"from": "online", "to": "outage"}


def test_query_filters_by_time_and_subsystem_and_returns_oldest_first(journal):
    for index in range(5):
        journal.clock_handle.now = 1000.0 + index
        journal.record("wan" if index % 2 else "sip", "tick", f"event {index}")
    assert [e.reason for e in journal.query(since=1002.0)] == ["event 2", "event 3", "event 4"]
    assert [e.reason for e in journal.query(subsystem="wan")] == ["event 1", "event 3"]
    assert [e.reason for e in journal.query(limit=2)] == ["event 3", "event 4"]


def test_entries_survive_reopening_the_database(tmp_path):
    database = Database.open_in(tmp_path)
    EventJournal(database).record("daemon", "started", "ready")
    database.close()
    reopened = Database.open_in(tmp_path)
    assert [e.kind for e in EventJournal(reopened).query()] == ["started"]
    reopened.close()


def test_secret_looking_keys_are_redacted_at_any_depth():
    assert redact({"user": "101", "password": "hunter2",
                   "device": {"HA1": "abc", "list": [{"token": "t"}]}}) == {
        "user": "101", "password": REDACTED,
        "device": {"HA1": REDACTED, "list": [{"token": REDACTED}]}}


def test_recorded_secrets_never_reach_the_database(journal):
    journal.record("sip", "auth", "failed", {"password": "hunter2-secret"})
    dump = "\n".join(journal.database.connection.iterdump())
    assert "hunter2-secret" not in dump


async def test_followers_receive_new_entries_and_slow_ones_are_cut_off(journal):
    queue = journal.follow()
    journal.record("wan", "transition", "one")
    assert (await asyncio.wait_for(queue.get(), 1)).reason == "one"
    for index in range(queue.maxsize + 5):
        journal.record("wan", "tick", str(index))
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    assert items[-1] is None  # the end marker: re-read the journal to catch up
    journal.record("wan", "tick", "after")
    assert queue.empty()
