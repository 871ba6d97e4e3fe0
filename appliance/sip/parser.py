"""Turning bytes into :class:`Request` / :class:`Response`: datagrams and stream framing.

RFC 3261 section 7 and 18.3. A datagram holds exactly one message; its Content-Length, when
present, may cut the body short but never extend it. On streams (TCP, TLS) Content-Length
frames the messages and must be present; CRLFs between messages are skipped and a double
CRLF is an RFC 5626 keep-alive ping, reported as :data:`PING` so the shell answers a CRLF.

Every problem raises (or, on streams, yields) :class:`RemoteProtocolError` with the status to
answer; ``error.message`` carries the parsed message when a response can be built from it,
and ``error.fatal`` tells a stream transport that its framing is lost.
"""

from __future__ import annotations

import dataclasses
import re

from .errors import RemoteProtocolError
from .message import DISPLAY_NAMES, SINGLE_HEADERS, Headers, Message, Request, Response, header_key

_METHOD_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_CONTENT_LENGTH_RE = re.compile(rb"(?:^|\n)(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)",
                                re.IGNORECASE)


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 65535
    max_headers: int = 128


DEFAULT_LIMITS = Limits()


class _Ping:
    """An RFC 5626 CRLFCRLF keep-alive on a stream; answer it with a single CRLF."""

    def __repr__(self) -> str:
        return "PING"


PING = _Ping()


# ---------------------------------------------------------------------------------------------
# Datagrams


def parse_datagram(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """One UDP datagram into one message (with its checks, see :func:`check_message`)."""
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        body_at = end + 4
    else:
        end = data.find(b"\n\n", start)
        if end < 0:
            raise RemoteProtocolError("no empty line after the header fields")
        body_at = end + 2
    message = _parse_head(data[start:end])
    body = data[body_at:]
    length_text = message.headers.get("content-length")
    if length_text is not None:
        length = _content_length(length_text, message)
        if length > len(body):
            raise RemoteProtocolError(
                f"Content-Length {length} is larger than the {len(body)} body bytes received",
                message=_answerable(message))
        body = body[:length]
    message.body = body
    check_message(message)
    if len(data) > limits.max_message_bytes:
        raise RemoteProtocolError(f"message of {len(data)} bytes is too large",
                                  status_hint=513, message=_answerable(message))
    return message


# ---------------------------------------------------------------------------------------------
# Streams


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages. Feed any chunking, down to single bytes."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buffer = bytearray()
        self._scan = 0
        self.broken = False

    def feed(self, data: bytes) -> list[Message | _Ping | RemoteProtocolError]:
        """Add bytes; return the complete messages, pings and errors they finished.

        After a fatal error the framer is broken: nothing more is parsed, and the caller
        closes the connection after answering the error if it can.
        """
        if self.broken:
            return []
        self._buffer += data
        out: list[Message | _Ping | RemoteProtocolError] = []
        buffer = self._buffer
        while buffer:
            if buffer[0] == 13 or buffer[0] == 10:  # CR or LF between messages
                if buffer.startswith(b"\r\n\r\n"):
                    del buffer[:4]
                    out.append(PING)
                    continue
                if b"\r\n\r\n".startswith(bytes(buffer[:4])):
                    break  # the start of a ping, or a CRLF; wait for more
                if buffer.startswith(b"\r\n"):
                    del buffer[:2]
                    continue
                del buffer[:1]  # a stray CR or LF
                continue
            end = buffer.find(b"\r\n\r\n", self._scan)
            if end < 0:
                if len(buffer) > self.limits.max_message_bytes:
                    return self._break(out, RemoteProtocolError(
                        "header block longer than the message size limit", status_hint=513,
                        fatal=True))
                self._scan = max(0, len(buffer) - 3)
                break
            head = bytes(buffer[:end])
            match = _CONTENT_LENGTH_RE.search(head)
            if match is None:
                error = RemoteProtocolError("no Content-Length on a stream transport",
                                            fatal=True, message=_try_answerable(head))
                return self._break(out, error)
            length_text = match.group(1).decode("latin-1").strip()
            if not length_text.isdigit() or len(length_text) > 9:
                return self._break(out, RemoteProtocolError(
                    f"bad Content-Length {length_text!r}", fatal=True,
                    message=_try_answerable(head)))
            length = int(length_text)
            total = end + 4 + length
            if total > self.limits.max_message_bytes:
                return self._break(out, RemoteProtocolError(
                    f"message of {total} bytes is too large", status_hint=513, fatal=True,
                    message=_try_answerable(head)))
            if len(buffer) < total:
                self._scan = end  # the head is complete; wait for the body
                break
            body = bytes(buffer[end + 4:total])
            del buffer[:total]
            self._scan = 0
            try:
                message = _parse_head(head)
                message.body = body
                check_message(message)
            except RemoteProtocolError as error:
                out.append(error)  # framing is intact: answer and carry on
                continue
            except ValueError as error:  # any other grammar slip: still a 400 at worst
                out.append(RemoteProtocolError(str(error)))
                continue
            out.append(message)
        return out

    def _break(self, out: list, error: RemoteProtocolError) -> list:
        self.broken = True
        self._buffer.clear()
        out.append(error)
        return out


# ---------------------------------------------------------------------------------------------
# Shared


_NAMES: dict[str, tuple[str, str]] = {}
"""Header name as written -> (key, wire name); saves the regex and lookups per field."""
_SINGLE = frozenset(SINGLE_HEADERS)
_MANDATORY = ("via", "from", "to", "call-id", "cseq")


def _header_name(name: str) -> tuple[str, str] | None:
    known = _NAMES.get(name)
    if known is not None:
        return known
    if not _HEADER_NAME_RE.match(name):
        return None
    key = header_key(name)
    known = (key, DISPLAY_NAMES.get(key, name))
    if len(_NAMES) < 2048 and len(name) <= 40:
        _NAMES[name] = known
    return known


_FOLD_RE = re.compile(r"[ \t]*\n[ \t]+")


def _parse_head(raw: bytes) -> Message:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "surrogateescape")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    problem: str | None = None
    if "\n " in text or "\n\t" in text:
        start_line, _, fields = text.partition("\n")
        if fields[:1] in (" ", "\t"):
            problem = "continuation line before any header"
        text = start_line + "\n" + _FOLD_RE.sub(" ", fields)  # RFC 3261 7.3.1: one SP
    lines = text.split("\n")
    items: list[tuple[str, str, str]] = []
    first: dict[str, str] = {}
    names = _NAMES
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        known = names.get(name)
        if known is None:
            if not line:
                continue
            known = _header_name(name.rstrip(" \t")) if colon else None
            if known is None:
                problem = f"bad header line {line[:40]!r}"
                continue
        key = known[0]
        value = value.strip()
        items.append((key, known[1], value))
        if key in first:
            if key in _SINGLE:
                problem = f"{known[1]} appears more than once"
        else:
            first[key] = value
    message = _start_line(lines[0], Headers(items, first))
    if problem is not None:
        raise RemoteProtocolError(problem, message=_answerable(message))
    if len(items) > DEFAULT_LIMITS.max_headers:
        raise RemoteProtocolError(f"{len(items)} header fields is too many",
                                  message=_answerable(message))
    return message


def _start_line(line: str, headers: Headers) -> Message:
    if line[:4].upper() == "SIP/":
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if version.upper() != "SIP/2.0":
            raise RemoteProtocolError(f"response with version {version!r}")
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise RemoteProtocolError(f"bad status code {code!r}")
        return Response(int(code), reason, headers)
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        request = _lenient_request(line, headers)
        raise RemoteProtocolError(f"bad request line {line[:60]!r}",
                                  message=_answerable(request) if request else None)
    method, uri, version = parts
    if not _METHOD_RE.match(method):
        raise RemoteProtocolError(f"bad method {method[:20]!r}")
    request = Request(method, uri, headers)
    if version.upper() != "SIP/2.0":
        raise RemoteProtocolError(f"unsupported version {version!r}", status_hint=505,
                                  message=_answerable(request))
    return request


def _lenient_request(line: str, headers: Headers) -> Request | None:
    """A request line with extra spaces: good enough to answer 400, never to act on."""
    parts = line.split()
    if len(parts) >= 3 and _METHOD_RE.match(parts[0]):
        return Request(parts[0], parts[1], headers)
    return None


def check_message(message: Message) -> None:
    """What every message must satisfy before a transaction or the core looks at it.

    From, To and the Request-URI are parsed later, by whichever part reads them; a malformed
    one raises :class:`RemoteProtocolError` there and is answered with 400 the same way.
    """
    first = message.headers._first
    if "via" not in first or "from" not in first or "to" not in first \
            or "call-id" not in first or "cseq" not in first:
        missing = [DISPLAY_NAMES[k] for k in _MANDATORY if k not in first]
        raise RemoteProtocolError(f"missing {', '.join(missing)}", message=_answerable(message))
    try:
        method = message.cseq[1]
    except RemoteProtocolError as error:
        raise RemoteProtocolError(error.text, message=_answerable(message)) from None
    if isinstance(message, Request):
        if method != message.method:
            raise RemoteProtocolError(
                f"CSeq method {method} does not match the request method {message.method}",
                message=_answerable(message))
        if "max-forwards" in first:
            message.int_header("max-forwards", maximum=255)
        if "expires" in first:
            message.int_header("expires")
    message.top_via  # noqa: B018  (parse now: it decides where answers go)


def _content_length(text: str, message: Message) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > 9:
        raise RemoteProtocolError(f"bad Content-Length {text!r}", message=_answerable(message))
    return int(text)


def _answerable(message: Message) -> Message | None:
    """The message if a response can be routed back (a request with a readable top Via)."""
    if not isinstance(message, Request):
        return None
    try:
        message.top_via  # noqa: B018
    except RemoteProtocolError:
        return None
    return message


def _try_answerable(head: bytes) -> Message | None:
    try:
        return _answerable(_parse_head(head))
    except RemoteProtocolError as error:
        return error.message
