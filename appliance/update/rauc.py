"""RAUC, the updater: what its status says (a pure parser) and how we ask it to do things.

jbcd (user jbc) reaches RAUC's D-Bus service through the ``rauc`` command line tool; the
image's D-Bus policy (image/rootfs/usr/share/dbus-1/system.d/jbc-rauc.conf) lets it install
and read status. Marking slots good or bad is root's, done by ``jbc-boot-check``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from .errors import UpdateError

MAX_STATUS_BYTES = 1024 * 1024


class RaucError(UpdateError):
    """RAUC refused or failed; the message is RAUC's own last words, for the technician."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    name: str
    """RAUC's slot name, e.g. 'rootfs.0'."""
    bootname: str
    """The boot loader's name for it, e.g. 'A'."""
    device: str
    state: str
    """'booted', 'active' or 'inactive'."""
    boot_status: str
    """'good' or 'bad' as the boot loader sees it, or '' when RAUC could not tell."""
    bundle_version: str = ""
    installed_at: str = ""
    installed_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SystemStatus:
    compatible: str
    booted: str
    """The bootname of the running slot."""
    boot_primary: str
    """The slot name the boot loader will start next, when RAUC knows it."""
    slots: tuple[Slot, ...]

    @property
    def booted_slot(self) -> Slot | None:
        return next((s for s in self.slots if s.bootname == self.booted), None)

    @property
    def other_slot(self) -> Slot | None:
        """The slot an install writes to: the root slot that is not running."""
        return next((s for s in self.slots if s.bootname and s.bootname != self.booted), None)

    def to_json(self) -> dict[str, Any]:
        return {"compatible": self.compatible, "booted": self.booted,
                "boot_primary": self.boot_primary, "slots": [s.to_json() for s in self.slots]}


def parse_status(text: str) -> SystemStatus:
    """``rauc status --detailed --output-format=json`` → :class:`SystemStatus`.

    RAUC lists slots as a list of one-key objects (``[{"rootfs.0": {...}}, ...]``); a plain
    object of slots is accepted too. Anything else is a :class:`RaucError`.
    """
    try:
        data = json.loads(text)
    except ValueError as error:
        raise RaucError(f"rauc status is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise RaucError("rauc status is not a JSON object")
    raw_slots = data.get("slots") or []
    pairs: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(raw_slots, dict):
        pairs = list(raw_slots.items())
    elif isinstance(raw_slots, list):
        for entry in raw_slots:
            if isinstance(entry, dict):
                pairs += list(entry.items())
    slots = []
    for name, info in pairs:
        if not isinstance(info, dict):
            continue
        detail = info.get("slot_status") or {}
        bundle = detail.get("bundle") or {}
        installed = detail.get("installed") or {}
        slots.append(Slot(
            name=str(name), bootname=str(info.get("bootname") or ""),
            device=str(info.get("device") or ""), state=str(info.get("state") or ""),
            boot_status=str(info.get("boot_status") or ""),
            bundle_version=str(bundle.get("version") or ""),
            installed_at=str(installed.get("timestamp") or ""),
            installed_count=_int(installed.get("count"))))
    return SystemStatus(compatible=str(data.get("compatible") or ""),
                        booted=str(data.get("booted") or ""),
                        boot_primary=str(data.get("boot_primary") or ""),
                        slots=tuple(slots))


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


_PROGRESS = re.compile(r"^\s*(\d{1,3})%\s+(.*\S)\s*$")


def parse_progress(line: str) -> tuple[int, str] | None:
    """One line of ``rauc install`` output: ``' 40% Copying image to rootfs.1'`` → (40, text)."""
    match = _PROGRESS.match(line)
    if match is None:
        return None
    return min(int(match.group(1)), 100), match.group(2)


class Rauc:
    """The ``rauc`` command line tool, run as a child process (never blocking the loop)."""

    def __init__(self, command: str = "rauc") -> None:
        self.command = command

    async def status(self) -> SystemStatus:
        code, out, err = await self._run("status", "--detailed", "--output-format=json")
        if code != 0:
            raise RaucError(_last_words(err) or f"rauc status exited {code}")
        return parse_status(out)

    async def install(self, bundle: str) -> AsyncIterator[tuple[int, str]]:
        """Install ``bundle`` into the other slot, yielding (percent, what) as RAUC reports.
        Raises :class:`RaucError` with RAUC's reason when the install fails."""
        process = await asyncio.create_subprocess_exec(
            self.command, "install", bundle, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=_environment())
        tail: list[str] = []
        try:
            assert process.stdout is not None
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip()
                if not line:
                    continue
                tail = [*tail[-9:], line]
                progress = parse_progress(line)
                if progress is not None:
                    yield progress
            code = await process.wait()
        finally:
            if process.returncode is None:
                # The client went away mid-install: RAUC's service carries on regardless.
                process.kill()
                await process.wait()
        if code != 0:
            raise RaucError(_last_words("\n".join(tail)) or f"rauc install exited {code}")

    async def mark(self, state: str, slot: str = "booted") -> str:
        """``rauc status mark-good|mark-bad|mark-active SLOT`` (root only)."""
        if state not in ("good", "bad", "active"):
            raise ValueError(f"cannot mark a slot {state!r}")
        code, out, err = await self._run("status", f"mark-{state}", slot)
        if code != 0:
            raise RaucError(_last_words(err or out) or f"rauc status mark-{state} exited {code}")
        return out.strip()

    async def _run(self, *args: str) -> tuple[int, str, str]:
        try:
            process = await asyncio.create_subprocess_exec(
                self.command, *args, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=_environment())
        except OSError as error:
            raise RaucError(f"cannot run {self.command}: {error.strerror}") from None
        out, err = await process.communicate()
        if len(out) > MAX_STATUS_BYTES:
            raise RaucError(f"rauc {args[0]} said more than {MAX_STATUS_BYTES} bytes")
        return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _environment() -> dict[str, str]:
    keep = ("PATH", "DBUS_SYSTEM_BUS_ADDRESS")
    return {k: v for k, v in os.environ.items() if k in keep} | {"LC_ALL": "C"}


def _last_words(text: str) -> str:
    """RAUC's most telling line: its last error line, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "fail" in line.lower()]
    return (errors or lines or [""])[-1][:500]
