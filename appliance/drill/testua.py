"""The fire drill's internal test user agent: registers to the local registrar and calls
itself through the local proxy, over real SIP/UDP on the registrar's own address.

1. REGISTER (digest-authenticated, as a probe identity jbcd lets register in any WAN state)
   until 200 OK: the registrar answers and authenticates;
2. INVITE to its own address of record through the proxy (proxy-authenticated): the proxy
   routes it to the binding just made and the INVITE arrives back at this UA, which answers
   486 Busy Here (no media is set up; the call reaching the phone is what is proven) and sees
   that answer come back through the proxy;
3. REGISTER with expires 0: the binding is removed.

Every request is retransmitted on the RFC 3261 timer A/E schedule until answered or
``timeout_s`` passes. The SIP messages are built and parsed with the appliance's own SIP
library (appliance.sip.message / parser), the digest response per RFC 2617/7616 (qop=auth).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from typing import Any

from appliance.sip.digest import parse_digest_params
from appliance.sip.message import Request, Response
from appliance.sip.parser import Limits, parse_datagram

T1 = 0.5


class TestUaError(Exception):
    """A step of the test call failed; the message says which and how."""


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Any, tuple[str, int]]] = asyncio.Queue(100)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            message = parse_datagram(data, Limits())
        except Exception:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait((message, addr))


class TestUserAgent:
    __test__ = False  # not a pytest class

    def __init__(self, *, username: str, password: str, registrar: tuple[str, int],
                 bind_host: str, timeout_s: float = 8.0) -> None:
        self.username = username
        self.password = password
        self.registrar = registrar
        self.bind_host = bind_host
        self.timeout_s = timeout_s
        self.call_id_base = secrets.token_hex(8)
        self.cseq = 0
        self.endpoint: _Endpoint | None = None
        self.port = 0
        self.timings: dict[str, float] = {}

    async def __aenter__(self) -> TestUserAgent:
        loop = asyncio.get_running_loop()
        _, self.endpoint = await loop.create_datagram_endpoint(
            _Endpoint, local_addr=(self.bind_host, 0))
        self.port = self.endpoint.transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.endpoint is not None and self.endpoint.transport is not None:
            self.endpoint.transport.close()

    # -- helpers -----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.registrar[0]

    def _aor(self) -> str:
        return f"sip:{self.username}@{self.host}"

    def _request(self, method: str, uri: str, *, call_id: str, from_tag: str,
                 extra: list[tuple[str, str]] = (), body: bytes = b"") -> Request:
        self.cseq += 1
        branch = "z9hG4bK" + secrets.token_hex(8)
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.bind_host}:{self.port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <{self._aor()}>;tag={from_tag}",
            f"To: <{self._aor()}>",
            f"Call-ID: {call_id}",
            f"CSeq: {self.cseq} {method}",
            f"Contact: <sip:{self.username}@{self.bind_host}:{self.port}>",
            "User-Agent: jbc-drill",
        ]
        lines += [f"{name}: {value}" for name, value in extra]
        lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        message = parse_datagram(raw, Limits())
        assert isinstance(message, Request)
        return message

    def _send(self, message: Request | Response, to: tuple[str, int]) -> None:
        self.endpoint.transport.sendto(message.to_bytes(), to)

    async def _transaction(self, request: Request, *, also=None) -> Response:
        """Send ``request`` to the registrar/proxy, retransmitting, until a final answer for
        it arrives. ``also(message, addr)`` sees every other message meanwhile."""
        deadline = time.monotonic() + self.timeout_s
        interval = T1
        next_send = 0.0
        branch = request.top_via.param("branch")
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise TestUaError(f"no final answer to {request.method} from "
                                  f"{self.host}:{self.registrar[1]} within "
                                  f"{self.timeout_s:g} s")
            if now >= next_send:
                self._send(request, self.registrar)
                next_send = now + interval
                interval = min(interval * 2, 4.0)
            try:
                async with asyncio.timeout(max(0.01, min(next_send, deadline) - now)):
                    message, addr = await self.endpoint.queue.get()
            except TimeoutError:
                continue
            if isinstance(message, Response) and message.top_via.param("branch") == branch:
                if message.status >= 200:
                    return message
                next_send = deadline  # provisional: stop retransmitting, wait for final
            elif also is not None:
                also(message, addr)

    def _authorization(self, challenge: Response, request: Request, header: str) -> str:
        params = parse_digest_params(challenge.headers.get(header) or "") or {}
        realm, nonce = params.get("realm", ""), params.get("nonce", "")
        algorithm = params.get("algorithm", "MD5")
        hash_name = {"MD5": "md5", "SHA-256": "sha256"}.get(algorithm)
        if hash_name is None or not nonce:
            raise TestUaError(f"cannot answer the challenge: {challenge.headers.get(header)}")

        def h(text: str) -> str:
            return hashlib.new(hash_name, text.encode()).hexdigest()

        uri = str(request.uri)
        ha1 = h(f"{self.username}:{realm}:{self.password}")
        ha2 = h(f"{request.method}:{uri}")
        cnonce, nc = secrets.token_hex(8), "00000001"
        if "auth" in (params.get("qop") or "").split(","):
            response = h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
            qop = f', qop=auth, nc={nc}, cnonce="{cnonce}"'
        else:
            response = h(f"{ha1}:{nonce}:{ha2}")
            qop = ""
        opaque = f', opaque="{params["opaque"]}"' if "opaque" in params else ""
        return (f'Digest username="{self.username}", realm="{realm}", nonce="{nonce}", '
                f'uri="{uri}", response="{response}", algorithm={algorithm}{qop}{opaque}')

    async def _authenticated(self, method: str, uri: str, *, call_id: str, from_tag: str,
                             extra: list[tuple[str, str]] = (), also=None) -> Response:
        request = self._request(method, uri, call_id=call_id, from_tag=from_tag, extra=extra)
        answer = await self._transaction(request, also=also)
        if answer.status in (401, 407):
            header = "www-authenticate" if answer.status == 401 else "proxy-authenticate"
            field = "Authorization" if answer.status == 401 else "Proxy-Authorization"
            retry = self._request(method, uri, call_id=call_id, from_tag=from_tag,
                                  extra=[*extra, (field, self._authorization(
                                      answer, request, header))])
            answer = await self._transaction(retry, also=also)
        return answer

    # -- the drill's steps --------------------------------------------------------------------

    async def register(self, expires: int = 60) -> float:
        started = time.monotonic()
        answer = await self._authenticated(
            "REGISTER", f"sip:{self.host}", call_id=f"{self.call_id_base}-reg",
            from_tag="drillreg", extra=[("Expires", str(expires))])
        if answer.status != 200:
            raise TestUaError(f"the registrar answered REGISTER with {answer.status} "
                              f"{answer.reason}")
        return time.monotonic() - started

    async def call_self(self) -> float:
        """INVITE our own AOR through the proxy; succeed when it arrives here and our 486
        comes back. Returns the seconds from INVITE to that answer."""
        started = time.monotonic()
        reached: list[float] = []

        def answer_incoming(message, addr) -> None:
            if isinstance(message, Request) and message.method == "INVITE":
                reached.append(time.monotonic() - started)
                self._send(message.response(486, "Busy Here (jbc drill reached)"), addr)
            elif isinstance(message, Request) and message.method not in ("ACK",):
                self._send(message.response(481), addr)

        answer = await self._authenticated(
            "INVITE", self._aor(), call_id=f"{self.call_id_base}-call", from_tag="drillcall",
            extra=[("Content-Type", "application/sdp")], also=answer_incoming)
        if not reached:
            raise TestUaError(f"the proxy answered {answer.status} {answer.reason}; the call "
                              "never reached the test phone's registration")
        if answer.status != 486:
            raise TestUaError(f"the call reached the test phone but the proxy answered "
                              f"{answer.status} {answer.reason}")
        self._send(self._ack_for(answer), self.registrar)
        return time.monotonic() - started

    def _ack_for(self, answer: Response) -> Request:
        """ACK for a non-2xx final answer: same branch, same CSeq number (RFC 3261 17.1.1.3)."""
        lines = [f"ACK {self._aor()} SIP/2.0", f"Via: {answer.headers.get('via')}",
                 "Max-Forwards: 70", f"From: {answer.headers.get('from')}",
                 f"To: {answer.headers.get('to')}",
                 f"Call-ID: {answer.headers.get('call-id')}",
                 f"CSeq: {answer.cseq[0]} ACK", "Content-Length: 0"]
        message = parse_datagram(("\r\n".join(lines) + "\r\n\r\n").encode(), Limits())
        assert isinstance(message, Request)
        return message

    async def unregister(self) -> None:
        await self._authenticated("REGISTER", f"sip:{self.host}",
                                  call_id=f"{self.call_id_base}-reg", from_tag="drillreg",
                                  extra=[("Expires", "0")])
