"""The asyncio side of SIP transports: one UDP socket, TCP and TLS listeners, connections.

Nothing here understands SIP beyond framing: datagrams and framed stream items go to the
service (and from there to the core) together with their :class:`Flow`; bytes to send come
back with a flow. Every queue is bounded: a connection whose unsent bytes exceed the limit
is closed, UDP datagrams are dropped when the socket's buffer is full (SIP retransmits), and
connection counts are capped per source address and in total, below the open-file limit
(see :class:`ConnectionTable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import resource
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

from .flow import Flow
from .parser import Limits, StreamFramer

log = logging.getLogger(__name__)

_connection_ids = itertools.count(1)
EVICTABLE_AFTER_S = 1.0
"""An unproven connection silent for this long may be closed to make room for a new one."""


class UdpEndpoint:
    """The UDP socket, read straight from the loop's selector.

    When the socket is readable, up to ``batch`` datagrams are read in one go and handed to
    ``on_datagrams`` as one list, so a burst costs one loop iteration per batch instead of
    one per datagram. Sending is a direct non-blocking ``sendto``: when the kernel buffer is
    full the datagram is dropped and counted (SIP retransmits); nothing queues in user space.
    """

    def __init__(self, sock: socket.socket, on_datagrams: Callable[[list[tuple[bytes, Flow]]],
                                                                    None],
                 stats: Counter[str], *, batch: int = 64) -> None:
        self.sock = sock
        self.on_datagrams = on_datagrams
        self.stats = stats
        self.batch = batch
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self._flows: dict[tuple[str, int], Flow] = {}

    def _readable(self) -> None:
        received: list[tuple[bytes, Flow]] = []
        recvfrom = self.sock.recvfrom
        flows = self._flows
        for _ in range(self.batch):
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.stats["udp_errors"] += 1  # e.g. ICMP unreachable reported on the socket
                continue
            flow = flows.get(addr)
            if flow is None:
                if len(flows) > 65536:
                    flows.clear()
                flow = flows[addr] = Flow("udp", addr[0], addr[1])
            received.append((data, flow))
        if received:
            self.on_datagrams(received)

    def send(self, data: bytes, flow: Flow) -> bool:
        try:
            self.sock.sendto(data, (flow.host, flow.port))
        except (BlockingIOError, InterruptedError):
            self.stats["udp_send_dropped"] += 1
            return False
        except OSError as error:
            self.stats["udp_send_errors"] += 1
            log.debug("UDP send to %s failed: %s", flow.describe(), error)
            return False
        return True

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection, accepted or opened by us."""

    def __init__(self, table: ConnectionTable, transport_name: str) -> None:
        self.table = table
        self.transport_name = transport_name
        self.id = next(_connection_ids)
        self.framer = StreamFramer(table.limits)
        self.transport: asyncio.Transport | None = None
        self.flow: Flow | None = None
        self.last_activity = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.flow = Flow(self.transport_name, peer[0], peer[1], self.id)
        self.last_activity = asyncio.get_running_loop().time()
        if not self.table.admit(self):
            transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last_activity = asyncio.get_running_loop().time()
        items = self.framer.feed(data)
        if items:
            self.table.on_items(items, self.flow)
        if self.framer.broken:
            self.table.stats["stream_framing_errors"] += 1
            self.transport.close()  # after the error response is flushed

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.forget(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() + len(data) > self.table.max_write_buffer:
            self.table.stats["stream_send_overflow"] += 1
            log.warning("closing %s: peer does not read (write buffer over %d bytes)",
                        self.flow.describe(), self.table.max_write_buffer)
            transport.abort()
            return False
        transport.write(data)
        return True


class ConnectionTable:
    """All TCP/TLS connections: by id, by remote address and by source host.

    A connection that carries a live registration (``bound()`` names them) is *proven*; any
    other is *unproven*. Limits count unproven connections, so that hundreds of phones
    behind one address keep their connections while idle or hostile ones cannot crowd them
    out:

    * at most ``max_per_source`` unproven connections per source address: a new one closes
      that address's idlest unproven connection, or is refused when none has been silent for
      ``EVICTABLE_AFTER_S``;
    * at most ``max_connections`` in all: a new one closes the idlest unproven connection of
      the address holding the most unproven connections (silent for ``EVICTABLE_AFTER_S``);
      with none to close it is refused: closed at once, counted, and logged at most a few
      times in a while.
    """

    def __init__(self, *, limits: Limits, max_connections: int, max_per_source: int,
                 max_write_buffer: int, stats: Counter[str],
                 on_items: Callable[[list[Any], Flow], None],
                 on_closed: Callable[[int], None],
                 bound: Callable[[], set[int]] = set) -> None:
        self.limits = limits
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.max_write_buffer = max_write_buffer
        self.stats = stats
        self.on_items = on_items
        self.on_closed = on_closed
        self.bound = bound
        self.by_id: dict[int, StreamConnection] = {}
        self.by_remote: dict[tuple[str, str, int], StreamConnection] = {}
        self.by_host: dict[str, set[StreamConnection]] = {}

    def admit(self, connection: StreamConnection) -> bool:
        host = connection.flow.host
        quiet_since = connection.last_activity - EVICTABLE_AFTER_S
        proven: set[int] | None = None
        mine = self.by_host.get(host)
        if mine is not None and len(mine) >= self.max_per_source:
            proven = self.bound()
            unproven = [c for c in mine if c.id not in proven]
            if len(unproven) >= self.max_per_source:
                victim = min(unproven, key=_idleness)
                if victim.last_activity > quiet_since:
                    self.stats["connections_refused_per_source"] += 1
                    return False
                self._evict(victim, "connections_evicted_per_source")
        if len(self.by_id) >= self.max_connections:
            victim = self._victim(self.bound() if proven is None else proven, quiet_since)
            if victim is None:
                self.stats["connections_refused_total"] += 1
                log.warning("refused a %s connection from %s: %d connections are open "
                            "(sip.max_connections) and none is idle without a registration; "
                            "raise sip.max_connections (and LimitNOFILE in jbcd.service)",
                            connection.transport_name, host, len(self.by_id))
                return False
            self._evict(victim, "connections_evicted_total")
        flow = connection.flow
        self.by_id[connection.id] = connection
        self.by_remote[(flow.transport, flow.host, flow.port)] = connection
        self.by_host.setdefault(host, set()).add(connection)
        return True

    def _victim(self, proven: set[int], quiet_since: float) -> StreamConnection | None:
        """The idlest unproven connection, silent since ``quiet_since``, of the address
        holding the most such connections."""
        best: list[StreamConnection] = []
        for connections in self.by_host.values():
            if len(connections) <= len(best):
                continue
            quiet = [c for c in connections
                     if c.id not in proven and c.last_activity <= quiet_since]
            if len(quiet) > len(best):
                best = quiet
        return min(best, key=_idleness) if best else None

    def _evict(self, victim: StreamConnection, counter: str) -> None:
        self.stats[counter] += 1
        self.forget(victim)
        if victim.transport is not None:
            victim.transport.abort()

    def forget(self, connection: StreamConnection) -> None:
        if self.by_id.pop(connection.id, None) is None:
            return
        flow = connection.flow
        key = (flow.transport, flow.host, flow.port)
        if self.by_remote.get(key) is connection:
            del self.by_remote[key]
        mine = self.by_host.get(flow.host)
        if mine is not None:
            mine.discard(connection)
            if not mine:
                del self.by_host[flow.host]
        self.on_closed(connection.id)

    def find(self, flow: Flow) -> StreamConnection | None:
        if flow.connection is not None:
            connection = self.by_id.get(flow.connection)
            if connection is not None:
                return connection
        return self.by_remote.get((flow.transport, flow.host, flow.port))

    def close_idle(self, now: float, idle_s: float) -> int:
        idle = [c for c in self.by_id.values() if now - c.last_activity > idle_s]
        for connection in idle:
            connection.transport.close()
        return len(idle)

    async def close_all(self) -> None:
        connections = list(self.by_id.values())
        for connection in connections:
            connection.transport.close()
        if connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.gather(*(c.closed for c in connections))
        for connection in list(self.by_id.values()):
            connection.transport.abort()

    def __len__(self) -> int:
        return len(self.by_id)


def _idleness(connection: StreamConnection) -> float:
    return connection.last_activity


def open_file_budget(wanted: int, *, reserve: int) -> tuple[int, int]:
    """How many connections the open-file limit leaves room for, keeping ``reserve``
    descriptors for everything else (database, serial ports, probes, control clients,
    pjsua2), and the limit itself. The soft limit is first raised towards the hard one where
    that is allowed (outside systemd: the unit sets LimitNOFILE and forbids setrlimit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted, soft
    needed = wanted + reserve
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return max(0, min(wanted, soft - reserve)), soft


def server_tls_context(certificate: str, private_key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, private_key)
    return context


def udp_socket(host: str, port: int, receive_buffer: int) -> socket.socket:
    """A bound, non-blocking UDP socket with a receive buffer big enough for a storm."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        force = getattr(socket, "SO_RCVBUFFORCE", None)
        try:
            if force is None:
                raise PermissionError
            sock.setsockopt(socket.SOL_SOCKET, force, receive_buffer)  # needs CAP_NET_ADMIN
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def describe_bind_error(error: OSError, transport: str, host: str, port: int) -> str:
    if error.errno == errno.EADDRINUSE:
        return (f"{transport} {host}:{port} is in use by another program (is another SIP "
                f"server running? see 'ss -lnp sport = :{port}')")
    if error.errno == errno.EACCES:
        return (f"{transport} {host}:{port}: permission denied (jbcd needs "
                "CAP_NET_BIND_SERVICE for ports below 1024)")
    if error.errno == errno.EADDRNOTAVAIL:
        return (f"{transport} {host}:{port}: this machine has no such address (check "
                "sip.listen_address)")
    return f"{transport} {host}:{port}: {error.strerror or error}"
