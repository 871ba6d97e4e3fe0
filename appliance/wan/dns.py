"""Just enough DNS (RFC 1035) to ask a resolver for a name's addresses, pure.

The WAN monitor resolves the cloud's names against the configured resolvers itself, through
the WAN interface, so that neither the libc resolver, nor nscd or systemd-resolved caches,
nor a resolver reached over a backup uplink can hide a DNS failure.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import struct

from .errors import ProbeAnswerError

HEADER = struct.Struct("!HHHHHH")
FLAG_QR = 0x8000
FLAG_TC = 0x0200
FLAG_RD = 0x0100
OPCODE_MASK = 0x7800
RCODE_MASK = 0x000F
CLASS_IN = 1
MAX_POINTER_JUMPS = 32


class QType(enum.IntEnum):
    A = 1
    CNAME = 5
    AAAA = 28


class Rcode(enum.IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


class DnsError(ProbeAnswerError):
    """A DNS message we cannot use: malformed, or not the answer to our question."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DnsAnswer:
    rcode: int
    addresses: tuple[str, ...]
    ttl: int | None
    truncated: bool

    @property
    def rcode_name(self) -> str:
        try:
            return Rcode(self.rcode).name
        except ValueError:
            return f"RCODE{self.rcode}"


def encode_name(name: str) -> bytes:
    labels = name.rstrip(".").split(".") if name not in ("", ".") else []
    out = bytearray()
    for label in labels:
        raw = label.encode("ascii")
        if not 0 < len(raw) <= 63:
            raise ValueError(f"{name!r}: every label must be 1 to 63 characters")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"{name!r} is longer than 255 octets")
    return bytes(out)


def build_query(query_id: int, name: str, qtype: QType = QType.A) -> bytes:
    """A recursive (RD) query for one name."""
    return HEADER.pack(query_id, FLAG_RD, 1, 0, 0, 0) + encode_name(name) + struct.pack(
        "!HH", qtype, CLASS_IN)


def parse_response(data: bytes, *, query_id: int, name: str,
                   qtype: QType = QType.A) -> DnsAnswer:
    """The addresses answering our question; raises DnsError for anything else."""
    if len(data) < HEADER.size:
        raise DnsError("shorter than a DNS header")
    msg_id, flags, qdcount, ancount, _nscount, _arcount = HEADER.unpack_from(data)
    if msg_id != query_id:
        raise DnsError(f"answer id {msg_id} does not match query id {query_id}")
    if not flags & FLAG_QR:
        raise DnsError("not a response")
    if flags & OPCODE_MASK:
        raise DnsError("not a standard query response")
    offset = HEADER.size
    if qdcount != 1:
        raise DnsError(f"{qdcount} questions in the answer, expected our 1")
    qname, offset = _read_name(data, offset)
    if len(data) < offset + 4:
        raise DnsError("question section cut short")
    got_type, got_class = struct.unpack_from("!HH", data, offset)
    offset += 4
    if qname.lower() != name.rstrip(".").lower() or got_type != qtype or got_class != CLASS_IN:
        raise DnsError(f"answer is for {qname!r} type {got_type}, not our question")
    truncated = bool(flags & FLAG_TC)
    rcode = flags & RCODE_MASK
    addresses: list[str] = []
    ttls: list[int] = []
    for _ in range(ancount):
        try:
            _owner, offset = _read_name(data, offset)
            rtype, rclass, ttl, rdlength = struct.unpack_from("!HHIH", data, offset)
        except struct.error:
            if truncated:
                break
            raise DnsError("answer section cut short") from None
        offset += 10
        rdata = data[offset:offset + rdlength]
        if len(rdata) != rdlength:
            if truncated:
                break
            raise DnsError("record data cut short")
        offset += rdlength
        if rclass != CLASS_IN:
            continue
        # Owner names are not chased through CNAME chains: a recursive resolver puts the
        # chain's final address records in the same answer section.
        if rtype == QType.A == qtype and rdlength == 4:
            addresses.append(str(ipaddress.IPv4Address(rdata)))
            ttls.append(ttl)
        elif rtype == QType.AAAA == qtype and rdlength == 16:
            addresses.append(str(ipaddress.IPv6Address(rdata)))
            ttls.append(ttl)
    return DnsAnswer(rcode=rcode, addresses=tuple(addresses),
                     ttl=min(ttls) if ttls else None, truncated=truncated)


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """A possibly compressed name at ``offset``; returns it and the offset after it."""
    labels: list[str] = []
    end: int | None = None
    jumps = 0
    while True:
        if offset >= len(data):
            raise DnsError("name runs past the end of the message")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DnsError("compression pointer cut short")
            pointer = ((length & 0x3F) << 8) | data[offset + 1]
            if end is None:
                end = offset + 2
            jumps += 1
            if jumps > MAX_POINTER_JUMPS or pointer >= len(data):
                raise DnsError("compression pointer loop or out of range")
            offset = pointer
            continue
        if length & 0xC0:
            raise DnsError(f"unsupported label type 0x{length:02x}")
        offset += 1
        if length == 0:
            break
        label = data[offset:offset + length]
        if len(label) != length:
            raise DnsError("label runs past the end of the message")
        labels.append(label.decode("ascii", errors="replace"))
        offset += length
    return ".".join(labels), end if end is not None else offset
