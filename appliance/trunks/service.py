"""The trunks subsystem: the configured outside lines, kept running, for the gateway to use.

:class:`TrunkPool` starts one driver per ``[[trunks]]`` entry (in config order, which is
the order the gateway tries them in), journals every change of a trunk's state or the reason
for it (the gateway listens to the trunks themselves for their calls and audio), and offers
``trunks.list`` and the admin-only ``trunks.at`` passthrough on the control socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
from typing import Any

from appliance.config import ApplianceConfig
from appliance.control.commands import CommandContext, CommandError, Role
from appliance.runtime import Health, HealthLevel, Runtime
from drivers.at.passthrough import PassthroughRefused, check_passthrough
from drivers.errors import DriverError
from drivers.trunk import (
    CallState,
    HealthChanged,
    SupportsAtPassthrough,
    Trunk,
    TrunkEvent,
    TrunkHealth,
    TrunkState,
)

from .config import TrunkConfig
from .factory import build_trunk

log = logging.getLogger(__name__)

MODEM_RESET_DIR = "modem-reset"
"""Under daemon.runtime_dir: jbc-modem-reset.path watches it (systemd/)."""

JOURNALLED_FIELDS = ("state", "reason", "sim", "registration", "ims", "line", "audio")
"""A change in one of these is journalled; signal strength and call counts are not."""


@dataclasses.dataclass(slots=True)
class _Entry:
    config: TrunkConfig
    trunk: Trunk
    remove_listener: Any = None


class TrunkPool:
    name = "trunks"

    def __init__(self, runtime: Runtime, *, factory=build_trunk) -> None:
        self.runtime = runtime
        self._factory = factory
        self._entries: dict[str, _Entry] = {}
        self._journalled: dict[str, TrunkHealth] = {}
        self._register_commands()

    # -- Subsystem -------------------------------------------------------------------------

    async def __aenter__(self) -> TrunkPool:
        for config in self.runtime.config.trunks:
            await self._start(config)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        for name in reversed(list(self._entries)):
            await self._stop(name)

    async def reconfigure(self, config: ApplianceConfig) -> None:
        wanted = {t.name: t for t in config.trunks}
        for name in list(self._entries):
            entry = self._entries[name]
            if wanted.get(name) == entry.config:
                continue
            if self._busy(entry.trunk):
                log.warning("trunk %s changed in the config but has a call up; the change "
                            "applies after a restart or the next reload when it is idle", name)
                continue
            await self._stop(name)
            self.runtime.journal.record("trunks", "removed" if name not in wanted else
                                        "reconfigured", f"{name}: stopped for the new config")
        for name, trunk_config in wanted.items():
            if name not in self._entries:
                await self._start(trunk_config)
        order = [t.name for t in config.trunks]
        self._entries = {name: self._entries[name] for name in order if name in self._entries}

    def health(self) -> Health:
        if not self._entries:
            return Health(level=HealthLevel.DISABLED, summary="no trunks configured")
        parts, level = [], HealthLevel.OK
        for name, entry in self._entries.items():
            health = entry.trunk.health()
            if health.state is TrunkState.READY:
                parts.append(f"{name} ready")
                continue
            parts.append(f"{name} {health.state.value}: {health.reason}")
            if health.state is TrunkState.STARTING and level is HealthLevel.OK:
                level = HealthLevel.STARTING
            elif health.state is not TrunkState.STARTING:
                level = HealthLevel.WARNING
        ready = sum(1 for e in self._entries.values()
                    if e.trunk.health().state is TrunkState.READY)
        if ready == 0 and level is HealthLevel.WARNING:
            level = HealthLevel.FAILED
        return Health(level=level, summary="; ".join(parts),
                      details={name: _health_json(e.trunk.health())
                               for name, e in self._entries.items()})

    def health_summaries(self) -> list[dict]:
        """Each trunk's health as JSON, in config order (the cloud heartbeat carries this)."""
        return [{"name": name, "kind": entry.config.kind, **_health_json(entry.trunk.health())}
                for name, entry in self._entries.items()]

    # -- for the gateway -------------------------------------------------------------------

    def trunks(self) -> list[Trunk]:
        """The trunks in the order to try them."""
        return [entry.trunk for entry in self._entries.values()]

    def get(self, name: str) -> Trunk | None:
        entry = self._entries.get(name)
        return entry.trunk if entry else None

    # -- internals -------------------------------------------------------------------------

    def reset_requests(self) -> pathlib.Path:
        """Where the drivers ask jbc-modem-reset.service for a USB reset."""
        return self.runtime.config.daemon.runtime_dir / MODEM_RESET_DIR

    async def _start(self, config: TrunkConfig) -> None:
        try:
            trunk = self._factory(config, reset_requests=self.reset_requests())
        except ValueError as error:
            log.error("trunk %s cannot be set up: %s", config.name, error)
            self.runtime.journal.record("trunks", "refused", f"{config.name}: {error}")
            return
        entry = _Entry(config=config, trunk=trunk)
        entry.remove_listener = trunk.add_listener(
            lambda event, name=config.name: self._on_event(name, event))
        try:
            await trunk.__aenter__()
        except Exception as error:  # one trunk's trouble never stops the others or jbcd
            log.exception("trunk %s failed to start", config.name)
            entry.remove_listener()
            self.runtime.journal.record("trunks", "refused", f"{config.name}: could not start: "
                                        f"{error}")
            return
        self._entries[config.name] = entry
        self.runtime.journal.record("trunks", "started", f"{config.name}: {config.kind} trunk "
                                    "started", {"trunk": config.name, "kind": config.kind})

    async def _stop(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is None:
            return
        if entry.remove_listener is not None:
            entry.remove_listener()
        try:
            await entry.trunk.__aexit__(None, None, None)
        except Exception:
            log.exception("trunk %s failed while stopping", name)
        self._journalled.pop(name, None)

    def _on_event(self, name: str, event: TrunkEvent) -> None:
        if not isinstance(event, HealthChanged):
            return
        health = event.health
        previous = self._journalled.get(name)
        if previous is not None and all(getattr(previous, f) == getattr(health, f)
                                        for f in JOURNALLED_FIELDS):
            return
        self._journalled[name] = health
        reason = f"{name}: {health.state.value}" + (f": {health.reason}" if health.reason else "")
        self.runtime.journal.record("trunks", "health", reason, {"trunk": name,
                                                                 **_health_json(health)})

    @staticmethod
    def _busy(trunk: Trunk) -> bool:
        return any(call.state is not CallState.ENDED for call in trunk.calls())

    # -- control commands ------------------------------------------------------------------

    def _register_commands(self) -> None:
        commands = self.runtime.commands
        commands.register("trunks.list", self._list, role=Role.TECHNICIAN,
                          summary="each trunk: kind, model, state, signal, operator, SIM, "
                          "IMS, calls")
        commands.register("trunks.at", self._at, role=Role.ADMIN,
                          summary="send one AT command to a trunk's modem (refused during a "
                          "call unless forced)")

    async def _list(self, _: CommandContext) -> dict[str, Any]:
        out = []
        for name, entry in self._entries.items():
            trunk = entry.trunk
            out.append({
                "name": name, "kind": entry.config.kind,
                **_health_json(trunk.health()),
                "calls": [_call_json(call) for call in trunk.calls()],
                "details": (trunk.details() if isinstance(trunk, SupportsAtPassthrough)
                            else {}),
            })
        return {"trunks": out}

    async def _at(self, context: CommandContext) -> dict[str, Any]:
        name = context.arg("trunk", str)
        command = context.arg("command", str).strip()
        force = context.arg("force", bool, False)
        timeout_s = context.arg("timeout_s", float, 10.0)
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(self._entries) or "none configured"
            raise CommandError("unknown_trunk", f"no trunk named {name!r} (trunks: {known})")
        trunk = entry.trunk
        try:
            command = check_passthrough(command)
        except PassthroughRefused as error:
            log.warning("trunks.at %s refused: %r: %s", name, command, error)
            raise CommandError("refused", f"{name}: not sent: {error}") from None
        if not 0.1 <= timeout_s <= 120:
            raise CommandError("bad_request", "'timeout_s' must be between 0.1 and 120")
        if not isinstance(trunk, SupportsAtPassthrough):
            raise CommandError("unsupported", f"{name} does not take AT commands")
        if self._busy(trunk) and not force:
            raise CommandError("call_in_progress", f"{name} has a call up; a modem command "
                               "now could drop it. Wait for the call to end, or add --force")
        try:
            lines = await asyncio.wait_for(trunk.at_passthrough(command, timeout_s=timeout_s),
                                           timeout_s + 5.0)
        except (DriverError, TimeoutError) as error:
            raise CommandError("modem_error", f"{name}: {error or 'no answer'}") from None
        log.info("trunks.at %s %r -> %r", name, command, lines[-1:])
        return {"trunk": name, "command": command, "lines": lines,
                "ok": bool(lines) and lines[-1] in ("OK", "CONNECT", "VCON"), "forced": force}


def _health_json(health: TrunkHealth) -> dict[str, Any]:
    data = dataclasses.asdict(health)
    data["state"] = health.state.value
    return data


def _call_json(call) -> dict[str, Any]:
    return {"id": call.id, "direction": call.direction.value, "state": call.state.value,
            "number": call.number, "emergency": call.emergency,
            "answer_supervised": call.answer_supervised,
            "caller": None if call.caller is None else {
                "number": call.caller.number, "name": call.caller.name,
                "presentation": call.caller.presentation.value}}
