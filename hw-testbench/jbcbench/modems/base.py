"""What every simulated USB modem has: ports on ptys, a USB identity, a power cycle."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine

from .pty import PacedWriter, PtyPort
from .timing import SimTiming
from .usb import AuthorizedWatch, PluggedDevice, UsbBus, UsbIdentity

log = logging.getLogger(__name__)


def _lines(lines, final: str | None) -> bytes:
    body = b"".join(b"\r\n" + line.encode("latin-1") + b"\r\n" for line in lines)
    if final is not None:
        body += b"\r\n" + final.encode("latin-1") + b"\r\n"
    return body


class SimulatedModem:
    identity: UsbIdentity
    interfaces: dict[str, int]
    """Port role ('at', 'aux', 'audio', ...) -> USB interface number."""
    acm = False

    def __init__(self, bus: UsbBus, *, timing: SimTiming | None = None,
                 seed: int | None = None) -> None:
        self.bus = bus
        self.timing = timing or SimTiming()
        self.rng = random.Random(seed)
        self.ports: dict[str, PtyPort] = {}
        self.device: PluggedDevice | None = None
        self._writers: dict[str, PacedWriter] = {}
        """One output queue per port: what a modem sends on one serial line comes out in the
        order it was generated, replies and URCs alike."""
        self.powered = False
        self.plug_count = 0
        self._usb_port: int | None = None
        self._watch: AuthorizedWatch | None = None
        self._tasks: set[asyncio.Task] = set()
        self._life_tasks: set[asyncio.Task] = set()
        self._line = bytearray()
        self.echo = True
        self._reply_role = "at"
        """The port the command being handled came in on: its answer goes back there."""

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self):
        self.plug(booted=True)
        return self

    async def __aexit__(self, *exc) -> None:
        for task in list(self._life_tasks):
            task.cancel()
        await asyncio.gather(*self._life_tasks, return_exceptions=True)
        self.unplug()

    def plug(self, *, booted: bool = False) -> None:
        """Appear on USB: new ptys, new tty names. ``booted`` skips the boot sequence (the
        modem was already on when the bench started)."""
        if self.device is not None:
            return
        self.ports = {role: PtyPort() for role in self.interfaces}
        self.ports["at"].on_data = self._on_at_data
        for role, port in self.ports.items():
            if role != "at":
                port.on_data = (lambda data, role=role: self.on_port_data(role, data))
        self._writers = {role: PacedWriter(lambda role=role: self.ports.get(role),
                                           jitter_s=self.timing.jitter_s, rng=self.rng)
                         for role in self.ports}
        self.device = self.bus.plug(self.identity, {self.interfaces[r]: p.slave_path
                                                    for r, p in self.ports.items()},
                                    acm=self.acm, port_number=self._usb_port)
        self._usb_port = self.device.port_number
        self.plug_count += 1
        self._watch = AuthorizedWatch(self.device, self._usb_reset)
        self.powered = True
        self._line.clear()
        self.power_on(booted=booted)

    def unplug(self) -> None:
        """Vanish from USB (reset, brown-out, cable pulled): the host's reads fail with EIO."""
        if self.device is None:
            return
        self.power_off()
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        if self._watch is not None:
            self._watch.cancel()
        for writer in self._writers.values():
            writer.clear()
        self._writers = {}
        self.bus.unplug(self.device)
        for port in self.ports.values():
            port.close()
        self.ports = {}
        self.device = None
        self.powered = False

    def reboot(self, *, unplug_after: float | None = None, gap: float | None = None) -> None:
        """Reset like AT+CFUN=1,1: leave USB shortly, come back after the boot time."""
        unplug_after = self.timing.unplug_s if unplug_after is None else unplug_after
        gap = self.timing.boot_s if gap is None else gap
        self.spawn_life(self._reboot(unplug_after, gap))

    async def _reboot(self, unplug_after: float, gap: float) -> None:
        await asyncio.sleep(unplug_after)
        self.unplug()
        await asyncio.sleep(gap)
        self.plug()

    def _usb_reset(self) -> None:
        content = ""
        if self.device is not None:
            try:
                content = (self.device.directory / "authorized").read_text().strip()
            except OSError:
                content = ""
        log.info("%s: host wrote to 'authorized' (%s): USB reset", self.identity.product_name,
                 content)
        self.unplug()
        if content != "0":
            self.spawn_life(self._replug_later(self.timing.boot_s))

    async def _replug_later(self, gap: float) -> None:
        await asyncio.sleep(gap)
        self.plug()

    def spawn(self, coroutine: Coroutine) -> asyncio.Task:
        """A task that dies with the current power cycle (calls, timers)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def spawn_life(self, coroutine: Coroutine) -> asyncio.Task:
        """A task that survives power cycles (reboots), ended only by leaving the bench."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._life_tasks.add(task)
        task.add_done_callback(self._life_tasks.discard)
        return task

    # -- where the host finds us ------------------------------------------------------------

    @property
    def usb_id(self) -> str:
        return self.identity.usb_id

    def tty(self, role: str = "at") -> str | None:
        if self.device is None:
            return None
        return self.device.ttys[self.interfaces[role]]

    def path(self, role: str = "at") -> str | None:
        name = self.tty(role)
        return self.bus.dev_path(name) if name else None

    # -- AT port ---------------------------------------------------------------------------

    def urc_role(self) -> str:
        return "at"

    def _on_at_data(self, data: bytes) -> None:
        """Command-mode input as V.250 5.2.1 has it: characters are ignored until the "AT"
        (or "at") prefix; from there the line runs to CR. Stray bytes that happen to hold
        "AT" start a garbage line that ends in ERROR, as on a real modem (quirk 12)."""
        if not self.at_accepts_input():
            return
        if self.echo:
            self._send("at", data)
        for byte in data:
            line = self._line
            if not line:
                if byte in (0x41, 0x61):  # A / a: a possible prefix
                    line.append(byte)
                continue
            if len(line) == 1 and byte not in (0x54, 0x74):  # T / t
                line.clear()
                if byte in (0x41, 0x61):
                    line.append(byte)
                continue
            if byte == 0x0D:
                text = line.decode("latin-1")
                line.clear()
                self.handle_line(text)
            elif byte == 0x08:
                line.pop()
            elif byte != 0x0A:
                line.append(byte)

    def at_accepts_input(self) -> bool:
        return True

    def reply(self, lines: list[str] | tuple[str, ...], final: str | None, *,
              delay: float | None = None) -> None:
        """Answer the command just received: information lines, then the final result."""
        delay = self.timing.command_s if delay is None else delay
        self._send(self._reply_role, _lines(lines, final), delay)

    def reply_out_of_order(self, lines: list[str] | tuple[str, ...], final: str | None, *,
                           after: float) -> None:
        """Answer ``after`` seconds from now while answering later commands at once (a
        modem whose AT parser goes on while a slow network query is pending)."""
        role, body = self._reply_role, _lines(lines, final)
        plug = self.plug_count
        asyncio.get_running_loop().call_later(
            after, lambda: self._send(role, body) if self.plug_count == plug else None)

    def urc(self, line: str, *, delay: float = 0.0) -> None:
        if self.device is None:
            return
        self._send(self.urc_role(), b"\r\n" + line.encode("latin-1") + b"\r\n", delay)

    async def at_flushed(self) -> None:
        """Wait until everything queued on the AT port so far has gone out."""
        writer = self._writers.get("at")
        if writer is not None:
            await writer.flushed()

    def _send(self, role: str, data: bytes, delay: float = 0.0) -> None:
        writer = self._writers.get(role)
        if writer is not None:  # nothing leaves a modem that is off the bus
            writer.send(data, delay)

    # -- for subclasses --------------------------------------------------------------------

    def power_on(self, *, booted: bool) -> None:
        """Reset state for a fresh boot; send the boot URCs unless ``booted``."""

    def power_off(self) -> None:
        """Drop calls and state that do not survive a power cycle."""

    def handle_line(self, line: str) -> None:
        raise NotImplementedError

    def on_port_data(self, role: str, data: bytes) -> None:
        """Bytes the host wrote to a port other than the AT port."""
