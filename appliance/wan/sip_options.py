"""The SIP OPTIONS "ping" the WAN monitor sends to the cloud's SIP edges, pure.

Only what a keep-alive probe needs (RFC 3261 sections 7, 8.1, 11, 18.3): build one OPTIONS
request, split a byte stream into messages by Content-Length, parse a response's status line
and headers, and check that a response answers our request (top Via branch, Call-ID, CSeq).
Any final response means the edge is reachable; 503 means it cannot serve.
"""

from __future__ import annotations

import dataclasses
import secrets

BRANCH_MAGIC = "z9hG4bK"  # RFC 3261 8.1.1.7
COMPACT = {"v": "via", "i": "call-id", "l": "content-length", "f": "from", "t": "to",
           "m": "contact", "c": "content-type"}
MAX_MESSAGE = 65535


class SipProbeError(Exception):
    """A message the probe cannot use (malformed, or not an answer to our request)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OptionsRequest:
    data: bytes
    branch: str
    call_id: str
    cseq: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SipResponse:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    """(lower-case long header name, value), in order."""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def final(self) -> bool:
        return self.status >= 200


def build_options(*, host: str, port: int, transport: str, server_name: str,
                  local_host: str, local_port: int, cseq: int = 1) -> OptionsRequest:
    """An OPTIONS request to ``server_name`` (or ``host``) as the request URI."""
    transport = transport.lower()
    uri_host = server_name or _host_literal(host)
    scheme = "sips" if transport == "tls" else "sip"
    default_port = 5061 if transport == "tls" else 5060
    uri = f"{scheme}:{uri_host}" + ("" if port == default_port else f":{port}")
    if transport == "tcp":
        uri += ";transport=tcp"
    branch = BRANCH_MAGIC + secrets.token_hex(8)
    call_id = f"{secrets.token_hex(12)}@{_host_literal(local_host)}"
    sent_by = f"{_host_literal(local_host)}:{local_port}"
    tag = secrets.token_hex(6)
    lines = [
        f"OPTIONS {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {sent_by};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:wan-probe@{_host_literal(local_host)}>;tag={tag}",
        f"To: <{scheme}:{uri_host}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} OPTIONS",
        "Accept: application/sdp",
        "User-Agent: jbc-wan-monitor",
        "Content-Length: 0",
    ]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return OptionsRequest(data=data, branch=branch, call_id=call_id, cseq=cseq)


def parse_response(data: bytes) -> SipResponse:
    head, _, _body = data.partition(b"\r\n\r\n")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipProbeError("not UTF-8") from None
    lines = text.split("\r\n")
    while lines and not lines[0]:  # keep-alive CRLFs before a message (RFC 5626 3.5.1)
        lines.pop(0)
    if not lines:
        raise SipProbeError("empty message")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] != "SIP/2.0":
        raise SipProbeError(f"not a SIP/2.0 response: {lines[0][:60]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise SipProbeError(f"bad status code {parts[1][:10]!r}") from None
    if not 100 <= status <= 699:
        raise SipProbeError(f"status code {status} out of range")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded continuation line
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipProbeError(f"header line without a colon: {line[:60]!r}")
        key = name.strip().lower()
        headers.append((COMPACT.get(key, key), value.strip()))
    return SipResponse(status=status, reason=parts[2] if len(parts) > 2 else "",
                       headers=tuple(headers))


def answers(response: SipResponse, request: OptionsRequest) -> bool:
    """True when ``response`` is the answer to ``request`` (RFC 3261 17.1.3)."""
    via = response.header("via") or ""
    top = via.split(",", 1)[0]
    branch = None
    for param in top.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "branch":
            branch = value
    cseq = (response.header("cseq") or "").split()
    return (branch == request.branch and response.header("call-id") == request.call_id
            and cseq == [str(request.cseq), "OPTIONS"])


class StreamFramer:
    """Splits a TCP/TLS byte stream into whole SIP messages (RFC 3261 18.3)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages = []
        while True:
            self._buffer = self._buffer.lstrip(b"\r\n")
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_MESSAGE:
                    raise SipProbeError("header section too long")
                return messages
            length = 0
            for line in self._buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() in (b"content-length", b"l"):
                    try:
                        length = int(value.strip())
                    except ValueError:
                        raise SipProbeError("bad Content-Length") from None
            if length < 0 or length > MAX_MESSAGE:
                raise SipProbeError("bad Content-Length")
            total = end + 4 + length
            if len(self._buffer) < total:
                return messages
            messages.append(self._buffer[:total])
            self._buffer = self._buffer[total:]


def _host_literal(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
