"""The appliance's real subsystems (as built by appliance.assembly) inside the calling process,
for tests and benchmarks that need to reach into them (publish a WAN event, read a store)
without the process boundary of jbcd. Everything is real: SQLite in the given state dir, the
bus, the journal, the control-command registry, the subsystems' tasks."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
from typing import Any

from appliance.assembly import build_subsystems
from appliance.bus import EventBus
from appliance.config import ApplianceConfig, LoadedConfig
from appliance.control.commands import CommandContext, CommandRegistry, Peer, Role
from appliance.daemon_config import DaemonConfig
from appliance.journal import EventJournal
from appliance.runtime import Runtime
from appliance.store.database import Database

ADMIN = Peer(pid=0, uid=0, gid=0, user="root", role=Role.ADMIN)


class InProcessAppliance:
    def __init__(self, state_dir: pathlib.Path, **sections: Any) -> None:
        self.state_dir = state_dir
        config = ApplianceConfig(daemon=DaemonConfig(state_dir=state_dir,
                                                     runtime_dir=state_dir / "run"), **sections)
        self.loaded = LoadedConfig(config=config, source="<in-process>", digest="0" * 64)
        self.subsystems: list[Any] = []

    def by_name(self, name: str) -> Any:
        return next(s for s in self.subsystems if s.name == name)

    async def __aenter__(self) -> InProcessAppliance:
        self.database = Database.open_in(self.state_dir)
        self.journal = EventJournal(self.database)
        self.bus = EventBus()
        self.commands = CommandRegistry()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self.runtime = Runtime(loaded_config=self.loaded, database=self.database,
                               journal=self.journal, bus=self.bus, commands=self.commands,
                               tasks=self._tasks)
        try:
            for subsystem in build_subsystems(self.runtime):
                await subsystem.__aenter__()
                self.subsystems.append(subsystem)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for subsystem in reversed(self.subsystems):
            await subsystem.__aexit__(None, None, None)
        self.subsystems.clear()
        await self._tasks.__aexit__(None, None, None)
        self.database.close()

    async def reconfigure(self, **sections: Any) -> None:
        config = dataclasses.replace(self.loaded.config, **sections)
        self.loaded = dataclasses.replace(self.loaded, config=config)
        self.runtime.loaded_config = self.loaded
        for subsystem in self.subsystems:
            await subsystem.reconfigure(config)

    async def call(self, command: str, args: dict[str, Any] | None = None,
                   peer: Peer = ADMIN) -> Any:
        handler = self.commands.get(command)
        if handler.role > peer.role:
            raise PermissionError(command)
        return await handler.handler(CommandContext(peer=peer, args=args or {}))

    def events(self, kind: str | None = None, subsystem: str | None = None) -> list:
        return [e for e in self.journal.query(subsystem=subsystem, limit=100000)
                if kind is None or e.kind == kind]
