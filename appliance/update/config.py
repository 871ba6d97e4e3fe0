"""The [update] section: how updates of the OS image are installed and checked after boot."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Literal

from appliance.config.schema import absolute_path, between, setting


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UpdateConfig:
    rauc_system_config: pathlib.Path = setting(
        pathlib.Path("/etc/rauc/system.conf"),
        doc="RAUC's description of this system's slots. Updates are offered only where it "
        "exists (the appliance's OS image); elsewhere 'jbc update' says they are unavailable.",
        check=absolute_path,
    )
    state_dir: pathlib.Path = setting(
        pathlib.Path("/data/update"),
        doc="Where the committed slot and the outcome of recent boot checks are kept. Must be "
        "on the data partition, which outlives updates and rollbacks.",
        check=absolute_path,
    )
    boot_check_timeout_s: float = setting(
        300.0,
        doc="After an update, the new slot must have jbcd ready and pass the self-check within "
        "this long after boot, or it is marked bad and the previous slot is booted again.",
        check=between(30, 3600),
    )
    self_check: Literal["status", "selftest"] = setting(
        "status",
        doc="The check that commits a new slot: 'status' (jbcd answers 'jbc status' and no "
        "subsystem has failed) or 'selftest' ('jbc selftest' passes).",
    )
