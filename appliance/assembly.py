"""The one place where subsystems are built and wired to each other, in start order.

Each subsystem gets the shared :class:`~appliance.runtime.Runtime` and, explicitly, the
other subsystems it depends on. The daemon starts them in this order and stops them in
reverse. Add a subsystem here, after everything it depends on.
"""

from __future__ import annotations

from appliance.directory.service import DirectoryService
from appliance.runtime import Runtime, Subsystem
from appliance.wan.monitor import WanMonitor


def build_subsystems(runtime: Runtime) -> list[Subsystem]:
    wan = WanMonitor(runtime)  # first: everything else reacts to the WAN state
    directory = DirectoryService(runtime)
    subsystems: list[Subsystem] = [wan, directory]
    return subsystems
