"""'jbc data erase': delete all customer content, leave nothing readable, say what went."""

from __future__ import annotations

from typing import Any

from appliance.control.commands import CommandContext, CommandError, CommandRegistry, Role
from appliance.journal import EventJournal

from .erasure import CustomerContent


def register_data_commands(commands: CommandRegistry, content: CustomerContent,
                           journal: EventJournal) -> None:
    async def data_erase(context: CommandContext) -> dict[str, Any]:
        if context.arg("confirm", bool, False) is not True:
            raise CommandError("confirm_required", "this deletes all customer content "
                               "(directory, bindings, call records, recordings) and "
                               "un-enrols the appliance; repeat with --confirm to go ahead")
        report = content.erase_all()
        journal.record("data", "erased", "all customer content erased on request; the "
                       "appliance is un-enrolled until an admin enrols it with a new token",
                       {"deleted": report})
        return {"deleted": report}

    commands.register("data.erase", data_erase, role=Role.ADMIN,
                      summary="delete all customer content and report what was deleted")
