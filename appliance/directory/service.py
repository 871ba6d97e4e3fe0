"""The directory subsystem: holds the current directory and announces every change.

Other subsystems read ``directory_service.current`` when they need it and subscribe to
:class:`DirectoryUpdated` to react; nothing is restarted and no binding or call is dropped
when the directory changes.
"""

from __future__ import annotations

import json
import logging
import pathlib

from appliance.config import ApplianceConfig
from appliance.runtime import Health, HealthLevel, Runtime

from .events import DirectoryUpdated
from .model import Directory, DirectoryError, parse_directory

log = logging.getLogger(__name__)

EMPTY = Directory(version=0, site="")


def load_directory_file(path: pathlib.Path) -> Directory:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DirectoryError(str(path), "", "no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DirectoryError(str(path), "", f"cannot read it: {error}") from None
    except json.JSONDecodeError as error:
        raise DirectoryError(str(path), "", f"not valid JSON: {error}") from None
    return parse_directory(data, source=str(path))


class DirectoryService:
    name = "directory"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.current: Directory = EMPTY
        self.source = "none"
        self.problem: str | None = None

    async def __aenter__(self) -> DirectoryService:
        self._load_configured_file(self.runtime.config)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        return None

    async def reconfigure(self, config: ApplianceConfig) -> None:
        self._load_configured_file(config)

    def install(self, directory: Directory, *, source: str) -> None:
        """Make ``directory`` current and tell everyone. Callers have verified it."""
        previous = self.current
        self.current = directory
        self.source = source
        self.problem = None
        self.runtime.directory_version = str(directory.version)
        self.runtime.journal.record(
            "directory", "updated", f"directory version {directory.version} from {source}",
            {"previous_version": previous.version if previous is not EMPTY else None,
             "extensions": len(directory.extensions), "devices": len(directory.devices)})
        self.runtime.bus.publish(DirectoryUpdated(
            directory=directory, source=source,
            previous_version=previous.version if previous is not EMPTY else None))

    def _load_configured_file(self, config: ApplianceConfig) -> None:
        path = config.directory.file
        if path is None:
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
