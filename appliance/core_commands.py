"""The daemon's own control commands: status, events, the command list, debugging aids."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from appliance import __version__
from appliance.control.commands import CommandContext, CommandError, Role
from appliance.runtime import Runtime

if TYPE_CHECKING:
    from appliance.lifecycle import Appliance

MAX_STALL_S = 60.0


def register_core_commands(runtime: Runtime, appliance: Appliance) -> None:
    commands = runtime.commands

    async def status(_: CommandContext) -> dict[str, Any]:
        return status_report(runtime, appliance)

    async def events(context: CommandContext) -> dict[str, Any]:
        since = context.arg("since_s", float, None)
        subsystem = context.arg("subsystem", str, None)
        limit = context.arg("limit", int, 200)
        if since is not None and since < 0:
            raise CommandError("bad_request", "'since_s' must not be negative")
        if not 1 <= limit <= 10000:
            raise CommandError("bad_request", "'limit' must be between 1 and 10000")
        entries = runtime.journal.query(
            since=None if since is None else time.time() - since, subsystem=subsystem,
            limit=limit)
        return {"events": [entry.to_json() for entry in entries]}

    async def follow(context: CommandContext) -> AsyncIterator[dict[str, Any]]:
        subsystem = context.arg("subsystem", str, None)
        queue = runtime.journal.follow()
        try:
            while True:
                entry = await queue.get()
                if entry is None:
                    raise CommandError("too_slow", "fell behind the journal; run "
                                       "'jbc events --follow' again to resume")
                if subsystem is None or entry.subsystem == subsystem:
                    yield entry.to_json()
        finally:
            runtime.journal.unfollow(queue)

    async def command_list(_: CommandContext) -> dict[str, Any]:
        return {"commands": [
            {"name": c.name, "role": c.role.label, "summary": c.summary, "streaming": c.streaming}
            for c in commands.all()]}

    async def stall(context: CommandContext) -> dict[str, Any]:
        if not runtime.config.daemon.debug_commands:
            raise CommandError("disabled", "debug commands are off; set "
                               "daemon.debug_commands = true to use them")
        seconds = context.arg("seconds", float)
        if not 0 < seconds <= MAX_STALL_S:
            raise CommandError("bad_request", f"'seconds' must be in (0, {MAX_STALL_S:g}]")
        time.sleep(seconds)  # noqa: ASYNC251 - deliberately blocks the loop: that is the point
        return {"stalled_s": seconds}

    commands.register("status", status, role=Role.TECHNICIAN,
                      summary="state, uptime, versions and each subsystem's health")
    commands.register("events", events, role=Role.TECHNICIAN,
                      summary="recent entries of the event journal")
    commands.register("events.follow", follow, role=Role.TECHNICIAN, streaming=True,
                      summary="stream new journal entries as they happen")
    commands.register("commands", command_list, role=Role.TECHNICIAN,
                      summary="the commands this daemon offers")
    commands.register("debug.stall", stall, role=Role.ADMIN,
                      summary="block the event loop for N seconds (watchdog testing)")


def status_report(runtime: Runtime, appliance: Appliance) -> dict[str, Any]:
    now = time.time()
    parts = appliance.health_rows()
    headline = runtime.headline
    attention = headline.needs_attention or any(h.level.needs_attention for _, h, _ in parts)
    return {
        "site": runtime.config.site_name,
        "state": headline.state,
        "state_since": headline.since,
        "state_for_s": now - headline.since,
        "cause": headline.cause,
        "uptime_s": now - runtime.started_at,
        "started_at": runtime.started_at,
        "version": __version__,
        "pid": os.getpid(),
        "config": {"source": runtime.loaded_config.source,
                   "digest": runtime.loaded_config.short_digest},
        "directory_version": runtime.directory_version,
        "subsystems": [{"name": name, "level": str(h.level), "summary": h.summary,
                        "details": dict(h.details), **supervision}
                       for name, h, supervision in parts],
        "needs_attention": attention,
    }
