"""The [drill] section: scheduled fire drills ('jbc drill')."""

from __future__ import annotations

import dataclasses

from appliance.config.schema import between, setting

from .schedule import parse_window


def _dial_string(value: str) -> str | None:
    if value and not all(ch.isdigit() or ch in "+*#" for ch in value):
        return f"{value!r} is not a number a trunk can dial"
    return None


def _window(value: str) -> str | None:
    if not value:
        return None
    try:
        parse_window(value)
    except ValueError as error:
        return str(error)
    return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DrillConfig:
    number: str = setting(
        "", doc="The number each trunk calls in a drill: a line that answers and sends audio "
        "back (a tone or echo test number). Empty: the trunk step is skipped.",
        check=_dial_string, example="+15555550199")
    window: str = setting(
        "", doc="The maintenance window scheduled drills run in, local time: days and a time "
        "range, e.g. 'Sun 02:00-04:00' or 'Mon-Fri 22:00-23:30'. The jbc-drill.timer unit "
        "asks every hour; a drill runs when inside the window and one is due. Empty: no "
        "scheduled drills.", check=_window, example="Sun 02:00-04:00")
    every_days: float = setting(
        7.0, doc="A scheduled drill is due this long after the last one.",
        check=between(1, 90))
    full: bool = setting(
        False, doc="Scheduled drills are full drills: failover forced for full_minutes, the "
        "site told full_notice_s in advance. Off: drills never take a phone away from the "
        "cloud.")
    full_minutes: float = setting(
        5.0, doc="How long a full drill forces failover.", check=between(0.1, 60))
    full_notice_s: float = setting(
        900.0, doc="A full drill is announced (journal, cloud event) this long before it "
        "forces failover.", check=between(0, 86400))
    step_timeout_s: float = setting(
        60.0, doc="Each step (the test user agent, each trunk's call, the heartbeat) must "
        "finish within this long.", check=between(5, 300))
