"""Customer content and how to erase it: one registry every holder of content adds itself to.

Customer content is what the appliance holds about the customer's phone service: the
directory (extensions, credentials), registrations (bindings), call records, recordings, and
the enrolment that ties this appliance to the customer's account. ``jbc data erase
--confirm`` (:mod:`appliance.store.commands`) and the purge 30 days after the subscription
ends call :meth:`CustomerContent.erase_all`, which runs every registered eraser, reports what
each deleted, and then scrubs the database so nothing deleted stays readable on disk
(``secure_delete`` zeroes freed space, the WAL is checkpointed and truncated, VACUUM rewrites
the file without free pages). Holders register at construction::

    content.register("call_records", store.erase_all)   # a callable returning a count

Sealed files are removed by their holders, and the sealing key is replaced, so even blocks of
a removed file that a disk still holds cannot be decrypted.
"""

from __future__ import annotations

import logging
import pathlib
import shutil
from collections.abc import Callable

from appliance.store.database import Database

log = logging.getLogger(__name__)


class CustomerContent:
    def __init__(self, database: Database | None = None) -> None:
        self.database = database
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
        """Run every eraser, then scrub the database; a failing step is reported and does not
        stop the others."""
        report: dict[str, int | str] = {}
        for name, eraser in self._erasers.items():
            try:
                report[name] = eraser()
            except Exception as error:
                log.exception("erasing %s failed", name)
                report[name] = f"failed: {error}"
        if self.database is not None:
            try:
                scrubbed = self.database.scrub()
                report["database_scrubbed"] = 1 if scrubbed.get("checkpoint_complete", True) \
                    else "failed: the WAL could not be fully checkpointed"
            except Exception as error:
                log.exception("scrubbing the database after an erase failed")
                report["database_scrubbed"] = f"failed: {error}"
        return report
