"""Netlink watch of the WAN interface: carrier, operstate, addresses and the default route.

One ``pyroute2.AsyncIPRoute`` socket subscribed to the link, address and route groups
*before* the initial dump, so no change can fall between the dump and the first event (events
that arrive during the dump are queued and replayed after it; they carry full state, so the
replay ends where the kernel is). When the kernel reports lost events (ENOBUFS: our receive
buffer overflowed), the socket is replaced and everything is dumped again.

Netlink messages are turned into :class:`LinkStatus` at once; pyroute2 types stay in here.
Netlink only ever speeds up the detection of local failures (and triggers an immediate probe
round when the link returns); it never declares the WAN healthy.

When the link comes back, the interface's unresolved neighbour entries (the gateway's,
left INCOMPLETE or FAILED by probes sent while the cable was out) are deleted before the
change is published. Otherwise the first probes after the return wait in the kernel's ARP
queue for its next solicitation, up to ``retrans_time`` (1 s) later; a fresh entry is
resolved at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

from .observations import LinkStatus

log = logging.getLogger(__name__)

GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | \
    RTMGRP_IPV6_ROUTE
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTN_UNICAST = 1
RT_SCOPE_LINK = 253
RETRY_AFTER_ERROR_S = 1.0
NUD_UNRESOLVED = 0x01 | 0x10 | 0x20  # INCOMPLETE, PROBE, FAILED (NONE is 0)
"""Neighbour states left behind by a link that was down: resolve them afresh."""


class LinkWatch:
    """Keeps :attr:`status` of one interface current and calls ``on_change`` when it changes."""

    def __init__(self, interface: str, on_change: Callable[[LinkStatus], None], *,
                 require_default_route: bool = True, netns: str | None = None,
                 rcvbuf: int = 1 << 20) -> None:
        self.interface = interface
        self.on_change = on_change
        self.require_default_route = require_default_route
        self.netns = netns
        self.rcvbuf = rcvbuf
        self.status: LinkStatus | None = None
        self.resyncs = 0
        self.events = 0
        self.neighbours_forgotten = 0
        self.last_error: str | None = None
        self.synced = asyncio.Event()
        self._links: dict[int, dict[str, Any]] = {}
        self._addresses: dict[int, set[tuple[int, str]]] = {}
        self._default_routes: dict[tuple, set[int]] = {}

    async def run(self) -> None:
        """Watch forever (until cancelled), resyncing after lost events or socket errors."""
        while True:
            try:
                await self._watch_once()
            except (NetlinkError, OSError) as error:
                code = getattr(error, "code", None) or getattr(error, "errno", None)
                if code == errno.ENOBUFS:
                    self.resyncs += 1
                    log.warning("netlink lost events for %s (ENOBUFS); dumping again",
                                self.interface)
                    continue
                self.last_error = f"{type(error).__name__}: {error}"
                log.error("netlink watch of %s failed: %s; retrying in %.0f s",
                          self.interface, error, RETRY_AFTER_ERROR_S)
                await asyncio.sleep(RETRY_AFTER_ERROR_S)

    async def _watch_once(self) -> None:
        ipr = AsyncIPRoute(netns=self.netns, rcvbuf=self.rcvbuf)
        try:
            await ipr.bind(groups=GROUPS)  # subscribe first ...
            self._links.clear()
            self._addresses.clear()
            self._default_routes.clear()
            async for message in await ipr.link("dump"):  # ... then dump
                self._apply(message)
            for family in (socket.AF_INET, socket.AF_INET6):
                async for message in await ipr.addr("dump", family=family):
                    self._apply(message)
                async for message in await ipr.route("dump", family=family):
                    self._apply(message)
            self._publish()
            self.synced.set()
            self.last_error = None
            while True:
                async for message in ipr.get():
                    self.events += 1
                    self._apply(message)
                if self._returning():
                    await self._forget_unresolved_neighbours(self._current().index)
                self._publish()
        finally:
            with contextlib.suppress(Exception):
                ipr.close()

    # -- netlink messages into our state ----------------------------------------------------------

    def _apply(self, message: Any) -> None:
        event = message.get("event")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            index = message["index"]
            if event == "RTM_DELLINK":
                self._links.pop(index, None)
                self._addresses.pop(index, None)
                for oifs in self._default_routes.values():
                    oifs.discard(index)
                return
            self._links[index] = {
                "name": message.get("ifname"),
                "flags": message["flags"],
                "carrier": message.get("carrier"),
                "operstate": message.get("operstate") or "UNKNOWN",
            }
        elif event in ("RTM_NEWADDR", "RTM_DELADDR"):
            address = message.get("local") or message.get("address")
            if address is None:
                return
            if message["family"] == socket.AF_INET6 and message["scope"] == RT_SCOPE_LINK:
                return  # link-local addresses do not reach the cloud
            entry = (message["family"], address)
            addresses = self._addresses.setdefault(message["index"], set())
            if event == "RTM_NEWADDR":
                addresses.add(entry)
            else:
                addresses.discard(entry)
        elif event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
            if message["dst_len"] != 0 or message["type"] != RTN_UNICAST:
                return
            key = (message["family"], message.get("table") or message["table"],
                   message.get("priority"), message.get("gateway"))
            oifs = set()
            if message.get("oif") is not None:
                oifs.add(message.get("oif"))
            for hop in message.get("multipath") or ():
                oifs.add(hop["oif"])
            if event == "RTM_NEWROUTE":
                self._default_routes[key] = oifs
            else:
                self._default_routes.pop(key, None)

    def _current(self) -> LinkStatus:
        found = [(index, link) for index, link in self._links.items()
                 if link["name"] == self.interface]
        if not found:
            return LinkStatus(interface=self.interface, present=False,
                              require_default_route=self.require_default_route)
        index, link = found[0]
        flags = link["flags"]
        carrier = link["carrier"]
        has_carrier = bool(carrier) if carrier is not None else bool(flags & IFF_LOWER_UP)
        addresses = sorted(self._addresses.get(index, ()), key=lambda a: (a[0], a[1]))
        return LinkStatus(
            interface=self.interface, present=True, index=index,
            admin_up=bool(flags & IFF_UP), carrier=has_carrier, operstate=link["operstate"],
            addresses=tuple(address for _, address in addresses),
            default_route=any(index in oifs for oifs in self._default_routes.values()),
            require_default_route=self.require_default_route,
        )

    def _returning(self) -> bool:
        """The link had a problem and has none now."""
        return (self.status is not None and self.status.problem is not None
                and self._current().problem is None)

    async def _forget_unresolved_neighbours(self, index: int) -> None:
        """Delete the interface's neighbour entries still waiting for (or failed at) address
        resolution, so the next packet to the gateway resolves it at once. Best effort:
        without CAP_NET_ADMIN the kernel's own retransmission takes over."""
        ipr = AsyncIPRoute(netns=self.netns)
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                stale = [message async for message in await ipr.neigh(
                    "dump", family=family, ifindex=index)
                         if message["state"] == 0 or message["state"] & NUD_UNRESOLVED]
                for message in stale:
                    await ipr.neigh("del", family=family, ifindex=index,
                                    dst=message.get("dst"))
                    self.neighbours_forgotten += 1
        except (NetlinkError, OSError) as error:
            log.info("could not clear unresolved neighbours on %s: %s", self.interface, error)
        finally:
            with contextlib.suppress(Exception):
                ipr.close()

    def _publish(self) -> None:
        status = self._current()
        if status != self.status:
            self.status = status
            self.on_change(status)
