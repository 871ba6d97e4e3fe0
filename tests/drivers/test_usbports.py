"""Finding a modem's ports by USB identity in a sysfs tree laid out as the kernel does it
(usb-serial: class/tty/ttyUSBn/device -> .../1-1:1.2/ttyUSBn; cdc-acm: -> .../1-1:1.0)."""

from __future__ import annotations

import pytest

from drivers.usbports import (
    UsbPortId,
    describe_tty,
    find_tty,
    identify_port,
    list_usb_ttys,
    reset_usb_device,
)
from jbcbench.modems.usb import UsbBus, UsbIdentity

EG25 = UsbIdentity(vendor=0x2C7C, product=0x0125, serial="A1", manufacturer="Quectel",
                   product_name="EG25-G")
USR = UsbIdentity(vendor=0x0BAF, product=0x0303, serial="U1", manufacturer="U.S.Robotics",
                  product_name="USB Modem")


@pytest.fixture
def bus(tmp_path):
    bus = UsbBus(tmp_path)
    for name in ("pts-a", "pts-b", "pts-c", "pts-d", "pts-e"):
        (tmp_path / name).touch()  # stand-ins for /dev/pts/N
    return bus


def test_usb_serial_ports_by_interface(bus, tmp_path):
    bus.plug(EG25, {1: str(tmp_path / "pts-a"), 2: str(tmp_path / "pts-b")})
    at = find_tty(UsbPortId.parse("2c7c:0125", 2), sysfs=bus.sysfs, dev=bus.dev)
    assert at.name == "ttyUSB1" and at.interface == 2 and at.serial == "A1"
    assert at.device == bus.dev / "ttyUSB1"
    audio = find_tty(UsbPortId.parse("2C7C:0125", 1, "A1"), sysfs=bus.sysfs, dev=bus.dev)
    assert audio.name == "ttyUSB0"
    assert find_tty(UsbPortId.parse("2c7c:0125", 2, "other"), sysfs=bus.sysfs,
                    dev=bus.dev) is None


def test_cdc_acm_port(bus, tmp_path):
    bus.plug(USR, {0: str(tmp_path / "pts-c")}, acm=True)
    (tty,) = list_usb_ttys(sysfs=bus.sysfs, dev=bus.dev)
    assert (tty.name, tty.vendor, tty.product, tty.interface) == ("ttyACM0", 0x0BAF, 0x0303, 0)


def test_found_again_after_re_enumeration_under_new_names(bus, tmp_path):
    device = bus.plug(EG25, {2: str(tmp_path / "pts-a")})
    before = identify_port(bus.dev / "ttyUSB0", sysfs=bus.sysfs)
    bus.unplug(device)
    assert find_tty(before, sysfs=bus.sysfs, dev=bus.dev) is None
    bus.plug(EG25, {2: str(tmp_path / "pts-b")}, port_number=device.port_number)
    again = find_tty(before, sysfs=bus.sysfs, dev=bus.dev)
    assert again.name == "ttyUSB1"


def test_non_usb_tty_has_no_identity(bus):
    (bus.sysfs / "class" / "tty" / "ttyS0").mkdir()
    assert describe_tty("ttyS0", sysfs=bus.sysfs) is None


def test_usb_reset_writes_authorized(bus, tmp_path):
    bus.plug(EG25, {2: str(tmp_path / "pts-a")})
    tty = find_tty(UsbPortId.parse("2c7c:0125", 2), sysfs=bus.sysfs, dev=bus.dev)
    reset_usb_device(tty)
    assert (tty.usb_device / "authorized").read_text() == "1\n"


def test_bad_usb_id_is_explained():
    with pytest.raises(ValueError, match="vendor:product"):
        UsbPortId.parse("quectel", 2)
