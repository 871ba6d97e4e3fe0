"""What the LTE and voice-modem trunks share: listeners, tasks, the AT channel wrapper, the
technician passthrough, finding a port by USB identity, and waiting without touching a
modem. Each driver adds its own supervision, calls and audio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
from collections.abc import Callable

from drivers.at.channel import AtChannel
from drivers.at.core import AtResponse, RawConsumer
from drivers.at.results import AtPortClosed
from drivers.trunk import TrunkEvent, TrunkListener
from drivers.usbports import UsbPortId, find_tty

log = logging.getLogger(__name__)


class AtTrunkBase:
    kind: str
    max_calls = 1

    def __init__(self, name: str, *, command_timeout_s: float, sysfs: pathlib.Path,
                 dev: pathlib.Path, logger: logging.Logger = log) -> None:
        self.name = name
        self.log = logging.LoggerAdapter(logger, {"trunk": name})
        self._command_timeout_s = command_timeout_s
        self._sysfs = sysfs
        self._dev = dev
        self._listeners: list[TrunkListener] = []
        self._tasks: set[asyncio.Task] = set()
        self._channel: AtChannel | None = None
        self._wake = asyncio.Event()
        self._port_lost = False

    def add_listener(self, listener: TrunkListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    async def at_passthrough(self, command: str, *, timeout_s: float = 10.0) -> list[str]:
        response = await self._command(command, timeout_s=timeout_s, check=False)
        return [*response.lines, response.result.line]

    def _emit(self, event: TrunkEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self.log.exception("%s: trunk listener failed on %s", self.name,
                                   type(event).__name__)

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _command(self, text: str, *, timeout_s: float | None = None, check: bool = True,
                       call_control: bool | None = None,
                       raw: RawConsumer | None = None) -> AtResponse:
        channel = self._channel
        if channel is None or not channel.is_open:
            raise AtPortClosed(f"{self.name}: the modem is not connected")
        return await channel.command(text, timeout_s=timeout_s or self._command_timeout_s,
                                     check=check, call_control=call_control, raw=raw)

    def _locate(self, identity: UsbPortId | None, fixed: str | None) -> str | None:
        """The port's device path now: by USB identity first, else the configured path."""
        if identity is not None:
            tty = find_tty(identity, sysfs=self._sysfs, dev=self._dev)
            if tty is not None:
                return str(tty.device)
        if fixed and pathlib.Path(fixed).exists():
            return fixed
        return None

    async def _wait_quietly(self, seconds: float) -> None:
        """Wait without touching the modem, unless its port vanishes (and comes back)."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not self._port_lost:
                    await self._wake.wait()
                    self._wake.clear()
