"""The sync subsystem's control commands: 'jbc sync', 'jbc sync now', 'jbc sync rollback'."""

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
        crashed = service.link_problem()
        if crashed is not None:
            raise CommandError("link_down", crashed)
        timeout = service.config.request_timeout_s * 6
        try:
            outcome = await asyncio.wait_for(asyncio.shield(service.trigger()), timeout)
        except TimeoutError:
            raise CommandError("timeout", f"no round with the cloud finished within "
                               f"{timeout:g} s; the link keeps trying ('jbc sync' shows how "
                               "it is doing)") from None
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

    commands.register("sync.status", sync_status, role=Role.TECHNICIAN,
                      summary="cloud sync: config version and age, uploads, certificate")
    commands.register("sync.now", sync_now, role=Role.ADMIN,
                      summary="sync with the cloud now (bundle, uploads, heartbeat)")
    commands.register("sync.enrol", sync_enrol, role=Role.ADMIN,
                      summary="enrol with the cloud with a one-time token")
    commands.register("sync.rollback", sync_rollback, role=Role.ADMIN,
                      summary="go back to the previous config bundle")
