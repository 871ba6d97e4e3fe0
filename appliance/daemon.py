"""jbcd: the appliance daemon. One asyncio loop running one :class:`~appliance.lifecycle.Appliance`.

The appliance starts storage, the journal, the control socket and the subsystems in
dependency order, and supervises them (see ``appliance/lifecycle.py``). The daemon adds only
what a process under systemd needs: READY=1 once everything is up and the control socket
accepts, the watchdog, SIGHUP to reload the config (a broken file is refused and the last good
config stays), and SIGTERM/SIGINT to stop everything in reverse order (each part within
``daemon.stop_timeout_s``) and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

from appliance import __version__
from appliance.assembly import build_subsystems
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
from appliance.lifecycle import Appliance, ApplianceStartError
from appliance.logs import setup_logging
from appliance.notify import ServiceNotifier
from appliance.runtime import Runtime

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
        daemon = dataclasses.replace(daemon, **overrides)
        for key, problem in daemon.validate():  # the flags get the checks the file gets
            raise ConfigError(f"--{key.replace('_', '-')}", "", problem)
        config = dataclasses.replace(loaded.config, daemon=daemon)
        return dataclasses.replace(loaded, config=config)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jbcd",
        description="The business-continuity appliance daemon: watches the WAN and keeps the "
        "site's phones working through local SIP and LTE/analog trunks when the cloud is down.",
        epilog="Exit status: 0 clean stop, 1 failure, 78 configuration error (EX_CONFIG). "
        "A full, read-only or corrupt state dir does not stop jbcd: it runs from memory (or a "
        "salvaged copy) and says so in one line and in 'jbc status'. A crashed subsystem task "
        "is restarted by itself. Normally started by systemd (jbcd.service); see 'jbc --help' "
        "for the technician CLI.",
    )
    parser.add_argument("--config", type=pathlib.Path, metavar="FILE",
                        help=f"config file, a regular file of at most 256 KiB (default: "
                        f"$JBC_CONFIG or {DEFAULT_CONFIG_PATH}; built-in defaults when the "
                        "default file does not exist)")
    parser.add_argument("--state-dir", type=pathlib.Path, metavar="DIR",
                        help="override daemon.state_dir (persistent state)")
    parser.add_argument("--runtime-dir", type=pathlib.Path, metavar="DIR",
                        help="override daemon.runtime_dir (control socket)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config, print the verdict and exit (0 or 78); it "
                        "refuses exactly what start-up would refuse")
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
    """jbcd around the one :class:`Appliance` lifecycle: signals, systemd notification, reload."""

    def __init__(self, source: ConfigSource, loaded: LoadedConfig) -> None:
        self.source = source
        self.loaded = loaded
        self.notifier = ServiceNotifier()
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.appliance: Appliance | None = None

    @property
    def runtime(self) -> Runtime | None:
        return self.appliance.runtime if self.appliance is not None else None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        log.info("jbcd %s starting (config: %s)", __version__, self.loaded.source)
        self.appliance = Appliance(self.loaded, build=build_subsystems,
                                   notifier=self.notifier, reload=self.reload)
        try:
            async with self.appliance:
                self.notifier.ready(self.appliance.status_line())
                watchdog = asyncio.create_task(self.notifier.run_watchdog(), name="watchdog")
                try:
                    await self._serve_until_stopped()
                finally:
                    self.notifier.stopping()
                    watchdog.cancel()
        except ApplianceStartError as error:
            log.error("jbcd cannot run: %s", error,
                      exc_info=error.__cause__ if log.isEnabledFor(logging.DEBUG) else None)
            return EX_FAILURE
        return EX_OK

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
        appliance = self.appliance
        self.notifier.reloading()
        try:
            # In a thread: even a hostile file (bounded by load_config) never stalls the loop.
            new = await asyncio.to_thread(self.source.load)
        except Exception as error:  # ConfigError, or anything a hostile file might provoke
            if not isinstance(error, ConfigError):
                error = ConfigError(self.source.path or "<built-in defaults>", "",
                                    f"cannot be loaded ({type(error).__name__}: {error})")
            log.error("config reload refused, keeping the last good config: %s", error)
            appliance.journal.record("daemon", "config-reload-refused", str(error),
                                     {"kept_digest": self.loaded.short_digest})
            self.notifier.ready(appliance.status_line())
            return False
        old = self.loaded
        self.loaded = new
        logging.getLogger().setLevel(new.config.daemon.log_level.upper())
        await appliance.reconfigure(new)
        appliance.journal.record("daemon", "config-reloaded", f"now using {new.source}",
                                 {"old_digest": old.short_digest, "new_digest": new.short_digest})
        self.notifier.ready(appliance.status_line())
        return True


if __name__ == "__main__":
    sys.exit(main())
