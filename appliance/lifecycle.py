"""The running appliance: storage, journal, control socket and subsystems, started in order,
supervised while they run, and stopped in reverse within a deadline.

This is the one lifecycle. The daemon (``jbcd``) wraps it with signals, systemd notification
and reloads; the bench and the tests use it directly::

    async with Appliance(loaded) as appliance:        # everything up, control socket listening
        await appliance.call("sync.now")               # a control command, as an admin
        await appliance.reconfigure(new_loaded)        # what SIGHUP does
    # everything stopped, each part within daemon.stop_timeout_s

Start order: the database (which survives a full, read-only or corrupt state dir by running
from memory, see :mod:`appliance.store.database`), the journal, the control socket, then the
subsystems of ``assembly.build_subsystems`` in dependency order. A subsystem that cannot start
(its ``__aenter__`` raises, e.g. its port is taken) is journalled (``start-failed``, with the
reason and what to do), shown as failed in 'jbc status' and started again with backoff (the
supervision policy of running tasks; a config reload tries at once), while the others start
and run: its dependents cope with it not being up yet. Entering the Appliance returns once
every subsystem has started or is being retried, so jbcd reports ready, answers 'jbc status'
and feeds the watchdog while a part is down. Only the control socket (and building the parts)
failing stops the start (:class:`ApplianceStartError`). Once running, the subsystems' tasks are
supervised (:mod:`appliance.supervision`): a crash is journalled, restarted with backoff and
shown in 'jbc status'; it never ends the appliance. A subsystem that loses what it runs on
while running (the gateway's pjsua thread dies) says so on the bus (``SubsystemFailed``): it is
stopped, journalled ``crashed``, its dependents are told it is down, and it is started again
with the same backoff. Stopping stops the started subsystems in
reverse order, whenever each started.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from appliance import __version__
from appliance.assembly import build_subsystems
from appliance.bus import EventBus
from appliance.config import LoadedConfig
from appliance.control.commands import CommandContext, CommandRegistry, Peer, Role
from appliance.control.server import ControlServer
from appliance.core_commands import register_core_commands
from appliance.journal import EventJournal
from appliance.runtime import (
    Headline,
    Health,
    HealthLevel,
    Runtime,
    Subsystem,
    SubsystemChanged,
    SubsystemFailed,
)
from appliance.store.database import Database
from appliance.supervision import Backoff, Supervisor, TaskRecord, loop_exception_handler

log = logging.getLogger(__name__)

ROOT = Peer(pid=0, uid=0, gid=0, user="root", role=Role.ADMIN)
"""The peer :meth:`Appliance.call` acts as unless told otherwise."""

Builder = Callable[[Runtime], list[Subsystem]]


class ApplianceStartError(Exception):
    """The control socket could not start, or the parts could not be built; the message says
    which and why. Everything started was stopped."""


class Appliance:
    def __init__(self, loaded: LoadedConfig, *, build: Builder = build_subsystems,
                 serve_control: bool = True, notifier: Any = None,
                 reload: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.loaded = loaded
        self.notifier = notifier
        """The daemon's systemd notifier (the selftest's watchdog check); None elsewhere."""
        self.reload = reload
        """Reload the config file (the daemon's SIGHUP path), for 'jbc config reload'."""
        self.build = build
        self.serve_control = serve_control
        self.subsystems: list[Subsystem] = []
        self._started: set[str] = set()
        """Subsystems whose start succeeded (at once or on a retry): the ones to stop."""
        self._start_retries: list[asyncio.Task] = []
        self._crash_stops: list[asyncio.Task] = []
        """Stopping a subsystem that failed while running: never cancelled half-way."""
        self.control: ControlServer | None = None
        self.database: Database | None = None
        self.journal: EventJournal | None = None
        self.runtime: Runtime | None = None
        self.supervisor: Supervisor | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._entered: list[Any] = []
        self._failed = False
        self._stopping = False
        self._previous_handler: Any = None
        self._handler_installed = False

    @property
    def config(self):
        return self.loaded.config

    def by_name(self, name: str) -> Any:
        return next(s for s in self.subsystems if s.name == name)

    def started(self, name: str) -> bool:
        """Whether subsystem ``name`` is up (False while its start is being retried)."""
        return name in self._started

    # -- start and stop ----------------------------------------------------------------------

    async def __aenter__(self) -> Appliance:
        daemon = self.config.daemon
        self.database = Database.open_in(daemon.state_dir)
        self.journal = EventJournal(self.database)
        self.supervisor = Supervisor(
            journal=self.journal.record,
            backoff=Backoff(min_s=daemon.restart_min_s, max_s=daemon.restart_max_s))
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self.runtime = Runtime(loaded_config=self.loaded, database=self.database,
                               journal=self.journal, bus=EventBus(), commands=CommandRegistry(),
                               tasks=self._tasks, supervisor=self.supervisor,
                               notifier=self.notifier)
        try:
            await self._start()
        except BaseException as error:
            self._failed = True
            await self._stop(error)
            if isinstance(error, Exception):
                raise ApplianceStartError(f"{type(error).__name__}: {error}") from error
            raise
        return self

    async def _start(self) -> None:
        runtime = self.runtime
        loop = asyncio.get_running_loop()
        # An exception escaping a loop callback is a crash of its subsystem too: counted,
        # logged, journalled and shown, like one in a task.
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(loop_exception_handler(self.supervisor))
        self._handler_installed = True
        # Problems found inside a statement are journalled right after it, never inside it.
        self.database.on_problem = lambda: loop.call_soon(self._journal_storage_problems)
        self._journal_storage_problems()
        register_core_commands(runtime, self)
        runtime.bus.subscribe(SubsystemFailed, self._subsystem_failed)
        if self.serve_control:
            self.control = ControlServer(config=self.config.control,
                                         runtime_dir=self.config.daemon.runtime_dir,
                                         registry=runtime.commands, journal=self.journal)
            await self.control.__aenter__()
            self._entered.append(self.control)
        self.supervisor.supervise(runtime._create_task, self._keep_storage, name="restore",
                                  subsystem="storage")
        self.subsystems = self.build(runtime)
        for subsystem in self.subsystems:
            await self._start_subsystem(subsystem)
        if runtime.headline.owner is None and runtime.headline.state == "starting":
            runtime.headline = Headline(state="running", since=time.time())
        waiting = [s.name for s in self.subsystems if s.name not in self._started]
        self.journal.record("daemon", "started", f"jbcd {__version__} ready" + (
            f"; not started yet, retrying: {', '.join(waiting)}" if waiting else ""),
            {"pid": os.getpid(), "config": self.loaded.source,
             "config_digest": self.loaded.short_digest, "not_started": waiting})
        # Everything built at start-up lives as long as the appliance: move it out of the
        # collector's way so collections during a registration storm stay short.
        gc.freeze()

    async def _start_subsystem(self, subsystem: Subsystem) -> None:
        """Start one subsystem; when it cannot, show why and keep trying it with backoff."""
        log.info("starting %s", subsystem.name)
        try:
            await subsystem.__aenter__()
        except Exception as error:
            retry = self.supervisor.retry_start(
                self.runtime._create_task, lambda: self._start_again(subsystem),
                subsystem=subsystem.name, error=error, on_failure=self._publish_start_failure)
            self._start_retries.append(retry)
            return
        self._now_up(subsystem.name)

    async def _start_again(self, subsystem: Subsystem) -> None:
        log.info("starting %s again", subsystem.name)
        await subsystem.__aenter__()
        self._now_up(subsystem.name)

    def _now_up(self, name: str) -> None:
        self._started.add(name)
        self.runtime.bus.publish(SubsystemChanged(name=name, up=True))

    def _publish_start_failure(self, record: TaskRecord) -> None:
        retry_in = None if record.restart_at is None else max(
            0.0, record.restart_at - self.supervisor.clock())
        self.runtime.bus.publish(SubsystemChanged(name=record.subsystem, up=False,
                                                  reason=record.last_error or "",
                                                  retry_in_s=retry_in))

    def _subsystem_failed(self, event: SubsystemFailed) -> None:
        """A running subsystem died under itself: tell its dependents at once, then stop it
        and start it again with backoff (see :meth:`Supervisor.restart_crashed`)."""
        subsystem = next((s for s in self.subsystems if s.name == event.name), None)
        if subsystem is None or self._stopping or event.name not in self._started:
            return  # not (yet) up, already being restarted, or the appliance is stopping
        self._started.discard(event.name)  # logged and journalled by restart_crashed
        self.runtime.bus.publish(SubsystemChanged(name=event.name, up=False,
                                                  reason=event.reason))
        self._crash_stops = [task for task in self._crash_stops if not task.done()]
        self._crash_stops.append(self.runtime._create_task(
            self._restart_failed(subsystem, event.reason), f"{event.name}:stop-crashed"))

    async def _restart_failed(self, subsystem: Subsystem, reason: str) -> None:
        try:
            async with asyncio.timeout(self.config.daemon.stop_timeout_s):
                await subsystem.__aexit__(None, None, None)
        except TimeoutError:
            log.error("%s did not stop within %.1f s after it failed; starting it again "
                      "anyway", subsystem.name, self.config.daemon.stop_timeout_s)
        except Exception:
            log.exception("%s failed while stopping after it failed", subsystem.name)
        if self._stopping:
            return
        self._start_retries.append(self.supervisor.restart_crashed(
            self.runtime._create_task, lambda: self._start_again(subsystem),
            subsystem=subsystem.name, reason=reason, on_failure=self._publish_start_failure))

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self._stop(exc)

    async def _stop(self, error: BaseException | None) -> None:
        """Stop every started part in reverse start order, each within the stop deadline."""
        # What the start froze goes back to the collector first (a rig started again in the
        # same process would otherwise leave every earlier freeze behind). The gateway's
        # pjsua2 teardown thaws for itself too: it also runs on restarts, while frozen.
        gc.unfreeze()
        self._stopping = True
        deadline = self.config.daemon.stop_timeout_s
        if self._crash_stops:  # a failed subsystem being stopped finishes stopping
            await asyncio.gather(*self._crash_stops, return_exceptions=True)
            self._crash_stops.clear()
        for retry in self._start_retries:  # a start being retried gives up first
            retry.cancel()
        if self._start_retries:
            await asyncio.gather(*self._start_retries, return_exceptions=True)
        self._start_retries.clear()
        started = [s for s in self.subsystems if s.name in self._started]
        self._started.clear()
        for part in [*reversed(started), *reversed(self._entered)]:
            try:
                async with asyncio.timeout(deadline):
                    await part.__aexit__(None, None, None)
            except TimeoutError:
                log.error("%s did not stop within %.1f s; abandoning it", part.name, deadline)
            except Exception:
                log.exception("%s failed while stopping", part.name)
            if part in started:
                self.runtime.bus.publish(SubsystemChanged(name=part.name, up=False,
                                                          reason="stopped"))
        self._entered.clear()
        if error is not None and isinstance(error, Exception):
            self.journal.record("daemon", "failed", f"{type(error).__name__}: {error}")
        self.journal.record("daemon", "stopped",
                            "failed" if error is not None or self._failed else "clean stop")
        # Whatever a stopped subsystem left running is cancelled rather than waited for.
        self.supervisor.cancel_all()
        with contextlib.suppress(Exception):
            await self._tasks.__aexit__(None, None, None)
        if self._handler_installed:
            asyncio.get_running_loop().set_exception_handler(self._previous_handler)
        self.database.close()

    async def _keep_storage(self) -> None:
        """While the database runs from memory, try every few seconds to get back on disk."""
        while True:
            await self.database.wait_degraded()
            await asyncio.sleep(self.database.retry_delay_s())
            self.database.try_restore()
            self._journal_storage_problems()

    def _journal_storage_problems(self) -> None:
        for problem in self.database.take_problems():
            self.journal.record("storage", problem.kind, problem.message, problem.details)

    # -- while running -----------------------------------------------------------------------

    async def reconfigure(self, loaded: LoadedConfig) -> None:
        """Apply a new, already validated config to every part (what SIGHUP does)."""
        old = self.loaded
        self.loaded = loaded
        self.runtime.loaded_config = loaded
        if loaded.config.daemon.state_dir != old.config.daemon.state_dir or (
                loaded.config.daemon.runtime_dir != old.config.daemon.runtime_dir):
            log.warning("daemon.state_dir and daemon.runtime_dir changes take effect after a "
                        "restart")
        if self.control is not None:
            self.control.reconfigure(loaded.config.control)
        for subsystem in self.subsystems:
            if subsystem.name not in self._started:
                # Not up: its next start attempt reads the new config, and comes now.
                self.supervisor.retry_now(subsystem.name)
                continue
            try:
                await subsystem.reconfigure(loaded.config)
            except Exception:
                log.exception("%s could not apply the new config", subsystem.name)

    async def call(self, command: str, args: dict[str, Any] | None = None,
                   peer: Peer = ROOT) -> Any:
        """Run a control command as ``peer`` (the bench and tests; the socket does the same)."""
        handler = self.runtime.commands.get(command)
        if handler is None:
            raise KeyError(command)
        if handler.role > peer.role:
            raise PermissionError(command)
        return await handler.handler(CommandContext(peer=peer, args=args or {}))

    def events(self, kind: str | None = None, subsystem: str | None = None) -> list:
        return [e for e in self.journal.query(subsystem=subsystem, limit=100000)
                if kind is None or e.kind == kind]

    # -- health ------------------------------------------------------------------------------

    def health_rows(self) -> list[tuple[str, Health, dict[str, Any]]]:
        """(name, health, supervision report) for control, storage and every subsystem."""
        rows = [("control", self._control_health(), {}),
                ("storage", self._storage_health(), self.supervisor.report("storage"))]
        for subsystem in self.subsystems:
            if subsystem.name not in self._started:
                rows.append((subsystem.name, self._not_started_health(subsystem.name),
                             self.supervisor.report(subsystem.name)))
                continue
            health = _safe_health(subsystem)
            crashes = self.supervisor.attention(subsystem.name)
            if crashes is not None:
                level = health.level if health.level is HealthLevel.FAILED else (
                    HealthLevel.WARNING)
                health = dataclasses.replace(health, level=level,
                                             summary=f"{crashes}; {health.summary}")
            rows.append((subsystem.name, health, self.supervisor.report(subsystem.name)))
        return rows

    def status_line(self) -> str:
        headline = self.runtime.headline if self.runtime else None
        state = headline.state if headline else "starting"
        unhealthy = [name for name, health, _ in self.health_rows()
                     if health.level.needs_attention]
        tail = f"; attention: {', '.join(unhealthy)}" if unhealthy else ""
        return f"{state}{tail}"

    def _not_started_health(self, name: str) -> Health:
        why = self.supervisor.attention(name)
        if why is None:  # still in its first start
            return Health(level=HealthLevel.STARTING, summary="starting")
        return Health(level=HealthLevel.FAILED, summary=why, details={"started": False})

    def _control_health(self) -> Health:
        control = self.control
        if control is None:
            return Health(level=HealthLevel.DISABLED if not self.serve_control
                          else HealthLevel.STARTING, summary="not listening")
        return Health(level=HealthLevel.OK,
                      summary=f"listening on {control.path}; {control.requests_served} requests "
                      f"served, {control.requests_refused} refused",
                      details={"access": control.access, "connected": control.limits.open,
                               "refusals": control.refusals.total})

    def _storage_health(self) -> Health:
        database = self.database
        level = HealthLevel.WARNING if database.problem else HealthLevel.OK
        summary = database.health_summary()
        crashes = self.supervisor.attention("storage")
        if crashes:
            level, summary = HealthLevel.WARNING, f"{crashes}; {summary}"
        return Health(level=level, summary=summary, details=database.status())


def _safe_health(subsystem) -> Health:
    try:
        return subsystem.health()
    except Exception as error:  # a broken health() must not break 'jbc status'
        return Health(level=HealthLevel.FAILED, summary=f"health check failed: {error}")
