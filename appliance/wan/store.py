"""The WAN state that survives a restart: a daemon restarted during an outage resumes in it.

One row: the state, since when, why, who forced it, and the flap penalty (so a watchdog
restart in the middle of a flapping link does not reset the damping).
"""

from __future__ import annotations

import dataclasses

from appliance.store.database import Database

from .events import WanState

SCHEMA = [
    """
    CREATE TABLE wan_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        state TEXT NOT NULL,
        since REAL NOT NULL,
        cause TEXT NOT NULL,
        actor TEXT,
        penalty REAL NOT NULL,
        saved_at REAL NOT NULL
    )
    """,
]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SavedWanState:
    state: WanState
    since: float
    cause: str
    actor: str | None
    penalty: float
    saved_at: float


class WanStateStore:
    def __init__(self, database: Database) -> None:
        self.database = database
        database.migrate("wan", SCHEMA)

    def load(self) -> SavedWanState | None:
        row = self.database.connection.execute("SELECT * FROM wan_state WHERE id = 1").fetchone()
        if row is None:
            return None
        try:
            state = WanState(row["state"])
        except ValueError:
            return None
        return SavedWanState(state=state, since=row["since"], cause=row["cause"],
                             actor=row["actor"], penalty=row["penalty"],
                             saved_at=row["saved_at"])

    def save(self, saved: SavedWanState) -> None:
        self.database.connection.execute(
            "INSERT INTO wan_state (id, state, since, cause, actor, penalty, saved_at) "
            "VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET state = excluded.state, "
            "since = excluded.since, cause = excluded.cause, actor = excluded.actor, "
            "penalty = excluded.penalty, saved_at = excluded.saved_at",
            (str(saved.state), saved.since, saved.cause, saved.actor, saved.penalty,
             saved.saved_at))
