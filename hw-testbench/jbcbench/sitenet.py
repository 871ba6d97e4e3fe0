"""The outage bench's site network and the cloud around it, two ways: network namespaces (as
root) or loopback addresses behind the WAN stand-in (without root). See
:mod:`jbcbench.sitelab`; both offer the same few things: where the phones' primary and backup
servers are, the [wan] section for jbcd, the cloud's API, and cut/restore for each outage
kind."""

from __future__ import annotations

import contextlib
import pathlib
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .cloud_edge import DnsResponder, HttpsHealth, RegionEdge, TestCA, loopback_socket
from .cloud_pbx import CloudPbx
from .daemon import DaemonProcess
from .fake_cloud import CloudKeys, FakeCloud
from .sipdaemon import toml_value
from .topology import SiteTestbed
from .wanlab import CLOUD_DOMAIN, BackgroundLoop, NamespacedDaemon, wan_config_toml
from .wanrelay import WanRelay

if TYPE_CHECKING:
    from .sitelab import LabSettings


def free_port(kind: int = socket.SOCK_DGRAM, address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


class NamespaceSite:
    """As root: the site in network namespaces; outages made by the kernel and nftables."""

    mode = "namespaces"

    def __init__(self, workdir: pathlib.Path, settings: LabSettings, loop: BackgroundLoop,
                 credentials: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.settings = settings
        self.loop = loop
        self.bed = SiteTestbed(second_uplink=settings.backup_uplink)
        self.edges: dict[str, RegionEdge] = {}
        self.appliance_lan = self.bed.APPLIANCE_LAN
        self.sip_port = 5060
        self.backup_uplink = {"backup_interface": "lte0", "backup_gateway": "10.66.0.1"} \
            if self.bed.backup is not None else None
        """[sync] keys for the appliance's LTE-like data uplink, when the site has one."""
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

            edge = CloudPbx(name=name, credentials=credentials, realm=CLOUD_DOMAIN,
                            max_expires_s=self.settings.cloud_max_expires_s,
                            address=site.address)
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

    def fast_fail_targets(self) -> list[str]:
        """sip.fast_fail_targets: the regions' SIP addresses the phones use directly."""
        return [site.address for site in self.bed.regions.values()]

    def cloud_edges(self) -> list[dict[str, Any]]:
        """[[sip.cloud_edges]] for an in-path appliance: each region's SIP over TLS."""
        return [{"address": site.address, "port": 5061, "transport": "tls",
                 "server_name": f"sip.{name}.{CLOUD_DOMAIN}"}
                for name, site in self.bed.regions.items()]

    def handset_bind(self, index: int) -> str:
        return self.bed.handset_address(index)

    def handset_prefix(self) -> list[str]:
        return self.bed.lan.exec_prefix()

    def appliance_prefix(self) -> list[str]:
        """Runs a command where jbcd runs (its network namespace)."""
        return self.bed.appliance.exec_prefix()

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
    backup_uplink = None
    """No LTE-like data uplink without namespaces."""
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
        self.sips_paths = {}
        for name, address in self.REGIONS.items():
            edge = CloudPbx(name=name, credentials=credentials, realm=CLOUD_DOMAIN,
                            max_expires_s=self.settings.cloud_max_expires_s, address=address)
            server_name = f"sip.{name}.{CLOUD_DOMAIN}"
            self.edges[name] = await RegionEdge.start(
                name, address, server_name, ca=self.ca, certs_dir=certs,
                make_socket=lambda a, p, k: loopback_socket(k, a), sip_port=0, sips_port=0,
                https_port=0, sip_edge=edge)
            ports = self.edges[name].ports
            edge.ports = {"UDP": ports["sip-udp"], "TCP": ports["sip-tcp"],
                          "TLS": ports["sips"]}
            sip = await relay.add(f"{name}-sip", "cloud", socket.SOCK_DGRAM,
                                  (address, ports["sip-udp"]))
            self.sips_paths[name] = await relay.add(f"{name}-sips", "cloud",
                                                    socket.SOCK_STREAM,
                                                    (address, ports["sips"]))
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

    def fast_fail_targets(self) -> list[str]:
        raise RuntimeError("fast fail needs the appliance to be the site's router: run as "
                           "root (network namespaces), not on loopback")

    def cloud_edges(self) -> list[dict[str, Any]]:
        """[[sip.cloud_edges]] for an in-path appliance: each region's SIP over TLS, through
        the WAN stand-in."""
        return [{"address": path.listen[0], "port": path.listen[1], "transport": "tls",
                 "server_name": f"sip.{name}.{CLOUD_DOMAIN}"}
                for name, path in self.sips_paths.items()]

    def handset_bind(self, index: int) -> str:
        return f"127.0.50.{11 + index}"

    def handset_prefix(self) -> list[str]:
        return []

    def appliance_prefix(self) -> list[str]:
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
