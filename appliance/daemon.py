"""jbcd: the appliance daemon. One asyncio loop, one TaskGroup, subsystems as context managers.

Start order: database and journal, control socket, then the subsystems from
``assembly.build_subsystems`` in dependency order. READY=1 is sent only when all of them are
up and the control socket accepts. SIGHUP reloads the config (a broken file is refused and
the last good config stays); SIGTERM/SIGINT stop everything in reverse order, each subsystem
within ``daemon.stop_timeout_s``, and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Sequence

from appliance import __version__
from appliance.assembly import build_subsystems
from appliance.bus import EventBus
from appliance.config import (
    DEFAULT_CONFIG_PATH,
    EX_CONFIG,
    ApplianceConfig,
    ConfigError,
    LoadedConfig,
    builtin_defaults,
    load_config,
)
from appliance.config.render import render_example
from appliance.control.commands import CommandRegistry
from appliance.control.server import ControlServer
from appliance.core_commands import register_core_commands
from appliance.journal import EventJournal
from appliance.logs import setup_logging
from appliance.notify import ServiceNotifier
from appliance.runtime import Headline, Runtime, Subsystem
from appliance.store.database import Database

log = logging.getLogger("jbcd")

EX_OK = 0
EX_FAILURE = 1


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConfigSource:
    """Where the config comes from, and the command-line overrides applied on every (re)load."""

    path: pathlib.Path | None
    state_dir: pathlib.Path | None = None
    runtime_dir: pathlib.Path | None = None

    def load(self) -> LoadedConfig:
        loaded = builtin_defaults() if self.path is None else load_config(self.path)
        daemon = loaded.config.daemon
        overrides = {}
        if self.state_dir is not None:
            overrides["state_dir"] = self.state_dir.absolute()
        if self.runtime_dir is not None:
            overrides["runtime_dir"] = self.runtime_dir.absolute()
        if not overrides:
            return loaded
        config = dataclasses.replace(loaded.config, daemon=dataclasses.replace(daemon, **overrides))
        return dataclasses.replace(loaded, config=config)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jbcd",
        description="The business-continuity appliance daemon: watches the WAN and keeps the "
        "site's phones working through local SIP and LTE/analog trunks when the cloud is down.",
        epilog="Exit status: 0 clean stop, 1 failure, 78 configuration error (EX_CONFIG). "
        "Normally started by systemd (jbcd.service); see 'jbc --help' for the technician CLI.",
    )
    parser.add_argument("--config", type=pathlib.Path, metavar="FILE",
                        help=f"config file (default: $JBC_CONFIG or {DEFAULT_CONFIG_PATH}; "
                        "built-in defaults when the default file does not exist)")
    parser.add_argument("--state-dir", type=pathlib.Path, metavar="DIR",
                        help="override daemon.state_dir (persistent state)")
    parser.add_argument("--runtime-dir", type=pathlib.Path, metavar="DIR",
                        help="override daemon.runtime_dir (control socket)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config, print the verdict and exit (0 or 78)")
    parser.add_argument("--print-example-config", action="store_true",
                        help="print the fully commented example config with every default")
    parser.add_argument("--version", action="version", version=f"jbcd {__version__}")
    return parser.parse_args(argv)


def config_source_from(args: argparse.Namespace, environ=os.environ) -> ConfigSource:
    if args.config is not None:
        path = args.config
    elif environ.get("JBC_CONFIG"):
        path = pathlib.Path(environ["JBC_CONFIG"])
    elif DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    else:
        path = None
    return ConfigSource(path=path, state_dir=args.state_dir, runtime_dir=args.runtime_dir)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_example_config:
        sys.stdout.write(render_example(ApplianceConfig))
        return EX_OK
    source = config_source_from(args)
    try:
        loaded = source.load()
    except ConfigError as error:
        print(f"jbcd: {error}", file=sys.stderr)
        return EX_CONFIG
    if args.check_config:
        print(f"jbcd: {loaded.source}: configuration is valid")
        return EX_OK
    setup_logging(loaded.config.daemon.log_level)
    try:
        return asyncio.run(Daemon(source, loaded).run())
    except KeyboardInterrupt:
        return EX_OK


class Daemon:
    def __init__(self, source: ConfigSource, loaded: LoadedConfig) -> None:
        self.source = source
        self.loaded = loaded
        self.notifier = ServiceNotifier()
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.subsystems: list[Subsystem] = []
        self.control: ControlServer | None = None
        self.runtime: Runtime | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        config = self.loaded.config
        log.info("jbcd %s starting (config: %s)", __version__, self.loaded.source)
        try:
            database = Database.open_in(config.daemon.state_dir)
        except OSError as error:
            log.error("cannot open the state dir %s: %s (does jbcd's user own it?)",
                      config.daemon.state_dir, error)
            return EX_FAILURE
        try:
            async with asyncio.TaskGroup() as tasks:
                return await self._run_with(tasks, database)
        finally:
            database.close()

    async def _run_with(self, tasks: asyncio.TaskGroup, database: Database) -> int:
        config = self.loaded.config
        journal = EventJournal(database)
        registry = CommandRegistry()
        runtime = Runtime(loaded_config=self.loaded, database=database, journal=journal,
                          bus=EventBus(), commands=registry, tasks=tasks,
                          notifier=self.notifier)
        self.runtime = runtime
        register_core_commands(runtime, self)
        entered: list[Subsystem | ControlServer] = []
        exit_code = EX_OK
        watchdog: asyncio.Task | None = None
        try:
            self.control = ControlServer(config=config.control,
                                         runtime_dir=config.daemon.runtime_dir,
                                         registry=registry, journal=journal)
            await self.control.__aenter__()
            entered.append(self.control)
            self.subsystems = build_subsystems(runtime)
            for subsystem in self.subsystems:
                log.info("starting %s", subsystem.name)
                await subsystem.__aenter__()
                entered.append(subsystem)
            if runtime.headline.owner is None and runtime.headline.state == "starting":
                runtime.headline = Headline(state="running", since=time.time())
            journal.record("daemon", "started", f"jbcd {__version__} ready",
                           {"pid": os.getpid(), "config": self.loaded.source,
                            "config_digest": self.loaded.short_digest})
            # Everything built at start-up lives as long as the daemon: move it out of the
            # collector's way so collections during a registration storm stay short.
            gc.freeze()
            self.notifier.ready(self.status_line())
            watchdog = tasks.create_task(self.notifier.run_watchdog(), name="watchdog")
            await self._serve_until_stopped()
        except Exception as error:
            log.error("jbcd cannot run: %s", error, exc_info=log.isEnabledFor(logging.DEBUG))
            journal.record("daemon", "failed", f"{type(error).__name__}: {error}")
            exit_code = EX_FAILURE
        finally:
            self.notifier.stopping()
            if watchdog is not None:
                watchdog.cancel()
            await self._stop_all(entered)
            journal.record("daemon", "stopped", "clean stop" if exit_code == EX_OK else "failed")
        return exit_code

    async def _serve_until_stopped(self) -> None:
        while not self.stop_requested.is_set():
            stop = asyncio.ensure_future(self.stop_requested.wait())
            reload = asyncio.ensure_future(self.reload_requested.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self.reload_requested.is_set() and not self.stop_requested.is_set():
                self.reload_requested.clear()
                await self.reload()
        log.info("stop requested")

    async def reload(self) -> bool:
        """Load the config again; refuse a broken one and keep running on the last good one."""
        runtime = self.runtime
        self.notifier.reloading()
        try:
            new = self.source.load()
        except ConfigError as error:
            log.error("config reload refused, keeping the last good config: %s", error)
            runtime.journal.record("daemon", "config-reload-refused", str(error),
                                   {"kept_digest": self.loaded.short_digest})
            self.notifier.ready(self.status_line())
            return False
        old = self.loaded
        self.loaded = new
        runtime.loaded_config = new
        if new.config.daemon.state_dir != old.config.daemon.state_dir or (
                new.config.daemon.runtime_dir != old.config.daemon.runtime_dir):
            log.warning("daemon.state_dir and daemon.runtime_dir changes take effect after a "
                        "restart")
        logging.getLogger().setLevel(new.config.daemon.log_level.upper())
        self.control.reconfigure(new.config.control)
        for subsystem in self.subsystems:
            try:
                await subsystem.reconfigure(new.config)
            except Exception:
                log.exception("%s could not apply the new config", subsystem.name)
        runtime.journal.record("daemon", "config-reloaded", f"now using {new.source}",
                               {"old_digest": old.short_digest, "new_digest": new.short_digest})
        self.notifier.ready(self.status_line())
        return True

    async def _stop_all(self, entered: list[Subsystem | ControlServer]) -> None:
        """Stop every started part in reverse start order, each within the stop deadline."""
        deadline = self.loaded.config.daemon.stop_timeout_s
        for part in reversed(entered):
            try:
                async with asyncio.timeout(deadline):
                    await part.__aexit__(None, None, None)
            except TimeoutError:
                log.error("%s did not stop within %.1f s; abandoning it", part.name, deadline)
            except Exception:
                log.exception("%s failed while stopping", part.name)

    def status_line(self) -> str:
        headline = self.runtime.headline if self.runtime else None
        state = headline.state if headline else "starting"
        unhealthy = [s.name for s in self.subsystems if s.health().level.needs_attention]
        tail = f"; attention: {', '.join(unhealthy)}" if unhealthy else ""
        return f"{state}{tail}"


if __name__ == "__main__":
    sys.exit(main())
