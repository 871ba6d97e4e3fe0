"""Sync's small persistent state (SQLite, table ``sync_state``): cursors, ETag, versions,
the subscription verdict. Every value is one JSON document under one key, written at once."""

from __future__ import annotations

import json
import uuid
from typing import Any

from appliance.store.database import Database

SCHEMA = [
    """
    CREATE TABLE sync_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
]


class SyncState:
    def __init__(self, database: Database) -> None:
        self.database = database
        database.migrate("sync", SCHEMA)

    def get(self, key: str, default: Any = None) -> Any:
        row = self.database.connection.execute(
            "SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row["value"])

    def set(self, key: str, value: Any) -> None:
        self.database.connection.execute(
            "INSERT INTO sync_state (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, json.dumps(value)))

    def delete(self, key: str) -> None:
        self.database.connection.execute("DELETE FROM sync_state WHERE key = ?", (key,))

    def installation_id(self) -> str:
        """A random id made once per installation; stable upload ids are built from it."""
        value = self.get("installation_id")
        if value is None:
            value = str(uuid.uuid4())
            self.set("installation_id", value)
        return value
