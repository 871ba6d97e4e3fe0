"""A small, strict HTTP/1.1 client: h11's sans-I/O response reader with our limits on top,
and a thin asyncio shell.

One request per connection (``Connection: close``): the cloud link sends a request every few
minutes, so keeping connections alive would buy nothing and cost state. The parser takes
bytes in any split and returns the response once complete; h11 knows Content-Length, chunked
transfer coding (trailers skipped) and read-until-close, and with our checks the parser
refuses what it cannot trust (oversized heads or bodies, too many headers, conflicting or bad
lengths, bad chunk sizes) with a :class:`HttpError`. There is no timer in the core: the shell
bounds the whole exchange with one deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import ssl
from collections.abc import Mapping

import h11

from .errors import SyncError

MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 32 * 1024 * 1024

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class HttpError(SyncError):
    """The exchange failed: the peer broke the protocol."""


class IncompleteResponse(HttpError):
    """The connection ended before the whole response arrived (a network cut, a reset)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int
    reason: str
    headers: Mapping[str, str]
    """Lower-cased names; repeated headers joined with ', ' (RFC 9110 5.3)."""
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


def encode_request(method: str, target: str, *, host: str,
                   headers: Mapping[str, str] | None = None, body: bytes | None = None) -> bytes:
    if not _TOKEN.match(method.encode()) or any(c in target for c in " \r\n") or not target:
        raise ValueError(f"bad request line {method!r} {target!r}")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    for name, value in (headers or {}).items():
        if not _TOKEN.match(name.encode()) or "\r" in value or "\n" in value:
            raise ValueError(f"bad header {name!r}")
        lines.append(f"{name}: {value}")
    if body is not None or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body or b'')}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


class ResponseParser:
    """Feed the bytes of one response; :meth:`feed` returns it once complete.

    h11 does the HTTP/1.1 (status line, header syntax, Content-Length, chunked coding and its
    trailers, read-until-close, interim 1xx responses, HEAD/204/304 without a body); on top
    of it the limits of a strict reader that a hostile server must not get past: a head of
    at most :data:`MAX_HEAD_BYTES` and :data:`MAX_HEADERS` lines, a body of at most
    ``max_body``, and no message with both Content-Length and Transfer-Encoding (h11 lets the
    latter win, as RFC 9112 6.3 allows, but the same section calls it a smuggling sign).

    Call :meth:`end_of_stream` when the peer closes; a response delimited by close completes
    there, anything else incomplete raises :class:`IncompleteResponse`.
    """

    def __init__(self, *, request_method: str = "GET", max_body: int = MAX_BODY_BYTES) -> None:
        self.max_body = max_body
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        # Our side of the exchange, as h11 must know it to frame the answer (HEAD has none).
        self._h11.send(h11.Request(method=request_method, target="/", headers=[("Host", "-")]))
        self._h11.send(h11.EndOfMessage())
        self._status = 0
        self._reason = ""
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._done: Response | None = None

    def feed(self, data: bytes) -> Response | None:
        if self._done is not None or not data:
            return self._done  # bytes after a complete response are ignored (we close)
        self._h11.receive_data(data)
        return self._drain()

    def end_of_stream(self) -> Response:
        if self._done is not None:
            return self._done
        self._h11.receive_data(b"")
        response = self._drain(closing=True)
        if response is None:
            raise IncompleteResponse("connection closed before the response was complete")
        return response

    def _drain(self, *, closing: bool = False) -> Response | None:
        while self._done is None:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as error:
                if closing or "peer unexpectedly closed" in str(error):
                    raise IncompleteResponse(f"connection closed before the response was "
                                             f"complete ({error})") from None
                raise HttpError(_explain(error)) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            if isinstance(event, h11.Response):
                self._head(event)
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self.max_body:
                    raise HttpError(f"response body over the limit of {self.max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                self._done = Response(status=self._status, reason=self._reason,
                                      headers=dict(self._headers), body=bytes(self._body))
            elif isinstance(event, h11.ConnectionClosed):
                raise IncompleteResponse("connection closed before the response began")
            # h11.InformationalResponse (100 Continue, 103): skipped; the final one follows.
        return self._done

    def _head(self, response: h11.Response) -> None:
        head_bytes = sum(len(name) + len(value) + 4 for name, value in response.headers)
        if head_bytes > MAX_HEAD_BYTES:
            raise HttpError(f"response head longer than {MAX_HEAD_BYTES} bytes")
        if len(response.headers) > MAX_HEADERS:
            raise HttpError(f"more than {MAX_HEADERS} response headers")
        self._status = response.status_code
        self._reason = response.reason.decode("latin-1")
        for raw_name, raw_value in response.headers:
            key, text = raw_name.decode("ascii"), raw_value.decode("latin-1")
            self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text
        if "transfer-encoding" in self._headers and "content-length" in self._headers:
            raise HttpError("both Transfer-Encoding and Content-Length (request smuggling?)")
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise HttpError(f"response body of {length} bytes is over the limit")


def _explain(error: h11.RemoteProtocolError) -> str:
    """h11's complaint, said the way the cloud link reports protocol errors."""
    text = str(error)
    if "Content-Length" in text:
        return f"bad Content-Length ({text})"
    if "Transfer-Encoding" in text:
        return f"unsupported Transfer-Encoding ({text})"
    if "chunk" in text:
        return f"bad chunk ({text})"
    if "incomplete event" in text or "too long" in text:
        return f"response head longer than {MAX_HEAD_BYTES} bytes"
    return f"malformed response ({text})"


# ---------------------------------------------------------------------------------------------
# asyncio shell


async def exchange(*, host: str, port: int, ssl_context: ssl.SSLContext, server_hostname: str,
                   method: str, target: str, headers: Mapping[str, str] | None = None,
                   body: bytes | None = None, timeout_s: float,
                   local_address: str | None = None) -> Response:
    """Connect over TLS, send one request, read the whole response, close.

    Raises ``ssl.SSLError`` / ``ssl.SSLCertVerificationError`` for TLS problems, ``OSError``
    for network problems, ``TimeoutError`` when the whole exchange takes longer than
    ``timeout_s``, :class:`HttpError` for protocol problems.
    """
    data = encode_request(method, target, host=_host_header(server_hostname, port),
                          headers=headers, body=body)
    parser = ResponseParser(request_method=method)
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=server_hostname,
            local_addr=(local_address, 0) if local_address else None,
            ssl_handshake_timeout=timeout_s)
        try:
            writer.write(data)
            await writer.drain()
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return parser.end_of_stream()
                response = parser.feed(chunk)
                if response is not None:
                    return response
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


def _host_header(name: str, port: int) -> str:
    host = f"[{name}]" if ":" in name else name
    return f"{host}:{port}"
