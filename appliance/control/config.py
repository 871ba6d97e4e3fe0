"""The [control] section: the local control socket and who may use it."""

from __future__ import annotations

import dataclasses

from appliance.config.schema import between, non_empty, setting


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ControlConfig:
    admin_group: str = setting(
        "jbc-admin",
        doc="Members of this Unix group (and root, and jbcd's own user) may change behaviour: "
        "force failover, run modem commands, erase data.",
        check=non_empty,
    )
    technician_group: str = setting(
        "jbc-tech",
        doc="Members of this Unix group may read status, events, phones, calls and trunks.",
        check=non_empty,
    )
    max_request_bytes: int = setting(
        65536, doc="Longest request line accepted from a client.", check=between(1024, 1048576)
    )
    idle_timeout_s: float = setting(
        30.0,
        doc="A client connection that sends nothing for this long is closed.",
        check=between(1, 3600),
    )
    max_clients: int = setting(
        32, doc="Most control connections served at once; more are refused politely. Users "
        "without a role never take one: they are closed at once.",
        check=between(2, 1024),
    )
    max_clients_per_user: int = setting(
        4, doc="Most control connections one technician may hold at once (admins are only "
        "bound by max_clients).", check=between(1, 1024),
    )
    admin_reserved_clients: int = setting(
        4, doc="Of max_clients, this many are kept for admins (root, the admin group, jbcd's "
        "user): technicians holding connections can never lock an admin out.",
        check=between(1, 1023),
    )

    def validate(self):
        if self.admin_reserved_clients >= self.max_clients:
            yield "admin_reserved_clients", (
                f"{self.admin_reserved_clients} leaves no slot for technicians out of "
                f"max_clients = {self.max_clients}; make it smaller")
