"""Where a message came from or goes to: transport, remote address and, for TCP and TLS,
the connection. Shared by the cores (which only compare and store flows) and the shell
(which owns sockets and connections)."""

from __future__ import annotations


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
