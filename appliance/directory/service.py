"""The directory subsystem: holds the current directory and announces every change.

Other subsystems read ``directory_service.current`` when they need it and subscribe to
:class:`DirectoryUpdated` to react; nothing is restarted and no binding or call is dropped
when the directory changes.

Where the directory comes from, in order of preference: the last cloud bundle applied (kept
sealed in the state dir by cloud sync, handed in as an :class:`AppliedDirectorySource`), else
the local file ``[directory] file``. Once a cloud bundle is in force the local file is ignored.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Protocol

from appliance import boundedjson
from appliance.config import ApplianceConfig
from appliance.runtime import Health, HealthLevel, Runtime

from .events import DirectoryUpdated
from .model import Directory, DirectoryError, parse_directory

log = logging.getLogger(__name__)

EMPTY = Directory(version=0, site="")


MAX_DIRECTORY_BYTES = 16 * 1024 * 1024
MAX_DIRECTORY_DEPTH = 10


def load_directory_file(path: pathlib.Path) -> Directory:
    """The local directory file: a regular file, bounded in size and nesting like a bundle."""
    try:
        data = boundedjson.parse_file(path, max_bytes=MAX_DIRECTORY_BYTES,
                                      max_depth=MAX_DIRECTORY_DEPTH, what="it")
    except FileNotFoundError:
        raise DirectoryError(str(path), "", "no such file") from None
    except OSError as error:
        raise DirectoryError(str(path), "", f"cannot read it: {error}") from None
    except boundedjson.JsonRefused as error:
        raise DirectoryError(str(path), "", str(error)) from None
    return parse_directory(data, source=str(path))


class AppliedDirectorySource(Protocol):
    """Persisted directories delivered by the cloud (implemented by cloud sync's store)."""

    def load_applied(self) -> tuple[Directory, str] | None:
        """The last applied directory and a description of it, or None if there is none.
        Problems are reported by the source itself; they must not raise."""
        ...


class DirectoryService:
    name = "directory"

    def __init__(self, runtime: Runtime, applied: AppliedDirectorySource | None = None) -> None:
        self.runtime = runtime
        self.applied = applied
        self.current: Directory = EMPTY
        self.source = "none"
        self.from_cloud = False
        self.problem: str | None = None

    async def __aenter__(self) -> DirectoryService:
        stored = self.applied.load_applied() if self.applied is not None else None
        if stored is not None:
            directory, source = stored
            self.install(directory, source=source, from_cloud=True)
        else:
            self._load_configured_file(self.runtime.config)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        return None

    async def reconfigure(self, config: ApplianceConfig) -> None:
        self._load_configured_file(config)

    def install(self, directory: Directory, *, source: str, from_cloud: bool = False) -> None:
        """Make ``directory`` current and tell everyone. Callers have verified it.

        ``from_cloud`` marks a directory from a cloud bundle; the local file is then ignored
        until the content is erased."""
        previous = self.current
        self.current = directory
        self.source = source
        self.from_cloud = from_cloud
        self.problem = None
        self.runtime.directory_version = str(directory.version)
        self.runtime.journal.record(
            "directory", "updated", f"directory version {directory.version} from {source}",
            {"previous_version": previous.version if previous is not EMPTY else None,
             "extensions": len(directory.extensions), "devices": len(directory.devices)})
        self.runtime.bus.publish(DirectoryUpdated(
            directory=directory, source=source,
            previous_version=previous.version if previous is not EMPTY else None))

    def erase(self) -> int:
        """Forget the directory (customer content erasure); returns 1 if there was one."""
        had = self.current is not EMPTY
        previous = self.current
        self.current = EMPTY
        self.source = "none"
        self.from_cloud = False
        self.runtime.directory_version = None
        if had:
            self.runtime.bus.publish(DirectoryUpdated(
                directory=EMPTY, source="erased", previous_version=previous.version))
        return int(had)

    def _load_configured_file(self, config: ApplianceConfig) -> None:
        path = config.directory.file
        if path is None:
            return
        if self.from_cloud:
            log.info("a cloud bundle is in force; the local directory file %s is ignored", path)
            return
        try:
            directory = load_directory_file(path)
        except DirectoryError as error:
            self.problem = str(error)
            log.error("directory file refused, keeping version %s: %s",
                      self.current.version, error)
            self.runtime.journal.record("directory", "refused", str(error),
                                        {"kept_version": self.current.version})
            return
        if directory == self.current:
            return
        self.install(directory, source=str(path))

    def health(self) -> Health:
        if self.problem:
            return Health(level=HealthLevel.WARNING, summary=self.problem)
        if self.current is EMPTY:
            return Health(level=HealthLevel.WARNING,
                          summary="no directory yet: no handset can register locally")
        d = self.current
        return Health(level=HealthLevel.OK,
                      summary=f"version {d.version} from {self.source}: {len(d.extensions)} "
                      f"extensions, {len(d.devices)} devices",
                      details={"version": d.version, "source": self.source})
