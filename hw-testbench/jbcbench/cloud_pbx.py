"""The cloud PBX stand-in: a cloud SIP edge that also routes calls between the phones
registered to it, the way in-path mode needs to be shown working end to end.

:class:`CloudPbx` is a :class:`~jbcbench.cloud_edge.SipEdge` (OPTIONS, REGISTER with digest)
that, besides:

* keeps each registration's **Path** (RFC 3327) and the connection (or UDP source) the
  REGISTER came in on. A Path whose URI carries ``ob`` (RFC 5626) means: reach the phone over
  a connection from that appliance, which is how the appliance (in-path mode) gets calls to
  its phones: the REGISTER's own connection while it is open, else the newest connection
  from the same address that carried a request the appliance relayed (its top Via names
  another host than the connection's: after the appliance restarted, its new connection,
  which it announces with an OPTIONS; the WAN monitor's own TLS probes from the same address
  are not mistaken for it);
* routes an **INVITE** (and MESSAGE) from one registered user to another as a *stateless
  proxy* (RFC 3261 16.11): challenged first with 407 (realm of the cloud, as a hosted PBX
  does; the appliance passes the challenge through untouched), then forwarded with its own
  Via (a branch derived from the incoming one, so retransmissions and CANCEL follow the same
  path), its own Record-Route, the callee's Path as Route, the callee's contact as
  Request-URI. Media is not anchored: the SDP goes through untouched and the two phones talk
  directly (a real cloud PBX is a B2BUA with media in the cloud; see the in-path notes);
* forwards **in-dialog requests** (ACK, BYE, re-INVITE) along their Route, and **responses**
  back along the Via to where the request came from.

Calls to numbers nobody registered get 480; outside numbers are not routed (the bench's
outside calls go through the appliance's trunks in an outage). Written apart from the
appliance's SIP code (string handling of its own), so the two check each other.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Mapping

from .cloud_edge import SipEdge, SipRequest, _strip_name_addr, parse_sip_request

MAGIC = "z9hG4bK"


@dataclasses.dataclass(frozen=True, slots=True)
class Reach:
    """How the cloud reaches one registered phone."""

    contact: str
    path: tuple[str, ...]
    transport: str
    """'UDP', 'TCP' or 'TLS': the REGISTER's own transport."""
    source: tuple
    """Where the REGISTER came from (the appliance in in-path mode, else the phone)."""


class CloudPbx(SipEdge):
    def __init__(self, *, name: str, credentials: Mapping[str, str], realm: str,
                 max_expires_s: int = 3600, address: str = "127.0.0.1", **kwargs) -> None:
        super().__init__(name=name, credentials=credentials, realm=realm,
                         max_expires_s=max_expires_s, **kwargs)
        self.address = address
        self.ports = {"UDP": 5060, "TCP": 5060, "TLS": 5061}
        """Where it listens, per transport (set from the RegionEdge once it is bound)."""
        self.reach: dict[str, Reach] = {}
        """user -> how to reach the phone registered as that user."""
        self.calls_routed = 0
        self._responses_to: collections.OrderedDict[str, tuple[str, tuple]] = \
            collections.OrderedDict()
        """our Via branch -> (transport, address) the request came from."""
        self._invites_to: collections.OrderedDict[str, tuple[str, tuple]] = \
            collections.OrderedDict()
        """our INVITE branch -> where it went (CANCEL follows)."""
        self._relay_links: dict[tuple[str, str], tuple] = {}
        """(transport, appliance address) -> the newest connection it relayed over."""

    def _over_appliance(self, reach: Reach) -> tuple[str, tuple]:
        """Where a phone registered through an appliance is reached (see the docstring)."""
        if (reach.transport, reach.source) in self._writers:
            return reach.transport, reach.source
        return reach.transport, self._relay_links.get((reach.transport, reach.source[0]),
                                                      reach.source)

    def _note_relay_link(self, request: SipRequest, transport: str, source: tuple) -> None:
        top = (request.values("via") or [""])[0]
        sent_by = top.split(" ", 1)[-1].split(";", 1)[0].strip()
        if transport != "UDP" and sent_by and not sent_by.startswith(f"{source[0]}:") \
                and sent_by != source[0]:
            self._relay_links[(transport, source[0])] = source

    # -- SipEdge's entry point ---------------------------------------------------------------

    def handle(self, data: bytes, *, transport: str, source: tuple) -> bytes | None:
        if data.startswith(b"SIP/2.0 "):
            self._response(data)
            return None
        request = parse_sip_request(data)
        if request is None or self.silent or self.status is not None:
            return super().handle(data, transport=transport, source=source)
        body = data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""
        self._note_relay_link(request, transport, source)
        if request.method == "REGISTER":
            reply = super().handle(data, transport=transport, source=source)
            if reply is not None and reply.startswith(b"SIP/2.0 200"):
                self._remember(request, transport, source)
            return reply
        if request.method in ("OPTIONS",) and not _to_tag(request):
            return super().handle(data, transport=transport, source=source)
        self.requests[request.method] = self.requests.get(request.method, 0) + 1
        if request.method == "ACK":
            self._in_dialog(request, body, transport, source)  # a 2xx's ACK goes on; ours stop
            return None
        if request.method == "CANCEL":
            return self._cancel(request, body, transport, source)
        if _to_tag(request):
            return self._in_dialog(request, body, transport, source)
        if request.method in ("INVITE", "MESSAGE"):
            return self._route_new(request, body, transport, source)
        return self.response(request, 405, source=source,
                             extra=[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER")])

    # -- registrations -----------------------------------------------------------------------

    def _remember(self, request: SipRequest, transport: str, source: tuple) -> None:
        user = _user_of(request.first("to") or "")
        contacts = [c for c in request.values("contact") if c.strip() != "*"]
        live = user in self.registered()
        if not live or not contacts:
            self.reach.pop(user, None)
            return
        path = tuple(request.values("path"))
        with self.lock:
            contact = self.registrations[user].contact
        self.reach[user] = Reach(contact=contact, path=path, transport=transport,
                                 source=source)

    # -- new calls ---------------------------------------------------------------------------

    def _route_new(self, request: SipRequest, body: bytes, transport: str,
                   source: tuple) -> bytes | None:
        refusal = self._check_digest(request, None, source, proxy=True)
        if refusal is not None:
            return refusal
        callee = _user_of(request.uri)
        reach = self.reach.get(callee)
        if reach is None or callee not in self.registered():
            return self.response(request, 480, source=source)
        headers = [(n, v) for n, v in request.headers
                   if n.lower() not in ("route", "proxy-authorization", "max-forwards")]
        hops = _max_forwards(request)
        if hops <= 0:
            return self.response(request, 483, source=source)
        branch = _derived_branch(request, self.name)
        route = [("Route", value) for value in reach.path]
        port = self.ports[reach.transport]
        record = ("Record-Route", f"<sip:{self.address}:{port};"
                                  f"transport={reach.transport.lower()};lr>")
        via = ("Via", f"SIP/2.0/{reach.transport} {self.address}:{port};branch={branch}")
        forwarded = _render(request.method, reach.contact,
                            [via, record, *route, ("Max-Forwards", str(hops - 1)), *headers],
                            body)
        target = self._over_appliance(reach) if reach.path else \
            ("UDP", _contact_address(reach.contact))
        self._note(self._responses_to, branch, (transport, source))
        if request.method == "INVITE":
            self._note(self._invites_to, branch, target)
            self.calls_routed += 1
        if not self.send(*target, forwarded):
            return self.response(request, 480, source=source)
        return None

    def _cancel(self, request: SipRequest, body: bytes, transport: str,
                source: tuple) -> bytes | None:
        branch = _derived_branch(request, self.name)
        target = self._invites_to.get(branch)
        if target is None:
            return self.response(request, 481, source=source)
        self._forward(request, body, branch, target, (transport, source))
        return self.response(request, 200, source=source)

    # -- within dialogs ----------------------------------------------------------------------

    def _in_dialog(self, request: SipRequest, body: bytes, transport: str,
                   source: tuple) -> bytes | None:
        routes = request.values("route")
        if routes and self._is_us(routes[0]):
            routes = routes[1:]
        elif request.method == "ACK":
            return None  # the ACK for a final answer of ours (a 407)
        next_hop = _strip_name_addr(routes[0]) if routes else request.uri
        target = self._target_of(next_hop)
        if target is None:
            return None if request.method == "ACK" else self.response(request, 404,
                                                                       source=source)
        branch = _derived_branch(request, self.name)
        headers = [(n, v) for n, v in request.headers if n.lower() not in ("route",)]
        rebuilt = SipRequest(request.method, request.uri,
                             [*(("Route", r) for r in routes), *headers])
        self._forward(rebuilt, body, branch, target, (transport, source))
        return None

    def _target_of(self, uri: str) -> tuple[str, tuple] | None:
        """A phone's contact or an appliance's Path/Record-Route URI: over the connection
        its registration came in on when that was through an appliance, else straight."""
        host = uri.split(":", 1)[-1].rsplit("@", maxsplit=1)[-1].split(";", maxsplit=1)[0]
        address = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        for reach in self.reach.values():
            for hop in reach.path:
                if address in hop:
                    return self._over_appliance(reach)
            if address in reach.contact and not reach.path:
                return "UDP", _contact_address(reach.contact)
        return None

    def _is_us(self, route: str) -> bool:
        return f"sip:{self.address}:" in route

    def _forward(self, request: SipRequest, body: bytes, branch: str,
                 target: tuple[str, tuple], back: tuple[str, tuple]) -> None:
        via_transport = target[0]
        hops = _max_forwards(request)
        headers = [(n, v) for n, v in request.headers if n.lower() != "max-forwards"]
        data = _render(request.method, request.uri,
                       [("Via", f"SIP/2.0/{via_transport} {self.address}:"
                                f"{self.ports[via_transport]};branch={branch}"),
                        ("Max-Forwards", str(max(0, hops - 1))), *headers], body)
        if request.method != "ACK":
            self._note(self._responses_to, branch, back)
        self.send(*target, data)

    # -- responses ---------------------------------------------------------------------------

    def _response(self, data: bytes) -> None:
        head, separator, body = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        vias = [i for i, line in enumerate(lines) if line.lower().startswith(("via:", "v:"))]
        if not vias:
            return
        ours = lines[vias[0]]
        branch = next((p.split("=", 1)[1] for p in ours.split(";")
                       if p.strip().startswith("branch=")), "")
        back = self._responses_to.get(branch)
        if back is None:
            return
        del lines[vias[0]]
        self.send(*back, "\r\n".join(lines).encode() + separator + body)

    @staticmethod
    def _note(table: collections.OrderedDict, key: str, value: tuple) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > 4096:
            table.popitem(last=False)


def _render(method: str, uri: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"{method} {uri} SIP/2.0"]
    lines += [f"{name}: {value}" for name, value in headers
              if name.lower() not in ("content-length", "l")]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _derived_branch(request: SipRequest, salt: str) -> str:
    top = (request.values("via") or [""])[0]
    incoming = next((p.split("=", 1)[1] for p in top.split(";")
                     if p.strip().startswith("branch=")), top)
    return MAGIC + hashlib.sha256(f"{salt}|{incoming}".encode()).hexdigest()[:20]


def _max_forwards(request: SipRequest) -> int:
    value = request.first("max-forwards")
    return int(value) if value and value.strip().isdigit() else 70


def _to_tag(request: SipRequest) -> bool:
    return ";tag=" in (request.first("to") or "").replace(" ", "")


def _user_of(value: str) -> str:
    uri = _strip_name_addr(value)
    return uri.split(":", 1)[-1].split("@", 1)[0] if "@" in uri else ""


def _contact_address(contact: str) -> tuple[str, int]:
    hostport = contact.split("@", 1)[-1].split(";", 1)[0].split(">", 1)[0]
    host, _, port = hostport.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else (hostport, 5060)
