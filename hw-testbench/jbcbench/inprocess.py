"""The appliance's real subsystems (as built by appliance.assembly) inside the calling process,
for tests and benchmarks that need to reach into them (publish a WAN event, read a store)
without the process boundary of jbcd. It is the daemon's own lifecycle
(:class:`appliance.lifecycle.Appliance`): SQLite in the given state dir, the bus, the journal,
the control socket under ``<state_dir>/run``, the subsystems' supervised tasks, stop deadlines.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from appliance.config import ApplianceConfig, LoadedConfig
from appliance.daemon_config import DaemonConfig
from appliance.lifecycle import ROOT, Appliance

ADMIN = ROOT


class InProcessAppliance(Appliance):
    """``InProcessAppliance(state_dir, sync=SyncConfig(...))``: an appliance on built-in
    defaults except for the sections given, with its files in ``state_dir``."""

    def __init__(self, state_dir: pathlib.Path, *, daemon: DaemonConfig | None = None,
                 **sections: Any) -> None:
        self.state_dir = state_dir
        daemon = daemon or DaemonConfig(state_dir=state_dir, runtime_dir=state_dir / "run")
        config = ApplianceConfig(daemon=daemon, **sections)
        super().__init__(LoadedConfig(config=config, source="<in-process>", digest="0" * 64))

    @property
    def bus(self):
        return self.runtime.bus

    @property
    def commands(self):
        return self.runtime.commands

    async def reconfigure(self, loaded: LoadedConfig | None = None, **sections: Any) -> None:
        """Apply ``loaded``, or the current config with the given sections replaced."""
        if loaded is None:
            config = dataclasses.replace(self.loaded.config, **sections)
            loaded = dataclasses.replace(self.loaded, config=config)
        await super().reconfigure(loaded)
