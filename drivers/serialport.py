"""A serial port driven by the event loop: pyserial configures it, the loop's fd callbacks
read and write it, so nothing ever blocks the loop.

pyserial opens the device non-blocking and sets line parameters (baud rate, 8N1, flow control,
raw mode); after that we only use the file descriptor: ``loop.add_reader`` delivers what
arrives, writes go straight to the fd and the rest is queued behind ``loop.add_writer``. A USB
modem that resets or is unplugged makes reads fail with EIO/ENXIO (or return nothing): that
is reported once through ``on_lost`` and the port is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable

import serial

from drivers.errors import DriverError

log = logging.getLogger(__name__)

READ_SIZE = 4096
GONE_ERRNOS = {errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF, errno.EPIPE}


class PortLost(DriverError, OSError):
    """The port vanished (USB reset or unplug) or could not be opened."""


class SerialLink:
    """One open serial port. Create it with :meth:`open`; it is single-use: after it is lost
    or closed, open a new one (the device node may have a new name by then)."""

    def __init__(self, port: serial.Serial, path: str, *,
                 on_data: Callable[[bytes], None], on_lost: Callable[[str], None],
                 max_buffer: int = 256 * 1024) -> None:
        self.path = path
        self._port = port
        self._fd = port.fileno()
        self._loop = asyncio.get_running_loop()
        self._on_data = on_data
        self._on_lost = on_lost
        self._pending = bytearray()
        self._writer_armed = False
        self._max_buffer = max_buffer
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped_out = 0
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._readable)

    @classmethod
    async def open(cls, path: str, *, on_data: Callable[[bytes], None],
                   on_lost: Callable[[str], None], baudrate: int = 115200,
                   rtscts: bool = False, exclusive: bool = True) -> SerialLink:
        """Open ``path``. Opening a USB serial device can stall for a moment while the kernel
        sets it up, so it runs in a worker thread."""
        loop = asyncio.get_running_loop()

        def do_open() -> serial.Serial:
            return serial.Serial(port=path, baudrate=baudrate, bytesize=serial.EIGHTBITS,
                                 parity=serial.PARITY_NONE, stopbits=serial.STOPBITS_ONE,
                                 rtscts=rtscts, timeout=0, write_timeout=0,
                                 exclusive=exclusive)

        try:
            port = await loop.run_in_executor(None, do_open)
        except (serial.SerialException, OSError) as error:
            raise PortLost(errno.ENODEV, f"cannot open {path}: {error}") from None
        return cls(port, path, on_data=on_data, on_lost=on_lost)

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def write(self, data: bytes) -> None:
        """Send ``data`` without blocking; what the port cannot take now goes out when it can.
        Past ``max_buffer`` bytes of backlog the port is stalled and new data is dropped."""
        if self.closed or not data:
            return
        if self._pending:
            if len(self._pending) + len(data) > self._max_buffer:
                self.dropped_out += len(data)
                return
            self._pending += data
            return
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            self._lost(f"write failed: {error.strerror or error}")
            return
        self.bytes_out += sent
        if sent < len(data):
            self._pending += data[sent:]
            self._arm_writer()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        if self._writer_armed:
            self._loop.remove_writer(self._fd)
            self._writer_armed = False
        with contextlib.suppress(OSError, serial.SerialException):
            self._port.close()

    def _arm_writer(self) -> None:
        if not self._writer_armed and not self.closed:
            self._loop.add_writer(self._fd, self._writable)
            self._writer_armed = True

    def _writable(self) -> None:
        try:
            sent = os.write(self._fd, self._pending)
        except BlockingIOError:
            return
        except OSError as error:
            self._lost(f"write failed: {error.strerror or error}")
            return
        self.bytes_out += sent
        del self._pending[:sent]
        if not self._pending:
            self._loop.remove_writer(self._fd)
            self._writer_armed = False

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as error:
            if error.errno in GONE_ERRNOS:
                self._lost(f"read failed: {error.strerror}")
                return
            raise
        if not data:
            self._lost("end of file (device gone)")
            return
        self.bytes_in += len(data)
        self._on_data(data)

    def _lost(self, reason: str) -> None:
        if self.closed:
            return
        log.info("%s: port lost: %s", self.path, reason)
        self.close()
        self._on_lost(reason)
