"""The [[trunks]] entries: which modems are attached and how to find them."""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Literal

from appliance.config.schema import absolute_path, between, non_empty, setting


def _usb_id(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}", value):
        return f"{value!r} is not a USB id; write vendor:product in hex as 'lsusb' shows it, " \
            "e.g. '2c7c:0125'"
    return None


def _interface(value: int | None) -> str | None:
    if value is not None and not 0 <= value <= 31:
        return f"{value} is not a USB interface number (0-31; see 'lsusb -t')"
    return None


def _dial_strings(value: tuple[str, ...]) -> str | None:
    for number in value:
        if not re.fullmatch(r"\+?[0-9*#]{2,15}", number):
            return f"{number!r} is not a number a modem can dial"
    return None


def _device_path(value: pathlib.Path | None) -> str | None:
    """A device path must be absolute. It need not exist: a modem that is unplugged, or
    resetting (its /dev/serial/by-id link vanishes for ~10 s), degrades its own trunk, not
    the appliance (the trunk waits for it and says so in 'jbc trunks')."""
    if value is not None and not value.is_absolute():
        return f"{str(value)!r} is not an absolute path; give the device as /dev/..."
    return None


def _pin(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9]{4,8}", value):
        return "a SIM PIN is 4 to 8 digits"
    return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrunkConfig:
    name: str = setting(doc="A short unique name for this line, used by 'jbc trunks'.",
                        check=non_empty, example="lte1")
    kind: Literal["lte", "voice-modem"] = setting(
        doc="'lte' for a Quectel EG25/EC25 or SIMCom SIM7600 module; 'voice-modem' for an "
        "analog line behind a V.253 voice modem.",
        example="lte",
    )
    usb_id: str | None = setting(
        None,
        doc="The modem's USB vendor:product (see 'lsusb'). With it the ports are found by USB "
        "identity and interface number, so they are found again after the modem resets and "
        "comes back under other ttyUSB names. Preferred over at_port.",
        check=_usb_id,
        example="2c7c:0125",
    )
    usb_serial: str | None = setting(
        None, doc="The modem's USB serial number, to tell two identical modems apart.",
        example="1234567890",
    )
    at_interface: int | None = setting(
        None,
        doc="USB interface number of the AT port (defaults: Quectel and SIMCom 2, voice modems "
        "0).",
        check=_interface, example=2,
    )
    audio_interface: int | None = setting(
        None, doc="LTE: USB interface number of the PCM audio port (defaults: Quectel 1, "
        "SIMCom 4).", check=_interface, example=1,
    )
    aux_interface: int | None = setting(
        None, doc="LTE: a second AT-capable interface, poked to wake a silent AT port "
        "(default 3).", check=_interface, example=3,
    )
    at_port: pathlib.Path | None = setting(
        None,
        doc="The modem's AT command port, when usb_id is not given. Prefer a stable "
        "/dev/serial/by-id/ path; its USB identity is read when it is found so the port is "
        "found again after a reset. It may be absent when jbcd starts or reloads (the trunk "
        "waits for it).",
        check=_device_path,
        example="/dev/serial/by-id/usb-Quectel_EG25-if02-port0",
    )
    audio_port: pathlib.Path | None = setting(
        None,
        doc="The LTE module's PCM audio port when usb_id is not given (Quectel: the NMEA "
        "port; SIMCom: ttyUSB4). Not used by voice modems, whose audio shares the AT port.",
        check=_device_path,
        example="/dev/serial/by-id/usb-Quectel_EG25-if01-port0",
    )
    pin: str | None = setting(
        None, doc="LTE: the SIM PIN, entered at start when the SIM asks for it. It is never "
        "tried twice, nor when fewer than two attempts are left.", check=_pin,
        example="1234",
    )
    emergency_numbers: tuple[str, ...] = setting(
        ("112", "911"),
        doc="Numbers dialled as emergency calls: allowed even when the trunk can only make "
        "emergency calls (no SIM, registration denied).", check=_dial_strings,
    )
    emergency_numbers_without_sim: tuple[str, ...] = setting(
        ("112", "911", "000", "08", "110", "999", "118", "119"),
        doc="LTE: emergency numbers a module accepts with no SIM inserted.",
        check=_dial_strings,
    )
    ringback_goes_away_s: float = setting(
        7.0, doc="Voice modems: the call counts as answered this long after the ringback "
        "stops (+VRA). Analog lines have no answer signal; this is the modem's guess.",
        check=between(0, 25.5),
    )
    ringback_never_came_s: float = setting(
        10.0, doc="Voice modems: the call counts as answered when no ringback came within "
        "this time (+VRN).", check=between(0, 25.5),
    )
    no_answer_s: int = setting(
        45, doc="Voice modems: give up with 'no answer' after ringing this long (S7).",
        check=between(5, 255),
    )
    caller_id_wait_s: float = setting(
        4.0, doc="Voice modems: offer an incoming call this long after the first RING even "
        "when no caller ID came (it arrives between the first and second ring).",
        check=between(0.5, 10),
    )
    health_interval_s: float = setting(
        5.0, doc="How often the modem is asked for its health (and, while idle, pinged).",
        check=between(1, 300),
    )
    baudrate: int = setting(
        115200, doc="Serial speed. USB modems ignore it; a voice modem on a real UART needs "
        "more than 80000 for 8 kHz audio.", check=between(9600, 4000000),
    )
    sysfs_root: pathlib.Path = setting(
        pathlib.Path("/sys"),
        doc="Where USB identities are read. Only the hardware bench changes this (its "
        "simulated modems publish a sysfs tree of their own).", check=absolute_path,
    )
    dev_root: pathlib.Path = setting(
        pathlib.Path("/dev"), doc="Where tty device nodes are. Only the hardware bench "
        "changes this.", check=absolute_path,
    )

    def validate(self):
        if self.usb_id is None and self.at_port is None:
            yield "at_port", "is required unless usb_id is given (prefer usb_id: see " \
                "'lsusb'); one of them must say where the modem is"
        if self.kind == "voice-modem":
            for key in ("audio_port", "audio_interface", "aux_interface", "pin"):
                if getattr(self, key) is not None:
                    yield key, "is for LTE trunks only; a voice modem's audio shares its AT " \
                        "port and it has no SIM"
