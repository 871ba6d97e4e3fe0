"""Benchmark: a registration storm against the real jbcd, and INVITE -> 180 relay latency.

For each N (default 500 and 2000) a fresh jbcd is started with a directory of N devices and
sip.assume_wan_state = "outage". N handsets, each on its own loopback address (127.1.x.y,
as every phone on a LAN has its own), each do REGISTER -> 401 -> REGISTER with digest ->
200 over UDP, all starting at once, retransmitting on RFC 3261 Timer E if an answer is
lost. Reported per N: total wall time (first REGISTER sent to last 200 received),
registrations per second, p50/p99 latency of each handset's whole exchange, and jbcd's CPU
seconds per 1000 registrations (from /proc, so the handsets' own CPU is not counted).

Then, on the last daemon, one registered callee answers every INVITE with 180 then 486, and a
caller places calls one after another with digest credentials; the time from sending the
INVITE to receiving the relayed 180 is the proxy's relay latency (p50/p99).

Goals (issue 4): 500 handsets in <= 0.5 s, 2000 in <= 2 s on a 2-core machine.

    python hw-testbench/bench_sip.py [--sizes 500 2000] [--calls 300]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import platform
import re
import resource
import selectors
import socket
import statistics
import sys
import tempfile
import time

from jbcbench import sipua
from jbcbench.daemon import DaemonProcess
from jbcbench.sipdaemon import sip_daemon, sip_ports

GOALS_S = {500: 0.5, 2000: 2.0}
REALM = "jbc"
T1 = 0.5


def handset_address(index: int) -> str:
    return f"127.1.{index // 250}.{index % 250 + 1}"


def site_of(count: int) -> dict:
    """A directory of ``count`` handsets plus two (the caller and callee of the relay test)."""
    extensions = [{"number": str(20000 + i), "name": f"Handset {i}"} for i in range(count + 2)]
    devices = [{"id": f"h{i}", "extension": str(20000 + i), "username": str(20000 + i),
                "password": f"pw-{i}"} for i in range(count + 2)]
    return {"schema": 1, "version": 1, "site": "bench", "extensions": extensions,
            "devices": devices}


def start_daemon(workdir: pathlib.Path, count: int) -> tuple[DaemonProcess, int]:
    site = site_of(count)
    # One bench handset places hundreds of calls back to back for the relay-latency figure;
    # a real phone never does, so the per-source rate limit is lifted for the bench.
    daemon = sip_daemon(workdir, site, transports=["udp"], realm=REALM,
                        rate_per_source=10000.0, burst_per_source=10000.0).start()
    return daemon, sip_ports(daemon)["udp"]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


_NONCE_RE = re.compile(rb'nonce="([^"]+)"')
_OPAQUE_RE = re.compile(rb'opaque="([^"]+)"')
_ALGORITHM_RE = re.compile(rb"algorithm=([A-Za-z0-9-]+)")
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class Handset:
    """One simulated phone: its own address and socket, its secrets pre-hashed (as a phone
    stores them), and its two REGISTERs prepared, so the bench spends its CPU on the
    exchange itself and not on building text."""

    __slots__ = ("address", "call_id", "done_at", "ha1", "index", "last_sent", "message",
                 "retries", "second", "sock", "started_at", "state", "user")

    def __init__(self, index: int) -> None:
        self.index = index
        self.user = str(20000 + index)
        self.address = handset_address(index)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.address, 0))
        self.sock.setblocking(False)
        self.call_id = sipua.unique("storm-")
        self.state = "new"
        self.message = b""
        self.started_at = self.done_at = self.last_sent = 0.0
        self.retries = 0
        self.ha1 = {name: h(f"{self.user}:{REALM}:pw-{index}".encode()).hexdigest()
                    for name, h in _HASHES.items()}
        local = self.sock.getsockname()
        self.second = sipua.register(self.user, "127.0.0.1", local=local,
                                     call_id=self.call_id, cseq=2, expires=120,
                                     authorization="@AUTH@").decode()

    def send(self, data: bytes, now: float) -> None:
        self.message = data
        self.last_sent = now
        self.sock.send(data)

    def answer(self, challenge: bytes) -> bytes:
        """The authenticated REGISTER answering a 401 (the first challenge offered)."""
        nonce = _NONCE_RE.search(challenge).group(1).decode()
        opaque = _OPAQUE_RE.search(challenge).group(1).decode()
        algorithm = _ALGORITHM_RE.search(challenge).group(1).decode()
        h = _HASHES[algorithm]
        ha2 = h(b"REGISTER:sip:127.0.0.1").hexdigest()
        cnonce = f"{self.index:08x}"
        response = h(f"{self.ha1[algorithm]}:{nonce}:00000001:{cnonce}:auth:{ha2}".encode()
                     ).hexdigest()
        authorization = (f'Digest username="{self.user}", realm="{REALM}", nonce="{nonce}", '
                         f'uri="sip:127.0.0.1", response="{response}", algorithm={algorithm}, '
                         f'cnonce="{cnonce}", qop=auth, nc=00000001, opaque="{opaque}"')
        return self.second.replace("@AUTH@", authorization).encode()


def storm(port: int, count: int, daemon: DaemonProcess) -> dict:
    server = ("127.0.0.1", port)
    handsets = [Handset(i) for i in range(count)]
    selector = selectors.DefaultSelector()
    for handset in handsets:
        handset.sock.connect(server)
        selector.register(handset.sock, selectors.EVENT_READ, handset)
    first = [sipua.register(h.user, "127.0.0.1", local=h.sock.getsockname(),
                            call_id=h.call_id, cseq=1, expires=120) for h in handsets]
    cpu_before = cpu_seconds(daemon.proc.pid)
    bench_cpu_before = time.process_time()
    started = time.monotonic()
    for handset, message in zip(handsets, first, strict=True):
        handset.started_at = time.monotonic()
        handset.state = "registering"
        handset.send(message, handset.started_at)
    remaining = count
    errors: dict[str, int] = {}
    deadline = started + 30.0
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
                handset.send(handset.answer(data), time.monotonic())
            elif status == b"200" and handset.state == "authenticating":
                handset.state = "registered"
                handset.done_at = time.monotonic()
                remaining -= 1
            elif status[:1] in (b"4", b"5", b"6") and status != b"401":
                errors[status.decode()] = errors.get(status.decode(), 0) + 1
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
    cpu_after = cpu_seconds(daemon.proc.pid)
    user_s, system_s = (after - before for after, before in zip(cpu_after, cpu_before,
                                                                 strict=True))
    cpu_used = user_s + system_s
    done = [h for h in handsets if h.state == "registered"]
    latencies = sorted(h.done_at - h.started_at for h in done)
    last = max((h.done_at for h in done), default=finished)
    for handset in handsets:
        selector.unregister(handset.sock)
        handset.sock.close()
    wall = last - started
    return {
        "handsets": count,
        "registered": len(done),
        "wall_s": round(wall, 4),
        "registrations_per_s": round(len(done) / wall, 1) if wall > 0 else None,
        "latency_p50_ms": round(_percentile(latencies, 50) * 1000, 2) if latencies else None,
        "latency_p99_ms": round(_percentile(latencies, 99) * 1000, 2) if latencies else None,
        "retransmissions": sum(h.retries for h in handsets),
        "errors": errors,
        "appliance_cpu_s": round(cpu_used, 3),
        "appliance_cpu_user_s": round(user_s, 3),
        "appliance_cpu_system_s": round(system_s, 3),
        "appliance_cpu_s_per_1000": round(cpu_used / max(1, len(done)) * 1000, 3),
        "handsets_cpu_s": round(bench_cpu, 3),
        "goal_s": GOALS_S.get(count),
        "goal_met": wall <= GOALS_S[count] and len(done) == count
        if count in GOALS_S else None,
    }


def _percentile(values: list[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if p < 100 \
        else values[-1]


class Endpoint:
    """A bench UA on one UDP socket: send, and wait for a message matching a predicate."""

    def __init__(self, address: str, server: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.settimeout(5.0)
        self.server = server
        self.local = self.sock.getsockname()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def receive(self) -> bytes:
        return self.sock.recvfrom(65535)[0]

    def register(self, user: str, password: str) -> None:
        call_id = sipua.unique("reg-")
        self.send(sipua.register(user, "127.0.0.1", local=self.local, call_id=call_id, cseq=1))
        reply = sipua.parse_reply(self.receive())
        authorization = sipua.digest_answer(sipua.pick_challenge(reply), method="REGISTER",
                                            uri="sip:127.0.0.1", username=user,
                                            password=password)
        self.send(sipua.register(user, "127.0.0.1", local=self.local, call_id=call_id, cseq=2,
                                 authorization=authorization))
        reply = sipua.parse_reply(self.receive())
        if reply.status != 200:
            raise RuntimeError(f"callee registration failed: {reply.status}")


def invite_latency(port: int, count: int, calls: int) -> dict:
    """Place ``calls`` calls from one handset to another; time INVITE -> relayed 180."""
    server = ("127.0.0.1", port)
    caller_user, callee_user = str(20000 + count), str(20000 + count + 1)
    callee = Endpoint("127.2.0.2", server)
    callee.register(callee_user, f"pw-{count + 1}")
    caller = Endpoint("127.2.0.1", server)
    uri = f"sip:{callee_user}@127.0.0.1"
    body = (b"v=0\r\no=- 1 1 IN IP4 127.2.0.1\r\ns=-\r\nc=IN IP4 127.2.0.1\r\nt=0 0\r\n"
            b"m=audio 40000 RTP/AVP 0\r\n")

    def invite(call_id: str, tag: str, branch: str, authorization: str | None) -> bytes:
        headers = [("Content-Type", "application/sdp")]
        if authorization:
            headers.append(("Proxy-Authorization", authorization))
        return sipua.request(
            "INVITE", uri, local=caller.local, to=f"<{uri}>",
            from_=f"<sip:{caller_user}@127.0.0.1>;tag={tag}", call_id=call_id, cseq=1,
            branch=branch, contact=f"<sip:{caller_user}@{caller.local[0]}:{caller.local[1]}>",
            headers=headers, body=body)

    def ack(call_id: str, tag: str, branch: str, to: str) -> bytes:
        return sipua.request("ACK", uri, local=caller.local, to=to,
                             from_=f"<sip:{caller_user}@127.0.0.1>;tag={tag}", call_id=call_id,
                             cseq=1, branch=branch)

    # One unauthenticated attempt to get a challenge; the handset then reuses its nonce
    # with a rising nonce count, as handsets do.
    branch = sipua.unique("z9hG4bK")
    caller.send(invite("challenge", "t0", branch, None))
    reply = sipua.parse_reply(caller.receive())
    challenge = sipua.pick_challenge(reply)
    caller.send(ack("challenge", "t0", branch, reply.header("to")))
    samples = []
    for nc in range(1, calls + 1):
        call_id, tag, branch = sipua.unique("call-"), f"t{nc}", sipua.unique("z9hG4bK")
        authorization = sipua.digest_answer(challenge, method="INVITE", uri=uri,
                                            username=caller_user, password=f"pw-{count}",
                                            nc=nc)
        sent = time.monotonic()
        caller.send(invite(call_id, tag, branch, authorization))
        ringing = final = None
        deadline = sent + 5.0
        while final is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"call {nc}: no final answer within 5 s")
            if _readable(callee.sock):
                data = callee.sock.recv(65535)
                if data.startswith(b"INVITE"):
                    _answer_invite(callee, data)  # 180 Ringing, then 486 Busy Here
            if _readable(caller.sock):
                reply = sipua.parse_reply(caller.receive())
                if reply is None:
                    continue
                if reply.status == 180 and ringing is None:
                    ringing = time.monotonic()
                elif reply.status >= 300:
                    final = reply
        if ringing is None:
            raise RuntimeError(f"call {nc}: no 180 relayed")
        samples.append(ringing - sent)
        caller.send(ack(call_id, tag, branch, final.header("to")))
    samples.sort()
    return {"calls": calls, "p50_ms": round(_percentile(samples, 50) * 1000, 3),
            "p99_ms": round(_percentile(samples, 99) * 1000, 3),
            "max_ms": round(samples[-1] * 1000, 3)}


def _readable(sock: socket.socket, timeout: float = 0.0005) -> bool:
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    try:
        return bool(selector.select(timeout))
    finally:
        selector.close()


def _answer_invite(callee: Endpoint, data: bytes) -> None:
    """180 Ringing then 486 Busy Here, copying Via/From/To/Call-ID/CSeq as a UAS does."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")[1:]
    keep = [line for line in lines if line.split(":", 1)[0].lower() in
            ("via", "v", "from", "f", "call-id", "i", "cseq", "record-route")]
    to = next(line for line in lines if line.split(":", 1)[0].lower() in ("to", "t"))
    to = to + ";tag=callee1"
    for status in ("180 Ringing", "486 Busy Here"):
        text = "\r\n".join([f"SIP/2.0 {status}", *keep, to, "Content-Length: 0"]) + "\r\n\r\n"
        callee.send(text.encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.sizes) + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    results: dict = {"benchmark": "sip registration storm and INVITE relay",
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "kernel": platform.release()}}
    with tempfile.TemporaryDirectory(prefix="jbc-bench-sip-") as tmp:
        for size in args.sizes:
            workdir = pathlib.Path(tmp) / f"n{size}"
            workdir.mkdir()
            daemon, port = start_daemon(workdir, size)
            try:
                time.sleep(0.3)  # let start-up work settle before timing
                results[f"storm_{size}"] = storm(port, size, daemon)
                if size == args.sizes[-1] and args.calls:
                    results["invite_to_180"] = invite_latency(port, size, args.calls)
            finally:
                daemon.stop()
    results["goals_met"] = all(results[f"storm_{n}"]["goal_met"] for n in args.sizes
                               if n in GOALS_S)
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
