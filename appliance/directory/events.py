"""Directory changes, announced on the bus so registrar, proxy and gateway pick them up live."""

from __future__ import annotations

import dataclasses

from .model import Directory


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryUpdated:
    directory: Directory
    previous_version: int | None
    source: str
    """Where it came from: a file path, or 'cloud bundle v42'."""
