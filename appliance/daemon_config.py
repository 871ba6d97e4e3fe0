"""The [daemon] section: where jbcd keeps its files and how it runs."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Literal

from appliance.config.schema import absolute_path, between, setting


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
    debug_commands: bool = setting(
        False,
        doc="Enable admin-only debugging commands on the control socket (for example one that "
        "deliberately stalls the event loop to test the systemd watchdog). Leave off in the field.",
    )
