"""SIP requests and responses: headers kept as text, typed views parsed on first use.

Parsing (``parser.py``) only splits a message into its start line and header fields and
checks what framing and transaction matching need; the typed views (:class:`Via`, From/To as
:class:`~appliance.sip.uri.NameAddr`, CSeq...) are parsed when code asks for them and cached.
That keeps the hot path of a registration storm cheap and still gives every component a
precise view of what it reads.

Headers are stored in order as ``(key, name, value)``: ``key`` is the lower-case long form
used for lookups (compact forms such as ``v`` and ``i`` are expanded), ``name`` is how the
field is written on the wire.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Iterator

from .errors import RemoteProtocolError
from .uri import (
    NameAddr,
    SipUri,
    UriError,
    parse_hostport,
    parse_params,
    parse_uri,
    split_commas,
)

COMPACT_FORMS = {
    "a": "accept-contact", "b": "referred-by", "c": "content-type", "d": "request-disposition",
    "e": "content-encoding", "f": "from", "i": "call-id", "j": "reject-contact",
    "k": "supported", "l": "content-length", "m": "contact", "n": "identity-info",
    "o": "event", "r": "refer-to", "s": "subject", "t": "to", "u": "allow-events",
    "v": "via", "x": "session-expires", "y": "identity",
}
DISPLAY_NAMES = {
    "via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq",
    "contact": "Contact", "max-forwards": "Max-Forwards", "content-type": "Content-Type",
    "content-length": "Content-Length", "content-encoding": "Content-Encoding",
    "route": "Route", "record-route": "Record-Route", "expires": "Expires",
    "min-expires": "Min-Expires", "user-agent": "User-Agent", "server": "Server",
    "allow": "Allow", "supported": "Supported", "require": "Require",
    "proxy-require": "Proxy-Require", "unsupported": "Unsupported",
    "www-authenticate": "WWW-Authenticate", "authorization": "Authorization",
    "proxy-authenticate": "Proxy-Authenticate", "proxy-authorization": "Proxy-Authorization",
    "authentication-info": "Authentication-Info", "retry-after": "Retry-After",
    "priority": "Priority", "resource-priority": "Resource-Priority",
    "p-asserted-identity": "P-Asserted-Identity", "date": "Date", "subject": "Subject",
    "event": "Event", "refer-to": "Refer-To", "referred-by": "Referred-By",
    "accept": "Accept", "timestamp": "Timestamp", "warning": "Warning",
    "allow-events": "Allow-Events", "session-expires": "Session-Expires",
    "reason": "Reason", "path": "Path",
}
SINGLE_HEADERS = ("from", "to", "call-id", "cseq", "max-forwards", "content-length")
"""Headers that may appear once only: a request with two is refused with 400."""

REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    410: "Gone", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

MAGIC_COOKIE = "z9hG4bK"
_TAG_PREFIX = os.urandom(4).hex()
_tag_counter = itertools.count(1)
_VIA_RE = re.compile(
    r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)\s+([^;\s]+(?:\s*:\s*[0-9]+)?)\s*(;.*)?\Z",
    re.IGNORECASE | re.DOTALL)


def header_key(name: str) -> str:
    key = name.lower()
    return COMPACT_FORMS.get(key, key)


def new_tag() -> str:
    """A dialog tag unique to this process run (RFC 3261 19.3: globally unique, not secret)."""
    return f"{_TAG_PREFIX}{next(_tag_counter):x}"


class Headers:
    """Header fields in wire order; look-ups by lower-case long name.

    ``_first`` maps each key to its first value and is kept up to date by every change, so
    ``get`` and ``in`` are one dict look-up.
    """

    __slots__ = ("_first", "_items")

    def __init__(self, items: list[tuple[str, str, str]] | None = None,
                 first: dict[str, str] | None = None) -> None:
        self._items = items if items is not None else []
        if first is None:
            first = {}
            for key, _, value in self._items:
                if key not in first:
                    first[key] = value
        self._first = first

    def get(self, key: str) -> str | None:
        return self._first.get(key)

    def get_all(self, key: str) -> list[str]:
        if key not in self._first:
            return []
        return [value for k, _, value in self._items if k == key]

    def count(self, key: str) -> int:
        if key not in self._first:
            return 0
        return sum(1 for k, _, _ in self._items if k == key)

    def values(self, key: str) -> list[str]:
        """All values of a list header, comma-combined fields split (quotes respected); a
        field that cannot be split (an unterminated quote) is the peer's error: 400."""
        if key not in self._first:
            return []
        out: list[str] = []
        for k, name, value in self._items:
            if k == key:
                try:
                    out.extend(split_commas(value))
                except UriError as error:
                    raise RemoteProtocolError(f"bad {name}: {error}") from None
        return out

    def __contains__(self, key: str) -> bool:
        return key in self._first

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _, name, value in self._items:
            yield name, value

    def __len__(self) -> int:
        return len(self._items)

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        key = header_key(name)
        entry = (key, DISPLAY_NAMES.get(key, name), value)
        if first:
            self._items.insert(0, entry)
            self._first[key] = value
        else:
            self._items.append(entry)
            self._first.setdefault(key, value)

    def add_before(self, name: str, value: str) -> None:
        """Insert before the first field of the same name (Via, Record-Route, Route)."""
        key = header_key(name)
        entry = (key, DISPLAY_NAMES.get(key, name), value)
        self._first[key] = value
        for index, item in enumerate(self._items):
            if item[0] == key:
                self._items.insert(index, entry)
                return
        self._items.append(entry)

    def set(self, name: str, value: str) -> None:
        """Replace every field of this name by one (at the place of the first)."""
        key = header_key(name)
        entry = (key, DISPLAY_NAMES.get(key, name), value)
        had = key in self._first
        self._first[key] = value
        if had:
            items = self._items
            for index, item in enumerate(items):
                if item[0] == key:
                    items[index] = entry
                    items[index + 1:] = [i for i in items[index + 1:] if i[0] != key]
                    return
        self._items.append(entry)

    def remove(self, key: str) -> None:
        if self._first.pop(key, None) is not None:
            self._items = [item for item in self._items if item[0] != key]

    def pop_first_value(self, key: str) -> str | None:
        """Remove and return the first element of a list header (the top Via or Route)."""
        if key not in self._first:
            return None
        items = self._items
        for index, (k, name, value) in enumerate(items):
            if k == key:
                if "," in value:
                    parts = split_commas(value)
                    if len(parts) > 1:
                        rest = ", ".join(parts[1:])
                        items[index] = (k, name, rest)
                        self._first[key] = rest
                        return parts[0]
                del items[index]
                following = next((v for k2, _, v in items[index:] if k2 == key), None)
                if following is None:
                    del self._first[key]
                else:
                    self._first[key] = following
                return value.strip()
        return None

    def replace_first_value(self, key: str, value: str) -> None:
        """Replace the first element of a list header (the top Via), keeping the rest."""
        for index, (k, name, old) in enumerate(self._items):
            if k == key:
                if "," in old:
                    parts = split_commas(old)
                    if len(parts) > 1:
                        value = ", ".join([value, *parts[1:]])
                self._items[index] = (k, name, value)
                self._first[key] = value
                return
        raise KeyError(key)

    def copy(self) -> Headers:
        return Headers(list(self._items), dict(self._first))

    def render(self) -> str:
        return "".join([f"{name}: {value}\r\n" for key, name, value in self._items
                        if key != "content-length"])


class Via:
    """One Via element: transport, sent-by, parameters (branch, received, rport...)."""

    __slots__ = ("_by_name", "branch", "host", "params", "port", "sent_by", "text",
                 "transport")

    def __init__(self, transport: str, host: str, port: int | None,
                 params: tuple[tuple[str, str | None], ...], text: str) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self.text = text
        self._by_name = dict(params)
        branch = self._by_name.get("branch")
        self.branch: str | None = branch
        bracketed = f"[{host}]" if ":" in host else host
        self.sent_by = bracketed if port is None else f"{bracketed}:{port}"

    @classmethod
    def parse(cls, text: str) -> Via:
        text = text.strip()
        if text[:8].upper() == "SIP/2.0/":  # the usual spelling: no regex needed
            space = text.find(" ", 8)
            transport = text[8:space]
            if space > 0 and transport.isalpha():
                rest = text[space + 1:].lstrip()
                semicolon = rest.find(";")
                sent_by = (rest if semicolon < 0 else rest[:semicolon]).rstrip()
                if sent_by and " " not in sent_by and "\t" not in sent_by:
                    host, port = parse_hostport(sent_by)
                    params = parse_params(rest[semicolon:]) if semicolon >= 0 else ()
                    return cls(transport.upper(), host, port, params, text)
        match = _VIA_RE.match(text)
        if not match:
            raise UriError(f"bad Via {text!r}")
        transport, sent_by, rest = match.groups()
        host, port = parse_hostport(re.sub(r"\s+", "", sent_by))
        params = parse_params(rest) if rest else ()
        return cls(transport.upper(), host, port, params, text.strip())

    def param(self, name: str) -> str | None:
        """A parameter's value; "" for a flag without value; None when absent."""
        if name not in self._by_name:
            return None
        value = self._by_name[name]
        return "" if value is None else value


class Message:
    __slots__ = ("_cache", "body", "headers")

    def __init__(self, headers: Headers, body: bytes) -> None:
        self.headers = headers
        self.body = body
        self._cache: dict[str, object] = {}

    def forget(self, key: str) -> None:
        """Drop a cached view after changing the header it was parsed from."""
        self._cache.pop(key, None)

    # -- typed views --------------------------------------------------------------------------

    @property
    def call_id(self) -> str:
        return self.headers.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        cached = self._cache.get("cseq")
        if cached is None:
            cached = parse_cseq(self.headers.get("cseq") or "")
            self._cache["cseq"] = cached
        return cached

    @property
    def top_via(self) -> Via:
        cached = self._cache.get("via")
        if cached is None:
            vias = self.headers.get("via")
            if vias is None:
                raise RemoteProtocolError("no Via header")
            try:
                first = split_commas(vias)[0] if "," in vias else vias
                cached = Via.parse(first)
            except UriError as error:
                raise RemoteProtocolError(str(error)) from None
            self._cache["via"] = cached
        return cached

    def address(self, key: str) -> NameAddr:
        """From or To as a NameAddr (400 when missing or malformed)."""
        cached = self._cache.get(key)
        if cached is None:
            value = self.headers.get(key)
            if value is None:
                raise RemoteProtocolError(f"no {DISPLAY_NAMES[key]} header", message=self)
            try:
                cached = NameAddr.parse(value)
            except UriError as error:
                raise RemoteProtocolError(f"bad {DISPLAY_NAMES[key]}: {error}",
                                          message=self) from None
            self._cache[key] = cached
        return cached

    @property
    def from_(self) -> NameAddr:
        return self.address("from")

    @property
    def to(self) -> NameAddr:
        return self.address("to")

    @property
    def from_tag(self) -> str | None:
        return self.from_.tag

    @property
    def to_tag(self) -> str | None:
        return self.to.tag

    def addresses(self, key: str) -> list[NameAddr]:
        """Contact, Route or Record-Route values as NameAddrs (``*`` is not handled here)."""
        cache_key = "addresses:" + key
        cached = self._cache.get(cache_key)
        if cached is None:
            try:
                cached = [NameAddr.parse(v) for v in self.headers.values(key)]
            except UriError as error:
                raise RemoteProtocolError(f"bad {DISPLAY_NAMES.get(key, key)}: {error}",
                                          message=self) from None
            self._cache[cache_key] = cached
        return cached

    def int_header(self, key: str, *, maximum: int = 2**32 - 1) -> int | None:
        value = self.headers.get(key)
        if value is None:
            return None
        if not value.isdigit() or len(value) > 10 or int(value) > maximum:
            raise RemoteProtocolError(f"bad {DISPLAY_NAMES.get(key, key)}: {value!r}",
                                      message=self)
        return int(value)

    def set_top_via(self, via: Via) -> None:
        """Cache the top Via after the shell or core rewrote its text (saves a re-parse)."""
        self._cache["via"] = via

    def option_tags(self, key: str) -> list[str]:
        return [v.lower() for v in self.headers.values(key)]

    def to_bytes(self) -> bytes:
        raise NotImplementedError

    def _serialise(self, start_line: str) -> bytes:
        """Start line, header fields, a Content-Length computed here, the body."""
        head = f"{start_line}\r\n{self.headers.render()}" \
               f"Content-Length: {len(self.body)}\r\n\r\n"
        data = head.encode("utf-8", "surrogateescape")
        return data + self.body if self.body else data


class Request(Message):
    __slots__ = ("method", "uri_text")

    def __init__(self, method: str, uri: str, headers: Headers, body: bytes = b"") -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri_text = uri

    @property
    def uri(self):
        cached = self._cache.get("uri")
        if cached is None:
            try:
                cached = parse_uri(self.uri_text)
            except UriError as error:
                raise RemoteProtocolError(f"bad Request-URI: {error}", message=self) from None
            self._cache["uri"] = cached
        return cached

    def set_uri(self, uri: SipUri | str) -> None:
        self.uri_text = str(uri)
        self._cache.pop("uri", None)
        if not isinstance(uri, str):
            self._cache["uri"] = uri

    def copy(self) -> Request:
        return Request(self.method, self.uri_text, self.headers.copy(), self.body)

    def response(self, status: int, reason: str | None = None, *, to_tag: str | None = None,
                 headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> Response:
        """A response to this request (RFC 3261 8.2.6): Via, From, To, Call-ID, CSeq copied.

        A To tag is added to every response but 100 when the request had none: ``to_tag`` if
        given (so that all responses of one transaction share it), else a fresh one.
        """
        items: list[tuple[str, str, str]] = []
        for entry in self.headers._items:
            key = entry[0]
            if key == "to":
                value = entry[2]
                if status > 100 and _needs_tag(self, value):
                    value = f"{value};tag={to_tag or new_tag()}"
                items.append(("to", "To", value))
            elif key in ("via", "from", "call-id", "cseq") or (
                    key == "timestamp" and status == 100):
                items.append(entry)
        response = Response(status, reason or REASONS.get(status, ""), Headers(items), body)
        for name, value in headers:
            response.headers.add(name, value)
        return response

    def to_bytes(self) -> bytes:
        return self._serialise(f"{self.method} {self.uri_text} SIP/2.0")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_text} call-id={self.call_id!r}>"


class Response(Message):
    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str, headers: Headers, body: bytes = b"") -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def copy(self) -> Response:
        return Response(self.status, self.reason, self.headers.copy(), self.body)

    def to_bytes(self) -> bytes:
        return self._serialise(f"SIP/2.0 {self.status} {self.reason}")

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} call-id={self.call_id!r}>"


def _needs_tag(request: Request, to_value: str) -> bool:
    if "tag" not in to_value.lower():
        return True
    try:
        return request.to.tag is None
    except RemoteProtocolError:
        return False


def parse_cseq(value: str) -> tuple[int, str]:
    number, _, method = value.strip().partition(" ")
    method = method.strip()
    if not number.isdigit() or len(number) > 10 or int(number) >= 2**31 or not method \
            or " " in method:
        raise RemoteProtocolError(f"bad CSeq {value!r}")
    return int(number), method
