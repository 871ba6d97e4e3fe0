"""What every subsystem is handed, and what every subsystem must offer.

A subsystem (wan, sip, trunks, gateway, sync, ...) is an async context manager: entering it
starts it (binds sockets, opens ports, spawns its tasks), leaving it stops it. The daemon
enters them in dependency order and leaves them in reverse within a deadline. Subsystems
receive the shared :class:`Runtime` and their dependencies explicitly in their constructor;
they talk to each other through those interfaces or through typed events on ``runtime.bus``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol, runtime_checkable

from appliance.bus import EventBus
from appliance.config import ApplianceConfig, LoadedConfig
from appliance.control.commands import CommandRegistry
from appliance.journal import EventJournal
from appliance.store.database import Database

log = logging.getLogger(__name__)


class HealthLevel(enum.StrEnum):
    OK = "ok"
    STARTING = "starting"
    WARNING = "warning"
    FAILED = "failed"
    DISABLED = "disabled"

    @property
    def needs_attention(self) -> bool:
        return self in (HealthLevel.WARNING, HealthLevel.FAILED)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    level: HealthLevel
    summary: str
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@runtime_checkable
class Subsystem(Protocol):
    name: str

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, exc_type, exc, tb) -> bool | None: ...

    def health(self) -> Health:
        """A cheap snapshot for 'jbc status'; never blocks, never raises."""
        ...

    async def reconfigure(self, config: ApplianceConfig) -> None:
        """Apply a new, already validated config (SIGHUP). Say in the log what needs a restart."""
        ...


@dataclasses.dataclass(slots=True, kw_only=True)
class Headline:
    """The one-line state 'jbc status' leads with. The WAN monitor owns it once it runs."""

    state: str
    since: float
    cause: str = ""
    needs_attention: bool = False
    owner: str | None = None
    """The subsystem that owns the headline (the WAN monitor); None while the daemon does."""


@dataclasses.dataclass(slots=True, kw_only=True)
class Runtime:
    """Shared infrastructure handed to every subsystem's constructor."""

    loaded_config: LoadedConfig
    database: Database
    journal: EventJournal
    bus: EventBus
    commands: CommandRegistry
    tasks: asyncio.TaskGroup
    started_at: float = dataclasses.field(default_factory=time.time)
    headline: Headline = dataclasses.field(
        default_factory=lambda: Headline(state="starting", since=time.time())
    )
    directory_version: str | None = None
    notifier: Any = None
    """The daemon's :class:`~appliance.notify.ServiceNotifier` (systemd readiness and
    watchdog), for the selftest's watchdog check; None outside the daemon."""

    @property
    def config(self) -> ApplianceConfig:
        return self.loaded_config.config

    def spawn(self, coroutine: Coroutine[Any, Any, Any], *, name: str,
              subsystem: str) -> asyncio.Task:
        """Run a subsystem's background task. A crash is logged and journalled, and stays
        contained: one failing subsystem must never take the phones of the others down."""

        async def supervised() -> None:
            try:
                await coroutine
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.exception("task %s of %s crashed", name, subsystem)
                self.journal.record(
                    subsystem, "task-crashed", f"{name}: {type(error).__name__}: {error}",
                )

        return self.tasks.create_task(supervised(), name=f"{subsystem}:{name}")
