"""A WAN stand-in on loopback, for running the bench without root (no namespaces, no nftables).

Everything that crosses the site's WAN in the namespace bench -- the appliance's probes, its
cloud sync, the handsets' registrations with the cloud -- is sent to a relay address here
instead, and :class:`WanRelay` forwards it to the cloud's (or an internet anchor's) real server
on another loopback address: UDP datagram by datagram, TCP as a byte stream. Faults are
applied in the relay, per path:

* ``blackhole``: nothing crosses. Datagrams are dropped; TCP streams stall (the relay stops
  reading, as a dead path stalls a TCP connection) and resume intact afterwards; new
  connections are accepted but never reach the server, so a TLS handshake times out.
* ``loss``: each datagram is dropped with the given probability, each way; each new TCP
  connection stalls with the probability that its handshake would lose a packet.
* ``cloud``: only paths tagged ``cloud`` are blackholed (the internet anchors still answer):
  a cloud-only outage.

What it cannot do is drop carrier: without root there is no link whose loss netlink would
report, so the bench runs a carrier-loss outage as a blackhole there, and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket

FAULTS = ("blackhole", "loss", "cloud")


@dataclasses.dataclass(frozen=True, slots=True)
class Path:
    """One relayed service: where the relay listens and where it forwards to."""

    name: str
    tag: str
    """'cloud' or 'internet' (anchors)."""
    kind: int
    """socket.SOCK_DGRAM or socket.SOCK_STREAM."""
    listen: tuple[str, int]
    target: tuple[str, int]


class WanRelay:
    """Forwards every :class:`Path`; :meth:`set_fault` changes what gets through."""

    def __init__(self, *, address: str = "127.0.64.1", seed: int | None = None) -> None:
        self.address = address
        self.paths: list[Path] = []
        self.fault: str | None = None
        self.loss_percent = 0.0
        self.dropped = 0
        self.forwarded = 0
        self._rng = random.Random(seed)
        self._closers: list = []
        self._changed = asyncio.Event()

    # -- faults --

    def set_fault(self, fault: str | None, loss_percent: float = 0.0) -> None:
        """Must be called on the relay's event loop (``loop.call_soon_threadsafe``)."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; use one of {', '.join(FAULTS)}")
        self.fault = fault
        self.loss_percent = loss_percent
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # stalled streams look again

    def _blocked(self, path: Path) -> bool:
        return self.fault == "blackhole" or (self.fault == "cloud" and path.tag == "cloud")

    def _drops(self, path: Path) -> bool:
        if self._blocked(path):
            return True
        return self.fault == "loss" and self._rng.random() * 100 < self.loss_percent

    async def _stream_may_flow(self, path: Path) -> None:
        while self._blocked(path):
            await self._changed.wait()

    # -- paths --

    async def add(self, name: str, tag: str, kind: int, target: tuple[str, int]) -> Path:
        """Relay ``target`` through a new port on the relay address; returns the path."""
        sock = socket.socket(socket.AF_INET, kind)
        sock.bind((self.address, 0))
        sock.setblocking(False)
        path = Path(name, tag, kind, sock.getsockname()[:2], target)
        if kind == socket.SOCK_DGRAM:
            await self._serve_udp(path, sock)
        else:
            sock.listen(64)
            server = await asyncio.start_server(
                lambda r, w: self._stream(path, r, w), sock=sock)
            self._closers.append(server.close)
        self.paths.append(path)
        return path

    async def _serve_udp(self, path: Path, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        relay = self
        upstreams: dict[tuple, asyncio.DatagramTransport] = {}
        waiting: dict[tuple, list[bytes]] = {}
        tasks: set[asyncio.Task] = set()

        class Downstream(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, client):
                if relay._drops(path):
                    relay.dropped += 1
                    return
                relay.forwarded += 1
                upstream = upstreams.get(client)
                if upstream is not None:
                    upstream.sendto(data)
                elif client in waiting:
                    waiting[client].append(data)
                else:
                    waiting[client] = [data]
                    task = loop.create_task(self._open(client))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

            async def _open(self, client) -> None:
                downstream = self.transport

                class Upstream(asyncio.DatagramProtocol):
                    def datagram_received(self, data, _server):
                        if relay._drops(path):
                            relay.dropped += 1
                            return
                        relay.forwarded += 1
                        downstream.sendto(data, client)

                try:
                    transport, _ = await loop.create_datagram_endpoint(
                        Upstream, local_addr=(relay.address, 0), remote_addr=path.target)
                except OSError:
                    waiting.pop(client, None)
                    return
                upstreams[client] = transport
                for data in waiting.pop(client, []):
                    transport.sendto(data)

        transport, _ = await loop.create_datagram_endpoint(Downstream, sock=sock)

        def close() -> None:
            transport.close()
            for upstream in upstreams.values():
                upstream.close()
            for task in tasks:
                task.cancel()

        self._closers.append(close)

    async def _stream(self, path: Path, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            # A handshake packet lost both ways with the loss rate: the connection never forms.
            lost = self.fault == "loss" and \
                self._rng.random() * 100 < 100 - (100 - self.loss_percent) ** 2 / 100
            if lost or self._blocked(path):
                self.dropped += 1
                await self._stream_may_flow(path)
                if lost:
                    await reader.read()  # held until the client gives up
                    return
            up_reader, up_writer = await asyncio.open_connection(*path.target)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pipe(path, reader, up_writer),
                                 self._pipe(path, up_reader, writer))
        finally:
            for stream in (writer, up_writer):
                with contextlib.suppress(Exception):
                    stream.close()

    async def _pipe(self, path: Path, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await self._stream_may_flow(path)
                data = await reader.read(65536)
                if not data:
                    break
                await self._stream_may_flow(path)
                writer.write(data)
                await writer.drain()
                self.forwarded += 1
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def close(self) -> None:
        for close in self._closers:
            with contextlib.suppress(Exception):
                close()
        self._closers.clear()
