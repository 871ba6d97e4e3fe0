"""The [[trunks]] entries: which modems are attached and how to find them."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Literal

from appliance.config.schema import existing_device, non_empty, setting


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrunkConfig:
    name: str = setting(doc="A short unique name for this line, used by 'jbc trunks'.",
                        check=non_empty, example="lte1")
    kind: Literal["lte", "voice-modem"] = setting(
        doc="'lte' for a Quectel EG25/EC25 or SIMCom SIM7600 module; 'voice-modem' for an "
        "analog line behind a V.253 voice modem.",
        example="lte",
    )
    at_port: pathlib.Path = setting(
        doc="The modem's AT command port. Prefer a stable /dev/serial/by-id/ path.",
        check=existing_device,
        example="/dev/serial/by-id/usb-Quectel_EG25-if02-port0",
    )
    audio_port: pathlib.Path | None = setting(
        None,
        doc="The LTE module's PCM audio port (Quectel: the NMEA port; SIMCom: ttyUSB4). "
        "Not used by voice modems, whose audio shares the AT port.",
        check=existing_device,
        example="/dev/serial/by-id/usb-Quectel_EG25-if01-port0",
    )
