"""The update subsystem: 'jbc update status|install|reboot' over the control socket.

An install is an admin's request, refused during an outage or a call unless forced. RAUC
writes the bundle into the other root slot and makes it the one to boot next; jbcd then asks
for the reboot (it runs unprivileged: it creates ``<runtime_dir>/reboot-requested`` and the
root unit jbc-reboot.path carries it out) as soon as no call and no outage stands in the way.
After the reboot, jbc-boot-check commits the new slot or the boot loader goes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from appliance.config import ApplianceConfig
from appliance.control.commands import CommandContext, CommandError, Role
from appliance.runtime import Health, HealthLevel, Runtime

from .config import UpdateConfig
from .policy import SiteActivity, refusal
from .rauc import Rauc, RaucError
from .records import read_boot_checks, read_committed

log = logging.getLogger(__name__)

IMAGE_RELEASE = pathlib.Path("/etc/jbc-image-release")
REBOOT_REQUEST = "reboot-requested"
REBOOT_RECHECK_S = 5.0


class UpdateService:
    name = "update"

    def __init__(self, runtime: Runtime, *, activity: Callable[[], SiteActivity],
                 rauc: Rauc | None = None, image_release: pathlib.Path = IMAGE_RELEASE) -> None:
        self.runtime = runtime
        self.activity = activity
        self.rauc = rauc or Rauc()
        self.image_release = image_release
        self.install_state: dict[str, Any] = {"state": "idle"}
        self._installing = False
        self._reboot_task: asyncio.Task | None = None
        self._reboot_waiting_for = ""
        self._commands_registered = False

    @property
    def config(self) -> UpdateConfig:
        return self.runtime.config.update

    @property
    def available(self) -> bool:
        return self.config.rauc_system_config.exists()

    async def __aenter__(self) -> UpdateService:
        commands = self.runtime.commands
        commands.register("update.status", self._cmd_status, role=Role.TECHNICIAN,
                          summary="OS image: slots, versions, installs and boot checks")
        commands.register("update.install", self._cmd_install, role=Role.ADMIN, streaming=True,
                          summary="install a signed update bundle into the other slot and "
                          "reboot into it (not during an outage or a call unless forced)")
        commands.register("update.reboot", self._cmd_reboot, role=Role.ADMIN,
                          summary="reboot into the installed update now")
        self._commands_registered = True
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self._reboot_task is not None:
            self._reboot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reboot_task
        if self._commands_registered:
            for name in ("update.status", "update.install", "update.reboot"):
                self.runtime.commands.unregister(name)
            self._commands_registered = False

    async def reconfigure(self, config: ApplianceConfig) -> None:
        return None

    def health(self) -> Health:
        if not self.available:
            return Health(level=HealthLevel.DISABLED,
                          summary=f"not an A/B image ({self.config.rauc_system_config} missing)")
        state = self.install_state.get("state")
        if state == "installing":
            bundle = self.install_state.get("bundle")
            percent = self.install_state.get("progress", 0)
            return Health(level=HealthLevel.OK, summary=f"installing {bundle}: {percent}%")
        if self._reboot_task is not None and not self._reboot_task.done():
            return Health(level=HealthLevel.WARNING, summary="update installed; reboot waits "
                          f"until {self._reboot_waiting_for or 'it may'} (or 'jbc update "
                          "reboot --force')")
        if state == "failed":
            return Health(level=HealthLevel.WARNING,
                          summary=f"last install failed: {self.install_state.get('error')}")
        image = self.image()
        return Health(level=HealthLevel.OK,
                      summary=f"image {image.get('version', '?')}, slot "
                      f"{_booted_slot_name() or '?'}")

    # -- what the image is ------------------------------------------------------------------

    def image(self) -> dict[str, str]:
        try:
            text = self.image_release.read_text()
        except OSError:
            return {}
        values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        return {"version": values.get("JBC_IMAGE_VERSION", ""),
                "arch": values.get("JBC_IMAGE_ARCH", "")}

    # -- commands ---------------------------------------------------------------------------

    async def _cmd_status(self, _: CommandContext) -> dict[str, Any]:
        result: dict[str, Any] = {"available": self.available, "image": self.image(),
                                  "install": dict(self.install_state)}
        activity = self.activity()
        result["may_install_now"] = refusal(activity, force=False) is None
        result["refusal"] = refusal(activity, force=False)
        result["reboot_pending"] = self._reboot_task is not None and not self._reboot_task.done()
        if self._reboot_waiting_for:
            result["reboot_waiting_for"] = self._reboot_waiting_for
        if not self.available:
            result["reason"] = (f"{self.config.rauc_system_config} does not exist: updates "
                                "are installed only on the appliance's OS image")
            return result
        state_dir = self.config.state_dir
        result["committed"] = read_committed(state_dir)
        result["boot_checks"] = read_boot_checks(state_dir)[-5:]
        try:
            status = await self.rauc.status()
        except RaucError as error:
            result["rauc_error"] = str(error)
            return result
        result["booted"] = status.booted
        result["trial"] = bool(status.booted) and status.booted != result["committed"]
        result["slots"] = [slot.to_json() for slot in status.slots]
        result["compatible"] = status.compatible
        return result

    async def _cmd_install(self, context: CommandContext) -> AsyncIterator[dict[str, Any]]:
        bundle = context.arg("bundle", str)
        force = context.arg("force", bool, False)
        reboot = context.arg("reboot", bool, True)
        if not bundle.startswith("/") or "\0" in bundle or len(bundle) > 4096:
            raise CommandError("bad_request", "the bundle must be given as an absolute path")
        if not self.available:
            raise CommandError("unavailable", "updates are installed only on the appliance's "
                               f"OS image ({self.config.rauc_system_config} missing)")
        if not await asyncio.to_thread(os.path.isfile, bundle):
            raise CommandError("not_found", f"{bundle}: no such file where jbcd can see it "
                               "(copy update bundles to /data/updates)")
        if self._installing:
            raise CommandError("busy", "an update is being installed already; see "
                               "'jbc update status'")
        why_not = refusal(self.activity(), force=force)
        if why_not is not None:
            self.runtime.journal.record("update", "install-refused", why_not,
                                        {"bundle": bundle, "by": context.peer.user})
            raise CommandError("not_now", f"not installing now: {why_not}")
        self._installing = True
        started = time.time()
        self.install_state = {"state": "installing", "bundle": bundle, "progress": 0,
                              "by": context.peer.user, "started_at": started, "forced": force}
        self.runtime.journal.record("update", "install-started",
                                    f"{context.peer.user} installs {bundle}",
                                    {"bundle": bundle, "forced": force})
        try:
            async for percent, what in self.rauc.install(bundle):
                self.install_state["progress"] = percent
                yield {"progress": percent, "what": what}
        except RaucError as error:
            self.install_state.update(state="failed", error=str(error), finished_at=time.time())
            self.runtime.journal.record("update", "install-failed", str(error),
                                        {"bundle": bundle})
            raise CommandError("install_failed", f"RAUC did not install {bundle}: {error}"
                               ) from None
        finally:
            self._installing = False
            if self.install_state.get("state") == "installing":
                # Cancelled (the client went away): RAUC's own service goes on; say so.
                self.install_state.update(state="unknown", finished_at=time.time())
        self.install_state.update(state="installed", progress=100, finished_at=time.time())
        took = time.time() - started
        self.runtime.journal.record("update", "installed",
                                    f"{bundle} installed in {took:.0f} s",
                                    {"bundle": bundle, "took_s": round(took, 1)})
        outcome: dict[str, Any] = {"installed": True, "bundle": bundle, "took_s": round(took, 1)}
        if not reboot:
            outcome["reboot"] = "not requested: run 'jbc update reboot' to boot the update"
        else:
            outcome["reboot"] = self._schedule_reboot(force=force, by=context.peer.user)
        yield outcome

    async def _cmd_reboot(self, context: CommandContext) -> dict[str, Any]:
        force = context.arg("force", bool, False)
        if not self.available:
            raise CommandError("unavailable", "not an A/B image: nothing to reboot into")
        if self.install_state.get("state") != "installed" and not force:
            raise CommandError("nothing_installed", "no update was installed since jbcd "
                               "started; use --force to reboot anyway")
        return {"reboot": self._schedule_reboot(force=force, by=context.peer.user)}

    # -- reboot -----------------------------------------------------------------------------

    def _schedule_reboot(self, *, force: bool, by: str) -> str:
        if self._reboot_task is not None and not self._reboot_task.done():
            if not force:
                return f"already waiting until {self._reboot_waiting_for}"
            self._reboot_task.cancel()
        why_not = refusal(self.activity(), force=force)
        if why_not is None:
            self._request_reboot(by, forced=force)
            return "now"
        self._reboot_waiting_for = why_not.split(";")[0].replace("is in progress", "has ended")
        self._reboot_task = self.runtime.spawn(self._reboot_when_quiet(by), name="reboot",
                                               subsystem=self.name)
        return f"when it may: {why_not.split(';')[0]}"

    async def _reboot_when_quiet(self, by: str) -> None:
        # Polled: calls end in two subsystems and the WAN in a third; a few seconds' delay
        # before a deferred reboot costs nothing.
        while refusal(self.activity(), force=False) is not None:  # noqa: ASYNC110
            await asyncio.sleep(REBOOT_RECHECK_S)
        self._request_reboot(by, forced=False)

    def _request_reboot(self, by: str, *, forced: bool) -> None:
        path = self.runtime.config.daemon.runtime_dir / REBOOT_REQUEST
        reason = f"jbc update: rebooting into the installed update (asked by {by})\n"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(reason)
        os.replace(tmp, path)
        self._reboot_waiting_for = ""
        self.runtime.journal.record("update", "reboot-requested", reason.strip(),
                                    {"forced": forced})
        log.warning("%s", reason.strip())


def _booted_slot_name(cmdline: pathlib.Path = pathlib.Path("/proc/cmdline")) -> str:
    try:
        words = cmdline.read_text().split()
    except OSError:
        return ""
    return next((w.split("=", 1)[1] for w in words if w.startswith("rauc.slot=")), "")
