"""A sysfs and /dev tree that the simulated modems publish themselves in, like the kernel does.

The driver's port lookup (:mod:`drivers.usbports`) runs unchanged against this tree: each
plugged device gets a USB device directory with ``idVendor``/``idProduct``/``serial``/
``authorized``, one interface directory per port with ``bInterfaceNumber``, a
``class/tty/<name>`` entry whose ``device`` link leads back to the interface, and a
``dev/<name>`` node (a symlink to the pty). Tty numbers are never reused while the bench
runs: on real hardware a re-enumerated modem gets new numbers whenever the host still holds
the old nodes open, which is exactly the case for a driver in the middle of a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import shutil
from collections.abc import Callable

HCD = "devices/platform/jbcbench-hcd.0/usb1"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UsbIdentity:
    vendor: int
    product: int
    serial: str
    manufacturer: str
    product_name: str

    @property
    def usb_id(self) -> str:
        return f"{self.vendor:04x}:{self.product:04x}"


@dataclasses.dataclass(slots=True, kw_only=True)
class PluggedDevice:
    port_number: int
    directory: pathlib.Path
    ttys: dict[int, str]
    """interface number -> tty name"""


class UsbBus:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.sysfs = root / "sys"
        self.dev = root / "dev"
        (self.sysfs / "class" / "tty").mkdir(parents=True, exist_ok=True)
        (self.sysfs / HCD).mkdir(parents=True, exist_ok=True)
        self.dev.mkdir(parents=True, exist_ok=True)
        self._next = {"ttyUSB": 0, "ttyACM": 0}
        self._next_port = 1

    def plug(self, identity: UsbIdentity, ports: dict[int, str], *, acm: bool = False,
             port_number: int | None = None) -> PluggedDevice:
        """Publish a device whose interface ``n`` is served by the pty at ``ports[n]``."""
        if port_number is None:
            port_number = self._next_port
            self._next_port += 1
        name = f"1-{port_number}"
        device_dir = self.sysfs / HCD / name
        device_dir.mkdir(parents=True, exist_ok=True)
        for attribute, value in (("idVendor", f"{identity.vendor:04x}"),
                                 ("idProduct", f"{identity.product:04x}"),
                                 ("serial", identity.serial),
                                 ("manufacturer", identity.manufacturer),
                                 ("product", identity.product_name),
                                 ("authorized", "1")):
            (device_dir / attribute).write_text(value + "\n", encoding="ascii")
        ttys = {}
        kind = "ttyACM" if acm else "ttyUSB"
        for interface, pty_path in sorted(ports.items()):
            interface_dir = device_dir / f"{name}:1.{interface}"
            interface_dir.mkdir(exist_ok=True)
            (interface_dir / "bInterfaceNumber").write_text(f"{interface:02x}\n",
                                                            encoding="ascii")
            tty_name = f"{kind}{self._next[kind]}"
            self._next[kind] += 1
            port_dir = interface_dir if acm else interface_dir / tty_name
            class_target = port_dir / "tty" / tty_name
            class_target.mkdir(parents=True, exist_ok=True)
            device_link = class_target / "device"
            device_link.symlink_to(os.path.relpath(port_dir, class_target))
            class_link = self.sysfs / "class" / "tty" / tty_name
            class_link.symlink_to(os.path.relpath(class_target, class_link.parent))
            (self.dev / tty_name).symlink_to(pty_path)
            ttys[interface] = tty_name
        return PluggedDevice(port_number=port_number, directory=device_dir, ttys=ttys)

    def unplug(self, device: PluggedDevice) -> None:
        for tty_name in device.ttys.values():
            with contextlib.suppress(FileNotFoundError):
                (self.sysfs / "class" / "tty" / tty_name).unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.dev / tty_name).unlink()
        shutil.rmtree(device.directory, ignore_errors=True)

    def dev_path(self, tty_name: str) -> str:
        return str(self.dev / tty_name)


class AuthorizedWatch:
    """Watches a device's ``authorized`` file the way the kernel reacts to writes to it: a
    write of 0 unplugs the device, a write of 1 after that plugs it back (a USB reset)."""

    def __init__(self, device: PluggedDevice, on_reset: Callable[[], None], *,
                 period: float = 0.1) -> None:
        self._path = device.directory / "authorized"
        self._on_reset = on_reset
        self._period = period
        self._stamp = self._read_stamp()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _read_stamp(self):
        try:
            info = self._path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            stamp = self._read_stamp()
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                self._on_reset()
                return

    def cancel(self) -> None:
        self._task.cancel()
