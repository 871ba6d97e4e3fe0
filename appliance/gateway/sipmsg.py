"""What the gateway needs to know about a SIP request it received, read from the raw text.

pjsua2 hands incoming requests over as text (``SipRxData.wholeMsg``). The gateway reads only a
few things from them: who is calling (P-Asserted-Identity set by our proxy, else From), what
was dialled (Request-URI user part), whether the proxy marked the call as an emergency, how
the handset reached the proxy (the bottom Via: TLS or not), and what the SDP offer asks for
(SRTP crypto attributes, codecs). This module is pure: text in, frozen facts out.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse

from .errors import GatewayError

COMPACT_FORMS = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
                 "l": "content-length", "c": "content-type", "k": "supported", "s": "subject",
                 "e": "content-encoding"}

_URI_IN_ANGLES = re.compile(r"<([^>]*)>")
_VIA_PROTOCOL = re.compile(r"^\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9]+)", re.IGNORECASE)


class SipTextError(GatewayError, ValueError):
    """The text is not a SIP message we can read."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SdpOffer:
    media_protocol: str | None
    """The audio m= line's transport: 'RTP/AVP', 'RTP/SAVP', 'UDP/TLS/RTP/SAVP'..."""
    crypto_suites: tuple[str, ...]
    """SDES crypto suites offered for audio (a=crypto), in offer order."""
    codecs: tuple[str, ...]
    """Encoding names from a=rtpmap (plus static 0/8 payloads), upper case."""

    @property
    def asks_for_srtp(self) -> bool:
        """RTP/SAVP(F) makes SRTP mandatory; a=crypto on RTP/AVP offers it as best effort."""
        protocol = (self.media_protocol or "").upper()
        return "SAVP" in protocol or bool(self.crypto_suites)

    @property
    def has_sdes(self) -> bool:
        return bool(self.crypto_suites)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InboundInvite:
    """The facts of an INVITE the proxy sent to the gateway."""

    request_user: str
    call_id: str
    from_user: str | None
    from_display: str | None
    asserted_user: str | None
    via_protocols: tuple[str, ...]
    """Transport of every Via, top (the proxy) first, bottom (the handset) last."""
    emergency_marked: bool
    sdp: SdpOffer | None
    call_record: str | None = None
    """The call record the proxy opened for this call (X-JBC-Call-Record), if any."""

    @property
    def caller(self) -> str | None:
        """The calling extension: P-Asserted-Identity (our authenticated proxy) beats From."""
        return self.asserted_user or self.from_user

    @property
    def handset_transport(self) -> str | None:
        return self.via_protocols[-1] if self.via_protocols else None

    @property
    def handset_over_tls(self) -> bool:
        return (self.handset_transport or "").upper() in ("TLS", "WSS")


def split_message(text: str) -> tuple[str, list[tuple[str, str]], str]:
    """Start line, headers (canonical lower-case names, unfolded, in order) and body."""
    if "\r\n\r\n" in text:
        head, body = text.split("\r\n\r\n", 1)
    elif "\n\n" in text:
        head, body = text.split("\n\n", 1)
    else:
        head, body = text, ""
    lines = head.replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise SipTextError("empty message")
    start, headers = lines[0].strip(), []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        if ":" not in line:
            raise SipTextError(f"header line without a colon: {line[:40]!r}")
        name, value = line.split(":", 1)
        name = name.strip().lower()
        headers.append((COMPACT_FORMS.get(name, name), value.strip()))
    return start, headers, body


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    """Every value of ``name``, with comma-combined values split (outside quotes/angles)."""
    out: list[str] = []
    for key, value in headers:
        if key == name:
            out.extend(_split_commas(value))
    return out


def first_header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _split_commas(value: str) -> list[str]:
    parts, current, depth, quoted = [], [], 0, False
    for char in value:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth = max(0, depth - 1)
        if char == "," and not quoted and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def name_addr(value: str) -> tuple[str | None, str]:
    """(display name, URI) of a From/To/PAI value; the display name unquoted."""
    value = value.strip()
    match = _URI_IN_ANGLES.search(value)
    if match:
        display = value[: match.start()].strip()
        if display.startswith('"') and display.endswith('"') and len(display) >= 2:
            display = display[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        return (display or None), match.group(1).strip()
    return None, value.split(";", 1)[0].strip()


def uri_user(uri: str) -> str | None:
    """The user part of a sip:/sips:/tel: URI, percent-decoded, without parameters."""
    uri = uri.strip()
    scheme, _, rest = uri.partition(":")
    scheme = scheme.lower()
    if scheme == "tel":
        return urllib.parse.unquote(rest.split(";", 1)[0]) or None
    if scheme not in ("sip", "sips"):
        return None
    if "@" not in rest:
        return None
    user = rest.split("@", 1)[0].split(";", 1)[0]
    return urllib.parse.unquote(user) or None


def via_protocol(value: str) -> str | None:
    match = _VIA_PROTOCOL.match(value)
    return match.group(1).upper() if match else None


def parse_sdp_offer(body: str) -> SdpOffer | None:
    """The audio section of an SDP body, or None when there is no audio m= line."""
    if "m=" not in body:
        return None
    protocol: str | None = None
    payloads: list[str] = []
    rtpmap: dict[str, str] = {}
    suites: list[str] = []
    in_audio = False
    for raw in body.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if line.startswith("m="):
            if protocol is not None and in_audio:
                break  # only the first audio stream matters to us
            fields = line[2:].split()
            in_audio = bool(fields) and fields[0].lower() == "audio"
            if in_audio and len(fields) >= 3:
                protocol = fields[2]
                payloads = fields[3:]
            continue
        if not in_audio:
            continue
        if line.startswith("a=rtpmap:"):
            pt, _, encoding = line[len("a=rtpmap:"):].partition(" ")
            rtpmap[pt] = encoding.split("/", 1)[0].upper()
        elif line.startswith("a=crypto:"):
            fields = line[len("a=crypto:"):].split()
            if len(fields) >= 2:
                suites.append(fields[1])
    if protocol is None:
        return None
    static = {"0": "PCMU", "8": "PCMA", "9": "G722", "3": "GSM", "18": "G729"}
    codecs = tuple(rtpmap.get(pt) or static.get(pt, f"PT{pt}") for pt in payloads)
    return SdpOffer(media_protocol=protocol, crypto_suites=tuple(suites), codecs=codecs)


EMERGENCY_RESOURCE_NAMESPACES = ("esnet.",)
CALL_RECORD_HEADER = "X-JBC-Call-Record"
"""Names the call record of a call between our proxy and our gateway: the proxy puts the
record it opened on INVITEs it sends the gateway; the gateway puts the record it opened on
INVITEs for calls arriving on a trunk. The one who opened a record writes it; the other
only annotates it (trunk, location), so every call has exactly one record."""


def is_emergency_marked(request_uri: str, headers: list[tuple[str, str]]) -> bool:
    """RFC 5031 service URN, RFC 7135 'esnet' Resource-Priority, or 'Priority: emergency'."""
    if request_uri.lower().startswith("urn:service:sos"):
        return True
    for value in header_values(headers, "resource-priority"):
        if value.strip().lower().startswith(EMERGENCY_RESOURCE_NAMESPACES):
            return True
    priority = first_header(headers, "priority")
    return bool(priority and priority.strip().lower() == "emergency")


def parse_invite(text: str) -> InboundInvite:
    start, headers, body = split_message(text)
    parts = start.split()
    if len(parts) != 3 or parts[0] != "INVITE" or not parts[2].upper().startswith("SIP/"):
        raise SipTextError(f"not an INVITE request line: {start[:60]!r}")
    request_uri = parts[1]
    request_user = uri_user(request_uri)
    if request_uri.lower().startswith("urn:service:sos"):
        request_user = request_user or request_uri
    if not request_user:
        raise SipTextError(f"Request-URI without a user part: {request_uri[:60]!r}")
    from_display, from_uri = name_addr(first_header(headers, "from") or "")
    asserted = [uri_user(name_addr(v)[1]) for v in header_values(headers, "p-asserted-identity")]
    vias = tuple(p for p in (via_protocol(v) for v in header_values(headers, "via")) if p)
    content_type = (first_header(headers, "content-type") or "").lower()
    sdp = parse_sdp_offer(body) if "application/sdp" in content_type else None
    return InboundInvite(
        request_user=request_user,
        call_id=first_header(headers, "call-id") or "",
        from_user=uri_user(from_uri),
        from_display=from_display,
        asserted_user=next((a for a in asserted if a), None),
        via_protocols=vias,
        emergency_marked=is_emergency_marked(request_uri, headers),
        sdp=sdp,
        call_record=(first_header(headers, CALL_RECORD_HEADER.lower()) or "").strip() or None,
    )


def answered_over_tls(response: str) -> bool:
    """Whether the handset that sent this response to one of the gateway's INVITEs is on TLS.

    The proxy record-routes every call and, when the two sides differ in transport, puts one
    entry per side (RFC 5658); the callee copies them into its responses, topmost first, and
    the topmost names the proxy's side toward the callee: ``;transport=tls`` or a sips URI
    when the handset is on TLS."""
    _, headers, _ = split_message(response)
    routes = header_values(headers, "record-route")
    if not routes:
        return False
    uri = name_addr(routes[0])[1].lower()
    params = {p.split("=", 1)[0].strip(): p.partition("=")[2].strip() for p in uri.split(";")[1:]}
    return uri.startswith("sips:") or params.get("transport") in ("tls", "wss")


def header_text(text: str) -> str:
    """Free text made safe for a header value or a quoted-string (printable ASCII, no quotes
    or backslashes, at most 200 characters)."""
    return "".join(ch for ch in text if " " <= ch < "\x7f" and ch not in '"\\')[:200]


def sip_quote(display: str) -> str:
    """A display name as a quoted-string (RFC 3261 25.1)."""
    cleaned = "".join(ch for ch in display if ch >= " " and ch != "\x7f")
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def caller_uri_user(number: str) -> str:
    """A phone number as a SIP URI user part (RFC 3261 user chars; '+' kept)."""
    return urllib.parse.quote(number, safe="+-_.!~*'()&=$,;?/")
