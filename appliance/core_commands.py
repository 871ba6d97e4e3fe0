"""The daemon's own control commands: status, events, the command list, debugging aids."""

from __future__ import annotations

import asyncio
import os
import pathlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from appliance import __version__
from appliance.config import ConfigError, load_config
from appliance.control.commands import CommandContext, CommandError, Role
from appliance.runtime import Runtime

if TYPE_CHECKING:
    from appliance.lifecycle import Appliance

MAX_STALL_S = 60.0
MAX_CONFIG_TEXT = 1024 * 1024
BUILTIN_SOURCE = "<built-in defaults>"


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

    async def config_show(_: CommandContext) -> dict[str, Any]:
        return await config_state(runtime)

    async def config_check(context: CommandContext) -> dict[str, Any]:
        text = context.arg("text", str, None)
        name = context.arg("name", str, "appliance.toml")
        if text is None:
            state = await config_state(runtime)
            if state["problem"]:
                raise CommandError("invalid_config", state["problem"])
            return state
        if len(text.encode()) > MAX_CONFIG_TEXT:
            raise CommandError("too_large", f"a config file is at most {MAX_CONFIG_TEXT} bytes")
        return await check_config_text(runtime, text, name)

    async def config_reload(_: CommandContext) -> dict[str, Any]:
        if runtime.loaded_config.source == BUILTIN_SOURCE:
            raise CommandError("no_config_file", "jbcd runs on its built-in defaults (no "
                               "--config); restart it with --config FILE to use a file")
        if appliance.reload is None:
            raise CommandError("unavailable", "this jbcd cannot reload its config file (no "
                               "daemon around it); restart it instead")
        if not await appliance.reload():
            raise CommandError("invalid_config", "the file was refused and the last good "
                               "config stays in force: "
                               + ((await config_state(runtime))["problem"] or "see the log"))
        return await config_state(runtime)

    commands.register("config.show", config_show, role=Role.TECHNICIAN,
                      summary="the config in force, and whether the file on disk matches it")
    commands.register("config.check", config_check, role=Role.TECHNICIAN,
                      summary="check a config file without applying it")
    commands.register("config.reload", config_reload, role=Role.ADMIN,
                      summary="apply the config file on disk (like systemctl reload jbcd)")
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


async def config_state(runtime: Runtime) -> dict[str, Any]:
    """The config in force, and what the file on disk would give if reloaded now."""
    loaded = runtime.loaded_config
    state: dict[str, Any] = {"source": loaded.source, "digest": loaded.short_digest,
                             "builtin": loaded.source == BUILTIN_SOURCE, "on_disk": None,
                             "in_force": True, "problem": None}
    if state["builtin"]:
        return state
    try:
        on_disk = await asyncio.to_thread(load_config, loaded.source)
    except ConfigError as error:
        state["problem"] = str(error)
        state["in_force"] = False
        return state
    state["on_disk"] = on_disk.short_digest
    state["in_force"] = on_disk.digest == loaded.digest
    return state


async def check_config_text(runtime: Runtime, text: str, name: str) -> dict[str, Any]:
    """Validate ``text`` as a config file (through the same loader as start-up), unapplied."""
    safe = pathlib.Path(name).name or "appliance.toml"
    directory = runtime.config.daemon.runtime_dir
    path = directory / f".check-{secrets.token_hex(6)}-{safe}"
    try:
        path.write_text(text)
        loaded = await asyncio.to_thread(load_config, path)
    except ConfigError as error:
        message = str(error).replace(str(path), safe)
        raise CommandError("invalid_config", message) from None
    except OSError as error:
        raise CommandError("failed", f"cannot check the file here: {error}") from None
    finally:
        path.unlink(missing_ok=True)
    return {"valid": True, "name": safe, "digest": loaded.short_digest,
            "same_as_in_force": loaded.digest == runtime.loaded_config.digest}

