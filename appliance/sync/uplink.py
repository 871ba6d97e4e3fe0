"""The backup data uplink (an LTE data interface) for the failover heartbeat.

When the WAN is down, the heartbeat that tells the cloud "this site is in failover" must still
leave the site. A policy route sends traffic *from the backup interface's address* through
that interface, whatever the main routing table says::

    ip rule add from <backup address> lookup <table> priority <prio>
    ip route add default [via <gateway>] dev <backup interface> table <table>

The heartbeat socket binds that source address, so only it takes the backup path: handsets'
traffic and the WAN probes keep using the main table. Set up with pyroute2 on demand and
removed when sync stops. Needs CAP_NET_ADMIN.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
from typing import TYPE_CHECKING

from .errors import SyncError

if TYPE_CHECKING:
    from pyroute2 import AsyncIPRoute

log = logging.getLogger(__name__)

RULE_PRIORITY = 1200


class UplinkError(SyncError):
    pass


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UplinkRoute:
    interface: str
    source: str
    table: int


def _netlink():
    """pyroute2, imported only when a backup uplink is configured (it costs ~0.2 s at start)."""
    from pyroute2 import AsyncIPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    return AsyncIPRoute, NetlinkError


class BackupUplink:
    def __init__(self, interface: str, *, gateway: str = "", table: int = 201,
                 priority: int = RULE_PRIORITY) -> None:
        self.interface = interface
        self.gateway = gateway
        self.table = table
        self.priority = priority
        self.active: UplinkRoute | None = None

    async def ensure(self) -> UplinkRoute:
        """Install (or confirm) the policy route; returns the source address to bind."""
        AsyncIPRoute, NetlinkError = _netlink()
        try:
            async with AsyncIPRoute() as ipr:
                found = await ipr.link_lookup(ifname=self.interface)
                if not found:
                    raise UplinkError(f"backup interface {self.interface} does not exist "
                                      "(is the LTE modem's data link up? see 'ip link')")
                index = found[0]
                source = None
                async for address in await ipr.get_addr(index=index, family=socket.AF_INET):
                    source = address.get("IFA_ADDRESS")
                    break
                if source is None:
                    raise UplinkError(f"backup interface {self.interface} has no IPv4 "
                                      "address yet")
                if self.active is not None and self.active.source != source:
                    await self._remove_rule(ipr, self.active.source)
                route = {"dst": "0.0.0.0/0", "oif": index, "table": self.table}
                if self.gateway:
                    route["gateway"] = self.gateway
                await ipr.route("replace", **route)
                await self._remove_rule(ipr, source)
                await ipr.rule("add", src=source, src_len=32, table=self.table,
                               priority=self.priority, family=socket.AF_INET)
        except NetlinkError as error:
            raise UplinkError(f"cannot set up the policy route on {self.interface}: "
                              f"{error}") from None
        self.active = UplinkRoute(interface=self.interface, source=source, table=self.table)
        return self.active

    async def remove(self) -> None:
        if self.active is None:
            return
        AsyncIPRoute, NetlinkError = _netlink()
        try:
            async with AsyncIPRoute() as ipr:
                await self._remove_rule(ipr, self.active.source)
                try:
                    await ipr.route("del", dst="0.0.0.0/0", table=self.table)
                except NetlinkError as error:
                    if error.code not in (errno.ESRCH, errno.ENOENT):
                        raise
        except NetlinkError as error:
            log.warning("could not remove the backup-uplink policy route: %s", error)
        self.active = None

    async def _remove_rule(self, ipr: AsyncIPRoute, source: str) -> None:
        _, NetlinkError = _netlink()
        while True:
            try:
                await ipr.rule("del", src=source, src_len=32, table=self.table,
                               priority=self.priority, family=socket.AF_INET)
            except NetlinkError as error:
                if error.code in (errno.ENOENT, errno.ESRCH):
                    return
                raise
