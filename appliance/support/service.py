"""The 'support' subsystem: builds the support bundle on request (admin) and keeps jbcd's
recent log lines in memory for it (see bundle.py for what goes in and how secrets go out)."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
from typing import TYPE_CHECKING, Any

from appliance.config import ApplianceConfig
from appliance.control.commands import CommandContext, CommandError, Role
from appliance.runtime import Health, HealthLevel, Runtime

from . import bundle

if TYPE_CHECKING:
    from appliance.directory.service import DirectoryService

log = logging.getLogger(__name__)

REPORTS = (("status.json", "status", {}), ("wan.json", "wan.status", {}),
           ("trunks.json", "trunks.list", {}), ("sync.json", "sync.status", {}),
           ("phones.json", "sip.phones", {}), ("readiness.json", "phones.readiness", {}),
           ("calls.json", "gateway.calls", {"recent": 0}))
"""(file, control command, arguments): the same JSON 'jbc ... --json' prints."""


class SupportBundle:
    name = "support"

    def __init__(self, runtime: Runtime, *, directory: DirectoryService) -> None:
        self.runtime = runtime
        self.directory = directory
        self.log_ring = bundle.LogRing()
        self.bundles_made = 0
        logging.getLogger().addHandler(self.log_ring)
        runtime.commands.register("support.bundle", self._cmd_bundle, role=Role.ADMIN,
                                  summary="a tar.gz for the support desk (secrets redacted)")

    async def __aenter__(self) -> SupportBundle:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        logging.getLogger().removeHandler(self.log_ring)

    async def reconfigure(self, config: ApplianceConfig) -> None:
        return None

    def health(self) -> Health:
        return Health(level=HealthLevel.OK, summary=f"{len(self.log_ring.lines)} log lines "
                      f"kept; {self.bundles_made} bundles made")

    async def _cmd_bundle(self, context: CommandContext) -> dict[str, Any]:
        files = await self.collect(context)
        site = self.runtime.config.site_name
        name, data = await asyncio.to_thread(bundle.build_tarball, files, site=site,
                                             secrets=self.known_secrets())
        self.bundles_made += 1
        self.runtime.journal.record("support", "bundle", f"support bundle {name} made "
                                    f"({len(data)} bytes)", {"name": name, "bytes": len(data)},
                                    actor=context.peer.describe())
        return {"name": name, "bytes": len(data), "files": sorted(files),
                "tar_gz_base64": bundle.encode(data)}

    async def collect(self, context: CommandContext) -> dict[str, str]:
        files: dict[str, str] = {}
        errors: dict[str, str] = {}
        for file, command, args in REPORTS:
            result = await self._call(context, command, args, errors)
            if result is not None:
                files[file] = bundle.as_json(result)
        last = await self._call(context, "selftest.last", {}, errors)
        fresh = await self._call(context, "selftest.run", {"call": False}, errors)
        files["selftest.json"] = bundle.as_json({"now": fresh, "previous": last})
        trunks = await self._call(context, "trunks.list", {}, errors) or {"trunks": []}
        files["modems.json"] = bundle.as_json([
            {key: trunk.get(key) for key in ("name", "kind", "model", "firmware", "details")}
            for trunk in trunks["trunks"]])
        files["versions.json"] = bundle.as_json(bundle.versions())
        files.update(self._config_files())
        files["journal.jsonl"] = self._journal()
        files["jbcd.log"] = "\n".join(self.log_ring.lines) + "\n"
        files["unit.txt"] = bundle.unit_facts(self.runtime.notifier)
        if errors:
            files["errors.json"] = bundle.as_json(errors)
        files["README.txt"] = self._readme(files)
        return files

    async def _call(self, context: CommandContext, command: str, args: dict,
                    errors: dict[str, str]) -> Any:
        registered = self.runtime.commands.get(command)
        if registered is None:
            errors[command] = "not offered by this jbcd (subsystem off?)"
            return None
        try:
            return await registered.handler(CommandContext(peer=context.peer, args=args))
        except CommandError as error:
            errors[command] = f"{error.code}: {error.message}"
        except Exception as error:  # one failing part must not cost the whole bundle
            log.exception("support bundle: %s failed", command)
            errors[command] = f"{type(error).__name__}: {error}"
        return None

    def _config_files(self) -> dict[str, str]:
        loaded = self.runtime.loaded_config
        files = {"config.json": bundle.as_json({
            "source": loaded.source, "digest": loaded.short_digest,
            "config": _plain(loaded.config)})}
        if not loaded.source.startswith("<"):
            try:
                files["appliance.toml"] = pathlib.Path(loaded.source).read_text(
                    errors="replace")
            except OSError as error:
                files["appliance.toml"] = f"# could not read {loaded.source}: {error}\n"
        return files

    def _journal(self) -> str:
        since = time.time() - bundle.JOURNAL_DAYS * 86400
        entries = self.runtime.journal.query(since=since, limit=bundle.MAX_JOURNAL_ENTRIES)
        return "".join(bundle.as_json(entry.to_json()).replace("\n", "") + "\n"
                       for entry in entries)

    def _readme(self, files: dict[str, str]) -> str:
        config = self.runtime.config
        return (f"JBC appliance support bundle\nsite: {config.site_name}\nmade: "
                f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n\n"
                "Secrets (SIP passwords and hashes, SIM PINs, tokens, private keys) are "
                "replaced by [REDACTED] or <redacted>; no call content is included.\n\n"
                "files:\n" + "".join(f"  {name}\n" for name in sorted(files)))

    def known_secrets(self) -> list[str]:
        """Every secret value jbcd holds, to scrub from the bundle's text."""
        config = self.runtime.config
        secrets: list[str] = []
        for device in self.directory.current.devices:
            secrets += [s for s in (device.password, device.ha1_md5, device.ha1_sha256) if s]
        secrets += [t.pin for t in config.trunks if t.pin]
        if config.sync.enrollment_token:
            secrets.append(config.sync.enrollment_token)
        state_dir = config.daemon.state_dir
        for path in (state_dir / "storage.key", state_dir / "identity" / "device.pem",
                     state_dir / "identity" / "pending.key"):
            secrets += _file_secrets(path)
        return secrets


def _file_secrets(path: pathlib.Path) -> list[str]:
    """A key file's secret material in every form it could be printed in."""
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    if b"PRIVATE KEY" not in raw:  # a raw key (the storage key): its hex and base64
        import base64

        return [raw.hex(), base64.b64encode(raw).decode()]
    text = raw.decode(errors="replace")
    inside, lines = False, []
    for line in text.splitlines():
        if "BEGIN" in line and "PRIVATE KEY" in line:
            inside = True
            continue
        if "END" in line and "PRIVATE KEY" in line:
            inside = False
            continue
        if inside and line.strip():
            lines.append(line.strip())
    return lines


def _plain(value: Any) -> Any:
    """A config object as plain JSON-able data (dataclasses, paths, mappings)."""
    import dataclasses

    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value
