"""Timing calls through a SIP server for the benchmarks: INVITE -> 180, one call after
another, between two bench UAs registered with digest through ``server`` (a registrar, or
an outbound proxy in front of one: the Request-URIs name ``domain``)."""

from __future__ import annotations

import selectors
import socket
import time

from jbcbench import regstorm, sipua

SDP = (b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0\r\n")


class BenchUa:
    """A bench user agent on one UDP socket: send to the server, wait for what comes."""

    def __init__(self, address: str, server: tuple[str, int], user: str, password: str,
                 domain: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.settimeout(5.0)
        self.server = server
        self.local = self.sock.getsockname()
        self.user, self.password, self.domain = user, password, domain
        self.contact = f"<sip:{user}@{self.local[0]}:{self.local[1]}>"

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def receive(self) -> bytes:
        return self.sock.recvfrom(65535)[0]

    def readable(self, timeout: float = 0.0005) -> bool:
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ)
        try:
            return bool(selector.select(timeout))
        finally:
            selector.close()

    def register(self) -> None:
        call_id = sipua.unique("reg-")
        self.send(sipua.register(self.user, self.domain, local=self.local, call_id=call_id,
                                 cseq=1, contact=self.contact))
        reply = sipua.parse_reply(self.receive())
        if reply.status == 200:
            return
        authorization = sipua.digest_answer(
            sipua.pick_challenge(reply), method="REGISTER", uri=f"sip:{self.domain}",
            username=self.user, password=self.password)
        self.send(sipua.register(self.user, self.domain, local=self.local, call_id=call_id,
                                 cseq=2, contact=self.contact, authorization=authorization))
        reply = sipua.parse_reply(self.receive())
        if reply.status != 200:
            raise RuntimeError(f"{self.user}: registration failed: {reply.status}")

    def ring_then_busy(self, invite: bytes) -> None:
        """Answer an INVITE as a UAS: 180 Ringing, then 486 Busy Here."""
        message = sipua.parse_message(invite)
        for status in (180, 486):
            self.send_to_sender(sipua.response_for(message, status, to_tag="callee1"))

    def send_to_sender(self, data: bytes) -> None:
        self.sock.sendto(data, self._last_sender)

    def receive_from(self) -> bytes:
        data, self._last_sender = self.sock.recvfrom(65535)
        return data


def invite_to_180(server: tuple[str, int], first_index: int, calls: int, *, domain: str,
                  realm: str, address_base: str) -> dict:
    """Register two UAs (users ``first_index`` and the next), then place ``calls`` calls
    from one to the other and time INVITE -> 180 for each."""
    caller_user, callee_user = regstorm.user_of(first_index), regstorm.user_of(first_index + 1)
    callee = BenchUa(f"{address_base}.2", server, callee_user,
                     regstorm.password_of(first_index + 1), domain)
    caller = BenchUa(f"{address_base}.1", server, caller_user,
                     regstorm.password_of(first_index), domain)
    callee.register()
    caller.register()
    uri = f"sip:{callee_user}@{domain}"

    def request(method: str, call_id: str, tag: str, branch: str, *, to: str | None = None,
                authorization: str | None = None) -> bytes:
        headers = [("Content-Type", "application/sdp")] if method == "INVITE" else []
        if authorization:
            headers.append(("Proxy-Authorization", authorization))
        return sipua.request(method, uri, local=caller.local, to=to or f"<{uri}>",
                             from_=f"<sip:{caller_user}@{domain}>;tag={tag}", call_id=call_id,
                             cseq=1, branch=branch, contact=caller.contact, headers=headers,
                             body=SDP if method == "INVITE" else b"")

    # One unanswered attempt gets the challenge; every call then reuses its nonce with a
    # rising nonce count, as handsets do.
    branch = sipua.unique("z9hG4bK")
    caller.send(request("INVITE", "challenge", "t0", branch))
    reply = None
    while reply is None or reply.status < 200:
        reply = sipua.parse_reply(caller.receive())
    challenge = sipua.pick_challenge(reply)
    caller.send(request("ACK", "challenge", "t0", branch, to=reply.header("to")))
    samples = []
    for nc in range(1, calls + 1):
        call_id, tag, branch = sipua.unique("call-"), f"t{nc}", sipua.unique("z9hG4bK")
        authorization = sipua.digest_answer(challenge, method="INVITE", uri=uri,
                                            username=caller_user,
                                            password=regstorm.password_of(first_index), nc=nc)
        sent = time.monotonic()
        caller.send(request("INVITE", call_id, tag, branch, authorization=authorization))
        ringing = final = None
        deadline = sent + 5.0
        while final is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"call {nc}: no final answer within 5 s")
            if callee.readable():
                data = callee.receive_from()
                if data.startswith(b"INVITE"):
                    callee.ring_then_busy(data)
            if caller.readable():
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
        caller.send(request("ACK", call_id, tag, branch, to=final.header("to")))
    samples.sort()
    for ua in (caller, callee):
        ua.sock.close()
    return {"calls": calls, "p50_ms": round(regstorm.percentile(samples, 50) * 1000, 3),
            "p90_ms": round(regstorm.percentile(samples, 90) * 1000, 3),
            "p99_ms": round(regstorm.percentile(samples, 99) * 1000, 3),
            "max_ms": round(samples[-1] * 1000, 3),
            "over_10ms": sum(1 for s in samples if s > 0.010)}
