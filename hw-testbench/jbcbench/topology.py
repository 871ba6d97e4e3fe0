"""Network-namespace topologies for tests and benchmarks: namespaces, veth links, nftables.

Everything a run creates carries a random suffix (namespace names) or lives inside its own
namespaces (interface and nftables table names), so several test runs on one machine never
collide, and everything is removed on exit, even when a test fails half-way. Only the
namespaces made here are ever sent traffic.

Building blocks, usable for any topology:

* :class:`Namespace` -- one network namespace: run commands in it, start processes in it,
  make sockets inside it (for in-process servers), set sysctls, load nftables rules.
* :class:`Topology` -- owns namespaces and the processes started in them; ``link()`` joins two
  namespaces with a veth pair created directly inside them (the root namespace never sees it).
* :class:`Impairments` -- nftables rules in a router's forward path: drop everything, random
  loss (``numgen random``), per-address drops, per-port drops; plus named packet counters.

:class:`WanTestbed` is the WAN monitor's topology built from those: the appliance, a WAN
router, one namespace per cloud region, an internet namespace holding the anchors, and
optionally a second uplink through a backup router that NATs (like an LTE data modem).
The bench issue adds a LAN namespace with handsets to the same :class:`Topology`.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MAX_IFNAME = 15


class TopologyError(RuntimeError):
    pass


def can_build_namespaces() -> tuple[bool, str]:
    """Whether this process may create network namespaces, and why not if not."""
    if os.geteuid() != 0:
        return False, "needs root to create network namespaces"
    for tool in ("ip", "nft"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return False, f"'{tool}' is not installed (Debian: iproute2, nftables)"
    return True, ""


def _run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
         timeout: float = 30.0) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise TopologyError(f"{shlex.join(argv)} failed ({result.returncode}): "
                            f"{result.stderr.strip() or result.stdout.strip()}")
    return result


_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


class Namespace:
    def __init__(self, name: str) -> None:
        if len(name) > 64:
            raise ValueError(f"namespace name {name!r} is too long")
        self.name = name

    @property
    def path(self) -> str:
        return os.path.join(NETNS_DIR, self.name)

    def create(self) -> None:
        _run(["ip", "netns", "add", self.name])
        self.ip("link", "set", "lo", "up")

    def delete(self) -> None:
        _run(["ip", "netns", "delete", self.name], check=False)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(["ip", "-n", self.name, *args], check=check)

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", self.name, *argv], check=check, input=input,
                    timeout=timeout)

    def exec_prefix(self) -> list[str]:
        """Prepend to a command line to run it inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def nft(self, script: str) -> None:
        self.run("nft", "-f", "-", input=script)

    def call_inside(self, function: Callable[[], T]) -> T:
        """Run ``function`` in a short-lived thread that has joined this namespace, and return
        its result. Sockets (and servers that bind them) made there keep the namespace for
        life, and can be used from any thread afterwards; setns only affects that thread."""
        made: dict[str, Any] = {}

        def work() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    _setns(fd)
                finally:
                    os.close(fd)
                made["result"] = function()
            except BaseException as error:
                made["error"] = error

        thread = threading.Thread(target=work, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        if "error" in made:
            raise made["error"]
        return made["result"]

    def open_socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM,
                    proto: int = 0) -> socket.socket:
        """A socket that lives in this namespace (usable from any thread afterwards)."""
        return self.call_inside(lambda: socket.socket(family, kind, proto))

    def bound_socket(self, address: str, port: int = 0, kind: int = socket.SOCK_STREAM,
                     proto: int = 0) -> socket.socket:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 \
            else socket.AF_INET
        sock = self.open_socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


def wait_operational(ns: Namespace, ifname: str, *, timeout_s: float = 10.0) -> None:
    """Wait until ``ifname`` in ``ns`` is operationally up. The kernel turns a new link's
    carrier into 'UP' (and swaps its drop-everything qdisc for a real one) in its linkwatch
    work, which needs the RTNL lock: right after other namespaces were deleted (their cleanup
    holds that lock) packets sent on a link that says 'up' can vanish for a second or more."""
    deadline = time.monotonic() + timeout_s
    while True:
        shown = json.loads(ns.ip("-j", "link", "show", "dev", ifname).stdout or "[]")
        state = shown[0].get("operstate") if shown else None
        if state == "UP":
            return
        if time.monotonic() >= deadline:
            raise TopologyError(f"{ifname} in {ns.name} is still {state} after {timeout_s:g} s "
                                "(link set up; carrier never came)")
        threading.Event().wait(0.01)


@dataclasses.dataclass(frozen=True, slots=True)
class VethLink:
    a: Namespace
    a_ifname: str
    b: Namespace
    b_ifname: str
    a_address: str | None
    b_address: str | None


class Topology:
    """Owns namespaces and links; ``close()`` (or leaving the ``with``) removes all, and any
    process still running inside a namespace."""

    def __init__(self, prefix: str = "jbc", *, suffix: str | None = None) -> None:
        self.prefix = prefix
        self.suffix = suffix or f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.namespaces: dict[str, Namespace] = {}
        self.links: list[VethLink] = []
        self._closed = False

    def namespace(self, role: str) -> Namespace:
        """Create (once) the namespace for ``role``; its real name is unique to this run."""
        if role in self.namespaces:
            return self.namespaces[role]
        ns = Namespace(f"{self.prefix}-{role}-{self.suffix}")
        ns.create()
        self.namespaces[role] = ns
        return ns

    def link(self, a: Namespace, a_ifname: str, b: Namespace, b_ifname: str, *,
             a_address: str | None = None, b_address: str | None = None) -> VethLink:
        """A veth pair made directly inside ``a`` and ``b``, brought up, with addresses
        ('10.0.0.1/30')."""
        for name in (a_ifname, b_ifname):
            if len(name) > MAX_IFNAME:
                raise ValueError(f"interface name {name!r} is longer than {MAX_IFNAME}")
        _run(["ip", "link", "add", a_ifname, "netns", a.name, "type", "veth",
              "peer", "name", b_ifname, "netns", b.name])
        for ns, ifname, address in ((a, a_ifname, a_address), (b, b_ifname, b_address)):
            if address:
                ns.ip("addr", "add", address, "dev", ifname)
            ns.ip("link", "set", ifname, "up")
        link = VethLink(a, a_ifname, b, b_ifname, a_address, b_address)
        self.links.append(link)
        for ns, ifname in ((a, a_ifname), (b, b_ifname)):
            wait_operational(ns, ifname)
        return link

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ns in self.namespaces.values():
            # Anything else still running inside (a test's stray child) must go too, or the
            # namespace lives on after its name is removed.
            pids = _run(["ip", "netns", "pids", ns.name], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ns.delete()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Impairments:
    """nftables rules in one namespace's forward path, to impair traffic crossing a router.

    Rules are kept as a list and the chain is rewritten atomically on every change. Every
    match is limited to traffic entering or leaving ``ifname`` (the link towards the device
    under test), so other paths through the same router stay untouched."""

    TABLE = "jbcbench"

    def __init__(self, ns: Namespace, ifname: str) -> None:
        self.ns = ns
        self.ifname = ifname
        self._rules: dict[str, list[str]] = {}
        self._counters: dict[str, str] = {}
        self._write()

    def _write(self) -> None:
        counters = "".join(f"  counter {name} {{ }}\n" for name in self._counters)
        rules = "".join(f"    {rule}\n" for rules in self._rules.values() for rule in rules)
        counted = "".join(f"    {match} counter name \"{name}\"\n"
                          for name, match in self._counters.items())
        self.ns.nft(
            f"table inet {self.TABLE}\ndelete table inet {self.TABLE}\n"
            f"table inet {self.TABLE} {{\n{counters}"
            "  chain forward {\n    type filter hook forward priority filter; policy accept;\n"
            f"{counted}{rules}  }}\n}}\n")

    def set(self, name: str, rules: Iterable[str]) -> None:
        self._rules[name] = list(rules)
        self._write()

    def clear(self, name: str | None = None) -> None:
        if name is None:
            self._rules.clear()
        else:
            self._rules.pop(name, None)
        self._write()

    @property
    def active(self) -> list[str]:
        return list(self._rules)

    # -- the usual impairments; each replaces an earlier one of the same name --

    def drop_all(self) -> None:
        """A silent blackhole: the link stays up, nothing crosses."""
        self.set("blackhole", [f'iifname "{self.ifname}" drop', f'oifname "{self.ifname}" drop'])

    def random_loss(self, percent: float) -> None:
        """Drop ``percent`` % of packets, independently, in each direction."""
        if not 0 <= percent <= 100:
            raise ValueError("percent must be within 0..100")
        per_mille = round(percent * 10)
        self.set("loss", [f'iifname "{self.ifname}" numgen random mod 1000 < {per_mille} drop',
                          f'oifname "{self.ifname}" numgen random mod 1000 < {per_mille} drop'])

    def drop_address(self, address: str, name: str | None = None) -> None:
        """Drop everything to and from one far address (one target, region or anchor)."""
        family = "ip6" if ipaddress.ip_address(address).version == 6 else "ip"
        self.set(name or f"drop {address}",
                 [f'iifname "{self.ifname}" {family} daddr {address} drop',
                  f'oifname "{self.ifname}" {family} saddr {address} drop'])

    def drop_port(self, protocol: str, port: int, name: str | None = None) -> None:
        """Drop one service everywhere past this router (e.g. udp 53: DNS fails, all else
        works)."""
        self.set(name or f"drop {protocol}/{port}",
                 [f'iifname "{self.ifname}" {protocol} dport {port} drop',
                  f'oifname "{self.ifname}" {protocol} sport {port} drop'])

    def count(self, name: str, match: str) -> None:
        """A named packet counter for traffic matching ``match`` (an nft expression)."""
        self._counters[name] = match
        self._write()

    def packets(self, name: str) -> int:
        data = json.loads(self.ns.run("nft", "-j", "list", "counter", "inet", self.TABLE,
                                      name).stdout)
        for item in data["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise TopologyError(f"counter {name} not found")


@dataclasses.dataclass(frozen=True, slots=True)
class Site:
    """Addresses of one role in a :class:`WanTestbed`."""

    name: str
    ns: Namespace
    address: str


class WanTestbed(Topology):
    """appliance --wan0-- router --+-- cloud region namespaces (one per region)
                                   +-- internet namespace (the anchors)
       appliance --lte0-- backup router (NAT) --- router        (with ``second_uplink``)

    The appliance's WAN is ``wan0`` (10.64.0.2/30, default route via the router, metric 100).
    With a second uplink the appliance also has ``lte0`` with a *preferred* default route
    (metric 10) through a NATting backup router that reaches the same cloud, so only probes
    bound to wan0 can tell that the WAN is dead. Impairments act on the router's ``app`` link.
    """

    APPLIANCE_WAN = "10.64.0.2"
    ROUTER_WAN = "10.64.0.1"

    def __init__(self, *, regions: Sequence[str] = ("east", "west"), anchors: int = 2,
                 second_uplink: bool = False, wire: bool = False, prefix: str = "jbcwan",
                 suffix: str | None = None) -> None:
        """``wire``: put an :class:`~jbcbench.wire.ImpairmentWire` (delay, jitter, loss) in
        the WAN cable, in a namespace of its own (:attr:`wire`)."""
        super().__init__(prefix, suffix=suffix)
        self.wire = None
        try:
            self._build(regions, anchors, second_uplink, wire)
        except BaseException:
            self.close()
            raise

    def _build(self, regions: Sequence[str], anchors: int, second_uplink: bool,
               wire: bool = False) -> None:
        self.appliance = self.namespace("app")
        self.router = self.namespace("rtr")
        self.router.sysctl("net.ipv4.ip_forward", 1)
        if wire:
            self._build_wire()
        else:
            self.link(self.appliance, "wan0", self.router, "app",
                      a_address=f"{self.APPLIANCE_WAN}/30", b_address=f"{self.ROUTER_WAN}/30")
        self.appliance.ip("route", "add", "default", "via", self.ROUTER_WAN, "dev", "wan0",
                          "metric", "100")
        self.regions: dict[str, Site] = {}
        for index, region in enumerate(regions):
            ns = self.namespace(f"c{index}")
            net = f"10.65.{index}"
            self.link(self.router, f"c{index}", ns, "edge0",
                      a_address=f"{net}.1/24", b_address=f"{net}.10/24")
            ns.ip("route", "add", "default", "via", f"{net}.1")
            self.regions[region] = Site(region, ns, f"{net}.10")
        # The resolver lives in the first region's namespace on an address of its own, so it
        # can fail (or be dropped) without that region failing.
        first = next(iter(self.regions.values()))
        self.resolver = Site("dns", first.ns, "10.65.0.53")
        first.ns.ip("addr", "add", "10.65.0.53/24", "dev", "edge0")
        self.internet = self.namespace("inet")
        self.link(self.router, "inet", self.internet, "up0",
                  a_address="10.70.0.1/24", b_address="10.70.0.254/24")
        self.internet.ip("route", "add", "default", "via", "10.70.0.1")
        self.anchors: list[Site] = []
        for index in range(anchors):
            address = f"10.70.0.{11 + index}"
            self.internet.ip("addr", "add", f"{address}/24", "dev", "up0")
            self.anchors.append(Site(f"anchor{index + 1}", self.internet, address))
        self.impair = Impairments(self.router, "app")
        self.backup: Namespace | None = None
        if second_uplink:
            self._build_second_uplink()

    def _build_wire(self) -> None:
        from .wire import ImpairmentWire, disable_offloads, packet_socket

        self.wire_ns = self.namespace("wire")
        # The wire's namespace only bridges: no IPv6 (nor any address) on its ends.
        self.wire_ns.sysctl("net.ipv6.conf.default.disable_ipv6", 1)
        self.wire_ns.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
        self.link(self.appliance, "wan0", self.wire_ns, "wa0",
                  a_address=f"{self.APPLIANCE_WAN}/30")
        self.link(self.wire_ns, "wb0", self.router, "app", b_address=f"{self.ROUTER_WAN}/30")
        for ifname in ("wa0", "wb0"):
            self.wire_ns.ip("link", "set", ifname, "promisc", "on")
        for ns, ifname in ((self.appliance, "wan0"), (self.router, "app"),
                           (self.wire_ns, "wa0"), (self.wire_ns, "wb0")):
            ns.call_inside(lambda name=ifname: disable_offloads(name))
        ends = [self.wire_ns.call_inside(lambda name=name: packet_socket(name))
                for name in ("wa0", "wb0")]
        self.wire = ImpairmentWire(*ends)

    def close(self) -> None:
        if getattr(self, "wire", None) is not None:
            self.wire.close()
            self.wire = None
        super().close()

    def _build_second_uplink(self) -> None:
        self.backup = self.namespace("bak")
        self.backup.sysctl("net.ipv4.ip_forward", 1)
        self.link(self.appliance, "lte0", self.backup, "app",
                  a_address="10.66.0.2/30", b_address="10.66.0.1/30")
        self.link(self.backup, "up0", self.router, "bak",
                  a_address="10.67.0.2/30", b_address="10.67.0.1/30")
        self.backup.ip("route", "add", "default", "via", "10.67.0.1")
        self.backup.nft("table ip jbcnat {\n  chain post {\n"
                        "    type nat hook postrouting priority srcnat; policy accept;\n"
                        '    oifname "up0" masquerade\n  }\n}\n')
        if getattr(self, "backup_default_route", True):
            # Preferred over the WAN's route: anything not bound to wan0 leaves this way.
            self.appliance.ip("route", "add", "default", "via", "10.66.0.1", "dev", "lte0",
                              "metric", "10")
        self.backup_counters = Impairments(self.backup, "app")

    # -- faults that are not nftables rules --

    def carrier_down(self) -> None:
        """Unplug the WAN cable: the router's end goes down, the appliance loses carrier (with
        a wire in the cable, its end towards the appliance)."""
        if self.wire is not None:
            self.wire_ns.ip("link", "set", "wa0", "down")
        else:
            self.router.ip("link", "set", "app", "down")

    def carrier_up(self) -> None:
        if self.wire is not None:
            self.wire_ns.ip("link", "set", "wa0", "up")
        else:
            self.router.ip("link", "set", "app", "up")

    def carrier_is_up(self) -> bool:
        data = json.loads(self.appliance.ip("-j", "link", "show", "dev", "wan0").stdout)
        return "LOWER_UP" in data[0]["flags"]


class SiteTestbed(WanTestbed):
    """A whole site: the :class:`WanTestbed` plus the LAN with the handsets.

    ``LAN (handsets) --eth0/lan0-- appliance --wan0-- router -- cloud regions, internet``

    The appliance is the site's edge: it forwards between its LAN and its WAN, so the handsets
    reach the cloud through ``wan0`` and every WAN fault hits them exactly as it hits the
    appliance's probes. It is also the handsets' backup registrar, on :attr:`APPLIANCE_LAN`.
    Each handset gets an address of its own on the LAN (:meth:`handset_address`). The cloud's
    API (cloud sync) listens on :attr:`API_ADDRESS`, an address of its own in the first region,
    so a cloud-only outage can take the API down with the SIP edges (:meth:`cloud_addresses`).
    """

    LAN_NET = "192.168.50"
    APPLIANCE_LAN = "192.168.50.1"
    API_ADDRESS = "10.65.0.20"

    def __init__(self, *, regions: Sequence[str] = ("east", "west"), anchors: int = 2,
                 prefix: str = "jbcsite", suffix: str | None = None,
                 second_uplink: bool = False) -> None:
        self._handset_addresses: list[str] = []
        # A site's LTE data uplink is not its default route: the phones' traffic is forwarded
        # over the WAN, and only the failover heartbeat takes lte0 (by policy route).
        self.backup_default_route = False
        super().__init__(regions=regions, anchors=anchors, prefix=prefix, suffix=suffix,
                         second_uplink=second_uplink)
        try:
            self._build_lan()
        except BaseException:
            self.close()
            raise

    def _build_lan(self) -> None:
        self.lan = self.namespace("lan")
        self.appliance.sysctl("net.ipv4.ip_forward", 1)
        self.link(self.lan, "eth0", self.appliance, "lan0",
                  a_address=f"{self.LAN_NET}.254/24", b_address=f"{self.APPLIANCE_LAN}/24")
        self.lan.ip("route", "add", "default", "via", self.APPLIANCE_LAN)
        self.router.ip("route", "add", f"{self.LAN_NET}.0/24", "via", self.APPLIANCE_WAN)
        first = next(iter(self.regions.values()))
        first.ns.ip("addr", "add", f"{self.API_ADDRESS}/24", "dev", "edge0")
        self.api = Site("api", first.ns, self.API_ADDRESS)

    def handset_address(self, index: int) -> str:
        """The LAN address of handset ``index`` (0-based), added to the LAN on first use."""
        if not 0 <= index < 200:
            raise ValueError("the LAN has room for 200 handsets")
        address = f"{self.LAN_NET}.{11 + index}"
        if address not in self._handset_addresses:
            self.lan.ip("addr", "add", f"{address}/24", "dev", "eth0")
            self._handset_addresses.append(address)
        return address

    def carrier_up(self) -> None:
        super().carrier_up()
        # Taking the router's end down removed the routes through it: the way back to the LAN.
        self.router.ip("route", "replace", f"{self.LAN_NET}.0/24", "via", self.APPLIANCE_WAN)

    def cloud_addresses(self) -> list[str]:
        """Every address of the cloud itself (SIP edges and API), not its resolver."""
        return [site.address for site in self.regions.values()] + [self.API_ADDRESS]
