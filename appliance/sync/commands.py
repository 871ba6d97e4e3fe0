"""The sync subsystem's control commands: 'jbc sync', 'jbc sync now', 'jbc sync rollback'
and 'jbc data erase'."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from appliance.control.commands import CommandContext, CommandError, Role

if TYPE_CHECKING:
    from .service import SyncService

NOT_CONFIGURED = ("not configured: set [sync] cloud_url, ca_file and signing_public_key "
                  "to sync with the cloud")


def register_sync_commands(service: SyncService) -> None:
    commands = service.runtime.commands

    async def sync_status(_: CommandContext) -> dict[str, Any]:
        return service.status()

    async def sync_now(_: CommandContext) -> dict[str, Any]:
        if not service.config.configured:
            raise CommandError("not_configured", f"cloud sync is {NOT_CONFIGURED}")
        outcome = await asyncio.wait_for(asyncio.shield(service.trigger()),
                                         service.config.request_timeout_s * 6)
        return {**outcome, "status": service.status()}

    async def sync_enrol(context: CommandContext) -> dict[str, Any]:
        token = context.arg("token", str).strip()
        if not service.config.configured:
            raise CommandError("not_configured", f"cloud sync is {NOT_CONFIGURED}")
        if not token or len(token) > 512 or not token.isprintable():
            raise CommandError("bad_request", "give the one-time enrolment token from the "
                               "cloud portal")
        status = service.status()
        if status["enrolled"]:
            raise CommandError("already_enrolled", f"already enrolled as "
                               f"{status['device_id']} (account {status['account']})")
        return await service.enrol(token)

    async def sync_rollback(_: CommandContext) -> dict[str, Any]:
        try:
            version = await service.rollback()
        except FileNotFoundError as error:
            raise CommandError("nothing_to_roll_back", str(error)) from None
        return {"version": version}

    async def data_erase(context: CommandContext) -> dict[str, Any]:
        if context.arg("confirm", bool, False) is not True:
            raise CommandError("confirm_required", "this deletes all customer content "
                               "(directory, bindings, call records, recordings); repeat "
                               "with --confirm to go ahead")
        report = service.content.erase_all()
        service.runtime.journal.record("data", "erased", "all customer content erased on "
                                    "request", {"deleted": report})
        return {"deleted": report}

    commands.register("sync.status", sync_status, role=Role.TECHNICIAN,
                      summary="cloud sync: config version and age, uploads, certificate")
    commands.register("sync.now", sync_now, role=Role.ADMIN,
                      summary="sync with the cloud now (bundle, uploads, heartbeat)")
    commands.register("sync.enrol", sync_enrol, role=Role.ADMIN,
                      summary="enrol with the cloud with a one-time token")
    commands.register("sync.rollback", sync_rollback, role=Role.ADMIN,
                      summary="go back to the previous config bundle")
    commands.register("data.erase", data_erase, role=Role.ADMIN,
                      summary="delete all customer content and report what was deleted")
