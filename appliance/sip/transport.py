"""The asyncio side of SIP transports: one UDP socket, TCP and TLS listeners, connections.

Nothing here understands SIP beyond framing: datagrams and framed stream items go to the
service (and from there to the core) together with their :class:`Flow`; bytes to send come
back with a flow. Every queue is bounded: a connection whose unsent bytes exceed the limit
is closed, UDP datagrams are dropped when the socket's buffer is full (SIP retransmits), and
connection counts are capped per source address and in total.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

from .flow import Flow
from .parser import Limits, StreamFramer

log = logging.getLogger(__name__)

_connection_ids = itertools.count(1)


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
    """All TCP/TLS connections: by id, by remote address, counted per source."""

    def __init__(self, *, limits: Limits, max_connections: int, max_per_source: int,
                 max_write_buffer: int, stats: Counter[str],
                 on_items: Callable[[list[Any], Flow], None],
                 on_closed: Callable[[int], None]) -> None:
        self.limits = limits
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.max_write_buffer = max_write_buffer
        self.stats = stats
        self.on_items = on_items
        self.on_closed = on_closed
        self.by_id: dict[int, StreamConnection] = {}
        self.by_remote: dict[tuple[str, str, int], StreamConnection] = {}
        self.per_source: Counter[str] = Counter()

    def admit(self, connection: StreamConnection) -> bool:
        flow = connection.flow
        if len(self.by_id) >= self.max_connections:
            self.stats["connections_refused_total"] += 1
            return False
        if self.per_source[flow.host] >= self.max_per_source:
            self.stats["connections_refused_per_source"] += 1
            return False
        self.by_id[connection.id] = connection
        self.by_remote[(flow.transport, flow.host, flow.port)] = connection
        self.per_source[flow.host] += 1
        return True

    def forget(self, connection: StreamConnection) -> None:
        if self.by_id.pop(connection.id, None) is None:
            return
        flow = connection.flow
        key = (flow.transport, flow.host, flow.port)
        if self.by_remote.get(key) is connection:
            del self.by_remote[key]
        self.per_source[flow.host] -= 1
        if self.per_source[flow.host] <= 0:
            del self.per_source[flow.host]
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
