"""The 'drill' subsystem: fire drills that prove the failover path ('jbc drill').

A standard drill takes no phone away from the cloud. In order:

1. ``local-sip`` -- the internal test user agent (testua.py) registers to the local registrar
   as a one-off probe identity and calls itself through the local proxy;
2. ``trunk:NAME`` -- each trunk calls ``drill.number`` through the gateway and must hear audio
   back (the same tone check as 'jbc test-call');
3. ``backup-heartbeat`` -- a heartbeat reaches the cloud over the backup uplink.

A full drill (opt-in: ``jbc drill run --full``, or ``drill.full`` for scheduled ones) is
announced first (journal, and an immediate sync so the cloud and its portal learn of it),
``drill.full_notice_s`` later forces failover for ``drill.full_minutes`` (the phones are then
served locally, exactly as in an outage), runs the steps above during it, and releases it.

Every report is kept (store.py) and uploaded to the cloud like call records. A failed drill is
journalled as ``drill``/``failed`` and triggers a sync at once: the same path that tells the
cloud about an outage (events uploaded, heartbeat sent without waiting).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any

from appliance.config import ApplianceConfig
from appliance.control.commands import CommandContext, CommandError, Peer, Role
from appliance.runtime import Health, HealthLevel, Runtime

from .schedule import due, parse_window
from .store import DrillReports
from .testua import TestUaError, TestUserAgent

if TYPE_CHECKING:
    from appliance.gateway.service import Gateway
    from appliance.sip.service import SipService
    from appliance.sync.service import SyncService

log = logging.getLogger(__name__)

DRILL_PEER = Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), user="fire-drill",
                  role=Role.ADMIN)


def _step(step_id: str, title: str, outcome: str, detail: str,
          elapsed_s: float) -> dict[str, Any]:
    return {"id": step_id, "title": title, "outcome": outcome, "detail": detail,
            "elapsed_s": round(max(0.0, elapsed_s), 2)}


class DrillService:
    name = "drill"

    def __init__(self, runtime: Runtime, *, reports: DrillReports, sip: SipService,
                 sync: SyncService, gateway: Gateway | None) -> None:
        self.runtime = runtime
        self.reports = reports
        self.sip = sip
        self.sync = sync
        self.gateway = gateway
        self.current: asyncio.Task | None = None
        self.current_info: dict[str, Any] | None = None
        commands = runtime.commands
        commands.register("drill.run", self._cmd_run, role=Role.ADMIN,
                          summary="run a fire drill now (or, scheduled, when due)")
        commands.register("drill.report", self._cmd_report, role=Role.TECHNICIAN,
                          summary="the last fire drills' reports")
        commands.register("drill.schedule", self._cmd_schedule, role=Role.TECHNICIAN,
                          summary="the maintenance window and when the next drill is due")

    @property
    def last(self) -> dict[str, Any] | None:
        latest = self.reports.latest(1)
        return latest[0] if latest else None

    # -- Subsystem ----------------------------------------------------------------------------

    async def __aenter__(self) -> DrillService:
        await self._release_orphaned_failover()
        return self

    async def _release_orphaned_failover(self) -> None:
        """A full drill cut short (jbcd stopped or crashed while it held failover) must not
        leave the site forced for good: the WAN monitor resumes a forced failover after a
        restart, so one forced by a drill is released here."""
        try:
            wan = await self._command("wan.status", {})
        except CommandError:
            return
        if wan.get("state") == "forced" and "full fire drill" in (wan.get("cause") or ""):
            try:
                await self._command("failover.release", {})
            except CommandError as error:
                log.warning("could not release a drill's forced failover: %s", error.message)
                return
            self.runtime.journal.record("drill", "failover-released", "a full drill was cut "
                                        "short (jbcd restarted); its forced failover is "
                                        "released", {"cause": wan.get("cause")})

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self.current is not None and not self.current.done():
            self.current.cancel()
            await asyncio.gather(self.current, return_exceptions=True)

    async def reconfigure(self, config: ApplianceConfig) -> None:
        return None

    def health(self) -> Health:
        if self.current_info is not None:
            return Health(level=HealthLevel.OK, summary=f"drill running: "
                          f"{self.current_info['kind']} ({self.current_info['phase']})")
        last = self.last
        if last is None:
            return Health(level=HealthLevel.OK, summary="no drill run yet ('jbc drill run')")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last["finished_at"]))
        level = HealthLevel.OK if last["passed"] else HealthLevel.WARNING
        return Health(level=level, summary=f"last drill {when}: "
                      f"{'passed' if last['passed'] else 'FAILED'}",
                      details={"id": last["id"], "passed": last["passed"]})

    # -- commands -----------------------------------------------------------------------------

    async def _cmd_run(self, context: CommandContext) -> dict[str, Any]:
        config = self.runtime.config.drill
        scheduled = context.arg("scheduled", bool, False)
        full = context.arg("full", bool, config.full if scheduled else False)
        if self.current is not None and not self.current.done():
            raise CommandError("busy", f"a {self.current_info['kind']} drill is running "
                               f"({self.current_info['phase']}); see 'jbc drill report'")
        if scheduled:
            window = parse_window(config.window) if config.window else None
            last = self.last
            run, why = due(window, now=datetime.datetime.now(), every_days=config.every_days,
                           last_started=last["started_at"] if last else None)
            if not run:
                return {"ran": False, "reason": why}
        actor = context.peer.describe()
        trigger = "scheduled" if scheduled else "manual"
        report_id = str(uuid.uuid4())
        if full:
            notice = config.full_notice_s
            failover_at = time.time() + notice
            self.current = asyncio.ensure_future(self._full(report_id, trigger, actor, notice))
            self.current_info = {"kind": "full", "phase": "announced", "id": report_id}
            return {"ran": True, "kind": "full", "id": report_id, "announced": True,
                    "failover_at": failover_at, "minutes": config.full_minutes}
        self.current = asyncio.ensure_future(self._standard(report_id, trigger, actor))
        self.current_info = {"kind": "standard", "phase": "running", "id": report_id}
        report = await asyncio.shield(self.current)
        return {"ran": True, **report}

    async def _cmd_report(self, context: CommandContext) -> dict[str, Any]:
        report_id = context.arg("id", str, None)
        limit = context.arg("limit", int, 1)
        if not 1 <= limit <= 100:
            raise CommandError("bad_request", "'limit' must be between 1 and 100")
        if report_id:
            report = self.reports.get(report_id)
            if report is None:
                raise CommandError("not_found", f"no drill report {report_id}")
            return {"reports": [report], "running": self.current_info}
        return {"reports": self.reports.latest(limit), "running": self.current_info}

    async def _cmd_schedule(self, _: CommandContext) -> dict[str, Any]:
        config = self.runtime.config.drill
        last = self.last
        window = parse_window(config.window) if config.window else None
        now = datetime.datetime.now()
        run, why = due(window, now=now, every_days=config.every_days,
                       last_started=last["started_at"] if last else None)
        next_start = None
        if window is not None:
            earliest = now if last is None else max(now, datetime.datetime.fromtimestamp(
                last["started_at"] + config.every_days * 86400))
            candidate = earliest if window.contains(earliest) else window.next_start(earliest)
            next_start = candidate.timestamp()
        return {"window": config.window or None, "every_days": config.every_days,
                "full": config.full, "full_minutes": config.full_minutes,
                "full_notice_s": config.full_notice_s, "number": config.number or None,
                "due_now": run, "reason": why, "next_at": next_start,
                "last": None if last is None else {k: last[k] for k in (
                    "id", "kind", "started_at", "passed")},
                "timer": "jbc-drill.timer runs 'jbc drill run --scheduled' every hour"}

    # -- the drills ---------------------------------------------------------------------------

    async def _standard(self, report_id: str, trigger: str, actor: str) -> dict[str, Any]:
        started = time.time()
        try:
            steps = await self._steps()
        finally:
            self.current_info = None
        return self._finish(report_id, "standard", trigger=trigger, actor=actor,
                            started=started, steps=steps)

    async def _full(self, report_id: str, trigger: str, actor: str,
                    notice_s: float) -> dict[str, Any]:
        config = self.runtime.config.drill
        started = time.time()
        steps: list[dict[str, Any]] = []
        self.runtime.journal.record(
            "drill", "announced", f"full fire drill: failover will be forced in "
            f"{notice_s / 60:.0f} min for {config.full_minutes:g} min; phones will be served "
            "by the appliance meanwhile", {"id": report_id, "notice_s": notice_s,
                                           "minutes": config.full_minutes}, actor=actor)
        self.sync.trigger()  # tell the cloud (and so the site's admins) now
        try:
            await asyncio.sleep(notice_s)
            self.current_info = {"kind": "full", "phase": "failover forced", "id": report_id}
            forced_at = time.monotonic()
            forced = await self._force(report_id)
            steps.append(forced)
            if forced["outcome"] == "passed":
                serving = await self._wait_serving(config.step_timeout_s)
                steps.append(serving)
                steps += await self._steps()
                remaining = config.full_minutes * 60 - (time.monotonic() - forced_at)
                self.current_info = {"kind": "full", "phase": "holding failover",
                                     "id": report_id}
                await asyncio.sleep(max(0.0, remaining))
        finally:
            if any(s["id"] == "failover" and s["outcome"] == "passed" for s in steps):
                steps.append(await self._release())
            self.current_info = None
        return self._finish(report_id, "full", trigger=trigger, actor=actor, started=started,
                            steps=steps)

    async def _force(self, report_id: str) -> dict[str, Any]:
        begin = time.monotonic()
        try:
            await self._command("failover.force", {"reason": f"full fire drill {report_id}"})
        except CommandError as error:
            return _step("failover", "failover forced", "failed", error.message,
                         time.monotonic() - begin)
        return _step("failover", "failover forced", "passed", "the WAN monitor forced "
                     "failover for the drill", time.monotonic() - begin)

    async def _release(self) -> dict[str, Any]:
        begin = time.monotonic()
        try:
            await self._command("failover.release", {})
        except CommandError as error:
            return _step("release", "failover released", "failed", error.message,
                         time.monotonic() - begin)
        return _step("release", "failover released", "passed", "phones return to the cloud "
                     "after the hold-down", time.monotonic() - begin)

    async def _wait_serving(self, timeout_s: float) -> dict[str, Any]:
        """Wait for the WAN state that has the local registrar serve the phones."""
        from appliance.wan.events import WanStateChanged

        begin = time.monotonic()
        serving = asyncio.Event()
        if self.sip.core is not None and self.sip.core.serving:
            serving.set()

        def on_wan(event: WanStateChanged) -> None:
            if event.state.serves_locally:
                serving.set()

        unsubscribe = self.runtime.bus.subscribe(WanStateChanged, on_wan)
        try:
            async with asyncio.timeout(timeout_s):
                await serving.wait()
        except TimeoutError:
            return _step("serving", "local registrar serving", "failed", "the WAN monitor "
                         "did not enter failover", time.monotonic() - begin)
        finally:
            unsubscribe()
        return _step("serving", "local registrar serving", "passed",
                     "the local registrar and proxy took over", time.monotonic() - begin)

    async def _command(self, name: str, args: dict[str, Any]) -> Any:
        command = self.runtime.commands.get(name)
        if command is None:
            raise CommandError("unavailable", f"{name} is not offered (subsystem off?)")
        return await command.handler(CommandContext(peer=DRILL_PEER, args=args))

    async def _steps(self) -> list[dict[str, Any]]:
        steps = [await self._local_sip()]
        steps += await self._trunks()
        steps.append(await self._backup_heartbeat())
        return steps

    async def _local_sip(self) -> dict[str, Any]:
        title = "local registrar and proxy answer (test UA registers and calls itself)"
        begin = time.monotonic()
        config = self.runtime.config
        core = self.sip.core
        port = self.sip.ports.get("udp")
        if core is None or port is None:
            return _step("local-sip", title, "failed", "the local SIP service is not running "
                         "on UDP (sip.enabled, sip.transports)", 0.0)
        host = config.sip.advertised_address or config.sip.listen_address
        username = f"jbc-drill-{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(16)
        core.add_probe(username, password)
        try:
            async with asyncio.timeout(config.drill.step_timeout_s):
                async with TestUserAgent(username=username, password=password,
                                         registrar=(host, port), bind_host=host) as ua:
                    registered = await ua.register()
                    called = await ua.call_self()
                    await ua.unregister()
        except (TestUaError, OSError) as error:
            return _step("local-sip", title, "failed", str(error), time.monotonic() - begin)
        except TimeoutError:
            return _step("local-sip", title, "failed", "did not finish in time",
                         time.monotonic() - begin)
        finally:
            core.remove_probe(username)
        return _step("local-sip", title, "passed", f"registered in {registered * 1000:.0f} ms, "
                     f"called itself through the proxy in {called * 1000:.0f} ms",
                     time.monotonic() - begin)

    async def _trunks(self) -> list[dict[str, Any]]:
        config = self.runtime.config
        number = config.drill.number
        steps = []
        for trunk in config.trunks:
            step_id, title = f"trunk:{trunk.name}", f"{trunk.name} calls {number or '?'} and " \
                "hears audio back"
            if not number:
                steps.append(_step(step_id, title, "skipped", "no drill.number configured", 0))
                continue
            if self.gateway is None or not config.gateway.enabled:
                steps.append(_step(step_id, title, "failed", "the gateway is off", 0))
                continue
            begin = time.monotonic()
            try:
                async with asyncio.timeout(config.drill.step_timeout_s):
                    report = await self.gateway.test_call(number, trunk.name,
                                                          requested_by="fire drill")
            except TimeoutError:
                steps.append(_step(step_id, title, "failed", "the call did not finish in time",
                                   time.monotonic() - begin))
                continue
            except CommandError as error:
                steps.append(_step(step_id, title, "failed", error.message,
                                   time.monotonic() - begin))
                continue
            level = report.get("audio_level_dbfs")
            if report.get("connected") and report.get("audio_heard"):
                detail = f"answered in {report.get('setup_s', 0):.1f} s, audio back at " \
                    f"{level:.0f} dBFS"
                outcome = "passed"
            elif report.get("connected"):
                detail, outcome = "answered, but no audio came back", "failed"
            else:
                detail = f"not answered: {report.get('error') or report.get('cause')}"
                outcome = "failed"
            steps.append(_step(step_id, title, outcome, detail, time.monotonic() - begin))
        return steps

    async def _backup_heartbeat(self) -> dict[str, Any]:
        from appliance.sync.cloud import CloudError
        from appliance.sync.identity import IdentityError
        from appliance.sync.uplink import UplinkError

        title = "heartbeat reaches the cloud over the backup uplink"
        if not self.runtime.config.sync.backup_interface:
            return _step("backup-heartbeat", title, "skipped",
                         "no backup uplink configured (sync.backup_interface)", 0)
        begin = time.monotonic()
        try:
            async with asyncio.timeout(self.runtime.config.drill.step_timeout_s):
                outcome = await self.sync.heartbeat_via_backup()
        except (UplinkError, IdentityError) as error:
            return _step("backup-heartbeat", title, "failed", str(error),
                         time.monotonic() - begin)
        except CloudError as error:
            return _step("backup-heartbeat", title, "failed", error.message,
                         time.monotonic() - begin)
        except TimeoutError:
            return _step("backup-heartbeat", title, "failed", "no answer in time",
                         time.monotonic() - begin)
        return _step("backup-heartbeat", title, "passed", f"confirmed by the cloud via "
                     f"{outcome['interface']} ({outcome['source']})", time.monotonic() - begin)

    def _finish(self, report_id: str, kind: str, *, trigger: str, actor: str, started: float,
                steps: list[dict[str, Any]]) -> dict[str, Any]:
        passed = all(step["outcome"] != "failed" for step in steps)
        report = {"id": report_id, "kind": kind, "trigger": trigger, "actor": actor,
                  "site": self.runtime.config.site_name, "started_at": started,
                  "finished_at": time.time(), "passed": passed, "steps": steps}
        self.reports.add(report)
        failed = [s for s in steps if s["outcome"] == "failed"]
        summary = (f"{kind} fire drill passed ({len(steps)} steps)" if passed else
                   f"{kind} fire drill FAILED: " + "; ".join(
                       f"{s['title']}: {s['detail']}" for s in failed))
        self.runtime.journal.record("drill", "completed" if passed else "failed", summary,
                                    {"id": report_id, "kind": kind, "passed": passed,
                                     "failed_steps": [s["id"] for s in failed]}, actor=actor)
        # Upload the report now; a failure goes to the cloud at once, like an outage alert.
        self.sync.trigger()
        return {**report, "uploaded_at": None}
