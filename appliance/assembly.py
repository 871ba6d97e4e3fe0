"""The one place where subsystems are built and wired to each other, in start order.

Each subsystem gets the shared :class:`~appliance.runtime.Runtime` and, explicitly, the
other subsystems it depends on. The daemon starts them in this order and stops them in
reverse. Add a subsystem here, after everything it depends on.
"""

from __future__ import annotations

from appliance.directory.service import DirectoryService
from appliance.runtime import Runtime, Subsystem
from appliance.sip.service import SipService


def build_subsystems(runtime: Runtime) -> list[Subsystem]:
    directory = DirectoryService(runtime)
    sip = SipService(runtime, directory)
    subsystems: list[Subsystem] = [directory, sip]
    return subsystems
