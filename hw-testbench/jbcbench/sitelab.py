"""The outage bench's site: a real jbcd between a LAN of desk phones and the cloud.

    with SiteLab(workdir, LabSettings(handsets=6)) as lab:   # builds, starts, waits steady
        lab.cut("blackhole") ... lab.restore()

What runs, all of it real protocol code:

* **network** -- as root, :class:`~jbcbench.topology.SiteTestbed`: namespaces for the LAN,
  the appliance (LAN and WAN interfaces, forwarding between them), the WAN router, two cloud
  regions and the internet (anchors), joined by veth pairs; outages are carrier loss on the
  WAN, nftables drops (all, or a random share) on the router, or drops of the cloud's
  addresses only. Without root, the same site on loopback addresses, with the WAN replaced by
  :class:`~jbcbench.wanrelay.WanRelay` and the outage injected there (:class:`LoopbackSite`).
* **the cloud** -- per region a SIP edge (UDP/TCP/TLS; the handsets' primary registrar, with
  the site's credentials and digest authentication) and an HTTPS health endpoint, a DNS
  responder, and the mutual-TLS cloud API (:mod:`jbcbench.fake_cloud`) that enrols the
  appliance, serves it the site's signed directory bundle and takes its uploads.
* **the appliance** -- the real jbcd (WAN monitor, directory from the cloud bundle, trunk pool,
  SIP registrar and proxy, gateway, sync) with a config generated for the site.
* **trunks** -- simulated modems on pseudo-terminals with their own sysfs/USB tree (Quectel
  EG25 LTE, a V.253 analog voice modem), or real modems named in a bench config file.
* **desk phones** -- pjsua2 handsets on the LAN (:mod:`jbcbench.handset`), the cloud as
  primary server and the appliance as backup (:mod:`jbcbench.deskphone`), each sending its
  own tone into calls and measuring what it hears.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .cloud_edge import DnsResponder, HttpsHealth, RegionEdge, SipEdge, TestCA, loopback_socket
from .daemon import DaemonProcess
from .deskphone import PROFILES, PhoneProfile
from .fake_cloud import CloudKeys, FakeCloud
from .handset import HandsetProcess
from .sipdaemon import toml_value
from .topology import SiteTestbed, can_build_namespaces
from .wanlab import CLOUD_DOMAIN, BackgroundLoop, NamespacedDaemon, wan_config_toml
from .wanrelay import WanRelay

OUTAGE_KINDS = ("carrier", "blackhole", "loss", "cloud")
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


def site_directory(extensions: Sequence[str], passwords: Mapping[str, str]) -> dict[str, Any]:
    """The site the cloud publishes to the appliance: one desk phone per extension, a front
    desk ring group that inbound calls from any trunk ring, 9 for an outside line."""
    return {
        "schema": 1, "version": SITE_VERSION, "site": "bench",
        "locations": [{"id": "hq", "address": "1 Main St, Springfield, IL 62701",
                       "floor": "1", "room": "Front office"}],
        "extensions": [{"number": n, "name": f"Desk {n}", "location": "hq"}
                       for n in extensions],
        "devices": [{"id": f"desk-{n}", "extension": n, "username": n,
                     "password": passwords[n]} for n in extensions],
        "ring_groups": [{"number": "600", "name": "Front desk", "strategy": "simultaneous",
                         "members": list(extensions[:2]), "timeout_s": 40}],
        "dial_plan": {"outside_prefix": "9", "external_patterns": [r"\+?[0-9]{7,15}"]},
        "emergency": {"numbers": ["911", "112"], "default_location": "hq"},
        "inbound": [{"trunk": "*", "target": "600"}],
    }


@dataclasses.dataclass(kw_only=True)
class LabSettings:
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

    @property
    def phone_profile(self) -> PhoneProfile:
        profile = PROFILES[self.profile]
        if self.expires_s is not None:
            profile = dataclasses.replace(profile, expires_s=self.expires_s)
        return profile

    @property
    def extensions(self) -> list[str]:
        return [str(101 + i) for i in range(self.handsets)]

    @property
    def appliance_outage_expires_s(self) -> int:
        """The expiry the appliance grants during an outage: its outage_max_expires_s, or
        less when the phones ask for less."""
        return min(int(self.sip.get("outage_max_expires_s", 120)),
                   self.phone_profile.expires_s)

    @property
    def cloud_granted_s(self) -> int:
        return min(self.cloud_max_expires_s, self.phone_profile.expires_s)


def free_port(kind: int = socket.SOCK_DGRAM, address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The two ways to build the site's network and the cloud around it


class NamespaceSite:
    """As root: the site in network namespaces; outages made by the kernel and nftables."""

    mode = "namespaces"

    def __init__(self, workdir: pathlib.Path, settings: LabSettings, loop: BackgroundLoop,
                 credentials: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.settings = settings
        self.loop = loop
        self.bed = SiteTestbed()
        self.edges: dict[str, RegionEdge] = {}
        self.appliance_lan = self.bed.APPLIANCE_LAN
        self.sip_port = 5060
        self.loop.run(self._start_cloud(credentials))
        self.keys = CloudKeys(workdir / "cloud-api", server_ips=(self.bed.API_ADDRESS,))
        api_ns = self.bed.api.ns
        self.cloud_api = api_ns.call_inside(
            lambda: FakeCloud(self.keys, host=self.bed.API_ADDRESS, port=443))
        self.cloud_api.__enter__()

    async def _start_cloud(self, credentials: Mapping[str, str]) -> None:
        self.ca = TestCA()
        certs = self.workdir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.ca.write_ca(self.workdir / "cloud-ca.pem")
        for name, site in self.bed.regions.items():
            def make_socket(address: str, port: int, kind: int, ns=site.ns) -> socket.socket:
                return ns.bound_socket(address, port, kind)

            edge = SipEdge(name=name, credentials=credentials, realm=CLOUD_DOMAIN,
                           max_expires_s=self.settings.cloud_max_expires_s)
            self.edges[name] = await RegionEdge.start(
                name, site.address, f"sip.{name}.{CLOUD_DOMAIN}", ca=self.ca,
                certs_dir=certs, make_socket=make_socket, sip_edge=edge)
        zone = {f"sip.{name}.{CLOUD_DOMAIN}": [site.address]
                for name, site in self.bed.regions.items()}
        self.dns = DnsResponder(zone)
        resolver = self.bed.resolver
        await self.dns.serve(resolver.ns.bound_socket(resolver.address, 53, socket.SOCK_DGRAM))

    @property
    def primary(self) -> str:
        """The handsets' primary server: the first region's SIP edge."""
        first = next(iter(self.bed.regions.values()))
        return f"{first.address}:5060"

    @property
    def cloud_url(self) -> str:
        return f"https://{self.bed.API_ADDRESS}:443"

    def handset_bind(self, index: int) -> str:
        return self.bed.handset_address(index)

    def handset_prefix(self) -> list[str]:
        return self.bed.lan.exec_prefix()

    def wan_toml(self, overrides: Mapping[str, Any]) -> str:
        return wan_config_toml(self.bed, ca_file=self.ca_file, overrides=overrides)

    def daemon(self, workdir: pathlib.Path, config: str) -> DaemonProcess:
        return NamespacedDaemon(self.bed.appliance, workdir, config)

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "appliance_lan": self.appliance_lan,
                "appliance_wan": self.bed.APPLIANCE_WAN, "lan": f"{self.bed.LAN_NET}.0/24",
                "cloud": {name: site.address for name, site in self.bed.regions.items()},
                "cloud_api": self.bed.API_ADDRESS,
                "anchors": [anchor.address for anchor in self.bed.anchors],
                "namespaces": {role: ns.name for role, ns in self.bed.namespaces.items()}}

    def cut(self, kind: str) -> str:
        """Start an outage; returns what was done, in words."""
        if kind == "carrier":
            self.bed.carrier_down()
            return "WAN cable pulled (router side of wan0 down: the appliance loses carrier)"
        if kind == "blackhole":
            self.bed.impair.drop_all()
            return "WAN router drops everything to and from the site (link stays up)"
        if kind == "loss":
            self.bed.impair.random_loss(self.settings.loss_percent)
            return (f"WAN router drops {self.settings.loss_percent:g} % of packets, each way, "
                    "at random")
        if kind == "cloud":
            for address in self.bed.cloud_addresses():
                self.bed.impair.drop_address(address, name=f"cloud {address}")
            return ("WAN router drops the cloud's addresses (SIP edges, API); the internet "
                    "anchors still answer")
        raise ValueError(f"unknown outage kind {kind!r}")

    def restore(self, kind: str) -> str:
        if kind == "carrier":
            self.bed.carrier_up()
            return "WAN cable plugged back in"
        self.bed.impair.clear()
        return "WAN router forwards everything again"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cloud_api.__exit__(None, None, None)
        with contextlib.suppress(Exception):
            self.loop.run(self._stop_cloud(), timeout_s=5)
        self.bed.close()

    async def _stop_cloud(self) -> None:
        for edge in self.edges.values():
            await edge.close()
        await self.dns.close()


class LoopbackSite:
    """Without root: the same site on loopback addresses. Everything that would cross the
    WAN goes through a :class:`WanRelay` (the WAN stand-in), where outages are injected."""

    mode = "loopback"
    APPLIANCE = "127.0.50.1"
    RELAY = "127.0.64.1"
    REGIONS = {"east": "127.0.65.10", "west": "127.0.65.11"}
    RESOLVER = "127.0.65.53"
    API = "127.0.65.20"
    ANCHORS = ("127.0.70.11", "127.0.70.12")

    def __init__(self, workdir: pathlib.Path, settings: LabSettings, loop: BackgroundLoop,
                 credentials: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.settings = settings
        self.loop = loop
        self.edges: dict[str, RegionEdge] = {}
        self.anchors: list[HttpsHealth] = []
        self.appliance_lan = self.APPLIANCE
        self.sip_port = free_port(address=self.APPLIANCE)
        self.relay = WanRelay(address=self.RELAY)
        self.keys = CloudKeys(workdir / "cloud-api", server_ips=(self.API, self.RELAY))
        self.cloud_api = FakeCloud(self.keys, host=self.API, port=0)
        self.cloud_api.__enter__()
        self.loop.run(self._start(credentials))

    async def _start(self, credentials: Mapping[str, str]) -> None:
        self.ca = TestCA()
        certs = self.workdir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.ca.write_ca(self.workdir / "cloud-ca.pem")
        relay = self.relay
        self.targets: list[dict[str, Any]] = []
        for name, address in self.REGIONS.items():
            edge = SipEdge(name=name, credentials=credentials, realm=CLOUD_DOMAIN,
                           max_expires_s=self.settings.cloud_max_expires_s)
            server_name = f"sip.{name}.{CLOUD_DOMAIN}"
            self.edges[name] = await RegionEdge.start(
                name, address, server_name, ca=self.ca, certs_dir=certs,
                make_socket=lambda a, p, k: loopback_socket(k, a), sip_port=0, sips_port=0,
                https_port=0, sip_edge=edge)
            ports = self.edges[name].ports
            sip = await relay.add(f"{name}-sip", "cloud", socket.SOCK_DGRAM,
                                  (address, ports["sip-udp"]))
            https = await relay.add(f"{name}-https", "cloud", socket.SOCK_STREAM,
                                    (address, ports["https"]))
            self.targets += [
                {"name": f"{name}-sip", "role": "cloud", "region": name, "kind": "sip-options",
                 "address": sip.listen[0], "port": sip.listen[1], "server_name": server_name},
                {"name": f"{name}-https", "role": "cloud", "region": name, "kind": "https",
                 "address": https.listen[0], "port": https.listen[1],
                 "server_name": server_name}]
            if name == next(iter(self.REGIONS)):
                self.primary = f"{sip.listen[0]}:{sip.listen[1]}"
        for index, address in enumerate(self.ANCHORS):
            anchor = HttpsHealth()
            server_name = f"anchor{index + 1}.internet.test"
            context = self.ca.server_context([server_name], [address], directory=certs)
            sock = loopback_socket(socket.SOCK_STREAM, address)
            await anchor.serve(sock, context)
            self.anchors.append(anchor)
            path = await relay.add(f"anchor{index + 1}", "internet", socket.SOCK_STREAM,
                                   (address, sock.getsockname()[1]))
            self.targets.append({"name": f"anchor{index + 1}", "role": "anchor", "kind": "tls",
                                 "address": path.listen[0], "port": path.listen[1],
                                 "server_name": server_name})
        zone = {f"sip.{name}.{CLOUD_DOMAIN}": [address]
                for name, address in self.REGIONS.items()}
        self.dns = DnsResponder(zone)
        dns_sock = loopback_socket(socket.SOCK_DGRAM, self.RESOLVER)
        await self.dns.serve(dns_sock)
        self.dns_path = await relay.add("dns", "cloud", socket.SOCK_DGRAM,
                                        (self.RESOLVER, dns_sock.getsockname()[1]))
        self.api_path = await relay.add("api", "cloud", socket.SOCK_STREAM,
                                        (self.API, self.cloud_api.port))

    @property
    def cloud_url(self) -> str:
        return f"https://{self.api_path.listen[0]}:{self.api_path.listen[1]}"

    def handset_bind(self, index: int) -> str:
        return f"127.0.50.{11 + index}"

    def handset_prefix(self) -> list[str]:
        return []

    def wan_toml(self, overrides: Mapping[str, Any]) -> str:
        settings: dict[str, Any] = {
            "interface": "lo", "require_default_route": False,
            "resolvers": [self.dns_path.listen[0]], "dns_port": self.dns_path.listen[1],
            "ca_file": str(self.ca_file), **overrides}
        lines = ["[wan]"] + [f"{key} = {toml_value(value)}" for key, value in settings.items()]
        for target in self.targets:
            lines.append("[[wan.targets]]")
            lines += [f"{key} = {toml_value(value)}" for key, value in target.items()]
        return "\n".join(lines) + "\n"

    def daemon(self, workdir: pathlib.Path, config: str) -> DaemonProcess:
        return DaemonProcess(workdir, config)

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "appliance_lan": self.appliance_lan,
                "wan_stand_in": self.RELAY, "cloud": dict(self.REGIONS),
                "cloud_api": self.API, "anchors": list(self.ANCHORS),
                "note": "no root: loopback addresses; the WAN is a userspace relay and "
                        "outages are injected there"}

    def cut(self, kind: str) -> str:
        if kind == "carrier":
            self._fault("blackhole")
            return ("carrier loss needs root (netlink sees no link here): the WAN stand-in "
                    "drops everything instead")
        if kind == "blackhole":
            self._fault("blackhole")
            return "the WAN stand-in drops everything (datagrams lost, streams stall)"
        if kind == "loss":
            self._fault("loss", self.settings.loss_percent)
            return (f"the WAN stand-in drops {self.settings.loss_percent:g} % of datagrams each "
                    "way (and stalls new connections as often as a handshake would be lost)")
        if kind == "cloud":
            self._fault("cloud")
            return "the WAN stand-in drops all cloud traffic; the internet anchors still answer"
        raise ValueError(f"unknown outage kind {kind!r}")

    def restore(self, kind: str) -> str:
        self._fault(None)
        return "the WAN stand-in forwards everything again"

    def _fault(self, fault: str | None, loss: float = 0.0) -> None:
        self.loop.loop.call_soon_threadsafe(self.relay.set_fault, fault, loss)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cloud_api.__exit__(None, None, None)
        with contextlib.suppress(Exception):
            self.loop.run(self._stop(), timeout_s=5)

    async def _stop(self) -> None:
        await self.relay.close()
        for edge in self.edges.values():
            await edge.close()
        for anchor in self.anchors:
            await anchor.close()
        await self.dns.close()


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
        self.directory = site_directory(settings.extensions, self.passwords)
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
        self.workdir.mkdir(parents=True, exist_ok=True)
        namespaces, self.mode_reason = self.choose_mode(self.settings)
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
        (self.workdir / "jbcd").mkdir(exist_ok=True)
        self.daemon = self.site.daemon(self.workdir / "jbcd", self.config_toml())
        progress("starting jbcd (the real daemon) in the appliance")
        self.daemon.start()
        progress("waiting for jbcd: WAN online, enrolled with the cloud, site directory "
                 "applied, trunks ready")
        self.wait_for(lambda: self.daemon.call("wan.status")["state"] == "online", 30,
                      "the WAN monitor's first 'online' verdict")
        self.wait_for(lambda: self.daemon.call("sync.status").get("directory_version")
                      == SITE_VERSION, 30, "the site directory from the cloud bundle")
        if trunk_entries:
            self.wait_for(self._trunks_ready, 60, "every trunk ready")
        progress(f"starting {self.settings.handsets} desk phones "
                 f"({self.settings.profile} profile) on the LAN")
        for index, extension in enumerate(self.settings.extensions):
            self.handsets[extension] = self._start_handset(index, extension)
        self.wait_for(lambda: len(self.cloud_registered()) == self.settings.handsets,
                      30 + 2 * self.settings.handsets, "every desk phone registered to the cloud")

    def config_toml(self) -> str:
        settings = self.settings
        sip: dict[str, Any] = {
            "enabled": True, "listen_address": self.site.appliance_lan,
            "udp_port": self.site.sip_port, "tcp_port": self.site.sip_port,
            "transports": ["udp", "tcp"], "min_expires_s": 10, **settings.sip}
        if self.gateway:
            sip["gateway_uri"] = f"sip:127.0.0.1:{self.gateway_port}"
        sync = {"cloud_url": self.site.cloud_url, "server_name": self.site.keys.server_name,
                "ca_file": str(self.site.keys.ca_file),
                "signing_public_key": self.site.keys.signing_public_key_b64,
                "enrollment_token": self.token, "poll_interval_s": 10.0,
                "heartbeat_interval_s": 5.0, "request_timeout_s": 5.0, "retry_min_s": 0.5,
                "retry_max_s": 5.0}
        parts = ['site_name = "bench"', self.site.wan_toml(settings.wan).rstrip(),
                 _section("sip", sip), _section("sync", sync)]
        if self.gateway:
            parts.append(_section("gateway", {"enabled": True,
                                              "media_address": self.site.appliance_lan}))
        for entry in self.trunk_entries:
            parts.append(_section("[trunks]", entry))
        return "\n\n".join(parts) + "\n"

    def _start_handset(self, index: int, extension: str) -> HandsetProcess:
        profile = self.settings.phone_profile
        return HandsetProcess(
            user=extension, password=self.passwords[extension], server=self.site.primary,
            backup=f"{self.site.appliance_lan}:{self.site.sip_port}",
            bind=self.site.handset_bind(index), profile=profile.name,
            expires=profile.expires_s,
            tone_hz=handset_tone(index), listen=True,
            exec_prefix=self.site.handset_prefix(),
            on_event=lambda event, who=extension: self.on_event(who, event))

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

    def cloud_registered_since(self, since: float) -> set[str]:
        """Extensions whose latest cloud registration was answered after ``since``."""
        return {user for user, binding in self.cloud_registered().items()
                if binding.registered_at >= since}

    def locally_registered(self) -> set[str]:
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
