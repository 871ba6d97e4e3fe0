"""What the SIP service keeps in the database, so that a restart mid-outage resumes it:
every binding (registered here, or mirrored from the cloud in in-path mode), the dialogs of
answered calls that are still up (their in-dialog requests must still be routed after the
restart), and in-path mode's flow-token key (tokens in the cloud's bindings stay valid across
a restart). Call records themselves live in :mod:`appliance.store.call_records`.

Times in the rows are wall-clock; the core runs on the loop's monotonic clock. Every method
takes both (``now`` monotonic, ``wall`` wall-clock, read at the same moment) and converts on
the way in and out, so a binding resumes with the time it had left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

from appliance.store.database import Database

from .flow import Flow
from .proxy import Call
from .registrar import Binding
from .uri import SipUri, UriError

SCHEMA = [
    """
    CREATE TABLE sip_bindings (
        aor TEXT NOT NULL,
        binding_key TEXT NOT NULL,
        contact TEXT NOT NULL,
        q REAL NOT NULL,
        expires_at REAL NOT NULL,
        call_id TEXT NOT NULL,
        cseq INTEGER NOT NULL,
        transport TEXT NOT NULL,
        source_host TEXT NOT NULL,
        source_port INTEGER NOT NULL,
        device_id TEXT NOT NULL,
        user_agent TEXT NOT NULL,
        instance TEXT,
        reg_id TEXT,
        registered_at REAL NOT NULL,
        PRIMARY KEY (aor, binding_key)
    );
    CREATE TABLE sip_dialogs (
        id TEXT PRIMARY KEY,
        call_id TEXT NOT NULL,
        caller_tag TEXT NOT NULL,
        to_tags TEXT NOT NULL,
        caller TEXT NOT NULL,
        callee TEXT NOT NULL,
        kind TEXT NOT NULL,
        direction TEXT NOT NULL,
        emergency INTEGER NOT NULL,
        state TEXT NOT NULL,
        started_at REAL NOT NULL,
        answered_at REAL NOT NULL
    )
    """,
]


RELAY_SCHEMA = [
    """
    ALTER TABLE sip_bindings ADD COLUMN origin TEXT NOT NULL DEFAULT 'local';
    CREATE TABLE sip_relay_keys (
        name TEXT PRIMARY KEY,
        key BLOB NOT NULL
    )
    """,
]
"""In-path mode's additions, a component of their own so that both lines of migrations can
grow independently."""


class SipStore:
    """The ``sip_bindings``, ``sip_dialogs`` and ``sip_relay_keys`` tables (created on first
    use)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        database.migrate("sip", SCHEMA)
        database.migrate("sip_relay", RELAY_SCHEMA)

    def transaction(self):
        """Group writes (:meth:`replace_all_bindings`, :meth:`save_dialog`, ...) into one."""
        return self.database.transaction()

    # -- bindings -----------------------------------------------------------------------------

    def load_bindings(self, now: float, wall: float) -> list[Binding]:
        """The bindings that have not expired; expired rows are deleted."""
        connection = self.database.connection
        rows = connection.execute("SELECT * FROM sip_bindings WHERE expires_at > ?",
                                  (wall,)).fetchall()
        connection.execute("DELETE FROM sip_bindings WHERE expires_at <= ?", (wall,))
        bindings = []
        for row in rows:
            try:
                uri = SipUri.parse(row["contact"])
            except UriError:
                continue
            bindings.append(Binding(
                aor=row["aor"], contact=row["contact"], uri=uri, key=row["binding_key"],
                q=row["q"], expires_at=now + (row["expires_at"] - wall), call_id=row["call_id"],
                cseq=row["cseq"], flow=Flow(row["transport"], row["source_host"],
                                            row["source_port"]),
                device_id=row["device_id"], user_agent=row["user_agent"],
                instance=row["instance"], reg_id=row["reg_id"],
                registered_at=now + (row["registered_at"] - wall), origin=row["origin"]))
        return bindings

    def replace_all_bindings(self, bindings: Mapping[str, Iterable[Binding]], now: float,
                             wall: float) -> None:
        """Make each AOR's rows exactly its ``bindings`` (none: the AOR is gone): two
        statements however many AORs changed (a registration storm changes thousands)."""
        connection = self.database.connection
        connection.executemany("DELETE FROM sip_bindings WHERE aor = ?",
                               [(aor,) for aor in bindings])
        connection.executemany(
            "INSERT INTO sip_bindings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(b.aor, b.key, b.contact, b.q, wall + (b.expires_at - now), b.call_id, b.cseq,
              b.flow.transport, b.flow.host, b.flow.port, b.device_id, b.user_agent,
              b.instance, b.reg_id, wall + (b.registered_at - now), b.origin)
             for aor_bindings in bindings.values() for b in aor_bindings])

    # -- dialogs ------------------------------------------------------------------------------

    def load_dialogs(self, now: float, wall: float) -> list[Call]:
        """Answered calls that were up when jbcd stopped."""
        rows = self.database.connection.execute("SELECT * FROM sip_dialogs").fetchall()
        calls = []
        for row in rows:
            call = Call(call_id=row["call_id"], caller_tag=row["caller_tag"],
                        caller=row["caller"], callee=row["callee"], kind=row["kind"],
                        direction=row["direction"], emergency=bool(row["emergency"]),
                        now=now + (row["started_at"] - wall), record_id=row["id"],
                        # Calls from the trunk gateway carry the gateway's own record.
                        owns_record=row["direction"] != "inbound")
            call.to_tags = set(json.loads(row["to_tags"]))
            call.state = row["state"]
            call.answered_at = now + (row["answered_at"] - wall)
            calls.append(call)
        return calls

    def save_dialog(self, call: Call, now: float, wall: float) -> None:
        """Keep an answered call's routing state (it must be answered)."""
        self.database.connection.execute(
            "INSERT OR REPLACE INTO sip_dialogs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (call.id, call.call_id, call.caller_tag, json.dumps(sorted(call.to_tags)),
             call.caller, call.callee, call.kind, call.direction, int(call.emergency),
             call.state, wall + (call.started_at - now), wall + (call.answered_at - now)))

    def delete_dialog(self, call: Call) -> None:
        self.database.connection.execute("DELETE FROM sip_dialogs WHERE id = ?", (call.id,))

    # -- in-path mode -------------------------------------------------------------------------

    def relay_key(self) -> bytes:
        """The flow-token key, made on first use and kept."""
        connection = self.database.connection
        row = connection.execute("SELECT key FROM sip_relay_keys WHERE name = 'flow-token'"
                                 ).fetchone()
        if row is not None:
            return bytes(row["key"])
        key = os.urandom(32)
        with self.transaction():
            connection.execute("INSERT INTO sip_relay_keys VALUES ('flow-token', ?)", (key,))
        return key

    # -- erasure ------------------------------------------------------------------------------

    def erase(self) -> tuple[int, int]:
        """Delete every binding and dialog ('jbc data erase'); returns how many of each."""
        with self.transaction() as connection:
            bindings = connection.execute("DELETE FROM sip_bindings").rowcount
            dialogs = connection.execute("DELETE FROM sip_dialogs").rowcount
        return bindings, dialogs
