"""The device side of one simulated serial port: a pseudo-terminal master driven by the loop.

The host (our driver) opens the slave (``/dev/pts/N``) exactly as it would open
``/dev/ttyUSB2``. Closing the master makes the host's reads fail with EIO, which is what a
USB serial port does when the device is unplugged or resets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import termios
import tty
from collections.abc import Callable


class PtyPort:
    def __init__(self, on_data: Callable[[bytes], None] | None = None, *,
                 max_backlog: int = 64 * 1024) -> None:
        self._loop = asyncio.get_running_loop()
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)
        os.set_blocking(self.master, False)
        self.slave_path = os.ttyname(self._slave)
        self.on_data = on_data or (lambda data: None)
        self._pending = bytearray()
        self._writer_armed = False
        self._max_backlog = max_backlog
        self.reading = True
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped_out = 0
        self._loop.add_reader(self.master, self._readable)

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        if self._pending:
            if len(self._pending) + len(data) > self._max_backlog:
                self.dropped_out += len(data)
                return
            self._pending += data
            return
        try:
            sent = os.write(self.master, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return
        self.bytes_out += sent
        if sent < len(data):
            self._pending += data[sent:]
            if not self._writer_armed:
                self._loop.add_writer(self.master, self._writable)
                self._writer_armed = True

    def pause_reading(self) -> None:
        """Stop taking bytes from the host (a stalled USB bulk OUT endpoint): the pty buffer
        fills up and the host's writes start to block."""
        if self.reading and not self.closed:
            self._loop.remove_reader(self.master)
            self.reading = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.reading:
            self._loop.remove_reader(self.master)
        if self._writer_armed:
            self._loop.remove_writer(self.master)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return
        except OSError:
            # EIO: nobody has the slave open right now; we keep our own slave fd open, so
            # this only happens transiently. Nothing to read.
            return
        if data:
            self.bytes_in += len(data)
            self.on_data(data)

    def _writable(self) -> None:
        try:
            sent = os.write(self.master, self._pending)
        except BlockingIOError:
            return
        except OSError:
            self._pending.clear()
            sent = 0
        self.bytes_out += sent
        del self._pending[:sent]
        if not self._pending:
            self._loop.remove_writer(self.master)
            self._writer_armed = False


class PacedWriter:
    """Sends lines to a port after a delay plus random jitter, never reordering them: a modem
    answers after a moment, and its output order is what it is."""

    def __init__(self, port_getter: Callable[[], PtyPort | None], *, jitter_s: float = 0.0,
                 rng: random.Random | None = None) -> None:
        self._port = port_getter
        self.jitter_s = jitter_s
        self._rng = rng or random.Random()
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._last = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._flushed = asyncio.Event()
        self._flushed.set()

    async def flushed(self) -> None:
        """Wait until everything sent so far has been written."""
        await self._flushed.wait()

    def send(self, data: bytes, delay: float = 0.0) -> None:
        now = self._loop.time()
        jitter = self._rng.uniform(0.0, self.jitter_s) if self.jitter_s else 0.0
        when = max(self._last, now + delay + jitter)
        self._last = when
        self._queue.append((when, data))
        self._flushed.clear()
        self._arm()

    def clear(self) -> None:
        self._queue.clear()
        self._flushed.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        if self._handle is None and self._queue:
            self._handle = self._loop.call_at(self._queue[0][0], self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        while self._queue and self._queue[0][0] <= now + 0.0005:
            _, data = self._queue.popleft()
            port = self._port()
            if port is not None:
                port.write(data)
        if not self._queue:
            self._flushed.set()
        self._arm()
