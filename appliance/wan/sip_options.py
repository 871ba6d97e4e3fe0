"""The SIP OPTIONS "ping" the WAN monitor sends to the cloud's SIP edges, pure.

Built on the appliance's SIP message model and parser (:mod:`appliance.sip`): this module
only adds what a keep-alive probe needs (RFC 3261 sections 8.1, 11 and 17.1.3): one OPTIONS
request, and the test that a response answers it (top Via branch, Call-ID, CSeq). Any final
response means the edge is reachable; 503 means it cannot serve.
"""

from __future__ import annotations

import dataclasses
import secrets

from appliance.sip.errors import SipError
from appliance.sip.message import MAGIC_COOKIE, Headers, Request, Response, new_tag
from appliance.sip.parser import StreamFramer as SipStreamFramer
from appliance.sip.parser import parse_datagram

from .errors import ProbeAnswerError


class SipProbeError(ProbeAnswerError):
    """A message the probe cannot use (malformed, or not a response)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OptionsRequest:
    request: Request
    data: bytes
    branch: str
    call_id: str
    cseq: int


def build_options(*, host: str, port: int, transport: str, server_name: str,
                  local_host: str, local_port: int, cseq: int = 1,
                  call_id: str | None = None) -> OptionsRequest:
    """An OPTIONS request to ``server_name`` (or ``host``) as the request URI; ``call_id``
    continues an earlier request's call (the next attempt, with the next ``cseq``)."""
    transport = transport.lower()
    uri_host = server_name or _host_literal(host)
    scheme = "sips" if transport == "tls" else "sip"
    default_port = 5061 if transport == "tls" else 5060
    uri = f"{scheme}:{uri_host}" + ("" if port == default_port else f":{port}")
    if transport == "tcp":
        uri += ";transport=tcp"
    branch = MAGIC_COOKIE + secrets.token_hex(8)
    local = _host_literal(local_host)
    call_id = call_id or f"{secrets.token_hex(12)}@{local}"
    headers = Headers()
    headers.add("Via", f"SIP/2.0/{transport.upper()} {local}:{local_port};branch={branch};rport")
    headers.add("Max-Forwards", "70")
    headers.add("From", f"<sip:wan-probe@{local}>;tag={new_tag()}")
    headers.add("To", f"<{scheme}:{uri_host}>")
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{cseq} OPTIONS")
    headers.add("Accept", "application/sdp")
    headers.add("User-Agent", "jbc-wan-monitor")
    request = Request("OPTIONS", uri, headers)
    return OptionsRequest(request=request, data=request.to_bytes(), branch=branch,
                          call_id=call_id, cseq=cseq)


def parse_response(data: bytes) -> Response:
    """One datagram (or one framed stream message) as a response; SipProbeError otherwise."""
    try:
        message = parse_datagram(data)
    except (SipError, ValueError) as error:
        raise SipProbeError(str(error)) from None
    if not isinstance(message, Response):
        raise SipProbeError("a request, not a response")
    return message


def answers(response: Response, request: OptionsRequest) -> bool:
    """True when ``response`` is the answer to ``request`` (RFC 3261 17.1.3)."""
    try:
        return (response.top_via.branch == request.branch
                and response.call_id == request.call_id
                and response.cseq == (request.cseq, "OPTIONS"))
    except (SipError, ValueError):
        return False


class StreamFramer:
    """Whole responses out of a TCP/TLS byte stream (RFC 3261 18.3; keep-alive CRLFs and
    requests are skipped). A stream whose framing is lost raises SipProbeError."""

    def __init__(self) -> None:
        self._framer = SipStreamFramer()

    def feed(self, data: bytes) -> list[Response]:
        responses = []
        for item in self._framer.feed(data):
            if isinstance(item, Response):
                responses.append(item)
            elif isinstance(item, SipError) and getattr(item, "fatal", False):
                raise SipProbeError(str(item))
        return responses


def _host_literal(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
