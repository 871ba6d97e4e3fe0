"""Driver settings from the [[trunks]] config entries."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

from .config import TrunkConfig

if TYPE_CHECKING:
    from drivers.trunk import Trunk


def build_trunk(config: TrunkConfig, *, reset_requests: pathlib.Path | None = None) -> Trunk:
    """The driver for one [[trunks]] entry; ``reset_requests`` is where it may ask the
    privileged helper (jbc-modem-reset.service) for a USB reset."""
    # The drivers are imported for the first trunk that needs them: a box without that kind
    # of trunk never pays their import at boot (seconds on a slow CPU).
    if config.kind == "lte":
        from drivers.lte.trunk import LteSettings, LteTrunk
        return LteTrunk(LteSettings(
            name=config.name,
            at_port=str(config.at_port) if config.at_port else None,
            audio_port=str(config.audio_port) if config.audio_port else None,
            usb_id=config.usb_id, usb_serial=config.usb_serial,
            at_interface=config.at_interface, aux_interface=config.aux_interface,
            audio_interface=config.audio_interface,
            sysfs=config.sysfs_root, dev=config.dev_root, pin=config.pin,
            usb_reset_requests=reset_requests,
            emergency_numbers=config.emergency_numbers,
            emergency_numbers_without_sim=config.emergency_numbers_without_sim,
            health_interval_s=config.health_interval_s))
    from drivers.v253.trunk import VoiceModemSettings, VoiceModemTrunk
    return VoiceModemTrunk(VoiceModemSettings(
        name=config.name,
        at_port=str(config.at_port) if config.at_port else None,
        usb_id=config.usb_id, usb_serial=config.usb_serial,
        interface=config.at_interface if config.at_interface is not None else 0,
        sysfs=config.sysfs_root, dev=config.dev_root, baudrate=config.baudrate,
        usb_reset_requests=reset_requests,
        ringback_goes_away_s=config.ringback_goes_away_s,
        ringback_never_came_s=config.ringback_never_came_s,
        no_answer_s=config.no_answer_s, cid_wait_s=config.caller_id_wait_s,
        health_interval_s=config.health_interval_s))
