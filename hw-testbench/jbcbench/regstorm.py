"""A registration storm: N simulated handsets REGISTER at once over UDP, answer the digest
challenge and wait for 200, retransmitting on RFC 3261 Timer E when an answer is lost.

Shared by ``bench_sip.py`` (jbcd alone), ``bench_sip_abuse.py`` (500 handsets behind one
address) and ``bench_kamailio.py`` (jbcd and Kamailio side by side). Each handset's secrets
are pre-hashed and both REGISTERs prepared, so the bench spends its CPU on the exchange and
not on building text. The registrar's CPU is read from /proc (the handsets' is not counted).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import selectors
import socket
import statistics
import time
from collections.abc import Callable

from jbcbench import sipua

T1 = 0.5
_NONCE_RE = re.compile(rb'nonce="([^"]+)"')
_OPAQUE_RE = re.compile(rb'opaque="([^"]+)"')
_ALGORITHM_RE = re.compile(rb"algorithm=([A-Za-z0-9-]+)")
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def user_of(index: int) -> str:
    return str(20000 + index)


def password_of(index: int) -> str:
    return f"pw-{index}"


def spread_address(index: int, sources: int = 0) -> str:
    """Handset ``index``'s own loopback address (127.1.x.y), or one of ``sources``
    addresses when several handsets share one."""
    slot = index % sources if sources else index
    return f"127.1.{slot // 250}.{slot % 250 + 1}"


def site_of(count: int) -> dict:
    """A directory of ``count`` handsets plus two (a caller and a callee for relay tests)."""
    extensions = [{"number": user_of(i), "name": f"Handset {i}"} for i in range(count + 2)]
    devices = [{"id": f"h{i}", "extension": user_of(i), "username": user_of(i),
                "password": password_of(i)} for i in range(count + 2)]
    return {"schema": 1, "version": 1, "site": "bench", "extensions": extensions,
            "devices": devices}


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process (all its threads) so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process and its live children (Kamailio's workers)."""
    user = system = 0.0
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            tick = os.sysconf("SC_CLK_TCK")
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
    return user, system


_RUN, _WAIT = 0, 1
"""Fields of /proc/PID/task/TID/schedstat: ns run on a CPU, ns waiting for one (runnable)."""


def _task_schedstat_ns(pid: str, field: int = _RUN) -> int:
    """Nanoseconds the threads of process ``pid`` have run on a CPU (``_RUN``) or waited,
    runnable, for one (``_WAIT``), from their schedstat."""
    total = 0
    for stat in pathlib.Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[field])
        except (OSError, IndexError, ValueError):
            continue
    return total


def _tree_pids(pid: int) -> list[str]:
    """A process and its live children."""
    pids = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = stat.read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        if stat.parent.name == str(pid) or ppid == str(pid):
            pids.append(stat.parent.name)
    return pids


def run_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process so far, to the nanosecond (the scheduler's
    own account; /proc/PID/stat counts in 10 ms ticks, too coarse for a 0.1 s storm)."""
    return _task_schedstat_ns(str(pid)) / 1e9


def tree_run_seconds(pid: int) -> float:
    """:func:`run_seconds` of a process and its live children (Kamailio's workers)."""
    return sum(_task_schedstat_ns(child) for child in _tree_pids(pid)) / 1e9


def wait_seconds(pid: int) -> float:
    """Seconds a process's threads have waited, runnable, for a CPU so far: on a busy
    machine the part of a one-process registrar's wall time that is other work's."""
    return _task_schedstat_ns(str(pid), _WAIT) / 1e9


def tree_wait_seconds(pid: int) -> float:
    """:func:`wait_seconds` of a process and its live children, summed."""
    return sum(_task_schedstat_ns(child, _WAIT) for child in _tree_pids(pid)) / 1e9


def percentile(values: list[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if p < 100 \
        else values[-1]


class Handset:
    """One simulated phone on its own socket."""

    __slots__ = ("call_id", "done_at", "ha1", "index", "last_sent", "message", "realm",
                 "retries", "second", "sock", "started_at", "state", "user")

    def __init__(self, index: int, address: str, realm: str, domain: str) -> None:
        self.index = index
        self.user = user_of(index)
        self.realm = realm
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.setblocking(False)
        self.call_id = sipua.unique("storm-")
        self.state = "new"
        self.message = b""
        self.started_at = self.done_at = self.last_sent = 0.0
        self.retries = 0
        self.ha1 = {name: h(f"{self.user}:{realm}:{password_of(index)}".encode()).hexdigest()
                    for name, h in _HASHES.items()}
        local = self.sock.getsockname()
        self.second = sipua.register(self.user, domain, local=local, call_id=self.call_id,
                                     cseq=2, expires=120, authorization="@AUTH@").decode()

    def send(self, data: bytes, now: float) -> None:
        self.message = data
        self.last_sent = now
        self.sock.send(data)

    def answer(self, challenge: bytes, domain: str) -> bytes:
        """The authenticated REGISTER answering a 401 (the first challenge offered)."""
        nonce = _NONCE_RE.search(challenge).group(1).decode()
        opaque = _OPAQUE_RE.search(challenge)
        algorithm_match = _ALGORITHM_RE.search(challenge)
        algorithm = algorithm_match.group(1).decode() if algorithm_match else "MD5"
        h = _HASHES[algorithm]
        uri = f"sip:{domain}"
        ha2 = h(f"REGISTER:{uri}".encode()).hexdigest()
        cnonce = f"{self.index:08x}"
        response = h(f"{self.ha1[algorithm]}:{nonce}:00000001:{cnonce}:auth:{ha2}".encode()
                     ).hexdigest()
        authorization = (f'Digest username="{self.user}", realm="{self.realm}", '
                         f'nonce="{nonce}", uri="{uri}", response="{response}", '
                         f'algorithm={algorithm}, cnonce="{cnonce}", qop=auth, nc=00000001')
        if opaque:
            authorization += f', opaque="{opaque.group(1).decode()}"'
        return self.second.replace("@AUTH@", authorization).encode()


def storm(server: tuple[str, int], count: int, pid: int, *, realm: str = "jbc",
          address_of: Callable[[int], str] = spread_address, timeout_s: float = 30.0,
          concurrency: int = 0, domain: str | None = None,
          cpu: Callable[[int], tuple[float, float]] = cpu_seconds,
          run: Callable[[int], float] = run_seconds,
          durable: Callable[[], int] | None = None, durable_timeout_s: float = 30.0) -> dict:
    """Register ``count`` handsets with the registrar at ``server`` (process ``pid``, whose
    CPU ``cpu(pid)`` reads).

    ``concurrency`` > 0 keeps at most that many exchanges in flight (like SIPp's -l), the
    rest start as earlier ones finish; 0 starts them all at once. ``domain``: the
    registrar's domain, when ``server`` is an outbound proxy in front of it (in-path mode).

    ``run(pid)``: the registrar's CPU seconds to the nanosecond (``cpu`` gives the user /
    system split in ticks). ``durable()``: how many bindings the registrar has on disk; when
    given, the storm waits until every registered handset's binding is there and reads the
    CPU only then, so that a registrar writing behind is charged for its writes
    (``durable_s``: from the first REGISTER until then).
    """
    domain = domain or server[0]
    handsets = [Handset(i, address_of(i), realm, domain) for i in range(count)]
    selector = selectors.DefaultSelector()
    for handset in handsets:
        handset.sock.connect(server)
        selector.register(handset.sock, selectors.EVENT_READ, handset)
    first = [sipua.register(h.user, domain, local=h.sock.getsockname(), call_id=h.call_id,
                            cseq=1, expires=120) for h in handsets]
    waiting = list(zip(handsets, first, strict=True))
    waiting.reverse()
    in_flight = 0
    limit = concurrency or count
    cpu_before = cpu(pid)
    run_before = run(pid)
    bench_cpu_before = time.process_time()
    started = time.monotonic()

    def start_more() -> None:
        nonlocal in_flight
        while waiting and in_flight < limit:
            handset, message = waiting.pop()
            handset.started_at = time.monotonic()
            handset.state = "registering"
            handset.send(message, handset.started_at)
            in_flight += 1

    start_more()
    remaining = count
    errors: dict[str, int] = {}
    deadline = started + timeout_s
    next_scan = started + 0.05
    while remaining and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.05):
            handset = key.data
            try:
                data = handset.sock.recv(65535)
            except OSError:
                continue
            status = data[8:11]
            if status == b"401" and handset.state == "registering":
                handset.state = "authenticating"
                handset.send(handset.answer(data, domain), time.monotonic())
            elif status == b"200" and handset.state == "authenticating":
                handset.state = "registered"
                handset.done_at = time.monotonic()
                remaining -= 1
                in_flight -= 1
            elif status[:1] in (b"4", b"5", b"6") and status != b"401":
                errors[status.decode()] = errors.get(status.decode(), 0) + 1
        start_more()
        now = time.monotonic()
        if now >= next_scan:  # Timer E: retransmit what got no answer
            next_scan = now + 0.05
            for handset in handsets:
                if handset.state in ("registering", "authenticating") and \
                        now - handset.last_sent > T1 * 2 ** min(handset.retries, 3):
                    handset.retries += 1
                    handset.send(handset.message, now)
    finished = time.monotonic()
    bench_cpu = time.process_time() - bench_cpu_before
    done = [h for h in handsets if h.state == "registered"]
    durable_s = None
    if durable is not None:
        durable_s = wait_durable(durable, len(done), started, durable_timeout_s)
    cpu_after = cpu(pid)
    run_used = run(pid) - run_before
    user_s, system_s = (after - before for after, before in zip(cpu_after, cpu_before,
                                                                 strict=True))
    cpu_used = user_s + system_s
    latencies = sorted(h.done_at - h.started_at for h in done)
    last = max((h.done_at for h in done), default=finished)
    for handset in handsets:
        selector.unregister(handset.sock)
        handset.sock.close()
    selector.close()
    wall = last - started
    return {
        "handsets": count,
        "sources": len({address_of(i) for i in range(count)}),
        "registered": len(done),
        "wall_s": round(wall, 4),
        "registrations_per_s": round(len(done) / wall, 1) if wall > 0 else None,
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 2) if latencies else None,
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 2) if latencies else None,
        "retransmissions": sum(h.retries for h in handsets),
        "errors": errors,
        "appliance_cpu_s": round(cpu_used, 3),
        "appliance_cpu_user_s": round(user_s, 3),
        "appliance_cpu_system_s": round(system_s, 3),
        "appliance_cpu_s_per_1000": round(cpu_used / max(1, len(done)) * 1000, 3),
        "appliance_run_s": round(run_used, 4),
        "appliance_run_s_per_1000": round(run_used / max(1, len(done)) * 1000, 4),
        "durable_s": durable_s,
        "handsets_cpu_s": round(bench_cpu, 3),
    }


def wait_durable(durable: Callable[[], int], count: int, started: float,
                 timeout_s: float) -> float | None:
    """Wait until ``durable()`` reaches ``count``; seconds since ``started`` then, or None
    when it did not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if durable() >= count:
            return round(time.monotonic() - started, 3)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
