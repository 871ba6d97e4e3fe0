"""The appliance's SQLite database: WAL mode, one connection on the event-loop thread, and a
disk that may fail without taking the appliance down.

Each component declares its schema as an ordered list of migration steps under its own name;
:meth:`Database.migrate` applies the steps that have not run yet, in one transaction per step.
A step may only **add** (a table, an index, a column with a default), never rename, drop or
change what a column means: after an update is rolled back, the previous release runs on the
newer schema as it is (it says so in the journal, ``schema-newer``) instead of refusing to
start.
Writes are small and local (an event, a binding, a call record), so they are done inline on
the loop thread; WAL with ``synchronous=NORMAL`` keeps each commit well under a millisecond
while surviving a process crash (a power cut may lose only the last commits, never corrupt).

Storage faults are survived, not raised. Everyone uses ``database.connection`` (a stand-in
for a :class:`sqlite3.Connection`); when the state dir turns out to be full, read-only or
unusable, the database carries on **from memory**: what the file holds is copied into an
in-memory database, the statement that failed (and the rest of its transaction) runs there,
and everything after it too. Phones, calls and the journal go on; the one line in
:attr:`Database.problem` says what is wrong and what to do. :meth:`Database.try_restore`
(called every few seconds by the appliance while degraded) writes the memory copy back to the
file as soon as the disk takes it again, and the database is on disk again.

A **corrupt** file (at start, ``PRAGMA quick_check``; later, any statement that reports
corruption) is moved aside as ``jbc.sqlite3.corrupt-<time>`` (kept for support), every row
that still reads is salvaged table by table into a new database, and that one is used.

Every such event is queued as a :class:`StorageProblem` (:meth:`Database.take_problems`) for
the journal, which the appliance writes once the journal can take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import pathlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .errors import StoreError

log = logging.getLogger(__name__)

DATABASE_FILE = "jbc.sqlite3"
RESTORE_INTERVAL_S = 5.0
"""How often a database running from memory tries to get back onto the disk."""
MEMORY_HEADROOM_BYTES = 64 * 1024 * 1024
"""How much a database running from memory may grow beyond what it copied from the file."""
FREE_SPACE_MARGIN_BYTES = 256 * 1024
"""Restoring writes the copy twice (WAL, then the checkpoint into the file) plus this margin."""

# SQLite primary result codes (https://www.sqlite.org/rescode.html) that mean "the storage",
# not "the statement": the database goes on from memory (or, when corrupt, from a salvage).
SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT = 3, 8, 10, 11
SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 13, 14, 26
_STORAGE_CODES = {SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL,
                  SQLITE_CANTOPEN, SQLITE_NOTADB}
_CORRUPTION_CODES = {SQLITE_CORRUPT, SQLITE_NOTADB}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StorageProblem:
    """Something the journal must hear about storage: ``kind`` is the journal entry's kind."""

    kind: str
    message: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


class StorageCorrupt(StoreError):
    """``PRAGMA quick_check`` found damage; the message is its first complaint."""


def is_storage_error(error: BaseException) -> bool:
    """True for SQLite errors about the disk or the file, as opposed to the statement."""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(error, sqlite3.Error) and code is not None and (
        code & 0xFF) in _STORAGE_CODES


def _is_corruption(error: BaseException) -> bool:
    if isinstance(error, StorageCorrupt):
        return True
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _CORRUPTION_CODES


class Database:
    def __init__(self, path: pathlib.Path, *, check: bool = True) -> None:
        self.path = path
        self.state_dir = path.parent
        self.connection = Connection(self)
        self.mode = "file"
        self.problem: str | None = None
        """One line: what is wrong with storage and what to do; None while all is well."""
        self.problem_since: float | None = None
        self.kept_corrupt: list[str] = []
        self._file: sqlite3.Connection | None = None
        self._memory: sqlite3.Connection | None = None
        self._schemas: dict[str, Sequence[str]] = {}
        self._transaction: list[tuple[str, str, Any]] | None = None
        self._problems: list[StorageProblem] = []
        self._degraded_event: asyncio.Event | None = None
        self._erase_pending = False
        self._file_untrusted = False
        self.on_problem: Callable[[], None] | None = None
        """Called (on the loop thread) when a problem is queued for :meth:`take_problems`."""
        self._open(check=check)

    @classmethod
    def open_in(cls, state_dir: pathlib.Path) -> Database:
        # If the state dir cannot be made, the open fails too, says why and runs from memory.
        with contextlib.suppress(OSError):
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        return cls(state_dir / DATABASE_FILE)

    # -- state -------------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self.mode == "memory"

    def _active(self) -> sqlite3.Connection:
        connection = self._memory if self._memory is not None else self._file
        if connection is None:
            raise sqlite3.ProgrammingError(f"{self.path}: the database is closed")
        return connection

    def _queue_problem(self, problem: StorageProblem) -> None:
        self._problems.append(problem)
        if self.on_problem is not None:
            self.on_problem()

    def take_problems(self) -> list[StorageProblem]:
        problems, self._problems = self._problems, []
        return problems

    async def wait_degraded(self) -> None:
        """Return at once while running from memory, else when that starts."""
        while not self.degraded:
            if self._degraded_event is None:
                self._degraded_event = asyncio.Event()
            await self._degraded_event.wait()
            self._degraded_event = None

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"mode": self.mode, "path": str(self.path),
                                  "problem": self.problem, "problem_since": self.problem_since,
                                  "kept_corrupt": list(self.kept_corrupt)}
        if self.degraded:
            status["memory_bytes"] = _size_of(self._memory)
        return status

    def health_summary(self) -> str:
        if self.problem is not None:
            return self.problem
        return f"{self.path} ({_size_of(self._file) / 1e6:.1f} MB)"

    # -- opening -----------------------------------------------------------------------------

    def _open(self, *, check: bool) -> None:
        try:
            self._file = self._connect_file(check=check)
        except (sqlite3.Error, StorageCorrupt, OSError) as error:
            if self._file is not None:
                self._file.close()
                self._file = None
            if _is_corruption(error):
                self._recover_from_corruption(error)
            else:
                self._run_from_memory(error, copy_from=self._readonly_copy_source())

    def _connect_file(self, *, check: bool) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._file = connection
        connection.row_factory = sqlite3.Row
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL mode ({mode})")
        _configure(connection)
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        if check:
            verdict = connection.execute("PRAGMA quick_check(1)").fetchone()[0]
            if verdict != "ok":
                raise StorageCorrupt(verdict)
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions ("
            " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        return connection

    def _readonly_copy_source(self) -> sqlite3.Connection | None:
        """What the file holds, read-only (the state dir may refuse every write)."""
        if not self.path.exists():
            return None
        for query in ("mode=ro", "immutable=1"):
            try:
                source = sqlite3.connect(f"file:{self.path}?{query}", uri=True,
                                         check_same_thread=False)
                source.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return source
            except sqlite3.Error:
                continue
        return None

    # -- running from memory -----------------------------------------------------------------

    @staticmethod
    def _new_memory(pages_copied: int = 0) -> sqlite3.Connection:
        memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        memory.row_factory = sqlite3.Row
        page_size = memory.execute("PRAGMA page_size").fetchone()[0]
        memory.execute(f"PRAGMA max_page_count={pages_copied + MEMORY_HEADROOM_BYTES // page_size}")
        return memory

    def _run_from_memory(self, error: BaseException,
                         copy_from: sqlite3.Connection | None) -> None:
        """Go on from an in-memory copy of what ``copy_from`` holds (or from nothing)."""
        memory = self._new_memory()
        copied = False
        if copy_from is not None:
            try:
                if copy_from.in_transaction:
                    copy_from.execute("ROLLBACK")
                pages = copy_from.execute("PRAGMA page_count").fetchone()[0]
                memory.close()
                memory = self._new_memory(pages)
                copy_from.backup(memory)
                copied = True
            except sqlite3.Error as copy_error:
                log.error("cannot copy %s into memory (%s); starting from an empty database",
                          self.path, copy_error)
                memory.close()
                memory = self._new_memory()
            if copy_from is not self._file:
                copy_from.close()
        if not copied and self.path.exists():
            # What the file holds could not be read: never overwrite it with less. It is
            # moved aside (kept) before anything is written back.
            self._file_untrusted = True
        _configure(memory)
        memory.execute("CREATE TABLE IF NOT EXISTS schema_versions ("
                       " component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        self._memory = memory
        self.mode = "memory"
        for component, steps in self._schemas.items():
            self._migrate_on(memory, component, steps)
        what = _what_is_wrong(error, self.state_dir)
        kept = "a copy of what it held" if copied else "an empty database"
        self._set_problem(
            f"{what} ({_describe(error)}): running from memory on {kept}; nothing new is kept "
            f"across a restart until {_what_to_do(error, self.state_dir)}, then jbcd writes "
            f"it all out within {RESTORE_INTERVAL_S:g} s")
        log.error("storage: %s", self.problem)
        self._queue_problem(StorageProblem(kind="storage-degraded", message=self.problem,
                                             details={"path": str(self.path),
                                                      "error": _describe(error),
                                                      "copied": copied}))
        if self._degraded_event is not None:
            self._degraded_event.set()

    def try_restore(self, *, announce: bool = True) -> bool:
        """Write the memory copy back to the file; True when the database is on disk again."""
        if not self.degraded:
            return True
        needed = 2 * _size_of(self._memory) + FREE_SPACE_MARGIN_BYTES
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            free = _free_bytes(self.state_dir)
        except OSError:
            return False
        if free < needed or not os.access(self.state_dir, os.W_OK):
            return False
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            if self._file_untrusted and self.path.exists():
                aside = _move_aside(self.path)
                if aside is None:
                    return False
                self.kept_corrupt.append(str(aside))
                self._queue_problem(StorageProblem(
                    kind="database-kept-aside", message=f"{self.path} could not be read when "
                    f"storage failed; kept as {aside.name} for support, a new one written",
                    details={"kept_as": str(aside)}))
            self._file_untrusted = False
            if self._erase_pending:
                _remove_database_files(self.path)
            target = self._connect_file(check=False)
            self._memory.backup(target)
            if self._erase_pending:
                scrub(target)
        except (sqlite3.Error, OSError) as error:
            if self._file is not None:
                self._file.close()
                self._file = None
            log.debug("storage still unusable: %s", error)
            return False
        memory_bytes = _size_of(self._memory)
        self._memory.close()
        self._memory = None
        self.mode = "file"
        self._erase_pending = False
        was = self.problem
        self.problem = self.problem_since = None
        message = (f"writing to {self.path} again; {memory_bytes / 1e6:.1f} MB kept in memory "
                   "meanwhile written out")
        if announce:
            log.warning("storage: %s", message)
            self._queue_problem(StorageProblem(kind="storage-restored", message=message,
                                               details={"was": was, "bytes": memory_bytes}))
        return True

    def retry_delay_s(self) -> float:
        return RESTORE_INTERVAL_S

    # -- corruption --------------------------------------------------------------------------

    def _recover_from_corruption(self, error: BaseException) -> None:
        """Keep the damaged file aside, salvage what still reads into a new database."""
        memory = self._new_memory()
        source = self._file or _open_for_salvage(self.path)
        salvaged: dict[str, int] = {}
        if source is not None:
            salvaged = salvage(source, memory)
            source.close()
        self._file = None
        aside = _move_aside(self.path)
        if aside is not None:
            self.kept_corrupt.append(str(aside))
        elif self.path.exists():
            self._file_untrusted = True  # kept aside before anything is written over it
        _configure(memory)
        memory.execute("CREATE TABLE IF NOT EXISTS schema_versions ("
                       " component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        self._memory = memory
        self.mode = "memory"
        for component, steps in self._schemas.items():
            self._migrate_on(memory, component, steps)
        rows = sum(salvaged.values())
        kept = f"kept as {aside.name}" if aside is not None else "could not be moved aside"
        message = (f"{self.path} was corrupt ({_describe(error)}): {kept}, {rows} rows "
                   f"salvaged into a new database; keep {aside.name if aside else 'it'} for a "
                   "support bundle")
        log.error("storage: %s", message)
        self._queue_problem(StorageProblem(
            kind="database-recreated", message=message,
            details={"path": str(self.path), "kept_as": str(aside) if aside else None,
                     "error": _describe(error), "salvaged": salvaged}))
        if not self.try_restore(announce=False):
            self._set_problem(f"{message}; the new database cannot be written yet "
                              f"({_what_is_wrong(error, self.state_dir)}): running from memory")
            if self._degraded_event is not None:
                self._degraded_event.set()

    # -- statements --------------------------------------------------------------------------

    def _run(self, method: str, sql: str, parameters: Any) -> sqlite3.Cursor:
        if method == "executemany" and not isinstance(parameters, list | tuple):
            parameters = list(parameters)  # a generator could not be replayed after a switch
        connection = self._active()
        try:
            cursor = getattr(connection, method)(sql, parameters)
        except (sqlite3.Error, StorageCorrupt) as error:
            if not is_storage_error(error):
                raise
            if self.degraded and not _is_corruption(error):
                raise  # memory itself is full: nothing left to fall back to
            self._fall_back(error)
            cursor = getattr(self._active(), method)(sql, parameters)
        self._note_transaction(method, sql, parameters)
        return cursor

    def _fall_back(self, error: BaseException) -> None:
        pending = self._transaction
        if _is_corruption(error):
            if self._memory is not None:  # corrupt in memory is a bug, not a disk; say so
                raise error
            self._recover_from_corruption(error)
        else:
            self._run_from_memory(error, copy_from=self._file)
        if pending:  # redo the transaction the failure interrupted, up to the failing statement
            active = self._active()
            for method, sql, parameters in pending:
                getattr(active, method)(sql, parameters)

    def _note_transaction(self, method: str, sql: str, parameters: Any) -> None:
        word = sql.lstrip()[:8].upper()
        if word.startswith("BEGIN"):
            self._transaction = [(method, sql, parameters)]
        elif word.startswith(("COMMIT", "END", "ROLLBACK")):
            self._transaction = None
        elif self._transaction is not None:
            self._transaction.append((method, sql, parameters))

    # -- schema ------------------------------------------------------------------------------

    def migrate(self, component: str, steps: Sequence[str]) -> None:
        """Apply the not-yet-applied ``steps`` (each a SQL script) for ``component``."""
        self._schemas[component] = steps
        row = self.connection.execute(
            "SELECT version FROM schema_versions WHERE component = ?", (component,)
        ).fetchone()
        current = row["version"] if row else 0
        if current > len(steps):
            # A newer release migrated these tables and this one was rolled back to (A/B
            # update): migrations only ever add, so this release's statements still work.
            message = (f"the {component} tables are at schema version {current}, newer than "
                       f"this jbcd knows ({len(steps)}; a rollback after an update?): running "
                       "on them as they are")
            log.warning("storage: %s", message)
            self._queue_problem(StorageProblem(kind="schema-newer", message=message, details={
                "component": component, "version": current, "known": len(steps)}))
            return
        for version, script in enumerate(steps[current:], start=current + 1):
            with self.transaction():
                for statement in _split_statements(script):
                    self.connection.execute(statement)
                self.connection.execute(
                    "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                    "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                    (component, version),
                )
            log.debug("migrated %s tables to version %d", component, version)

    @staticmethod
    def _migrate_on(connection: sqlite3.Connection, component: str,
                    steps: Sequence[str]) -> None:
        """Bring a fresh or salvaged in-memory database up to ``component``'s schema."""
        row = connection.execute("SELECT version FROM schema_versions WHERE component = ?",
                                 (component,)).fetchone()
        current = row[0] if row else 0
        for version, script in enumerate(steps[current:], start=current + 1):
            connection.execute("BEGIN")
            for statement in _split_statements(script):
                connection.execute(statement)
            connection.execute("INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                               "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                               (component, version))
            connection.execute("COMMIT")

    def transaction(self) -> _Transaction:
        return _Transaction(self.connection)

    # -- erasure -----------------------------------------------------------------------------

    def scrub(self) -> dict[str, Any]:
        """Make deleted rows unreadable on disk: zero freed pages, checkpoint the WAL into the
        file and truncate it, rebuild the file without free pages. Running from memory, the
        files are removed instead (memory is the whole truth then) and rewritten on restore."""
        if self.degraded:
            removed = _remove_database_files(self.path)
            self._erase_pending = True
            return {"mode": "memory", "files_removed": removed,
                    "pending": bool(self.path.exists())}
        return {"mode": "file", **scrub(self._file)}

    def close(self) -> None:
        self.on_problem = None
        for connection in (self._memory, self._file):
            if connection is not None:
                connection.close()
        self._memory = self._file = None

    def _set_problem(self, message: str) -> None:
        self.problem = message
        if self.problem_since is None:
            self.problem_since = time.time()


class Connection:
    """``database.connection``: the calls components make on a sqlite3 connection, routed to
    whichever database is in use (the file, or memory while the disk fails)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        return self._database._run("execute", sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any]) -> sqlite3.Cursor:
        return self._database._run("executemany", sql, parameters)

    @property
    def in_transaction(self) -> bool:
        return self._database._active().in_transaction

    def iterdump(self) -> Iterable[str]:
        return self._database._active().iterdump()


class _Transaction:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def __enter__(self) -> Connection:
        self.connection.execute("BEGIN IMMEDIATE")
        return self.connection

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.connection.execute("COMMIT")
        elif self.connection.in_transaction:
            self.connection.execute("ROLLBACK")


def scrub(connection: sqlite3.Connection) -> dict[str, Any]:
    """secure_delete, then WAL checkpoint(TRUNCATE), VACUUM, checkpoint(TRUNCATE) again."""
    connection.execute("PRAGMA secure_delete=ON")
    busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    connection.execute("VACUUM")
    busy_after, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return {"checkpoint_complete": not (busy or busy_after)}


def salvage(source: sqlite3.Connection, target: sqlite3.Connection) -> dict[str, int]:
    """Copy every row of ``source`` that still reads into ``target`` (schema included);
    returns rows copied per table. Damaged stretches of a table are skipped."""
    try:
        objects = source.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
            "ORDER BY type = 'table' DESC").fetchall()
    except sqlite3.DatabaseError:
        return {}
    copied: dict[str, int] = {}
    target.execute("BEGIN")
    tables = [(name, sql) for kind, name, sql in objects
              if kind == "table" and not name.startswith("sqlite_")]
    for name, sql in tables:
        try:
            target.execute(sql)
        except sqlite3.Error:
            continue
        copied[name] = _salvage_rows(source, target, name)
    for kind, name, sql in objects:
        if kind != "table" and not name.startswith("sqlite_"):
            try:
                target.execute(sql)
            except sqlite3.Error:
                continue
    try:
        for name, seq in source.execute("SELECT name, seq FROM sqlite_sequence").fetchall():
            target.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = ?",
                           (seq, name))
            target.execute("INSERT INTO sqlite_sequence (name, seq) SELECT ?, ? WHERE NOT "
                           "EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?)",
                           (name, seq, name))
    except sqlite3.Error:
        pass
    target.execute("COMMIT")
    return copied


def _salvage_rows(source: sqlite3.Connection, target: sqlite3.Connection, table: str) -> int:
    quoted = '"' + table.replace('"', '""') + '"'
    try:
        columns = [row[1] for row in source.execute(f"PRAGMA table_info({quoted})")]
    except sqlite3.Error:
        return 0
    if not columns:
        return 0
    names = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
    insert = f"INSERT OR IGNORE INTO {quoted} ({names}) VALUES ({', '.join('?' * len(columns))})"
    copied, after, failures = 0, None, 0
    while failures < 64:
        query = f"SELECT rowid, {names} FROM {quoted}"
        parameters: tuple = ()
        if after is not None:
            query += " WHERE rowid > ?"
            parameters = (after,)
        try:
            for row in source.execute(query + " ORDER BY rowid", parameters):
                target.execute(insert, tuple(row)[1:])
                after = row[0]
                copied += 1
            return copied
        except sqlite3.DatabaseError:
            failures += 1
            after = (after or 0) + 2 ** failures  # skip past the damage, further each time
    return copied


def _configure(connection: sqlite3.Connection) -> None:
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA foreign_keys=ON")
    # Deleted rows are overwritten with zeros, so an erase leaves nothing readable behind.
    connection.execute("PRAGMA secure_delete=ON")


def _open_for_salvage(path: pathlib.Path) -> sqlite3.Connection | None:
    try:
        source = sqlite3.connect(path, check_same_thread=False)
        source.execute("PRAGMA query_only=ON")
        return source
    except sqlite3.Error:
        return None


def _move_aside(path: pathlib.Path) -> pathlib.Path | None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while aside.exists():
        counter += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    except OSError as error:
        log.error("cannot move the corrupt %s aside: %s", path, error)
        return None
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        with contextlib.suppress(OSError):
            os.rename(companion, aside.with_name(aside.name + suffix))
    return aside


def _remove_database_files(path: pathlib.Path) -> int:
    removed = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            path.with_name(path.name + suffix).unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as error:
            log.error("cannot remove %s%s: %s", path, suffix, error)
    return removed


def _size_of(connection: sqlite3.Connection | None) -> int:
    if connection is None:
        return 0
    try:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        size = connection.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.Error:
        return 0
    return pages * size


def _free_bytes(directory: pathlib.Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def _what_is_wrong(error: BaseException, state_dir: pathlib.Path) -> str:
    code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
    os_errno = getattr(error, "errno", None)
    if code == SQLITE_FULL or os_errno == errno.ENOSPC:
        return f"the state dir {state_dir} is full"
    if code in (SQLITE_READONLY, SQLITE_PERM) or os_errno in (errno.EROFS, errno.EACCES,
                                                               errno.EPERM):
        return f"the state dir {state_dir} is read-only"
    if code in (SQLITE_CANTOPEN, SQLITE_IOERR) and not _writable(state_dir):
        return f"the state dir {state_dir} is read-only"
    try:  # SQLite reports a full disk met while growing the WAL index as an I/O error
        if code in (SQLITE_CANTOPEN, SQLITE_IOERR) and (
                _free_bytes(state_dir) < FREE_SPACE_MARGIN_BYTES):
            return f"the state dir {state_dir} is full"
    except OSError:
        pass
    return f"the database in {state_dir} cannot be used"


def _what_to_do(error: BaseException, state_dir: pathlib.Path) -> str:
    wrong = _what_is_wrong(error, state_dir)
    if wrong.endswith("is full"):
        return f"space is freed there (df -h {state_dir})"
    if wrong.endswith("read-only"):
        return (f"it is writable again (mount -o remount,rw, or chown -R jbc: {state_dir})")
    return "the disk is checked (dmesg; jbc events)"


def _writable(directory: pathlib.Path) -> bool:
    try:
        return os.access(directory, os.W_OK) and not (os.statvfs(directory).f_flag
                                                      & os.ST_RDONLY)
    except OSError:
        return False


def _describe(error: BaseException) -> str:
    if isinstance(error, StorageCorrupt):
        return f"quick_check: {error}"
    return str(error) or type(error).__name__


def _split_statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]
