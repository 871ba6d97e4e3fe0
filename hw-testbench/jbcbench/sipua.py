"""A deliberately small SIP user-agent toolkit for tests and benchmarks.

It builds requests as text and reads responses with regular expressions, and shares no code
with ``appliance.sip``, so tests that use it check the appliance against an independent
reading of RFC 3261 rather than against itself. It computes digest responses (RFC 7616,
MD5 and SHA-256, qop=auth) the way a handset does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import re

_counter = itertools.count(1)
_PREFIX = os.urandom(3).hex()
_HEADER_RE = re.compile(r"^([A-Za-z0-9\-_.!%*+`'~]+)[ \t]*:[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_PARAM_RE = re.compile(r'([A-Za-z0-9_\-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
            "l": "content-length", "c": "content-type", "k": "supported"}


def unique(prefix: str = "") -> str:
    return f"{prefix}{_PREFIX}{next(_counter):x}"


@dataclasses.dataclass
class Reply:
    status: int
    reason: str
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])

    @property
    def to_tag(self) -> str | None:
        match = re.search(r";\s*tag=([^;\s,>]+)", self.header("to") or "")
        return match.group(1) if match else None


def parse_reply(data: bytes) -> Reply | None:
    """A response (None for a request or garbage)."""
    head, _, body = data.partition(b"\r\n\r\n")
    text = head.decode("utf-8", "replace")
    first, _, rest = text.partition("\r\n")
    match = re.match(r"SIP/2\.0 (\d{3}) ?(.*)", first)
    if not match:
        return None
    headers: dict[str, list[str]] = {}
    for name, value in _HEADER_RE.findall(rest.replace("\r\n", "\n")):
        key = _COMPACT.get(name.lower(), name.lower())
        headers.setdefault(key, []).append(value)
    return Reply(int(match.group(1)), match.group(2), headers, body)


def challenge_params(value: str) -> dict[str, str]:
    """``Digest realm="x", nonce="y", ...`` into a dict (names lower-case)."""
    return {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in _PARAM_RE.finditer(value)}


def digest_answer(challenge: str, *, method: str, uri: str, username: str, password: str,
                  nc: int = 1, cnonce: str | None = None, ha1_hex: str | None = None) -> str:
    """The Authorization / Proxy-Authorization value answering one challenge header."""
    params = challenge_params(challenge)
    algorithm = params.get("algorithm", "MD5")
    hash_name = {"MD5": "md5", "SHA-256": "sha256"}[algorithm]

    def h(text: str) -> str:
        return hashlib.new(hash_name, text.encode()).hexdigest()

    realm, nonce = params["realm"], params["nonce"]
    cnonce = cnonce or os.urandom(8).hex()
    nc_text = f"{nc:08x}"
    a1 = ha1_hex or h(f"{username}:{realm}:{password}")
    response = h(f"{a1}:{nonce}:{nc_text}:{cnonce}:auth:{h(f'{method}:{uri}')}")
    opaque = f', opaque="{params["opaque"]}"' if "opaque" in params else ""
    return (f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm}, cnonce="{cnonce}", qop=auth, '
            f'nc={nc_text}{opaque}')


def pick_challenge(reply: Reply, algorithm: str | None = None) -> str:
    """The challenge a client would answer: the first, or the first of ``algorithm``."""
    values = reply.all("www-authenticate") + reply.all("proxy-authenticate")
    if algorithm is None:
        return values[0]
    for value in values:
        if challenge_params(value).get("algorithm", "MD5") == algorithm:
            return value
    raise LookupError(f"no {algorithm} challenge in {values}")


def request(method: str, uri: str, *, local: tuple[str, int], to: str, from_: str,
            call_id: str, cseq: int, transport: str = "UDP", branch: str | None = None,
            contact: str | None = None, headers: list[tuple[str, str]] | tuple = (),
            body: bytes = b"", max_forwards: int = 70, rport: bool = True) -> bytes:
    host, port = local
    via = f"SIP/2.0/{transport} {host}:{port};{'rport;' if rport else ''}" \
          f"branch={branch or unique('z9hG4bK')}"
    lines = [f"{method} {uri} SIP/2.0", f"Via: {via}", f"Max-Forwards: {max_forwards}",
             f"From: {from_}", f"To: {to}", f"Call-ID: {call_id}", f"CSeq: {cseq} {method}"]
    if contact:
        lines.append(f"Contact: {contact}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def register(user: str, domain: str, *, local: tuple[str, int], call_id: str, cseq: int,
             expires: int = 300, transport: str = "UDP", authorization: str | None = None,
             tag: str = "regtag", contact: str | None = None, branch: str | None = None,
             headers: list[tuple[str, str]] | tuple = ()) -> bytes:
    host, port = local
    extra = list(headers)
    if authorization:
        extra.append(("Authorization", authorization))
    extra.append(("Expires", str(expires)))
    tail = "" if transport == "UDP" else f";transport={transport.lower()}"
    return request("REGISTER", f"sip:{domain}", local=local, transport=transport,
                   to=f"<sip:{user}@{domain}>", from_=f"<sip:{user}@{domain}>;tag={tag}",
                   call_id=call_id, cseq=cseq, branch=branch,
                   contact=contact or f"<sip:{user}@{host}:{port}{tail}>", headers=extra)


@dataclasses.dataclass
class Message:
    """Any SIP message, read loosely: start line, headers in order, body."""

    start: str
    fields: list[tuple[str, str]]
    body: bytes

    @property
    def is_request(self) -> bool:
        return not self.start.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0]

    @property
    def uri(self) -> str:
        return self.start.split(" ")[1]

    @property
    def status(self) -> int:
        return int(self.start.split(" ")[1])

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self.fields if _COMPACT.get(n.lower(), n.lower()) == key]

    @property
    def to_tag(self) -> str | None:
        match = re.search(r";\s*tag=([^;\s,>]+)", self.header("to") or "")
        return match.group(1) if match else None


def parse_message(data: bytes) -> Message:
    head, _, body = data.partition(b"\r\n\r\n")
    text = head.decode("utf-8", "replace")
    first, _, rest = text.partition("\r\n")
    fields = [(name, value) for name, value in _HEADER_RE.findall(rest.replace("\r\n", "\n"))]
    return Message(first, fields, body)


def response_for(request: bytes | Message, status: int, reason: str = "", *,
                 to_tag: str | None = None, headers: list[tuple[str, str]] | tuple = (),
                 body: bytes = b"") -> bytes:
    """What a UAS sends back: Via, From, Call-ID, CSeq, Record-Route copied; To tagged."""
    message = parse_message(request) if isinstance(request, bytes) else request
    lines = [f"SIP/2.0 {status} {reason or _REASONS.get(status, 'Whatever')}"]
    for name, value in message.fields:
        key = _COMPACT.get(name.lower(), name.lower())
        if key in ("via", "from", "call-id", "cseq", "record-route"):
            lines.append(f"{name}: {value}")
        elif key == "to":
            if to_tag and "tag=" not in value:
                value = f"{value};tag={to_tag}"
            lines.append(f"To: {value}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK",
            404: "Not Found", 480: "Temporarily Unavailable", 486: "Busy Here",
            487: "Request Terminated", 503: "Service Unavailable", 600: "Busy Everywhere",
            603: "Decline"}
