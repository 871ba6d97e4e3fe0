"""A small, strict HTTP/1.1 client: a pure response parser and a thin asyncio shell.

One request per connection (``Connection: close``): the cloud link sends a request every few
minutes, so keeping connections alive would buy nothing and cost state. The parser takes
bytes in any split and returns the response once complete; it knows Content-Length, chunked
transfer coding (trailers skipped) and read-until-close, and refuses what it cannot trust
(oversized heads or bodies, conflicting lengths, bad chunk sizes) with a :class:`HttpError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import ssl
from collections.abc import Mapping

MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 32 * 1024 * 1024

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_STATUS_LINE = re.compile(rb"^HTTP/1\.([01]) ([0-9]{3})(?: (.*))?$")


class HttpError(Exception):
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

    Call :meth:`end_of_stream` when the peer closes; a response delimited by close completes
    there, anything else incomplete raises :class:`HttpError`.
    """

    def __init__(self, *, request_method: str = "GET", max_body: int = MAX_BODY_BYTES) -> None:
        self.request_method = request_method
        self.max_body = max_body
        self._buffer = bytearray()
        self._state = "head"
        self._status = 0
        self._reason = ""
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._remaining = 0
        self._done: Response | None = None

    def feed(self, data: bytes) -> Response | None:
        if self._done is not None:
            return self._done  # bytes after a complete response are ignored (we close)
        self._buffer += data
        while self._done is None:
            progressed = getattr(self, f"_step_{self._state}")()
            if not progressed:
                break
        return self._done

    def end_of_stream(self) -> Response:
        if self._done is not None:
            return self._done
        if self._state == "until_close":
            self._body += self._buffer
            self._buffer.clear()
            self._check_body_size()
            return self._finish()
        raise IncompleteResponse(f"connection closed before the response was complete "
                                 f"({self._state})")

    # -- states ------------------------------------------------------------------------------

    def _step_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise HttpError(f"response head longer than {MAX_HEAD_BYTES} bytes")
            return False
        if end > MAX_HEAD_BYTES:
            raise HttpError(f"response head longer than {MAX_HEAD_BYTES} bytes")
        head = bytes(self._buffer[:end])
        del self._buffer[:end + 4]
        lines = head.split(b"\r\n")
        match = _STATUS_LINE.match(lines[0])
        if not match:
            raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        self._status = int(match.group(2))
        self._reason = (match.group(3) or b"").decode("latin-1")
        if len(lines) - 1 > MAX_HEADERS:
            raise HttpError(f"more than {MAX_HEADERS} response headers")
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                raise HttpError(f"malformed header line {line[:80]!r}")
            key = name.decode("ascii").lower()
            text = value.strip(b" \t").decode("latin-1")
            self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text
        if 100 <= self._status < 200:
            # An interim response (100 Continue, 103): discard it and read the final one.
            self._headers = {}
            return True
        self._choose_framing()
        return True

    def _choose_framing(self) -> None:
        if self.request_method == "HEAD" or self._status in (204, 304):
            self._state = "complete"
            return
        coding = self._headers.get("transfer-encoding")
        length = self._headers.get("content-length")
        if coding is not None:
            if length is not None:
                raise HttpError("both Transfer-Encoding and Content-Length (request smuggling?)")
            if [c.strip().lower() for c in coding.split(",")] != ["chunked"]:
                raise HttpError(f"unsupported Transfer-Encoding {coding!r}")
            self._state = "chunk_size"
            return
        if length is not None:
            values = {v.strip() for v in length.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise HttpError(f"bad Content-Length {length!r}")
            self._remaining = int(values.pop())
            if self._remaining > self.max_body:
                raise HttpError(f"response body of {self._remaining} bytes is over the limit")
            self._state = "fixed"
            return
        self._state = "until_close"

    def _step_complete(self) -> bool:
        self._finish()
        return True

    def _step_fixed(self) -> bool:
        take = min(self._remaining, len(self._buffer))
        self._body += self._buffer[:take]
        del self._buffer[:take]
        self._remaining -= take
        if self._remaining == 0:
            self._finish()
            return True
        return False

    def _step_until_close(self) -> bool:
        self._body += self._buffer
        self._buffer.clear()
        self._check_body_size()
        return False

    def _step_chunk_size(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > 1024:
                raise HttpError("chunk size line too long")
            return False
        line = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
        del self._buffer[:end + 2]
        if not line or not re.fullmatch(rb"[0-9A-Fa-f]{1,8}", line):
            raise HttpError(f"bad chunk size {line[:20]!r}")
        size = int(line, 16)
        if size == 0:
            self._state = "trailers"
            return True
        self._remaining = size
        self._state = "chunk_data"
        return True

    def _step_chunk_data(self) -> bool:
        take = min(self._remaining, len(self._buffer))
        self._body += self._buffer[:take]
        del self._buffer[:take]
        self._remaining -= take
        self._check_body_size()
        if self._remaining:
            return False
        self._state = "chunk_end"
        return True

    def _step_chunk_end(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] != b"\r\n":
            raise HttpError("chunk data not followed by CRLF")
        del self._buffer[:2]
        self._state = "chunk_size"
        return True

    def _step_trailers(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise HttpError("trailer section too long")
            return False
        del self._buffer[:end + 2]
        if end == 0:
            self._finish()
        return True

    def _check_body_size(self) -> None:
        if len(self._body) > self.max_body:
            raise HttpError(f"response body over the limit of {self.max_body} bytes")

    def _finish(self) -> Response:
        self._state = "done"
        self._done = Response(status=self._status, reason=self._reason,
                              headers=dict(self._headers), body=bytes(self._body))
        return self._done


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
