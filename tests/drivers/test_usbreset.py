"""The USB reset helper's checks, on a sysfs tree the bench publishes (no root needed): it
resets a serial modem a request names, and nothing else."""

from __future__ import annotations

import json
import os
import time

from drivers.usbports import UsbPortId, find_tty
from drivers.usbreset import serve_requests, write_request
from jbcbench.modems.usb import UsbBus, UsbIdentity

MODEM = UsbIdentity(vendor=0x2C7C, product=0x0125, serial="x", manufacturer="Quectel",
                    product_name="EG25-G")
KEYBOARD = UsbIdentity(vendor=0x046D, product=0xC31C, serial="k", manufacturer="Logitech",
                       product_name="Keyboard")


def plugged(bus: UsbBus, identity: UsbIdentity, tmp_path, ttys: bool = True):
    ports = {}
    if ttys:
        for interface in (2, 3):
            node = tmp_path / f"pty{identity.serial}{interface}"
            node.touch()
            ports[interface] = str(node)
    device = bus.plug(identity, ports)
    (device.directory / "authorized").write_text("untouched\n")  # a reset leaves "1"
    return device


def authorized_writes(device) -> str:
    return (device.directory / "authorized").read_text()


def test_a_request_for_a_modem_resets_it_and_is_removed(bus, tmp_path):
    device = plugged(bus, MODEM, tmp_path)
    requests = tmp_path / "run" / "modem-reset"
    tty = find_tty(UsbPortId.parse("2c7c:0125", 2), sysfs=bus.sysfs, dev=bus.dev)
    path = write_request(requests, bus.sysfs, tty)
    assert oct(requests.stat().st_mode & 0o777) == "0o770"
    (name, outcome), = serve_requests(requests, sysfs=bus.sysfs)
    assert name == path.name and outcome == f"reset 2c7c:0125 at {device.directory.name}"
    assert authorized_writes(device) == "1\n"
    assert os.listdir(requests) == []


def test_requests_for_anything_but_a_serial_modem_are_refused(bus, tmp_path):
    keyboard = plugged(bus, KEYBOARD, tmp_path, ttys=False)
    modem = plugged(bus, MODEM, tmp_path)
    requests = tmp_path / "requests"
    requests.mkdir()
    relative = os.path.relpath(keyboard.directory, bus.sysfs)
    cases = {
        "keyboard.reset": {"device": relative, "usb_id": "046d:c31c"},
        "lie.reset": {"device": os.path.relpath(modem.directory, bus.sysfs),
                      "usb_id": "046d:c31c"},
        "escape.reset": {"device": "../../etc", "usb_id": "2c7c:0125"},
        "garbage.reset": "not json",
    }
    for name, body in cases.items():
        (requests / name).write_text(body if isinstance(body, str) else json.dumps(body))
    old = requests / "old.reset"
    old.write_text(json.dumps({"device": os.path.relpath(modem.directory, bus.sysfs),
                               "usb_id": "2c7c:0125"}))
    os.utime(old, (time.time() - 600, time.time() - 600))
    outcomes = dict(serve_requests(requests, sysfs=bus.sysfs))
    assert all(outcome.startswith("refused") for outcome in outcomes.values()), outcomes
    assert "has no serial port" in outcomes["keyboard.reset"]
    assert "not 046d:c31c" in outcomes["lie.reset"]
    assert "not a device under" in outcomes["escape.reset"]
    assert "older than" in outcomes["old.reset"]
    assert os.listdir(requests) == []
    assert authorized_writes(keyboard) == authorized_writes(modem) == "untouched\n"
