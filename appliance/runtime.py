"""What every subsystem is handed, and what every subsystem must offer.

A subsystem (wan, sip, trunks, gateway, sync, ...) is an async context manager: entering it
starts it (binds sockets, opens ports, starts its tasks), leaving it stops it. The
:class:`~appliance.lifecycle.Appliance` enters them in dependency order and leaves them in
reverse within a deadline. Subsystems receive the shared :class:`Runtime` and their
dependencies explicitly in their constructor; they talk to each other through those
interfaces or through typed events on ``runtime.bus``.

A subsystem that cannot start raises from ``__aenter__`` (best
:class:`~appliance.supervision.StartFailed`); it is started again with backoff while the others
run, so its dependents must cope with it not being up (yet): they read it through its public
face, which answers sensibly before it started.

Background work runs under supervision (see :mod:`appliance.supervision`): a long-lived loop
is started with ``runtime.supervise(factory, name=..., subsystem=...)`` and is restarted with
backoff when it crashes; a one-shot job with ``runtime.spawn(coroutine, ...)``. Either way a
crash is journalled and shown in 'jbc status' and never reaches the other subsystems.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, runtime_checkable

from appliance.bus import EventBus
from appliance.config import ApplianceConfig, LoadedConfig
from appliance.control.commands import CommandRegistry
from appliance.journal import EventJournal
from appliance.store.database import Database
from appliance.supervision import Supervisor


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

    async def __aenter__(self) -> Any:
        """Start. When it cannot, release what it took and raise (best ``StartFailed``, whose
        message says what is wrong and what to do): the Appliance shows the failure and calls
        ``__aenter__`` again with backoff while the other subsystems run. Read the config from
        the runtime here, so that a reload before the next attempt is used."""
        ...

    async def __aexit__(self, exc_type, exc, tb) -> bool | None: ...

    def health(self) -> Health:
        """A cheap snapshot for 'jbc status'; never blocks, never raises."""
        ...

    async def reconfigure(self, config: ApplianceConfig) -> None:
        """Apply a new, already validated config (SIGHUP). Say in the log what needs a restart."""
        ...


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SubsystemChanged:
    """Published on the bus by the Appliance when a subsystem starts, cannot start (each
    failed attempt), or stops: how dependents follow a dependency that is not (yet) up."""

    name: str
    up: bool
    reason: str = ""
    """Why it is not up: its start error, or 'stopped'."""
    retry_in_s: float | None = None
    """When it cannot start: the wait before its next attempt."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SubsystemFailed:
    """Published on the bus by a running subsystem that can no longer do its job because
    something it runs on died under it (the gateway's pjsua thread): the Appliance stops it,
    shows and journals why (``crashed``), and starts it again with backoff, as a start that
    failed. A crash of a supervised task needs no such event: the supervisor restarts it."""

    name: str
    reason: str
    """What died and what it cost, e.g. 'SIP media agent crashed (...); the calls through it
    were cut'."""


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
    supervisor: Supervisor | None = None
    """Made from the journal when not given; the Appliance passes one with its backoff."""

    def __post_init__(self) -> None:
        if self.supervisor is None:
            self.supervisor = Supervisor(journal=self.journal.record)

    @property
    def config(self) -> ApplianceConfig:
        return self.loaded_config.config

    def spawn(self, coroutine: Coroutine[Any, Any, Any], *, name: str,
              subsystem: str) -> asyncio.Task:
        """Run a one-shot job. A crash is logged, journalled and shown in 'jbc status', and
        stays contained: one failing subsystem must never take the phones of the others down."""
        return self.supervisor.spawn(self._create_task, coroutine, name=name,
                                     subsystem=subsystem)

    def supervise(self, factory: Callable[[], Coroutine[Any, Any, Any]], *, name: str,
                  subsystem: str) -> asyncio.Task:
        """Run a subsystem's long-lived loop: ``factory()`` now, and again with backoff each
        time it crashes. Cancel the returned task to stop it (in the subsystem's __aexit__)."""
        return self.supervisor.supervise(self._create_task, factory, name=name,
                                         subsystem=subsystem)

    def _create_task(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        return self.tasks.create_task(coroutine, name=name)
