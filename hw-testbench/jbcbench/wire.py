"""An impairment wire: a userspace Ethernet bridge between two veth ends that delays, jitters
and drops frames, for the impairments nftables cannot make (this machine's kernel has no
netem).

    appliance --wan0/wa0-- [wire namespace] --wb0/app-- WAN router

Two ``AF_PACKET`` sockets, one per end, made inside the wire's namespace; every frame read on
one end is written to the other after ``delay_ms`` plus a uniform random ``0 .. jitter_ms``
(drawn per frame and direction, so frames can overtake each other as they do on a jittery
path), or dropped with probability ``loss_pct`` / 100 in each direction. ARP and IPv6
neighbour discovery cross it like everything else, so the two sides see one link. It runs
on an event loop of its own, in a daemon thread (at real-time priority when allowed);
:meth:`ImpairmentWire.set` changes the impairment at any time, from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import fcntl
import os
import random
import socket
import struct
import threading

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
MAX_FRAME = 65536
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17
ETHTOOL_SSG = 0x19
ETHTOOL_STSO = 0x1F
ETHTOOL_SGSO = 0x24


@dataclasses.dataclass(frozen=True, slots=True)
class Impairment:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    """Share of frames dropped in each direction."""

    @property
    def clean(self) -> bool:
        return not (self.delay_ms or self.jitter_ms or self.loss_pct)


class ImpairmentWire:
    def __init__(self, end_a: socket.socket, end_b: socket.socket, *,
                 seed: int | None = None) -> None:
        """``end_a``/``end_b``: AF_PACKET sockets bound to the two interfaces (made inside
        the wire's namespace, see :func:`packet_socket`)."""
        self._ends = (end_a, end_b)
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="impairment-wire", daemon=True)
        self._thread.start()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._impairment = Impairment()
        self.forwarded = 0
        self.dropped = 0
        for sock in self._ends:
            sock.setblocking(False)
        loop.call_soon_threadsafe(self._start)

    def _run(self) -> None:
        # Real-time priority for this thread (root only; best effort): on a loaded machine a
        # wire that waits for the CPU adds jitter nobody asked for, and the monitor rightly
        # reports it. It sleeps in the selector between frames, so it takes little.
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        self._loop.run_forever()

    def _start(self) -> None:
        a, b = self._ends
        self._loop.add_reader(a.fileno(), self._readable, a, b)
        self._loop.add_reader(b.fileno(), self._readable, b, a)

    @property
    def impairment(self) -> Impairment:
        with self._lock:
            return self._impairment

    def set(self, delay_ms: float = 0.0, jitter_ms: float = 0.0, loss_pct: float = 0.0) -> None:
        if not 0 <= loss_pct <= 100 or delay_ms < 0 or jitter_ms < 0:
            raise ValueError("delay and jitter must be >= 0, loss within 0..100")
        with self._lock:
            self._impairment = Impairment(delay_ms, jitter_ms, loss_pct)

    def clear(self) -> None:
        self.set()

    def _readable(self, source: socket.socket, target: socket.socket) -> None:
        impairment = self.impairment
        for _ in range(64):
            try:
                frame, address = source.recvfrom(MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # the interface went down; it comes back with the link
            if address[2] == PACKET_OUTGOING:
                continue  # our own transmission, seen on the way out
            if impairment.loss_pct and self._random.random() * 100 < impairment.loss_pct:
                self.dropped += 1
                continue
            if impairment.clean:
                self._send(target, frame)
                continue
            delay = impairment.delay_ms + self._random.uniform(0.0, impairment.jitter_ms)
            self._loop.call_later(delay / 1000.0, self._send, target, frame)

    def _send(self, target: socket.socket, frame: bytes) -> None:
        try:
            target.send(frame)
            self.forwarded += 1
        except OSError:
            self.dropped += 1  # link down or buffer full: a real wire loses it too

    def close(self) -> None:
        def stop() -> None:
            for sock in self._ends:
                self._loop.remove_reader(sock.fileno())
                sock.close()

        done = threading.Event()
        self._loop.call_soon_threadsafe(lambda: (stop(), done.set()))
        done.wait(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


def disable_offloads(ifname: str) -> None:
    """Turn off checksum, segmentation and scatter-gather offloads on ``ifname`` (call inside
    its namespace): a frame the wire copies must be complete, with its checksums computed and
    no bigger than the MTU; veth otherwise hands over half-made ones. What ``ethtool -K IF tx
    off sg off tso off gso off`` does, through the ioctl, so the bench needs no ethtool."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for command in (ETHTOOL_STSO, ETHTOOL_SGSO, ETHTOOL_SSG, ETHTOOL_STXCSUM):
            value = ctypes.create_string_buffer(struct.pack("II", command, 0))
            request = struct.pack("16sP", ifname.encode(), ctypes.addressof(value))
            fcntl.ioctl(sock, SIOCETHTOOL, request)


def packet_socket(ifname: str) -> socket.socket:
    """A raw AF_PACKET socket bound to ``ifname`` (call inside the interface's namespace)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind((ifname, ETH_P_ALL))
    except OSError:
        sock.close()
        raise
    return sock
