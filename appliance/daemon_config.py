"""The [daemon] section: where jbcd keeps its files and how it runs."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Literal

from appliance.config.schema import absolute_path, between, setting

CONTROL_SOCKET = "control.sock"
MAX_SOCKET_PATH = 107
"""sockaddr_un.sun_path is 108 bytes on Linux, one of them the terminating NUL."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DaemonConfig:
    state_dir: pathlib.Path = setting(
        pathlib.Path("/var/lib/jbc"),
        doc="Persistent state: the event journal, bindings, call records, keys (SQLite, WAL mode).",
        check=absolute_path,
    )
    runtime_dir: pathlib.Path = setting(
        pathlib.Path("/run/jbc"),
        doc="Runtime files: the control socket 'control.sock' lives here.",
        check=absolute_path,
    )
    log_level: Literal["debug", "info", "warning", "error"] = setting(
        "info", doc="Lowest severity written to the log (stderr, or the journal under systemd)."
    )
    stop_timeout_s: float = setting(
        10.0,
        doc="On stop, each subsystem gets this long to shut down cleanly before it is cancelled.",
        check=between(0.5, 120),
    )
    restart_min_s: float = setting(
        1.0,
        doc="A subsystem's task that crashes is restarted after this long, then after twice "
        "as long at each further crash, up to restart_max_s (a run of a minute resets it).",
        check=between(0.01, 60),
    )
    restart_max_s: float = setting(
        60.0, doc="The longest wait before a crashed task is restarted.",
        check=between(0.01, 3600),
    )
    debug_commands: bool = setting(
        False,
        doc="Enable admin-only debugging commands on the control socket (for example one that "
        "deliberately stalls the event loop to test the systemd watchdog). Leave off in the field.",
    )

    def validate(self):
        socket_path = os.fsencode(self.runtime_dir / CONTROL_SOCKET)
        if len(socket_path) > MAX_SOCKET_PATH:
            yield "runtime_dir", (f"too long: the control socket in it would have a "
                                  f"{len(socket_path)}-byte path, Unix sockets allow "
                                  f"{MAX_SOCKET_PATH}; choose a shorter directory")
        if self.restart_max_s < self.restart_min_s:
            yield "restart_max_s", (f"{self.restart_max_s:g} is shorter than restart_min_s "
                                    f"({self.restart_min_s:g})")
