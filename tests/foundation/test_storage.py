"""Storage faults: a full, read-only or corrupt state dir degrades persistence, never the
appliance. Writes go on from memory and reach the disk again when it takes them; a corrupt
database is kept aside, salvaged and recreated."""

from __future__ import annotations

import contextlib
import logging
import pathlib
import sqlite3

import pytest

from appliance.journal import EventJournal
from appliance.store.call_records import CallRecordStore
from appliance.store.database import DATABASE_FILE, Database
from jbcbench.diskfaults import SmallFilesystem, can_mount, corrupt_header, corrupt_table

needs_mount = pytest.mark.skipif(not can_mount(), reason="mounting a small tmpfs needs root")


def populate(database: Database, *, events: int = 400, calls: int = 50) -> list[str]:
    journal = EventJournal(database)
    records = CallRecordStore(database)
    for n in range(events):
        journal.record("wan", "probe", f"round {n} " + "x" * 200)
    ids = []
    for n in range(calls):
        call = records.start(direction="outbound", from_party="101", to_party=f"+1555{n:07d}")
        records.ended(call, result="answered")
        ids.append(call)
    return ids


def rows_on_disk(path: pathlib.Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def checkpoint_and_close(database: Database) -> None:
    database.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    database.close()


def test_a_corrupt_journal_is_kept_aside_and_the_rest_salvaged(tmp_path):
    database = Database.open_in(tmp_path)
    calls = populate(database)
    last_event = EventJournal(database).last_id()
    checkpoint_and_close(database)
    damaged = corrupt_table(tmp_path / DATABASE_FILE, "events", pages=3)
    assert damaged

    reopened = Database.open_in(tmp_path)
    problems = reopened.take_problems()
    assert [p.kind for p in problems] == ["database-recreated"]
    assert "was corrupt" in problems[0].message and "kept as jbc.sqlite3.corrupt-" in (
        problems[0].message)
    assert reopened.mode == "file" and reopened.problem is None
    kept = pathlib.Path(reopened.kept_corrupt[0])
    assert kept.exists() and kept.parent == tmp_path
    records = CallRecordStore(reopened)
    assert sorted(r.id for r in records.pending_upload(1000)) == sorted(calls)
    journal = EventJournal(reopened)
    survivors = journal.query(subsystem="wan", limit=10000)
    assert 0 < len(survivors) < 400  # the damaged pages' events are gone, the others kept
    assert problems[0].details["salvaged"]["call_records"] == 50
    # Ids go on above the old ones, so uploads keyed by event id never collide.
    assert journal.record("daemon", "started", "again").id > last_event
    reopened.close()


def test_corruption_met_while_running_is_recovered_in_place(tmp_path):
    database = Database.open_in(tmp_path)
    calls = populate(database)
    database.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    corrupt_table(tmp_path / DATABASE_FILE, "events", pages=3)
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_FILE)) as other:
        other.execute("CREATE TABLE poke (x)")  # another writer: our cached pages go stale
        other.commit()
    journal = EventJournal(database)
    survivors = journal.query(limit=10000)  # reads the damaged pages: recovered, not raised
    assert 0 < len(survivors) < 400
    assert [p.kind for p in database.take_problems()] == ["database-recreated"]
    assert database.mode == "file" and len(database.kept_corrupt) == 1
    assert sorted(r.id for r in CallRecordStore(database).pending_upload(1000)) == sorted(calls)
    journal.record("wan", "online", "back")
    assert rows_on_disk(tmp_path / DATABASE_FILE, "events") == len(survivors) + 1
    database.close()


def test_a_database_whose_header_is_destroyed_is_recreated_and_kept(tmp_path):
    database = Database.open_in(tmp_path)
    populate(database, events=10, calls=5)
    checkpoint_and_close(database)
    corrupt_header(tmp_path / DATABASE_FILE)
    reopened = Database.open_in(tmp_path)
    [problem] = reopened.take_problems()
    assert problem.kind == "database-recreated" and "0 rows salvaged" in problem.message
    assert reopened.mode == "file"
    assert CallRecordStore(reopened).count() == 0
    assert EventJournal(reopened).record("x", "y", "z").id == 1
    reopened.close()
    assert len(list(tmp_path.glob(f"{DATABASE_FILE}.corrupt-*"))) == 1


def test_a_statement_error_is_still_the_callers_error(tmp_path):
    database = Database.open_in(tmp_path)
    records = CallRecordStore(database)
    call = records.start(direction="internal", from_party="101", to_party="102")
    with pytest.raises(sqlite3.IntegrityError):
        records.start(direction="internal", from_party="101", to_party="102", record_id=call)
    with pytest.raises(sqlite3.OperationalError):
        database.connection.execute("SELECT * FROM no_such_table")
    assert database.mode == "file" and database.take_problems() == []
    database.close()


def test_the_journal_never_raises_it_logs_what_it_cannot_store(tmp_path, caplog):
    database = Database.open_in(tmp_path)
    journal = EventJournal(database)
    database.close()
    caplog.set_level(logging.ERROR)
    entry = journal.record("sync", "task-crashed", "cloud-link: OSError: disk full")
    assert entry.id == 0 and journal.unwritten == 1
    assert any("the journal cannot write" in r.getMessage() and "cloud-link" in r.getMessage()
               for r in caplog.records)


@pytest.mark.integration
@needs_mount
def test_a_full_disk_moves_writes_to_memory_and_back_when_space_returns(tmp_path):
    with SmallFilesystem(tmp_path / "state", size_kib=2048) as disk:
        database = Database.open_in(disk.path)
        calls = populate(database, events=20, calls=10)
        records = CallRecordStore(database)
        disk.fill()
        with database.transaction() as db:  # interrupted by the full disk: redone in memory
            for n in range(300):
                db.execute("INSERT INTO events (time, subsystem, kind, reason, details) "
                           "VALUES (0, 'sip', 'call', ?, '{}')", ("y" * 500 + str(n),))
        for n in range(20):
            call = records.start(direction="inbound", from_party=f"+1666{n:07d}", to_party="101")
            records.ended(call, result="answered")
            calls.append(call)
        assert database.mode == "memory"
        assert "is full" in database.problem and "df -h" in database.problem
        assert [p.kind for p in database.take_problems()] == ["storage-degraded"]
        assert records.count_pending_upload() == 30
        assert database.try_restore() is False  # still full
        disk.free()
        assert database.try_restore() is True
        assert database.mode == "file" and database.problem is None
        assert [p.kind for p in database.take_problems()] == ["storage-restored"]
        assert rows_on_disk(disk.path / DATABASE_FILE, "call_records") == 30
        assert rows_on_disk(disk.path / DATABASE_FILE, "events") == 320
        records.ended(records.start(direction="internal", from_party="1", to_party="2"),
                      result="answered")
        assert rows_on_disk(disk.path / DATABASE_FILE, "call_records") == 31
        database.close()


@pytest.mark.integration
@needs_mount
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_starting_on_a_broken_state_dir_runs_from_memory_with_what_the_file_held(tmp_path,
                                                                                  fault):
    with SmallFilesystem(tmp_path / "state", size_kib=1024) as disk:
        database = Database.open_in(disk.path)
        populate(database, events=3, calls=4)
        database.close()
        disk.fill() if fault == "full" else disk.read_only()
        started = Database.open_in(disk.path)
        assert started.mode == "memory"
        assert CallRecordStore(started).count_pending_upload() == 4
        EventJournal(started).record("daemon", "started", "on a broken disk")
        [problem] = started.take_problems()
        assert problem.kind == "storage-degraded" and fault in problem.message
        disk.free() if fault == "full" else disk.writable()
        assert started.try_restore()
        assert rows_on_disk(disk.path / DATABASE_FILE, "events") == 4
        started.close()


def test_tables_migrated_by_a_newer_release_are_used_as_they_are_after_a_rollback(tmp_path):
    newer = Database.open_in(tmp_path)
    newer.migrate("calls", ["CREATE TABLE calls (id TEXT PRIMARY KEY)",
                            "ALTER TABLE calls ADD COLUMN codec TEXT NOT NULL DEFAULT ''"])
    newer.connection.execute("INSERT INTO calls (id, codec) VALUES ('a', 'opus')")
    newer.close()
    older = Database.open_in(tmp_path)  # the release before: it knows only the first step
    older.migrate("calls", ["CREATE TABLE calls (id TEXT PRIMARY KEY)"])
    [problem] = older.take_problems()
    assert problem.kind == "schema-newer" and "version 2, newer than this jbcd knows (1;" in (
        problem.message)
    older.connection.execute("INSERT INTO calls (id) VALUES ('b')")
    ids = [row["id"] for row in older.connection.execute("SELECT id FROM calls ORDER BY id")]
    assert ids == ["a", "b"]
    older.close()
