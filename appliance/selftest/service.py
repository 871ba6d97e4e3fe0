"""The 'selftest' subsystem: gathers the facts for the commissioning checklist from the running
daemon, runs the pure checks (checks.py), journals the result and answers 'jbc selftest'.

Facts come from the other subsystems' public faces only: the WAN monitor's report, the trunk
pool's health and driver details, the SIP service's phone sightings, the sync service's
status (and one heartbeat over the backup uplink), the gateway's test call, the daemon's
systemd notifier. Sections run concurrently, each within what is left of the time budget
(``selftest.timeout_s``, 55 s by default), so a hung part costs its own lines, never the run.

Every run is journalled (subsystem ``selftest``, kind ``completed``) with all its lines in
the details: the last run is the newest such entry, which is what the support bundle, the
metrics and the OS image's update check read.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from appliance.config import ApplianceConfig, load_config
from appliance.config.schema import ConfigError
from appliance.control.commands import CommandContext, CommandError, Role
from appliance.phones.commands import readiness_report
from appliance.runtime import Health, HealthLevel, Runtime
from drivers.usbports import list_usb_ttys

from . import checks
from .checks import CheckResult
from .clock import clock_status

if TYPE_CHECKING:
    from appliance.gateway.service import Gateway
    from appliance.sip.service import SipService
    from appliance.sync.service import SyncService
    from appliance.trunks.service import TrunkPool
    from appliance.wan.service import WanMonitor

log = logging.getLogger(__name__)

BUILTIN_SOURCE = "<built-in defaults>"
WATCHDOG_SYSFS = pathlib.Path("/sys/class/watchdog")

Section = Callable[[], Awaitable[list[CheckResult]]]


class Selftest:
    name = "selftest"

    def __init__(self, runtime: Runtime, *, wan: WanMonitor, trunks: TrunkPool,
                 sip: SipService, sync: SyncService, gateway: Gateway | None) -> None:
        self.runtime = runtime
        self.wan = wan
        self.trunks = trunks
        self.sip = sip
        self.sync = sync
        self.gateway = gateway
        self.running: asyncio.Task | None = None
        self.last: dict[str, Any] | None = None
        commands = runtime.commands
        commands.register("selftest.run", self._cmd_run, role=Role.TECHNICIAN,
                          summary="run the commissioning checklist (pass/warn/fail, with fixes)")
        commands.register("selftest.last", self._cmd_last, role=Role.TECHNICIAN,
                          summary="the result of the last selftest")
        commands.register("phones.readiness", self._cmd_readiness, role=Role.TECHNICIAN,
                          summary="each phone seen: predicted failover and failback, and what "
                          "to change")

    # -- Subsystem -------------------------------------------------------------------------

    async def __aenter__(self) -> Selftest:
        entries = self.runtime.journal.query(subsystem="selftest", limit=1)
        if entries and entries[-1].kind == "completed":
            self.last = dict(entries[-1].details)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self.running is not None:
            self.running.cancel()
            await asyncio.gather(self.running, return_exceptions=True)

    async def reconfigure(self, config: ApplianceConfig) -> None:
        return None

    def health(self) -> Health:
        if self.last is None:
            return Health(level=HealthLevel.OK, summary="no selftest run yet ('jbc selftest')")
        counts = self.last.get("counts", {})
        summary = (f"last selftest {self.last.get('verdict')}: {counts.get('pass', 0)} pass, "
                   f"{counts.get('warn', 0)} warn, {counts.get('fail', 0)} fail")
        return Health(level=HealthLevel.OK, summary=summary,
                      details={"verdict": self.last.get("verdict"),
                               "finished_at": self.last.get("finished_at")})

    # -- commands --------------------------------------------------------------------------

    async def _cmd_run(self, context: CommandContext) -> dict[str, Any]:
        call = context.arg("call", bool, True)
        if self.running is not None and not self.running.done():
            raise CommandError("busy", "a selftest is already running; wait for its result "
                               "('jbc selftest --last')")
        self.running = asyncio.ensure_future(self.run(call=call, actor=context.peer.describe()))
        return await asyncio.shield(self.running)

    async def _cmd_last(self, _: CommandContext) -> dict[str, Any]:
        if self.last is None:
            raise CommandError("no_selftest", "no selftest has run yet; run 'jbc selftest'")
        return self.last

    async def _cmd_readiness(self, _: CommandContext) -> dict[str, Any]:
        return readiness_report(self.runtime.config, self.sip, self.wan)

    # -- the run ---------------------------------------------------------------------------

    async def run(self, *, call: bool = True, actor: str | None = None) -> dict[str, Any]:
        config = self.runtime.config.selftest
        started = time.time()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.timeout_s
        sections: list[tuple[str, Section]] = [
            ("config", self._config),
            ("trunks", lambda: self._trunks(call=call, deadline=deadline)),
            ("wan", self._wan),
            ("backup uplink", self._backup),
            ("cloud", self._cloud),
            ("system", self._system),
            ("phones", self._phones),
        ]
        outcomes = await asyncio.gather(*(self._bounded(name, section, deadline)
                                          for name, section in sections))
        results = [line for lines in outcomes for line in lines]
        verdict = checks.verdict(results)
        counts = checks.counts(results)
        finished = time.time()
        report = {"verdict": str(verdict), "counts": counts, "started_at": started,
                  "finished_at": finished, "duration_s": round(finished - started, 2),
                  "site": self.runtime.config.site_name, "test_calls": call,
                  "results": [r.to_json() for r in results]}
        self.last = report
        self.runtime.journal.record(
            "selftest", "completed", f"selftest {verdict}: {counts['pass']} pass, "
            f"{counts['warn']} warn, {counts['fail']} fail, {counts['skip']} skipped in "
            f"{report['duration_s']:.1f} s", report, actor=actor)
        return report

    async def _bounded(self, name: str, section: Section, deadline: float) -> list[CheckResult]:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(0.1, remaining)):
                return await section()
        except TimeoutError:
            return [checks.failed(f"{name.replace(' ', '-')}.timeout", name, name,
                                  "did not finish within the selftest's time budget",
                                  "see 'jbc status' for a part that hangs")]
        except Exception as error:  # a bug in one section costs that section only
            log.exception("selftest section %s failed", name)
            return [checks.failed(f"{name.replace(' ', '-')}.error", name, name,
                                  f"could not be checked: {type(error).__name__}: {error}",
                                  "report this with 'jbc support-bundle'")]

    async def _config(self) -> list[CheckResult]:
        loaded = self.runtime.loaded_config
        if loaded.source == BUILTIN_SOURCE:
            facts = checks.ConfigFacts(source=loaded.source, running_digest=loaded.digest,
                                       builtin=True)
        else:
            try:
                on_disk = await asyncio.to_thread(load_config, loaded.source)
                facts = checks.ConfigFacts(source=loaded.source, running_digest=loaded.digest,
                                           file_digest=on_disk.digest)
            except ConfigError as error:
                facts = checks.ConfigFacts(source=loaded.source, running_digest=loaded.digest,
                                           file_problem=str(error).removeprefix(
                                               f"{loaded.source}: "))
        return checks.check_config(facts)

    async def _trunks(self, *, call: bool, deadline: float) -> list[CheckResult]:
        config = self.runtime.config
        out: list[CheckResult] = []
        if not config.trunks:
            return [checks.warned("trunks.configured", "trunks", "outside lines",
                                  "no trunks configured: outside and emergency calls fail "
                                  "during an outage", "describe the LTE modem or analog line "
                                  "under [[trunks]] in appliance.toml")]
        summaries = {t["name"]: t for t in self.trunks.health_summaries()}
        for trunk_config in config.trunks:
            entry = dict(summaries.get(trunk_config.name) or {
                "name": trunk_config.name, "kind": trunk_config.kind, "state": "down",
                "reason": "not started (see 'jbc events --subsystem trunks')"})
            trunk = self.trunks.get(trunk_config.name)
            details = getattr(trunk, "details", None)
            entry["details"] = details() if callable(details) else {}
            entry["usb_id"] = trunk_config.usb_id
            entry["usb_serial"] = trunk_config.usb_serial
            entry["at_port"] = str(trunk_config.at_port) if trunk_config.at_port else None
            entry["pin_configured"] = trunk_config.pin is not None
            usb_ports = None
            if trunk_config.usb_id:
                usb_ports = await asyncio.to_thread(_usb_ports, trunk_config)
            elif trunk_config.at_port is not None:
                entry["at_port_exists"] = trunk_config.at_port.exists()
            out += checks.check_trunk(entry, usb_ports=usb_ports,
                                      min_signal_dbm=config.selftest.min_signal_dbm)
        number = config.selftest.test_call_number
        if number and call:
            for trunk_config in config.trunks:
                out.append(await self._test_call(trunk_config.name, number, deadline))
        return out

    async def _test_call(self, trunk: str, number: str, deadline: float) -> CheckResult:
        if self.gateway is None or not self.runtime.config.gateway.enabled:
            return checks.skipped(f"trunk.{trunk}.test-call", f"trunk {trunk}",
                                  f"test call to {number}", "the gateway is off")
        remaining = deadline - asyncio.get_running_loop().time() - 1.0
        if remaining < 5:
            return checks.failed(f"trunk.{trunk}.test-call", f"trunk {trunk}",
                                 f"test call to {number}", "no time left for the call",
                                 "run 'jbc test-call' by hand")
        try:
            async with asyncio.timeout(remaining):
                report = await self.gateway.test_call(number, trunk, requested_by="selftest")
        except TimeoutError:
            return checks.check_test_call(trunk, number, None, "the call did not finish in "
                                          "time")
        except CommandError as error:
            return checks.check_test_call(trunk, number, None, error.message)
        return checks.check_test_call(trunk, number, report)

    async def _wan(self) -> list[CheckResult]:
        report = self.wan.report()
        wan = self.runtime.config.wan
        return checks.check_wan(report, stale_after_s=max(15.0, 10 * wan.interval_s))

    async def _backup(self) -> list[CheckResult]:
        from appliance.sync.cloud import CloudError
        from appliance.sync.identity import IdentityError
        from appliance.sync.uplink import UplinkError

        configured = bool(self.runtime.config.sync.backup_interface)
        if not configured:
            return [checks.check_backup_path(False, None, None)]
        try:
            outcome = await self.sync.heartbeat_via_backup()
        except (UplinkError, IdentityError) as error:
            return [checks.check_backup_path(True, None, str(error))]
        except CloudError as error:
            return [checks.check_backup_path(True, None, f"the cloud did not answer through "
                                             f"the backup uplink: {error.message}")]
        return [checks.check_backup_path(True, outcome, None)]

    async def _cloud(self) -> list[CheckResult]:
        selftest = self.runtime.config.selftest
        return checks.check_cloud(self.sync.status(), now=time.time(),
                                  warn_days=selftest.certificate_warn_days,
                                  bundle_max_age_s=selftest.bundle_max_age_s)

    async def _system(self) -> list[CheckResult]:
        config = self.runtime.config
        clock = await clock_status(config.selftest.clock_source,
                                   config.selftest.chrony_address)
        state_dir = config.daemon.state_dir
        usage = shutil.disk_usage(state_dir)
        return [checks.check_clock(clock),
                checks.check_disk(usage.free, usage.total, path=str(state_dir),
                                  min_free_mb=config.selftest.min_free_mb),
                checks.check_watchdog(self._watchdog())]

    def _watchdog(self) -> dict[str, Any]:
        notifier = self.runtime.notifier
        info: dict[str, Any] = {
            "interval_s": getattr(notifier, "watchdog_interval_s", None),
            "pings_sent": getattr(notifier, "pings_sent", 0)}
        device = WATCHDOG_SYSFS / "watchdog0"
        try:
            state = (device / "state").read_text().strip()
            timeout = (device / "timeout").read_text().strip()
            info["hardware"] = f"{state} ({timeout} s)"
        except OSError:
            info["hardware"] = None
        return info

    async def _phones(self) -> list[CheckResult]:
        config = self.runtime.config
        report = readiness_report(config, self.sip, self.wan)
        return checks.check_phones(report["phones"], mode=report["mode"],
                                   sip_enabled=config.sip.enabled)


def _usb_ports(trunk_config) -> list[str]:
    vendor, product = (int(part, 16) for part in trunk_config.usb_id.split(":"))
    found = []
    for tty in list_usb_ttys(sysfs=trunk_config.sysfs_root, dev=trunk_config.dev_root):
        if tty.vendor == vendor and tty.product == product and (
                trunk_config.usb_serial is None or tty.serial == trunk_config.usb_serial):
            found.append(f"{tty.name} (if{tty.interface})")
    return sorted(found)
