"""ApplianceConfig: every subsystem's section composed into one object, and loading it."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pathlib
import stat
import tomllib

from appliance.control.config import ControlConfig
from appliance.daemon_config import DaemonConfig
from appliance.directory.config import DirectoryConfig
from appliance.drill.config import DrillConfig
from appliance.gateway.config import GatewayAddressError, GatewayConfig, gateway_addresses
from appliance.metrics.config import MetricsConfig
from appliance.selftest.config import SelftestConfig
from appliance.sip.config import SipConfig
from appliance.sync.config import SyncConfig
from appliance.trunks.config import TrunkConfig
from appliance.update.config import UpdateConfig
from appliance.wan.config import WanConfig

from .schema import ConfigError, build_section, setting

DEFAULT_CONFIG_PATH = pathlib.Path("/etc/jbc/appliance.toml")
EX_CONFIG = 78
"""sysexits.h: configuration error. systemd does not restart a unit that exits with it."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ApplianceConfig:
    site_name: str = setting(
        "site", doc="A short name for this site, shown by 'jbc status' and sent to the cloud."
    )
    daemon: DaemonConfig = setting(
        default_factory=DaemonConfig, doc="Where jbcd keeps its files and how it runs."
    )
    control: ControlConfig = setting(
        default_factory=ControlConfig,
        doc="The local control socket that the 'jbc' CLI talks to, and who may do what.",
    )
    wan: WanConfig = setting(
        default_factory=WanConfig,
        doc="The WAN health monitor: the WAN interface, what to probe, and how fast to decide "
        "that the cloud is unreachable (failover) or back (failback).",
    )
    directory: DirectoryConfig = setting(
        default_factory=DirectoryConfig,
        doc="The site directory (extensions, credentials, ring groups) before the cloud has "
        "delivered one.",
    )
    sip: SipConfig = setting(
        default_factory=SipConfig,
        doc="The local SIP registrar and proxy that serve the site's handsets during an outage.",
    )
    sync: SyncConfig = setting(
        default_factory=SyncConfig,
        doc="Cloud sync: the mutual-TLS link that enrols this appliance, fetches signed config "
        "bundles, uploads outage records and sends the heartbeat.",
    )
    gateway: GatewayConfig = setting(
        default_factory=GatewayConfig,
        doc="The trunk gateway: bridges handsets' outside and emergency calls to the trunks, "
        "and calls arriving on the trunks to the handsets (pjsua2 media user agent).",
    )
    selftest: SelftestConfig = setting(
        default_factory=SelftestConfig,
        doc="'jbc selftest', the commissioning checklist: its thresholds and test call.",
    )
    drill: DrillConfig = setting(
        default_factory=DrillConfig,
        doc="Fire drills ('jbc drill'): the drill number, the maintenance window and whether "
        "scheduled drills force failover (full drills).",
    )
    metrics: MetricsConfig = setting(
        default_factory=MetricsConfig,
        doc="The OpenMetrics endpoint the site's monitoring scrapes (off by default).",
    )
    update: UpdateConfig = setting(
        default_factory=UpdateConfig,
        doc="Updates of the OS image (A/B root slots, RAUC): how a new slot is checked after "
        "its first boot before it is committed.",
    )
    trunks: tuple[TrunkConfig, ...] = setting(
        default=(),
        doc="Outside lines used during an outage: LTE modems and analog voice modems, tried in "
        "the order listed here.",
    )

    def validate(self):
        seen: set[str] = set()
        for index, trunk in enumerate(self.trunks):
            if trunk.name in seen:
                yield (f"trunks[{index}].name",
                       f"{trunk.name!r} is used by two trunks; names must be unique")
            seen.add(trunk.name)
        if self.gateway.enabled:
            try:
                gateway_addresses(self.gateway, self.sip)
            except GatewayAddressError as error:
                yield "gateway.enabled", str(error)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LoadedConfig:
    """A config together with where it came from, for status output and reload decisions."""

    config: ApplianceConfig
    source: str
    digest: str

    @property
    def short_digest(self) -> str:
        return self.digest[:12]


def builtin_defaults() -> LoadedConfig:
    config = ApplianceConfig()
    return LoadedConfig(config=config, source="<built-in defaults>", digest=_digest(b""))


def load_config(path: pathlib.Path | str) -> LoadedConfig:
    """Read and validate one config file. Raises ConfigError with a one-line explanation.

    Hostile input is bounded: only a regular file is read (a FIFO or a device would block or
    never end), at most :data:`MAX_CONFIG_BYTES` of it, nested at most :data:`MAX_DEPTH`
    deep; numbers must be finite and strings free of NUL."""
    path = pathlib.Path(path)
    raw = _read_regular_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(path, "",
                          f"not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "", f"not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(path, "", f"nested deeper than any appliance.toml needs (at most "
                          f"{MAX_DEPTH} levels); is this the right file?") from None
    _check_values(data, file=path, key="", depth=0)
    config = build_section(ApplianceConfig, data, file=path, key="")
    return LoadedConfig(config=config, source=str(path), digest=_digest(raw))


MAX_CONFIG_BYTES = 256 * 1024
"""More than ten times the fully commented example; anything bigger is not an appliance.toml."""
MAX_DEPTH = 8
"""Tables and arrays nested deeper than this (the schema needs 3) are refused."""


def _read_regular_file(path: pathlib.Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file; create it (see appliance.example.toml) "
                          "or point --config / JBC_CONFIG at the right one") from None
    except PermissionError:
        raise ConfigError(path, "",
                          "permission denied; jbcd's user must be able to read it") from None
    except OSError as error:
        raise ConfigError(path, "", f"cannot open it: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(path, "", "is a directory, not a config file")
        raise ConfigError(path, "", f"is a {_file_kind(info.st_mode)}, not a regular file; "
                          "point --config at the appliance.toml file itself")
    if info.st_size > MAX_CONFIG_BYTES:
        os.close(fd)
        raise ConfigError(path, "", f"is {info.st_size} bytes; a config file is at most "
                          f"{MAX_CONFIG_BYTES} bytes (is this the right file?)")
    with os.fdopen(fd, "rb") as file:
        try:
            raw = file.read(MAX_CONFIG_BYTES + 1)
        except OSError as error:
            raise ConfigError(path, "", f"cannot read it: {error.strerror or error}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(path, "", f"is over {MAX_CONFIG_BYTES} bytes; a config file is "
                          "never that big (is this the right file?)")
    return raw


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character "
             "device"), (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _check_values(value: object, *, file: pathlib.Path, key: str, depth: int) -> None:
    """Walk what TOML gave us: bounded depth, finite numbers, no NUL in strings or keys."""
    if depth > MAX_DEPTH:
        raise ConfigError(file, key, f"nested deeper than {MAX_DEPTH} levels; no key of "
                          "appliance.toml needs that")
    if isinstance(value, dict):
        for name, item in value.items():
            if "\0" in name:
                raise ConfigError(file, key, "a key contains a NUL character; remove it")
            _check_values(item, file=file, key=f"{key}.{name}" if key else name,
                          depth=depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_values(item, file=file, key=f"{key}[{index}]", depth=depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(file, key, f"must be a finite number, not {value!r}")
    elif isinstance(value, str) and "\0" in value:
        raise ConfigError(file, key, "contains a NUL character; remove it")


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


__all__ = [
    "DEFAULT_CONFIG_PATH",
    "EX_CONFIG",
    "ApplianceConfig",
    "ConfigError",
    "LoadedConfig",
    "builtin_defaults",
    "load_config",
]
