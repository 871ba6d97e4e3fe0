"""Customer content and how to erase it: one registry every holder of content adds itself to.

Customer content is what the appliance holds about the customer's phone service: the
directory (extensions, credentials), registrations (bindings), call records, recordings.
``jbc data erase --confirm`` and the purge 30 days after the subscription ends call
:meth:`CustomerContent.erase_all`, which runs every registered eraser and reports what each
deleted. Holders register at construction::

    content.register("call_records", store.erase_all)   # a callable returning a count
"""

from __future__ import annotations

import logging
import pathlib
import shutil
from collections.abc import Callable

log = logging.getLogger(__name__)


class CustomerContent:
    def __init__(self) -> None:
        self._erasers: dict[str, Callable[[], int]] = {}

    def register(self, name: str, eraser: Callable[[], int]) -> None:
        if name in self._erasers:
            raise ValueError(f"customer content {name!r} registered twice")
        self._erasers[name] = eraser

    def register_directory(self, name: str, path: pathlib.Path) -> None:
        """Content kept as files under ``path`` (recordings): erase deletes them all."""

        def erase() -> int:
            if not path.exists():
                return 0
            count = sum(1 for p in path.rglob("*") if p.is_file())
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            return count

        self.register(name, erase)

    @property
    def names(self) -> list[str]:
        return list(self._erasers)

    def erase_all(self) -> dict[str, int | str]:
        """Run every eraser; a failing one is reported and does not stop the others."""
        report: dict[str, int | str] = {}
        for name, eraser in self._erasers.items():
            try:
                report[name] = eraser()
            except Exception as error:
                log.exception("erasing %s failed", name)
                report[name] = f"failed: {error}"
        return report
