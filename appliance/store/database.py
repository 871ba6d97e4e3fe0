"""The appliance's SQLite database: WAL mode, one connection on the event-loop thread.

Each component declares its schema as an ordered list of migration steps under its own name;
:meth:`Database.migrate` applies the steps that have not run yet, in one transaction per step.
Writes are small and local (an event, a binding, a call record), so they are done inline on
the loop thread; WAL with ``synchronous=NORMAL`` keeps each commit well under a millisecond
while surviving a process crash (a power cut may lose only the last commits, never corrupt).
"""

from __future__ import annotations

import logging
import pathlib
import sqlite3
from collections.abc import Sequence

log = logging.getLogger(__name__)

DATABASE_FILE = "jbc.sqlite3"


class Database:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.connection.row_factory = sqlite3.Row
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.connection.execute("PRAGMA foreign_keys=ON")
        self.connection.execute("PRAGMA busy_timeout=5000")
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions ("
            " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )

    @classmethod
    def open_in(cls, state_dir: pathlib.Path) -> Database:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        return cls(state_dir / DATABASE_FILE)

    def migrate(self, component: str, steps: Sequence[str]) -> None:
        """Apply the not-yet-applied ``steps`` (each a SQL script) for ``component``."""
        row = self.connection.execute(
            "SELECT version FROM schema_versions WHERE component = ?", (component,)
        ).fetchone()
        current = row["version"] if row else 0
        if current > len(steps):
            raise RuntimeError(
                f"{self.path}: the {component} tables are at schema version {current}, newer than "
                f"this jbcd knows ({len(steps)}); run the newer jbcd or restore a matching backup"
            )
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

    def transaction(self) -> _Transaction:
        return _Transaction(self.connection)

    def close(self) -> None:
        self.connection.close()


class _Transaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> sqlite3.Connection:
        self.connection.execute("BEGIN IMMEDIATE")
        return self.connection

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.connection.execute("COMMIT")
        else:
            self.connection.execute("ROLLBACK")


def _split_statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]
