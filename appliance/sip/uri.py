"""SIP URIs, name-addr / addr-spec values, header parameters and comma-separated values.

RFC 3261 section 19.1 and 25.1. ``sip:`` and ``sips:`` URIs are parsed into :class:`SipUri`;
any other scheme (``tel:``, ``urn:``, ``mailto:`` ...) is kept whole as an :class:`AbsoluteUri`
so that headers carrying a novel scheme are still accepted. Everything here is pure string
work; failures raise :class:`UriError` and the message parser turns them into 400s.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import unquote

from .errors import SipError

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_HOSTNAME_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*"
                          r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.?\Z")
_IPV4_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}\Z")
# Characters allowed unescaped in the user part (unreserved / user-unreserved) and escapes.
_USER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+\Z")
_PASSWORD_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*\Z")
_PARAM_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+\Z")
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_USUAL_PARAMS = frozenset({"branch", "rport", "received", "tag", "transport", "lr", "expires",
                           "q", "maddr", "ttl", "user", "method", "reg-id", "+sip.instance",
                           "ob"})
"""Header parameter names seen in nearly every message: valid tokens, no need to check."""
_DISPLAY_TOKENS_RE = re.compile(r'[^\s,;:"<>@\\]+(?:\s+[^\s,;:"<>@\\]+)*\Z')
"""An unquoted display name: tokens separated by white space (non-ASCII letters allowed,
since handsets send them; separators such as ',' ';' ':' '@' are not)."""


class UriError(SipError, ValueError):
    """A URI or address value that does not follow the grammar (also a ValueError, for
    callers that only check values)."""


class AbsoluteUri:
    """A URI of a scheme we do not interpret (``tel:``, ``urn:``, ...), kept as text."""

    __slots__ = ("scheme", "text")

    def __init__(self, scheme: str, text: str) -> None:
        self.scheme = scheme
        self.text = text

    @property
    def user(self) -> str | None:
        if self.scheme == "tel":
            return self.text[4:].split(";", 1)[0]
        return None

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"AbsoluteUri({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AbsoluteUri) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


class SipUri:
    """A ``sip:`` or ``sips:`` URI. Immutable; :meth:`replace` returns a modified copy.

    ``host`` is lower-case and without IPv6 brackets; ``params`` is a tuple of
    ``(lower-case name, value or None)``; ``user`` stays escaped as written (see
    :attr:`user_text` for the unescaped form used for routing).
    """

    __slots__ = ("_text", "effective_port", "headers", "host", "params", "password", "port",
                 "scheme", "transport", "user")

    def __init__(self, *, scheme: str = "sip", user: str | None = None,
                 password: str | None = None, host: str, port: int | None = None,
                 params: tuple[tuple[str, str | None], ...] = (),
                 headers: tuple[tuple[str, str], ...] = (), text: str | None = None) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params
        self.headers = headers
        self._text = text if text is not None else self._render()
        # Derived once (URIs are immutable and shared): where a request for it would go.
        if scheme == "sips":
            self.transport = "tls"
        else:
            value = self.param("transport")
            self.transport = value.lower() if value else "udp"
        self.effective_port = port if port is not None else DEFAULT_PORTS.get(
            self.transport, 5060)

    # -- parsing ------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> SipUri:
        colon = text.find(":")
        if colon <= 0:
            raise UriError(f"{text!r} has no scheme")
        scheme = text[:colon].lower()
        if scheme not in ("sip", "sips"):
            raise UriError(f"{text!r} is not a sip or sips URI")
        rest = text[colon + 1:]
        user = password = None
        at = rest.find("@")
        if at >= 0:
            if rest.find("@", at + 1) >= 0:
                raise UriError(f"{text!r} has more than one '@'")
            userinfo, rest = rest[:at], rest[at + 1:]
            if ":" in userinfo:
                userinfo, password = userinfo.split(":", 1)
                if not _PASSWORD_RE.match(password):
                    raise UriError(f"bad password part in {text!r}")
            if not userinfo or not _USER_RE.match(userinfo):
                raise UriError(f"bad user part in {text!r}")
            user = userinfo
        headers: tuple[tuple[str, str], ...] = ()
        question = rest.find("?")
        if question >= 0:
            headers = _parse_uri_headers(rest[question + 1:], text)
            rest = rest[:question]
        semicolon = rest.find(";")
        if semicolon >= 0:
            params = _parse_uri_params(rest[semicolon + 1:], text)
            rest = rest[:semicolon]
        else:
            params = ()
        host, port = parse_hostport(rest)
        return cls(scheme=scheme, user=user, password=password, host=host, port=port,
                   params=params, headers=headers, text=text)

    # -- reading ------------------------------------------------------------------------------

    @property
    def user_text(self) -> str:
        """The user part unescaped (``%31%30%31`` reads ``101``); empty when absent."""
        if self.user is None:
            return ""
        return unquote(self.user) if "%" in self.user else self.user

    def param(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.params:
            if key == name:
                return value if value is not None else ""
        return default

    def has_param(self, name: str) -> bool:
        return any(key == name for key, _ in self.params)

    @property
    def host_is_ip(self) -> bool:
        return is_ip_literal(self.host)

    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def binding_key(self) -> str:
        """What makes two contacts the same binding: scheme, user, host, port, transport."""
        return (f"{self.scheme}:{self.user_text}@{self.host}:{self.effective_port}"
                f"/{self.transport}")

    # -- changing -----------------------------------------------------------------------------

    def replace(self, **changes) -> SipUri:
        fields = {name: getattr(self, name) for name in
                  ("scheme", "user", "password", "host", "port", "params", "headers")}
        fields.update(changes)
        return SipUri(**fields)

    def without_headers(self) -> SipUri:
        return self if not self.headers else self.replace(headers=())

    def _render(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":" + self.password)
            parts.append("@")
        parts.append(self.hostport())
        for key, value in self.params:
            parts.append(f";{key}" if value is None else f";{key}={value}")
        if self.headers:
            parts.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(parts)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"SipUri({self._text!r})"

    def __eq__(self, other: object) -> bool:
        # RFC 3261 19.1.4, simplified: the parts that decide where a request goes.
        if not isinstance(other, SipUri):
            return NotImplemented
        return (self.scheme == other.scheme and self.user_text == other.user_text
                and self.host == other.host and self.port == other.port
                and self.transport == other.transport)

    def __hash__(self) -> int:
        return hash((self.scheme, self.user_text, self.host, self.port))


Uri = SipUri | AbsoluteUri


@functools.lru_cache(maxsize=8192)
def parse_uri(text: str) -> Uri:
    """Any URI: sip/sips structured, other schemes kept whole. Results are shared (cached):
    URI objects are immutable."""
    colon = text.find(":")
    if colon <= 0 or not _SCHEME_RE.match(text[:colon]):
        raise UriError(f"{text!r} is not an absolute URI")
    scheme = text[:colon].lower()
    if scheme in ("sip", "sips"):
        return SipUri.parse(text)
    if len(text) == colon + 1 or any(c in text for c in " \t<>\""):
        raise UriError(f"{text!r} is not a valid {scheme} URI")
    return AbsoluteUri(scheme, text)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def parse_hostport(text: str) -> tuple[str, int | None]:
    """``host[:port]`` with IPv6 references in brackets; host returned lower-case, unbracketed."""
    if not text:
        raise UriError("empty host")
    if text[0] == "[":
        close = text.find("]")
        if close < 0:
            raise UriError(f"unterminated IPv6 reference in {text!r}")
        host = text[1:close]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UriError(f"bad IPv6 address in {text!r}") from None
        rest = text[close + 1:]
        if rest and rest[0] != ":":
            raise UriError(f"junk after IPv6 reference in {text!r}")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = None
        if _IPV4_RE.match(host):
            if any(int(octet) > 255 for octet in host.split(".")):
                raise UriError(f"bad IPv4 address {host!r}")
        elif not _HOSTNAME_RE.match(host):
            raise UriError(f"bad host {host!r}")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) <= 65535:
            raise UriError(f"bad port in {text!r}")
        port = int(port_text)
    return host.lower(), port


def _parse_uri_params(text: str, whole: str) -> tuple[tuple[str, str | None], ...]:
    params = []
    for item in text.split(";"):
        name, sep, value = item.partition("=")
        if not name or not _PARAM_RE.match(name) or (sep and not _PARAM_RE.match(value)):
            raise UriError(f"bad URI parameter {item!r} in {whole!r}")
        params.append((name.lower(), value if sep else None))
    return tuple(params)


def _parse_uri_headers(text: str, whole: str) -> tuple[tuple[str, str], ...]:
    headers = []
    for item in text.split("&"):
        name, sep, value = item.partition("=")
        if not name or not sep:
            raise UriError(f"bad URI header {item!r} in {whole!r}")
        headers.append((name, value))
    return tuple(headers)


# ---------------------------------------------------------------------------------------------
# Header values: quoted strings, comma lists, parameters, name-addr


def split_commas(text: str) -> list[str]:
    """Split a comma-combined header value, respecting quoted strings and <...>."""
    if "," not in text:
        return [text.strip()]
    parts: list[str] = []
    start = 0
    in_quotes = in_angle = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if in_quotes:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            parts.append(text[start:i].strip())
            start = i + 1
        i += 1
    if in_quotes:
        raise UriError(f"unterminated quoted string in {text!r}")
    parts.append(text[start:].strip())
    if any(not part for part in parts):
        raise UriError(f"empty element in comma list {text!r}")
    return parts


def unquote_string(text: str) -> str:
    """The content of a quoted-string (``"a \\"b\\""`` reads ``a "b"``); plain tokens as-is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        body = text[1:-1]
        return re.sub(r"\\(.)", r"\1", body) if "\\" in body else body
    return text


def parse_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """``;name=value;flag;name="quoted; value"`` (leading ';' optional) into (name, value).

    Names are lower-cased; quoted values keep their quotes (use :func:`unquote_string`).
    """
    params: list[tuple[str, str | None]] = []
    if '"' not in text and "\t" not in text and " " not in text:
        for item in text.split(";"):  # the usual case: no quotes, no white space
            if not item:
                continue
            name, sep, value = item.partition("=")
            name = name.lower()
            if name not in _USUAL_PARAMS and not _TOKEN_RE.match(name):
                raise UriError(f"bad parameter name in {text!r}")
            if sep and not value:
                raise UriError(f"empty value for parameter {name!r} in {text!r}")
            params.append((name, value if sep else None))
        return tuple(params)
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t;":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and text[i] not in "=; \t":
            i += 1
        name = text[start:i].lower()
        if not name or not _TOKEN_RE.match(name):
            raise UriError(f"bad parameter name in {text!r}")
        while i < n and text[i] in " \t":
            i += 1
        value: str | None = None
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] == '"':
                end = _quoted_end(text, i)
                value = text[i:end]
                i = end
            else:
                start = i
                while i < n and text[i] not in "; \t":
                    i += 1
                value = text[start:i]
                if not value:
                    raise UriError(f"empty value for parameter {name!r} in {text!r}")
            while i < n and text[i] in " \t":
                i += 1
        if i < n and text[i] != ";":
            raise UriError(f"junk after parameter {name!r} in {text!r}")
        params.append((name, value))
    return tuple(params)


def _quoted_end(text: str, start: int) -> int:
    """Index just past the quoted-string that starts at ``start``."""
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise UriError(f"unterminated quoted string in {text!r}")


def param_value(params: Iterable[tuple[str, str | None]], name: str) -> str | None:
    for key, value in params:
        if key == name:
            return "" if value is None else value
    return None


class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI, header parameters."""

    __slots__ = ("display", "params", "uri")

    def __init__(self, uri: Uri, *, display: str | None = None,
                 params: tuple[tuple[str, str | None], ...] = ()) -> None:
        self.uri = uri
        self.display = display
        self.params = params

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if not text:
            raise UriError("empty address")
        display = None
        rest = text
        if text[0] == '"':
            end = _quoted_end(text, 0)
            display = text[:end]
            rest = text[end:].lstrip()
            if not rest.startswith("<"):
                raise UriError(f"quoted display name without <URI> in {text!r}")
        lt = rest.find("<")
        if lt >= 0:
            if display is None:
                name = rest[:lt].strip()
                if name:
                    if not _DISPLAY_TOKENS_RE.match(name):
                        raise UriError(f"unquoted display name with separators in {text!r}")
                    display = name
            gt = rest.find(">", lt)
            if gt < 0:
                raise UriError(f"missing '>' in {text!r}")
            uri_text = rest[lt + 1:gt]
            tail = rest[gt + 1:]
            if "<" in uri_text:
                raise UriError(f"nested '<' in {text!r}")
        else:
            # addr-spec: parameters after the URI belong to the header, not the URI.
            if any(c.isspace() for c in rest.split(";", 1)[0].strip()):
                raise UriError(f"display name without <URI> in {text!r}")
            semicolon = rest.find(";")
            uri_text, tail = (rest, "") if semicolon < 0 else (rest[:semicolon], rest[semicolon:])
            if "?" in uri_text:
                raise UriError(f"URI with headers must be in <...> in {text!r}")
        tail = tail.strip()
        if tail and tail[0] != ";":
            raise UriError(f"junk after address in {text!r}")
        return cls(parse_uri(uri_text.strip()), display=display,
                   params=parse_params(tail) if tail else ())

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

    @property
    def tag(self) -> str | None:
        return self.param("tag")


    def __str__(self) -> str:
        head = f"{self.display} <{self.uri}>" if self.display else f"<{self.uri}>"
        return head + "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"
