"""The [directory] section: where the site directory comes from before cloud sync has one."""

from __future__ import annotations

import dataclasses
import pathlib

from appliance.config.schema import absolute_path, setting


def _absolute_or_none(value: pathlib.Path | None) -> str | None:
    return None if value is None else absolute_path(value)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryConfig:
    file: pathlib.Path | None = setting(
        None,
        doc="A local directory file (JSON, the same shape as the cloud's config bundles: "
        "extensions, devices and credentials, ring groups, dial plan, emergency, inbound "
        "routes). Used when no cloud bundle has been applied yet; re-read on SIGHUP.",
        check=_absolute_or_none,
        example="/etc/jbc/directory.json",
    )
