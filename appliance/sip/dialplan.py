"""Where a dialled number goes: a pure function of the number and the site directory.

Order of decision: emergency numbers (also when dialled after the outside prefix, "9911"),
then local extensions and ring groups, then external numbers matching the dial plan's
patterns (with the outside prefix stripped), else unknown (404).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from appliance.directory.model import Directory, RingGroup

_VISUAL_SEPARATORS = re.compile(r"[\-.() ]")


@dataclasses.dataclass(frozen=True, slots=True)
class Destination:
    kind: Literal["extension", "ring_group", "external", "emergency", "unknown"]
    number: str
    """For extension and ring group: its number; external and emergency: the digits to send
    to the trunk gateway (outside prefix removed)."""
    ring_group: RingGroup | None = None


class DialPlan:
    """The directory's dial plan, compiled once per directory version."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.prefix = directory.dial_plan.outside_prefix
        self.external = directory.dial_plan.compiled()
        self.emergency = frozenset(directory.emergency.numbers)

    def route(self, dialled: str) -> Destination:
        number = normalise(dialled)
        if not number:
            return Destination("unknown", dialled)
        if number in self.emergency:
            return Destination("emergency", number)
        stripped = number[len(self.prefix):] if self.prefix and number.startswith(
            self.prefix) else None
        if stripped and stripped in self.emergency:
            return Destination("emergency", stripped)
        if self.directory.extension(number) is not None:
            return Destination("extension", number)
        group = self.directory.ring_group(number)
        if group is not None:
            return Destination("ring_group", number, group)
        if stripped and self._external(stripped):
            return Destination("external", stripped)
        if self._external(number):
            return Destination("external", number)
        return Destination("unknown", number)

    def _external(self, number: str) -> bool:
        return any(pattern.fullmatch(number) for pattern in self.external)


def normalise(dialled: str) -> str:
    """Remove visual separators (tel: URIs and some phones send ``+1-555-010-0000``)."""
    return _VISUAL_SEPARATORS.sub("", dialled)
