"""ApplianceConfig: every subsystem's section composed into one object, and loading it."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
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
    """Read and validate one config file. Raises ConfigError with a one-line explanation."""
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file; create it (see appliance.example.toml) "
                          "or point --config / JBC_CONFIG at the right one") from None
    except PermissionError:
        raise ConfigError(path, "",
                          "permission denied; jbcd's user must be able to read it") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "is a directory, not a config file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(path, "",
                          f"not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "", f"not valid TOML: {error}") from None
    config = build_section(ApplianceConfig, data, file=path, key="")
    return LoadedConfig(config=config, source=str(path), digest=_digest(raw))


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
