"""The outage bench's site: a real jbcd between a LAN of desk phones and the cloud.

    with SiteLab(workdir, LabSettings(handsets=6)) as lab:   # builds, starts, waits steady
        lab.site.cut("blackhole") ... lab.site.restore("blackhole")

What runs, all of it real protocol code:

* **network** -- as root, :class:`~jbcbench.topology.SiteTestbed`: namespaces for the LAN,
  the appliance (LAN and WAN interfaces, forwarding between them), the WAN router, two cloud
  regions and the internet (anchors), joined by veth pairs; outages are carrier loss on the
  WAN, nftables drops (all, or a random share) on the router, or drops of the cloud's
  addresses only. Without root, the same site on loopback addresses, with the WAN replaced by
  :class:`~jbcbench.wanrelay.WanRelay` and the outage injected there (both in
  :mod:`jbcbench.sitenet`).
* **the cloud** -- per region a SIP edge (UDP/TCP/TLS; the handsets' primary registrar, with
  the site's credentials and digest authentication) and an HTTPS health endpoint, a DNS
  responder, and the mutual-TLS cloud API (:mod:`jbcbench.fake_cloud`) that enrols the
  appliance, serves it the site's signed directory bundle and takes its uploads.
* **the appliance** -- the real jbcd (WAN monitor, directory from the cloud bundle, trunk pool,
  SIP registrar and proxy, gateway, sync) with a config generated for the site.
* **trunks** -- simulated modems on pseudo-terminals with their own sysfs/USB tree (Quectel
  EG25 LTE, a V.253 analog voice modem), or real modems named in a bench config file.
* **desk phones** -- pjsua2 handsets on the LAN (:mod:`jbcbench.handset`), each sending its
  own tone into calls and measuring what it hears, set up for the site's mode
  (``LabSettings.mode``): *backup-registrar* phones have the cloud as primary server and the
  appliance as backup (:mod:`jbcbench.deskphone`); *in-path* phones register to the cloud
  with the appliance as their outbound proxy, and fall back to the cloud directly when the
  appliance does not answer. ``mode = "both"`` runs one group of each on the same
  appliance (jbcd in in-path mode serves backup-registrar phones the same way), extensions
  101.. and 201.., so that one outage shows the two side by side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import secrets
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .daemon import DaemonProcess
from .deskphone import PROFILES, PhoneProfile
from .handset import HandsetProcess
from .sipdaemon import toml_value
from .sitenet import LoopbackSite, NamespaceSite, free_port
from .topology import can_build_namespaces
from .wanlab import CLOUD_DOMAIN, BackgroundLoop

OUTAGE_KINDS = ("carrier", "blackhole", "loss", "cloud")
MODES = ("backup-registrar", "in-path")
MODE_CHOICES = (*MODES, "both")
OUTAGE_TITLES = {"carrier": "carrier loss on the WAN", "blackhole": "silent blackhole",
                 "loss": "heavy packet loss", "cloud": "cloud-only outage"}
FAR_END_HZ = 1000.0
"""The tone the simulated far end of every outside call sends."""
SITE_VERSION = 1


def handset_tone(index: int) -> float:
    """Each handset sends its own tone (400, 500, ... Hz, skipping the far end's 1000 Hz),
    so a listener can tell who it hears."""
    frequency = 400.0 + 100.0 * index
    return frequency + 100.0 if frequency >= FAR_END_HZ else frequency


def site_directory(extensions: Sequence[str], passwords: Mapping[str, str], *,
                   front_desk: Sequence[str] | None = None) -> dict[str, Any]:
    """The site the cloud publishes to the appliance: one desk phone per extension, a front
    desk ring group (``front_desk``, default the first two) that inbound calls from any
    trunk ring, 9 for an outside line."""
    return {
        "schema": 1, "version": SITE_VERSION, "site": "bench",
        "locations": [{"id": "hq", "address": "1 Main St, Springfield, IL 62701",
                       "floor": "1", "room": "Front office"}],
        "extensions": [{"number": n, "name": f"Desk {n}", "location": "hq"}
                       for n in extensions],
        "devices": [{"id": f"desk-{n}", "extension": n, "username": n,
                     "password": passwords[n]} for n in extensions],
        "ring_groups": [{"number": "600", "name": "Front desk", "strategy": "simultaneous",
                         "members": list(front_desk or extensions[:2]), "timeout_s": 40}],
        "dial_plan": {"outside_prefix": "9", "external_patterns": [r"\+?[0-9]{7,15}"]},
        "emergency": {"numbers": ["911", "112"], "default_location": "hq"},
        "inbound": [{"trunk": "*", "target": "600"}],
    }


@dataclasses.dataclass(kw_only=True)
class LabSettings:
    mode: str = "backup-registrar"
    """How the desk phones reach the appliance: 'backup-registrar', 'in-path' or 'both' (a
    group of each, ``handsets`` phones per group)."""
    handsets: int = 6
    profile: str = "tuned"
    """Desk-phone profile (:data:`jbcbench.deskphone.PROFILES`)."""
    expires_s: int | None = None
    """Override the profile's registration expiry (the CI variant's shorter cycle)."""
    cloud_max_expires_s: int = 300
    """Longest registration the cloud's registrar grants (a bench assumption: hosted PBXs cap
    phones' expiry; the phones' own default is 3600 s)."""
    modems: tuple[str, ...] = ("eg25", "usr5637")
    """Simulated trunks: 'eg25', 'sim7600' (LTE), 'usr5637' (analog voice modem)."""
    real_trunks: tuple[Mapping[str, Any], ...] = ()
    """[[trunks]] entries for real modems (from a bench config file); replaces ``modems``."""
    fast_modems: bool = False
    """Compressed modem timings (tests); the demo uses the simulators' realistic ones."""
    loss_percent: float = 90.0
    """Share of packets dropped, each way, in a heavy-loss outage."""
    wan: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """[wan] overrides (e.g. a shorter hold_down_s)."""
    sip: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """[sip] overrides."""
    namespaces: bool | None = None
    """None: namespaces when root, loopback otherwise."""
    gateway: bool = True
    """Configure the trunk gateway (outside calls)."""
    fast_fail: bool = False
    """sip.fast_fail: during an outage the appliance (the site's router) refuses the phones'
    packets to the cloud's SIP addresses at once (namespaces only)."""
    phone_transport: str = "udp"
    """How the desk phones carry SIP, to the cloud and to the appliance: 'udp' or 'tcp'
    (namespaces only: the loopback WAN stand-in relays the cloud's SIP over UDP)."""
    sync: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """[sync] overrides (a key set to None is left out, e.g. the enrolment token)."""
    sections: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    """More config sections for jbcd (e.g. selftest, drill, metrics)."""
    backup_uplink: bool = False
    """Namespaces only: give the appliance an LTE-like data uplink (lte0, via a NATting
    backup router) and name it sync.backup_interface."""
    daemon_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Environment for jbcd (e.g. a notify socket and WATCHDOG_USEC, as systemd gives it)."""

    @property
    def phone_profile(self) -> PhoneProfile:
        profile = PROFILES[self.profile]
        if self.expires_s is not None:
            profile = dataclasses.replace(profile, expires_s=self.expires_s)
        return profile

    @property
    def groups(self) -> dict[str, list[str]]:
        """Each phone mode in this lab and its extensions (101.. then 201..)."""
        modes = MODES if self.mode == "both" else (self.mode,)
        return {mode: [str(100 * (index + 1) + 1 + i) for i in range(self.handsets)]
                for index, mode in enumerate(modes)}

    @property
    def extensions(self) -> list[str]:
        return [ext for group in self.groups.values() for ext in group]

    def mode_of(self, extension: str) -> str:
        return next(mode for mode, group in self.groups.items() if extension in group)

    @property
    def appliance_mode(self) -> str:
        """jbcd's sip.mode: in-path when any phone is in-path (it serves the others too)."""
        return "in-path" if "in-path" in self.groups else "backup-registrar"

    @property
    def front_desk(self) -> list[str]:
        """The ring group inbound calls ring: two phones, one of each group in 'both'."""
        groups = list(self.groups.values())
        if len(groups) == 1:
            return groups[0][:2]
        return [group[0] for group in groups]

    @property
    def appliance_outage_expires_s(self) -> int:
        """The expiry the appliance grants during an outage: its outage_max_expires_s, or
        less when the phones ask for less."""
        return min(int(self.sip.get("outage_max_expires_s", 120)),
                   self.phone_profile.expires_s)

    @property
    def cloud_granted_s(self) -> int:
        return min(self.cloud_max_expires_s, self.phone_profile.expires_s)


# ---------------------------------------------------------------------------------------------
# Trunks: simulated modems (or real ones, named in the bench config)


class SimulatedTrunks:
    """The simulated modems, each with its own USB/sysfs tree, served from ``loop``; their
    [[trunks]] entries point jbcd's trunk pool at them by USB identity, as on real hardware."""

    def __init__(self, workdir: pathlib.Path, kinds: Sequence[str], loop: BackgroundLoop,
                 *, fast: bool) -> None:
        self.workdir = workdir
        self.kinds = tuple(kinds)
        self.loop = loop
        self.fast = fast
        self.sims: dict[str, Any] = {}
        self.entries: list[dict[str, Any]] = []
        self._stack = contextlib.AsyncExitStack()
        loop.run(self._start())

    async def _start(self) -> None:
        from .modems.lte import QUECTEL_EG25, SIMCOM_SIM7600, LteModemSim
        from .modems.timing import SimTiming
        from .modems.usb import UsbBus
        from .modems.v253 import USR_5637, V253ModemSim

        timing = SimTiming.fast(boot_s=1.0) if self.fast else SimTiming()
        for index, kind in enumerate(self.kinds):
            bus = UsbBus(self.workdir / f"usb{index}")
            if kind in ("eg25", "sim7600"):
                profile = QUECTEL_EG25 if kind == "eg25" else SIMCOM_SIM7600
                sim = LteModemSim(bus, profile=profile, timing=timing, seed=11 + index)
                trunk_kind = "lte"
            elif kind == "usr5637":
                sim = V253ModemSim(bus, profile=USR_5637, timing=timing, seed=11 + index)
                trunk_kind = "voice-modem"
            else:
                raise ValueError(f"unknown simulated modem {kind!r}; use eg25, sim7600 or "
                                 "usr5637")
            await self._stack.enter_async_context(sim)
            name = f"{'lte' if trunk_kind == 'lte' else 'pots'}-{kind}"
            self.sims[name] = sim
            self.entries.append({"name": name, "kind": trunk_kind, "usb_id": sim.usb_id,
                                 "usb_serial": sim.identity.serial,
                                 "sysfs_root": str(bus.sysfs), "dev_root": str(bus.dev)})

    def trunk_kind(self, name: str) -> str:
        return next(entry["kind"] for entry in self.entries if entry["name"] == name)

    def far_end(self, name: str) -> Any:
        """Give ``name``'s next call (out or in) a far end that answers at the first ring
        and sends a tone; returns its :class:`~jbcbench.modems.farend.AudioFarEnd`, which
        records what it hears."""
        from .modems.farend import AudioFarEnd, FarEnd

        def install() -> AudioFarEnd:
            audio = AudioFarEnd.tone_source(FAR_END_HZ, 8000)
            self.sims[name].far_end = FarEnd(answer_after_rings=1, audio=audio)
            return audio

        return self.loop.run(_in_loop(install))

    def ring_in(self, name: str, number: str) -> None:
        """A call from ``number`` arrives on ``name`` (its far end: :meth:`far_end`)."""
        sim = self.sims[name]
        if self.trunk_kind(name) == "voice-modem":  # caller ID on analog lines has no '+'
            number = number.lstrip("+")
        self.loop.run(_in_loop(lambda: sim.ring_in(number, far=sim.far_end)))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self._stack.aclose(), timeout_s=10)


async def _in_loop(function: Callable[[], Any]) -> Any:
    """Run ``function`` on the loop (simulators are only touched from their loop)."""
    return function()


# ---------------------------------------------------------------------------------------------
# The lab


class SiteLab:
    def __init__(self, workdir: pathlib.Path, settings: LabSettings, *,
                 on_event: Callable[[str, dict], None] | None = None) -> None:
        self.workdir = pathlib.Path(workdir)
        self.settings = settings
        self.on_event = on_event or (lambda who, event: None)
        """Called with (handset extension, event) for every handset event (reader threads)."""
        self.passwords = {n: "pw-" + secrets.token_hex(6) for n in settings.extensions}
        self.directory = site_directory(settings.extensions, self.passwords,
                                        front_desk=settings.front_desk)
        self.site: NamespaceSite | LoopbackSite | None = None
        self.trunks: SimulatedTrunks | None = None
        self.daemon: DaemonProcess | None = None
        self.handsets: dict[str, HandsetProcess] = {}
        self.cloud_loop: BackgroundLoop | None = None
        self.modem_loop: BackgroundLoop | None = None
        self.gateway_port = 0

    @staticmethod
    def choose_mode(settings: LabSettings) -> tuple[bool, str]:
        """(use namespaces?, why not when not)."""
        possible, why = can_build_namespaces()
        if settings.namespaces is None:
            return possible, f"not root: {why}" if why.startswith("needs root") else why
        if settings.namespaces and not possible:
            raise RuntimeError(f"network namespaces asked for, but: {why}")
        return settings.namespaces, "asked for with --loopback"

    # -- lifecycle --

    def start(self, *, progress: Callable[[str], None] = lambda text: None) -> SiteLab:
        try:
            self._start(progress)
        except BaseException:
            self.close()
            raise
        return self

    def _start(self, progress: Callable[[str], None]) -> None:
        self.build(progress)
        self.start_appliance(progress)
        self.wait_appliance_ready(progress)
        self.start_phones(progress)

    def build(self, progress: Callable[[str], None]) -> None:
        """The site around the appliance: network, cloud, modems (no jbcd yet)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        namespaces, _ = self.choose_mode(self.settings)
        if self.settings.phone_transport != "udp" and not namespaces:
            raise RuntimeError("phones on TCP need network namespaces (root): the loopback "
                               "WAN stand-in relays the cloud's SIP over UDP only")
        self.cloud_loop = BackgroundLoop()
        site_class = NamespaceSite if namespaces else LoopbackSite
        progress("building the site network and the cloud "
                 f"({'network namespaces' if namespaces else 'loopback addresses'})")
        self.site = site_class(self.workdir, self.settings, self.cloud_loop, self.passwords)
        self.site.cloud_api.publish(self.directory)
        self.token = self.site.cloud_api.new_token()
        trunk_entries: list[dict[str, Any]] = [dict(t) for t in self.settings.real_trunks]
        if not trunk_entries and self.settings.modems:
            progress(f"plugging in the simulated modems ({', '.join(self.settings.modems)})")
            self.modem_loop = BackgroundLoop()
            self.trunks = SimulatedTrunks(self.workdir / "modems", self.settings.modems,
                                          self.modem_loop, fast=self.settings.fast_modems)
            trunk_entries = self.trunks.entries
        self.trunk_entries = trunk_entries
        self.gateway = self.settings.gateway and bool(trunk_entries)
        self.gateway_port = free_port()

    def start_appliance(self, progress: Callable[[str], None], config: str | None = None, *,
                        fresh: bool = False) -> None:
        """Start jbcd on ``config`` (default: the bench's), or with ``fresh`` on its built-in
        defaults, as a freshly installed appliance runs."""
        (self.workdir / "jbcd").mkdir(exist_ok=True)
        text = None if fresh else self.config_toml() if config is None else config
        self.daemon = self.site.daemon(self.workdir / "jbcd", text)
        self.daemon.env.update(self.settings.daemon_env)
        progress("starting jbcd (the real daemon) in the appliance")
        self.daemon.start()

    def wait_appliance_ready(self, progress: Callable[[str], None], *,
                             trunks: bool = True) -> None:
        trunk_entries = self.trunk_entries if trunks else []
        progress("waiting for jbcd: WAN online, enrolled with the cloud, site directory "
                 "applied, trunks ready")
        self.wait_for(lambda: self.daemon.call("wan.status")["state"] == "online", 30,
                      "the WAN monitor's first 'online' verdict")
        self.wait_for(lambda: self.daemon.call("sync.status").get("directory_version")
                      == SITE_VERSION, 30, "the site directory from the cloud bundle")
        if trunk_entries:
            self.wait_for(self._trunks_ready, 60, "every trunk ready")

    def start_phones(self, progress: Callable[[str], None]) -> None:
        progress(f"starting {self.settings.handsets} desk phones "
                 f"({self.settings.profile} profile) on the LAN")
        for index, extension in enumerate(self.settings.extensions):
            self.handsets[extension] = self._start_handset(index, extension)
        count = len(self.settings.extensions)
        self.wait_for(lambda: len(self.cloud_registered()) == count,
                      30 + 2 * count, "every desk phone registered to the cloud")
        in_path = self.settings.groups.get("in-path", [])
        if in_path:
            self.wait_for(lambda: self.mirrored() >= set(in_path), 30,
                          "the appliance mirroring every in-path phone's registration")

    def config_toml(self) -> str:
        settings = self.settings
        sip: dict[str, Any] = {
            "enabled": True, "listen_address": self.site.appliance_lan,
            "udp_port": self.site.sip_port, "tcp_port": self.site.sip_port,
            "transports": ["udp", "tcp"], "min_expires_s": 10}
        if settings.appliance_mode == "in-path":
            # The phones' credentials are the cloud's: the same realm, so a phone answers
            # the appliance's challenges during an outage with what it already has.
            sip.update({"mode": "in-path", "realm": CLOUD_DOMAIN,
                        "cloud_ca_file": str(self.site.ca_file)})
        if settings.fast_fail:
            sip.update({"fast_fail": True,
                        "fast_fail_targets": self.site.fast_fail_targets()})
        sip.update(settings.sip)
        if self.gateway:
            sip["gateway_uri"] = f"sip:127.0.0.1:{self.gateway_port}"
        sync = {"cloud_url": self.site.cloud_url, "server_name": self.site.keys.server_name,
                "ca_file": str(self.site.keys.ca_file),
                "signing_public_key": self.site.keys.signing_public_key_b64,
                "enrollment_token": self.token, "poll_interval_s": 10.0,
                "heartbeat_interval_s": 5.0, "request_timeout_s": 5.0, "retry_min_s": 0.5,
                "retry_max_s": 5.0}
        if settings.backup_uplink and self.site.backup_uplink:
            sync.update(self.site.backup_uplink)
        sync.update(settings.sync)
        sync = {key: value for key, value in sync.items() if value is not None}
        parts = ['site_name = "bench"', self.site.wan_toml(settings.wan).rstrip(),
                 _section("sip", sip), _section("sync", sync)]
        if settings.appliance_mode == "in-path":
            for edge in self.site.cloud_edges():
                parts.append(_section("[sip.cloud_edges]", edge))
        parts += [_section(name, values) for name, values in settings.sections.items()]
        if self.gateway:
            parts.append(_section("gateway", {"enabled": True,
                                              "media_address": self.site.appliance_lan}))
        for entry in self.trunk_entries:
            parts.append(_section("[trunks]", entry))
        return "\n\n".join(parts) + "\n"

    def _start_handset(self, index: int, extension: str) -> HandsetProcess:
        profile = self.settings.phone_profile
        appliance = f"{self.site.appliance_lan}:{self.site.sip_port}"
        if self.settings.mode_of(extension) == "in-path":
            # outbound proxy = the appliance; the cloud its registrar and fallback
            route = {"via": appliance, "domain": CLOUD_DOMAIN}
        else:
            route = {"backup": appliance}
        return HandsetProcess(
            user=extension, password=self.passwords[extension], server=self.site.primary,
            bind=self.site.handset_bind(index), profile=profile.name,
            expires=profile.expires_s,
            tone_hz=handset_tone(index), listen=True, transport=self.settings.phone_transport,
            exec_prefix=self.site.handset_prefix(),
            on_event=lambda event, who=extension: self.on_event(who, event), **route)

    def _trunks_ready(self) -> bool:
        trunks = self.daemon.call("trunks.list")["trunks"]
        return len(trunks) == len(self.trunk_entries) and all(
            t["state"] == "ready" for t in trunks)

    def close(self) -> None:
        for handset in self.handsets.values():
            with contextlib.suppress(Exception):
                handset.close()
        self.handsets.clear()
        if self.daemon is not None:
            with contextlib.suppress(Exception):
                self.daemon.stop()
        if self.trunks is not None:
            self.trunks.close()
        if self.site is not None:
            self.site.close()
        for loop in (self.modem_loop, self.cloud_loop):
            if loop is not None:
                loop.close()

    def __enter__(self) -> SiteLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observing --

    @property
    def mode(self) -> str:
        return self.site.mode

    def cloud_registered(self) -> dict[str, Any]:
        """Handsets registered at the cloud right now (any region), by extension."""
        found: dict[str, Any] = {}
        for edge in self.site.edges.values():
            found.update(edge.sip.registered())
        return found

    def cloud_registered_since(self, since: float) -> dict[str, float]:
        """Extensions the cloud accepted a REGISTER from at or after ``since``: the time of
        the first such REGISTER, by extension."""
        found: dict[str, float] = {}
        for edge in self.site.edges.values():
            for user in self.settings.extensions:
                first = edge.sip.first_since(user, since)
                if first is not None and (user not in found or first < found[user]):
                    found[user] = first
        return found

    def locally_registered(self) -> set[str]:
        """Phones registered at the appliance itself (not mirrored from the cloud)."""
        return {phone["aor"] for phone in self.daemon.call("sip.phones")["phones"]
                if phone.get("origin", "local") == "local"}

    def mirrored(self) -> set[str]:
        """In-path phones whose cloud registration the appliance holds a mirror of."""
        return {phone["aor"] for phone in self.daemon.call("sip.phones")["phones"]
                if phone.get("origin") == "cloud"}

    def bound_at_appliance(self) -> set[str]:
        """Phones the appliance can reach right now, mirrored or registered there."""
        return {phone["aor"] for phone in self.daemon.call("sip.phones")["phones"]}

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str,
                 poll_s: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = predicate()
            except (OSError, ConnectionError):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s:g} s")
            time.sleep(poll_s)

    def keep(self, destination: pathlib.Path) -> None:
        """Copy what a post-mortem needs (jbcd's config and log) next to the run's output."""
        destination.mkdir(parents=True, exist_ok=True)
        if self.daemon is not None:
            for path in (self.daemon.config_path, self.daemon.log_path):
                if path.exists():
                    shutil.copy(path, destination / path.name)
        site = {**self.directory, "devices": [
            {k: v for k, v in device.items() if k != "password"}
            for device in self.directory["devices"]]}
        (destination / "site.json").write_text(json.dumps(site, indent=2))


def _section(name: str, values: Mapping[str, Any]) -> str:
    lines = [f"[{name}]"]
    lines += [f"{key} = {toml_value(str(value) if isinstance(value, pathlib.Path) else value)}"
              for key, value in values.items()]
    return "\n".join(lines)
