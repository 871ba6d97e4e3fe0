"""A running WAN lab: the namespace testbed, the fake cloud's edge, and the real jbcd.

Used by the WAN integration tests and ``bench_wan.py``::

    with WanLab(workdir) as lab:          # builds, starts, waits until jbcd says 'online'
        started = lab.impair.drop_all_at()
        entry = lab.wait_for_state("outage", timeout_s=5)
        latency = entry["time"] - started

The cloud's servers (one :class:`~jbcbench.cloud_edge.RegionEdge` per region, the DNS
responder) run on an event loop in a background thread, listening inside the region
namespaces; jbcd runs inside the appliance namespace with a config generated for the testbed.
Faults are injected with :class:`~jbcbench.topology.Impairments` on the WAN router, by
cutting carrier, or by scripting the edges (503, silence).
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .cloud_edge import DnsResponder, RegionEdge, TestCA
from .daemon import DaemonProcess
from .topology import Namespace, WanTestbed

CLOUD_DOMAIN = "cloud.test"


class BackgroundLoop:
    """An asyncio loop in a daemon thread, for servers a synchronous caller drives."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="wanlab-loop",
                                        daemon=True)
        self._thread.start()

    def run(self, coroutine, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class NamespacedDaemon(DaemonProcess):
    """jbcd started inside a network namespace (its files stay on the shared filesystem)."""

    def __init__(self, ns: Namespace, *args, **kwargs) -> None:
        self.ns = ns
        super().__init__(*args, **kwargs)

    def command(self) -> list[str]:
        return [*self.ns.exec_prefix(), *super().command()]


def wan_config_toml(bed: WanTestbed, *, ca_file: pathlib.Path,
                    overrides: Mapping[str, Any] | None = None,
                    tls_targets: bool = True) -> str:
    """The [wan] section for ``bed``: per region an ICMP probe, SIP OPTIONS over UDP to the
    region's name (resolved through the testbed's resolver), and -- with ``tls_targets`` --
    SIP over TLS and an HTTPS health check; every anchor probed with ICMP."""
    settings: dict[str, Any] = {"interface": "wan0", "resolvers": [bed.resolver.address],
                                "ca_file": str(ca_file)}
    settings.update(overrides or {})
    lines = ["[wan]"]
    lines += [f"{key} = {_toml(value)}" for key, value in settings.items()]
    for name, site in bed.regions.items():
        server_name = f"sip.{name}.{CLOUD_DOMAIN}"
        targets = [
            {"name": f"{name}-icmp", "kind": "icmp", "address": site.address},
            {"name": f"{name}-sip", "kind": "sip-options", "server_name": server_name},
        ]
        if tls_targets:
            targets += [
                {"name": f"{name}-sips", "kind": "sip-options", "transport": "tls",
                 "address": site.address, "server_name": server_name},
                {"name": f"{name}-https", "kind": "https", "address": site.address,
                 "server_name": server_name},
            ]
        for target in targets:
            lines.append("[[wan.targets]]")
            lines += [f"{k} = {_toml(v)}" for k, v in
                      {"role": "cloud", "region": name, **target}.items()]
    for anchor in bed.anchors:
        lines.append("[[wan.targets]]")
        lines += [f'name = "{anchor.name}"', 'role = "anchor"', 'kind = "icmp"',
                  f'address = "{anchor.address}"']
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class WanLab:
    def __init__(self, workdir: pathlib.Path, *, regions: Sequence[str] = ("east", "west"),
                 anchors: int = 2, second_uplink: bool = False,
                 wan: Mapping[str, Any] | None = None, tls_targets: bool = True,
                 wait_online_s: float | None = 15.0, wire: bool = False) -> None:
        self.workdir = pathlib.Path(workdir)
        self.regions = tuple(regions)
        self.anchor_count = anchors
        self.second_uplink = second_uplink
        self.wan_overrides = dict(wan or {})
        self.tls_targets = tls_targets
        self.wait_online_s = wait_online_s
        self.wire = wire
        """An impairment wire (delay, jitter, loss) in the WAN cable: ``lab.bed.wire``."""
        self.bed: WanTestbed | None = None
        self.loop: BackgroundLoop | None = None
        self.edges: dict[str, RegionEdge] = {}
        self.dns: DnsResponder | None = None
        self.daemon: NamespacedDaemon | None = None

    # -- lifecycle --

    def start(self) -> WanLab:
        try:
            self.bed = WanTestbed(regions=self.regions, anchors=self.anchor_count,
                                  second_uplink=self.second_uplink, wire=self.wire)
            self.loop = BackgroundLoop()
            self.loop.run(self._start_cloud())
            (self.workdir / "jbcd").mkdir(parents=True, exist_ok=True)
            self.daemon = NamespacedDaemon(
                self.bed.appliance, self.workdir / "jbcd",
                wan_config_toml(self.bed, ca_file=self.ca_file, overrides=self.wan_overrides,
                                tls_targets=self.tls_targets))
            self.daemon.start()
            if self.wait_online_s:
                self.wait_for_state("online", self.wait_online_s)
        except BaseException:
            self.close()
            raise
        return self

    async def _start_cloud(self) -> None:
        bed = self.bed
        self.ca = TestCA()
        self.workdir.mkdir(parents=True, exist_ok=True)
        certs = self.workdir / "certs"
        certs.mkdir(exist_ok=True)
        self.ca_file = self.ca.write_ca(self.workdir / "cloud-ca.pem")
        for name, site in bed.regions.items():
            def make_socket(address: str, port: int, kind: int, ns=site.ns) -> socket.socket:
                return ns.bound_socket(address, port, kind)

            self.edges[name] = await RegionEdge.start(
                name, site.address, f"sip.{name}.{CLOUD_DOMAIN}", ca=self.ca,
                certs_dir=certs, make_socket=make_socket)
        zone = {f"sip.{name}.{CLOUD_DOMAIN}": [site.address]
                for name, site in bed.regions.items()}
        self.dns = DnsResponder(zone)
        await self.dns.serve(bed.resolver.ns.bound_socket(bed.resolver.address, 53,
                                                          socket.SOCK_DGRAM))

    async def _stop_cloud(self) -> None:
        for edge in self.edges.values():
            await edge.close()
        if self.dns is not None:
            await self.dns.close()

    def close(self) -> None:
        if self.daemon is not None:
            with contextlib.suppress(Exception):
                self.daemon.stop()
        if self.loop is not None:
            with contextlib.suppress(Exception):
                self.loop.run(self._stop_cloud(), timeout_s=5)
            self.loop.close()
            self.loop = None
        if self.bed is not None:
            self.bed.close()

    def __enter__(self) -> WanLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults --

    @property
    def impair(self):
        return self.bed.impair

    def at(self, action: Callable[[], Any]) -> float:
        """Run a fault-injecting ``action``; returns the wall time just before it."""
        started = time.time()
        action()
        return started

    # -- observing jbcd --

    def status(self) -> dict[str, Any]:
        return self.daemon.call("wan.status")

    def transitions(self, since: float | None = None) -> list[dict[str, Any]]:
        entries = self.daemon.call("events", {"subsystem": "wan", "limit": 10000})["events"]
        return [e for e in entries if e["kind"] == "transition"
                and (since is None or e["time"] >= since)]

    def wait_for_state(self, state: str, timeout_s: float, *,
                       since: float | None = None) -> dict[str, Any]:
        """The journal entry of the first transition into ``state`` (after ``since``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for entry in self.transitions(since):
                if entry["details"]["state"] == state:
                    return entry
            if time.monotonic() > deadline:
                current = self.status()
                raise TimeoutError(f"no transition to {state} within {timeout_s:g} s; WAN is "
                                   f"{current['state']}: {current['cause']}")
            time.sleep(0.05)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float,
                 what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            current = self.status()
            if predicate(current):
                return current
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not seen within {timeout_s:g} s; WAN is "
                                   f"{current['state']}: {current['cause']}")
            time.sleep(0.05)
