"""Trunk events on the appliance bus."""

from __future__ import annotations

import dataclasses

from drivers.trunk import TrunkHealth


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrunkHealthChanged:
    """A trunk's state or the reason for it changed (signal figures alone do not count)."""

    trunk: str
    kind: str
    health: TrunkHealth
    previous: TrunkHealth | None
