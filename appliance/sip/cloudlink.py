"""In-path mode's connection to the cloud: the asyncio side of :mod:`appliance.sip.relay`.

One connection at a time, to the first of ``sip.cloud_edges`` that answers, TLS verified
against ``sip.cloud_ca_file`` and the edge's ``server_name`` (TLS 1.2 or newer: the cloud's
commitment). It is an ordinary connection of the SIP service's
:class:`~appliance.sip.transport.ConnectionTable`, so what the cloud sends on it reaches the
core like anything else, and the core's sends find it by its flow. The relay is told the
flow when it is up and ``None`` when it is not (then phones are answered 503 and try their
next server).

Kept alive the RFC 5626 way (section 3.5.1): a CRLFCRLF ping every ``keepalive_s``; if nothing
at all (a pong, or anything else) comes back within ``PONG_WAIT_S`` the connection is dead (a
blackhole keeps TCP connections open for minutes) and the next edge is tried. Failed connects
are retried with a backoff, and at once when :meth:`CloudLink.kick` says the WAN is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Sequence

from .flow import Flow
from .transport import ConnectionTable, StreamConnection

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
PONG_WAIT_S = 10.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 8.0


class CloudLink:
    def __init__(self, edges: Sequence[tuple[str, str, int, str]], table: ConnectionTable, *,
                 ssl_context: ssl.SSLContext | None, keepalive_s: float,
                 on_change: Callable[[Flow | None], None]) -> None:
        """``edges``: (transport, address, port, server_name), in order of preference."""
        self.edges = list(edges)
        self.table = table
        self.ssl_context = ssl_context
        self.keepalive_s = keepalive_s
        self.on_change = on_change
        self.connection: StreamConnection | None = None
        self.edge: tuple[str, str, int, str] | None = None
        self.last_error: str | None = None
        self.connects = 0
        self.failures = 0
        self._kick = asyncio.Event()

    def describe(self) -> str:
        """Where the link is, and (once it has had trouble) how often it connected and failed
        to: a link that keeps reconnecting is worth a look ('jbc phones', 'jbc status')."""
        history = ""
        if self.failures or self.connects > 1:
            history = (f"; connected {self.connects} time{'' if self.connects == 1 else 's'}, "
                       f"{self.failures} failed attempt{'' if self.failures == 1 else 's'}")
        if self.connection is None or self.edge is None:
            return "not connected" + (f" ({self.last_error})" if self.last_error else "") \
                + history
        transport, address, port, name = self.edge
        return f"{transport} {address}:{port}" + (f" ({name})" if name else "") + history

    def report(self) -> dict[str, object]:
        """For --json: the edge in use, how many connections were made and failed."""
        edge = None
        if self.connection is not None and self.edge is not None:
            transport, address, port, name = self.edge
            edge = {"transport": transport, "address": address, "port": port,
                    "server_name": name}
        return {"edge": edge, "connects": self.connects, "failures": self.failures,
                "last_error": self.last_error}

    def kick(self) -> None:
        """Try to connect now rather than after the backoff (the WAN is back)."""
        self._kick.set()

    async def run(self) -> None:
        """Connect, keep alive, reconnect; forever (until cancelled)."""
        delay = RETRY_MIN_S
        try:
            while True:
                for edge in self.edges:
                    connection = await self._connect(edge)
                    if connection is None:
                        continue
                    delay = RETRY_MIN_S
                    await self._hold(connection, edge)
                    break
                else:
                    self._kick.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._kick.wait()
                    delay = min(RETRY_MAX_S, delay * 2)
        finally:
            self._set(None, None)

    async def _connect(self, edge: tuple[str, str, int, str]) -> StreamConnection | None:
        transport, address, port, server_name = edge
        loop = asyncio.get_running_loop()
        tls = transport == "tls"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, connection = await loop.create_connection(
                    lambda: StreamConnection(self.table, transport), address, port,
                    ssl=self.ssl_context if tls else None,
                    server_hostname=server_name if tls else None,
                    family=socket.AF_INET6 if ":" in address else socket.AF_INET)
        except (OSError, TimeoutError, ssl.SSLError) as error:
            self.failures += 1
            self.last_error = f"{address}:{port}: {error or type(error).__name__}"
            log.info("cannot reach the cloud edge %s:%s: %s", address, port, error)
            return None
        if connection.flow is None or connection.transport is None \
                or connection.transport.is_closing():
            self.last_error = f"{address}:{port}: refused by the connection limits"
            return None
        self.connects += 1
        self.last_error = None
        return connection

    async def _hold(self, connection: StreamConnection,
                    edge: tuple[str, str, int, str]) -> None:
        self._set(connection, edge)
        log.info("relaying to the cloud edge %s", self.describe())
        loop = asyncio.get_running_loop()
        try:
            while not connection.closed.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.keepalive_s):
                        await asyncio.shield(connection.closed)
                if connection.closed.done():
                    break
                pinged = loop.time()
                if not connection.send(b"\r\n\r\n"):
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PONG_WAIT_S):
                        await asyncio.shield(connection.closed)
                if connection.closed.done():
                    break
                if connection.last_activity < pinged:
                    log.warning("the cloud edge %s did not answer a keep-alive in %.0f s; "
                                "closing it", self.describe(), PONG_WAIT_S)
                    self.last_error = "no answer to a keep-alive"
                    break
        finally:
            self._set(None, None)
            if connection.transport is not None and not connection.transport.is_closing():
                connection.transport.abort()

    def _set(self, connection: StreamConnection | None,
             edge: tuple[str, str, int, str] | None) -> None:
        self.connection, self.edge = connection, edge
        self.on_change(connection.flow if connection is not None else None)


def cloud_tls_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
