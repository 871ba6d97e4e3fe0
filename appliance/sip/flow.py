"""Where a message came from or goes to: transport, remote address and, for TCP and TLS,
the connection. Shared by the cores (which only compare and store flows) and the shell
(which owns sockets and connections). Also the two rules that tie a request's top Via to the
flow it came over (RFC 3261 18.2, RFC 3581): :func:`stamped_via` and :func:`response_flow`."""

from __future__ import annotations

from .message import Via


class Flow:
    """``connection`` is the shell's id of an open TCP/TLS connection, or None: for UDP, and
    for a stream destination that has no connection yet (the shell opens or reuses one)."""

    __slots__ = ("connection", "host", "port", "reliable", "transport")

    def __init__(self, transport: str, host: str, port: int, connection: int | None = None):
        self.transport = transport
        self.host = host
        self.port = port
        self.connection = connection
        self.reliable = transport != "udp"

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Flow) and (
            self.transport, self.host, self.port, self.connection) == (
            other.transport, other.host, other.port, other.connection)

    def __hash__(self) -> int:
        return hash((self.transport, self.host, self.port, self.connection))

    def __repr__(self) -> str:
        tail = f" #{self.connection}" if self.connection is not None else ""
        return f"Flow({self.describe()}{tail})"


def stamped_via(via: Via, flow: Flow) -> Via | None:
    """RFC 3261 18.2.1 and RFC 3581: the top Via with the source address noted (received,
    rport filled in), or None when it names the source already."""
    stamped = stamp(via, flow)
    if stamped is None:
        return None
    return Via(via.transport, via.host, via.port, *stamped)


def stamp(via: Via, flow: Flow) -> tuple[tuple[tuple[str, str | None], ...], str] | None:
    """What :func:`stamped_via` makes of the top Via: its parameters and its text."""
    rport = via.param("rport")
    add_received = via.host != flow.host
    fill_rport = rport is not None and rport != str(flow.port)
    if not add_received and not fill_rport:
        return None
    port = str(flow.port)
    params: list[tuple[str, str | None]] = []
    parts = [f"SIP/2.0/{via.transport} {via.sent_by}"]
    for key, value in via.params:
        if key == "rport":
            value = port
        elif key == "received":
            continue
        params.append((key, value))
        parts.append(key if value is None else f"{key}={value}")
    params.append(("received", flow.host))
    parts.append(f"received={flow.host}")
    return tuple(params), ";".join(parts)


def response_flow(via: Via, flow: Flow) -> Flow:
    """RFC 3261 18.2.2 and RFC 3581: where responses go to a request that came over
    ``flow`` with this (stamped) top Via."""
    if flow.reliable:
        return flow
    if via.param("rport") is not None:
        return Flow("udp", flow.host, flow.port)
    return Flow("udp", flow.host, via.port or 5060)
