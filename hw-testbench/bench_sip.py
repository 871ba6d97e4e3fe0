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
import json
import os
import pathlib
import platform
import resource
import selectors
import socket
import sys
import tempfile
import time

from jbcbench import regstorm, sipua
from jbcbench.daemon import DaemonProcess
from jbcbench.regstorm import site_of
from jbcbench.sipdaemon import sip_daemon, sip_ports

GOALS_S = {500: 0.5, 2000: 2.0}
REALM = "jbc"


def start_daemon(workdir: pathlib.Path, count: int) -> tuple[DaemonProcess, int]:
    site = site_of(count)
    # One bench handset places hundreds of calls back to back for the relay-latency figure;
    # a real phone never does, so the per-source rate limit is lifted for the bench.
    daemon = sip_daemon(workdir, site, transports=["udp"], realm=REALM,
                        rate_per_source=10000.0, burst_per_source=10000.0).start()
    return daemon, sip_ports(daemon)["udp"]


def storm(port: int, count: int, daemon: DaemonProcess) -> dict:
    result = regstorm.storm(("127.0.0.1", port), count, daemon.proc.pid, realm=REALM)
    wall = result["wall_s"]
    result["goal_s"] = GOALS_S.get(count)
    result["goal_met"] = wall <= GOALS_S[count] and result["registered"] == count \
        if count in GOALS_S else None
    return result





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
    return {"calls": calls, "p50_ms": round(regstorm.percentile(samples, 50) * 1000, 3),
            "p99_ms": round(regstorm.percentile(samples, 99) * 1000, 3),
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
