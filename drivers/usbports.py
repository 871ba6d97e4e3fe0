"""Find a modem's serial ports by USB identity, the way the kernel publishes it in sysfs.

A USB modem's tty names (ttyUSB0..N, ttyACM0..N) depend on enumeration order and change
when the modem resets (AT+CFUN=1,1 re-enumerates it) or another device is plugged in. What
does not change is the USB identity: vendor:product, optionally the serial number, and the
*interface number* each port belongs to (Quectel EG25: interface 2 is AT, 1 carries PCM
audio; SIMCom SIM7600: 2 is AT, 4 is audio). sysfs links every tty to its USB interface:

    /sys/class/tty/ttyUSB2/device -> .../usb1/1-1/1-1:1.2/ttyUSB2   (usb-serial)
    /sys/class/tty/ttyACM0/device -> .../usb1/1-1/1-1:1.0           (cdc-acm)

Walking up from ``device`` we meet the interface directory (it has ``bInterfaceNumber``) and
then the USB device directory (``idVendor``, ``idProduct``, ``serial``, ``authorized``).

All functions take the sysfs root and the /dev root as arguments, so the hardware bench can
point them at a tree its simulated modems publish; the code that runs is the same.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re

from drivers.errors import DriverConfigError

log = logging.getLogger(__name__)

SYSFS = pathlib.Path("/sys")
DEV = pathlib.Path("/dev")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UsbPortId:
    """Which port of which USB device: ``2c7c:0125`` interface 2, optionally one serial."""

    vendor: int
    product: int
    interface: int
    serial: str | None = None

    @classmethod
    def parse(cls, usb_id: str, interface: int, serial: str | None = None) -> UsbPortId:
        match = re.fullmatch(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{4})", usb_id.strip())
        if not match:
            raise DriverConfigError(f"{usb_id!r} is not a USB id; write it as vendor:product "
                                    "in hex, e.g. 2c7c:0125 (see 'lsusb')")
        return cls(vendor=int(match.group(1), 16), product=int(match.group(2), 16),
                   interface=interface, serial=serial or None)

    def __str__(self) -> str:
        serial = f" serial {self.serial}" if self.serial else ""
        return f"{self.vendor:04x}:{self.product:04x} interface {self.interface}{serial}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UsbTty:
    name: str
    device: pathlib.Path
    """The /dev node (under the given dev root)."""
    usb_device: pathlib.Path
    """The USB device's sysfs directory (where idVendor and authorized live)."""
    vendor: int
    product: int
    interface: int
    serial: str | None
    manufacturer: str | None
    product_name: str | None

    def matches(self, wanted: UsbPortId) -> bool:
        return (self.vendor == wanted.vendor and self.product == wanted.product
                and self.interface == wanted.interface
                and (wanted.serial is None or self.serial == wanted.serial))

    @property
    def identity(self) -> UsbPortId:
        return UsbPortId(vendor=self.vendor, product=self.product, interface=self.interface,
                         serial=self.serial)


def _read(path: pathlib.Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def describe_tty(name: str, *, sysfs: pathlib.Path = SYSFS, dev: pathlib.Path = DEV
                 ) -> UsbTty | None:
    """The USB identity behind tty ``name`` (e.g. 'ttyUSB2'), or None if it is not USB."""
    link = sysfs / "class" / "tty" / name / "device"
    try:
        here = pathlib.Path(os.path.realpath(link, strict=True))
    except OSError:
        return None
    root = pathlib.Path(os.path.realpath(sysfs))
    interface_dir = None
    for candidate in (here, *here.parents):
        if root not in candidate.parents:
            break
        if interface_dir is None and (candidate / "bInterfaceNumber").exists():
            interface_dir = candidate
            continue
        if interface_dir is not None and (candidate / "idVendor").exists():
            vendor, product = _read(candidate / "idVendor"), _read(candidate / "idProduct")
            number = _read(interface_dir / "bInterfaceNumber")
            try:
                return UsbTty(name=name, device=dev / name, usb_device=candidate,
                              vendor=int(vendor, 16), product=int(product, 16),
                              interface=int(number, 16), serial=_read(candidate / "serial"),
                              manufacturer=_read(candidate / "manufacturer"),
                              product_name=_read(candidate / "product"))
            except (TypeError, ValueError):
                return None
    return None


def list_usb_ttys(*, sysfs: pathlib.Path = SYSFS, dev: pathlib.Path = DEV) -> list[UsbTty]:
    try:
        names = sorted(os.listdir(sysfs / "class" / "tty"))
    except OSError:
        return []
    found = []
    for name in names:
        if not name.startswith(("ttyUSB", "ttyACM")):
            continue
        tty = describe_tty(name, sysfs=sysfs, dev=dev)
        if tty is not None:
            found.append(tty)
    return found


def find_tty(wanted: UsbPortId, *, sysfs: pathlib.Path = SYSFS, dev: pathlib.Path = DEV
             ) -> UsbTty | None:
    """The tty of ``wanted`` whose device node exists, or None. Two identical modems without
    a serial number in ``wanted`` are ambiguous: the first is returned and a warning logged."""
    matches = [tty for tty in list_usb_ttys(sysfs=sysfs, dev=dev)
               if tty.matches(wanted) and tty.device.exists()]
    if len(matches) > 1:
        log.warning("%d USB devices match %s (%s); give the modem's serial number to pick one",
                    len(matches), wanted, ", ".join(t.name for t in matches))
    return matches[0] if matches else None


def identify_port(path: str | pathlib.Path, *, sysfs: pathlib.Path = SYSFS
                  ) -> UsbPortId | None:
    """The USB identity of the port at ``path`` (a /dev node or a /dev/serial/by-id link), so
    that it can be found again after the modem re-enumerates under another name. Links are
    followed one step at a time until a name sysfs knows as a tty."""
    current = pathlib.Path(path)
    for _ in range(16):
        tty = describe_tty(current.name, sysfs=sysfs)
        if tty is not None:
            return tty.identity
        try:
            target = os.readlink(current)
        except OSError:
            return None
        current = current.parent / target
    return None


def reset_usb_device(tty: UsbTty) -> None:
    """Make the kernel drop and re-enumerate the USB device (as unplugging it would), by
    de-authorising and re-authorising it. Needs write access to its ``authorized`` file."""
    authorized = tty.usb_device / "authorized"
    log.warning("resetting USB device %s (%04x:%04x) through %s", tty.usb_device.name,
                tty.vendor, tty.product, authorized)
    authorized.write_text("0\n", encoding="ascii")
    authorized.write_text("1\n", encoding="ascii")
