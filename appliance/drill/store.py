"""Drill reports: kept in the state database, uploaded to the cloud like call records.

Each report has a stable id (a UUID given when the drill starts), so an upload whose answer is
lost is sent again with the same id and the cloud reports a duplicate instead of storing it
twice (the same exactly-once bookkeeping as call records: appliance/sync/outbox.py). The newest
``KEEP`` reports are kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from appliance.store.database import Database

KEEP = 500
SCHEMA = [
    """
    CREATE TABLE drill_reports (
        id TEXT PRIMARY KEY,
        started_at REAL NOT NULL,
        passed INTEGER NOT NULL,
        report TEXT NOT NULL,
        uploaded_at REAL
    );
    CREATE INDEX drill_reports_started ON drill_reports(started_at)
    """,
]


class DrillReports:
    kind = "drill_reports"
    """The key of the upload body (cloud-api.json DrillReportBatch)."""
    operation = "uploadDrillReports"

    def __init__(self, database: Database) -> None:
        self.database = database
        database.migrate("drill", SCHEMA)

    def add(self, report: dict[str, Any]) -> None:
        with self.database.transaction() as db:
            db.execute("INSERT OR REPLACE INTO drill_reports (id, started_at, passed, report) "
                       "VALUES (?, ?, ?, ?)", (report["id"], report["started_at"],
                                               int(report["passed"]), json.dumps(report)))
            db.execute("DELETE FROM drill_reports WHERE id NOT IN (SELECT id FROM "
                       "drill_reports ORDER BY started_at DESC LIMIT ?)", (KEEP,))

    def latest(self, limit: int = 1) -> list[dict[str, Any]]:
        rows = self.database.connection.execute(
            "SELECT report, uploaded_at FROM drill_reports ORDER BY started_at DESC LIMIT ?",
            (limit,)).fetchall()
        return [{**json.loads(row["report"]), "uploaded_at": row["uploaded_at"]}
                for row in rows]

    def get(self, report_id: str) -> dict[str, Any] | None:
        row = self.database.connection.execute(
            "SELECT report, uploaded_at FROM drill_reports WHERE id = ?",
            (report_id,)).fetchone()
        return None if row is None else {**json.loads(row["report"]),
                                         "uploaded_at": row["uploaded_at"]}

    # -- the outbox's upload source --------------------------------------------------------

    def count_pending_upload(self) -> int:
        return self.database.connection.execute(
            "SELECT COUNT(*) FROM drill_reports WHERE uploaded_at IS NULL").fetchone()[0]

    def pending_upload(self, limit: int) -> list[dict[str, Any]]:
        rows = self.database.connection.execute(
            "SELECT report FROM drill_reports WHERE uploaded_at IS NULL ORDER BY started_at "
            "LIMIT ?", (limit,)).fetchall()
        return [to_upload(json.loads(row["report"])) for row in rows]

    def mark_uploaded(self, ids: Iterable[str]) -> None:
        now = time.time()
        with self.database.transaction() as db:
            db.executemany("UPDATE drill_reports SET uploaded_at = ? WHERE id = ?",
                           [(now, report_id) for report_id in ids])


def to_upload(report: dict[str, Any]) -> dict[str, Any]:
    """A report in the cloud API's DrillReport shape."""
    return {"id": report["id"], "kind": report["kind"], "trigger": report["trigger"],
            "started_at": report["started_at"], "finished_at": report["finished_at"],
            "passed": report["passed"],
            "steps": [{"id": s["id"], "title": s["title"], "outcome": s["outcome"],
                       "detail": s["detail"], "elapsed_s": s["elapsed_s"]}
                      for s in report["steps"]]}
