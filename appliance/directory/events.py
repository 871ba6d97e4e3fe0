"""Directory changes, announced on the bus: the SIP registrar and proxy subscribe and apply
them live; the gateway and sync read ``DirectoryService.current`` when they need it."""

from __future__ import annotations

import dataclasses

from .model import Directory


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryUpdated:
    directory: Directory
    previous_version: int | None
    source: str
    """Where it came from: a file path, or 'cloud bundle v42'."""
