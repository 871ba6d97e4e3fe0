"""What differs between LTE module makers, detected from the modem's own answers.

``AT+CGMI`` says who made it (``Quectel``, ``SIMCOM INCORPORATED``); each vendor then has its
own initialisation, call-state URCs, PCM audio switch and DTMF reports (reference 1.3-1.8).
"""

from __future__ import annotations

import dataclasses
import enum


class Vendor(enum.StrEnum):
    QUECTEL = "quectel"
    SIMCOM = "simcom"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VendorProfile:
    vendor: Vendor
    init: tuple[tuple[str, bool], ...]
    """(command, required): a required command that fails makes initialisation fail."""
    voice_probe: str
    """Answers ERROR on firmware without USB voice (quirk 16)."""
    ims_query: str
    ims_prefix: str
    pin_retries_query: str
    pin_retries_prefix: str
    default_usb: dict[str, int]
    """Interface numbers of the AT port, a second AT-capable port and the audio port."""


COMMON_INIT: tuple[tuple[str, bool], ...] = (
    ("AT+COPS=3,0", False),
    ("AT+CREG=2", False),
    ("AT+CEREG=2", False),
    ("AT+CLIP=1", True),
    ("AT+CRC=0", False),
    ("AT+CCWA=1", False),
)

QUECTEL = VendorProfile(
    vendor=Vendor.QUECTEL,
    init=(
        ('AT+QURCCFG="urcport","usbat"', False),   # RING and friends on this port (quirk 18)
        ('AT+QGPSCFG="outport","none"', False),    # no NMEA on the PCM port (quirk 10)
        ('AT+QINDCFG="ccinfo",1,0', True),         # call-state URCs
        ('AT+QINDCFG="csq",1,0', False),
        ("AT+QTONEDET=1", False),                  # DTMF detection URCs
        ("AT+QPCMV=1,0", True),                    # PCM over the USB serial audio port
    ),
    voice_probe="AT+QPCMV?",
    ims_query='AT+QCFG="ims"',
    ims_prefix="+QCFG:",
    pin_retries_query='AT+QPINC="SC"',
    pin_retries_prefix="+QPINC:",
    default_usb={"at": 2, "aux": 3, "audio": 1},
)

SIMCOM = VendorProfile(
    vendor=Vendor.SIMCOM,
    init=(
        ("AT+CLCC=1", True),       # +CLCC URC on every call-state change
        ("AT+DDET=1", False),      # DTMF detection URCs
        ("AT+CPCMFRM=0", False),   # 8 kHz PCM
        ("AT+CPCMREG=0", False),   # audio only once a call is up
        ("AT+AUTOCSQ=1,1", False),
    ),
    voice_probe="AT+CPCMREG?",
    ims_query="AT+CIREG?",
    ims_prefix="+CIREG:",
    pin_retries_query="AT+SPIC",
    pin_retries_prefix="+SPIC:",
    default_usb={"at": 2, "aux": 3, "audio": 4},
)

KNOWN_USB = {
    (0x2C7C, 0x0125): QUECTEL,   # EC25 / EG25
    (0x2C7C, 0x0121): QUECTEL,   # EC21
    (0x1E0E, 0x9001): SIMCOM,    # SIM7600 family
}


def detect(manufacturer: str, model: str) -> VendorProfile | None:
    text = f"{manufacturer} {model}".upper()
    if "QUECTEL" in text or model.upper().startswith(("EC2", "EG2", "EG9", "EC9")):
        return QUECTEL
    if "SIMCOM" in text or "SIM7" in text:
        return SIMCOM
    return None
