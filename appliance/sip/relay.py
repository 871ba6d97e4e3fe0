"""In-path mode: the appliance as the handsets' outbound proxy, relaying to the cloud.

Online, every request a phone sends through the appliance goes on to the cloud's SIP edge
over one verified TLS connection (the shell keeps it, :mod:`appliance.sip.cloudlink`), and
every request the cloud sends a phone comes back through it; the proxy is stateful (RFC 3261
16: the core's :class:`~appliance.sip.proxy.Proxy` response contexts, one branch each, so
CANCEL, timer C and late 2xx behave as for local calls):

* **Path** (RFC 3327): a REGISTER gets ``Path: <sip:TOKEN@appliance;lr;ob>``, so the cloud
  reaches the phone through the appliance, over the connection the REGISTER came in on
  (``ob``, RFC 5626 section 5). TOKEN is a flow token (:mod:`appliance.sip.flowtoken`).
* **Record-Route**: dialog-creating requests get two entries (RFC 5658), the one facing the
  phone carrying the flow token, so in-dialog requests pass through the appliance both ways.
* **Digest authentication** passes untouched: 401/407 from the cloud go to the phone, the
  retried request goes to the cloud with its credentials; the appliance never needs a
  phone's password to relay.
* **Mirrored bindings**: the cloud's 200 OK to a REGISTER says which of the phone's contacts
  it accepted and for how long; each becomes a binding (``origin = "cloud"``) in the core's
  :class:`~appliance.sip.registrar.RegistrationStore`, persisted like any other. An outage is
  then served from them at once: local calls, outside calls through the gateway, inbound
  trunk calls to the phones over the flows they registered from.
* **The cut** (:meth:`Relay.cut`): a phone's INVITE still waiting for the cloud's final answer
  is taken over: routed locally at once (an emergency call), or answered 407 with the
  appliance's own challenge, so the phone retries at once and the retry is served locally.
  A call the cloud was offering a phone is cancelled towards it. A call that was up through
  the cloud between two of the site's phones keeps its media (phone to phone, when the cloud
  does not anchor it); during the outage its in-dialog requests (BYE, re-INVITE, ACK) go
  straight to the other phone instead of into the dead cloud.

When a connection to the cloud comes up the relay sends an OPTIONS over it with its own Via
(:meth:`Relay.set_cloud`): the cloud learns at once which connection reaches the site's
phones (after a restart, before any phone has sent anything), and that the edge answers SIP.

What is relayed, from a phone: everything except REGISTER/OPTIONS addressed to the appliance
itself (a phone set up as backup-registrar), in-dialog requests of calls the local proxy
set up (they end where they began), and, under the brownout policy, new INVITEs. During an
outage only in-dialog requests of relayed dialogs are. From the cloud: everything, towards
the phone its flow token (or its Request-URI's binding) names.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .flow import Flow
from .flowtoken import FlowTokens
from .message import Headers, Request, Response, new_tag
from .proxy import ResponseContext
from .registrar import Binding
from .transaction import ClientTransaction, ServerTransaction, new_branch
from .uri import SipUri, unquote_string

if TYPE_CHECKING:
    from .core import SipCore

log = logging.getLogger(__name__)

DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
"""Requests outside a dialog that create one: record-routed."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RelaySettings:
    edges: tuple[tuple[str, str, int], ...]
    """The cloud's SIP edges as (transport, address, port): requests from them are the
    cloud's."""
    outage_expires_s: int = 30
    """Expiry granted to a relayed-style REGISTER refresh served locally in an outage."""


@dataclasses.dataclass(slots=True)
class _Pending:
    """A relayed INVITE without its final answer yet: what the cut needs."""

    tx: ServerTransaction
    original: Request
    """The request as it arrived, before our Via, Record-Route or Path."""
    flow: Flow
    towards_cloud: bool


class Relay:
    def __init__(self, core: SipCore, settings: RelaySettings, key: bytes) -> None:
        self.core = core
        self.settings = settings
        self.tokens = FlowTokens(key)
        self.cloud: Flow | None = None
        """The connection to the cloud edge in use (the shell sets it); None: none is up."""
        self._edge_hosts = {host for _, host, _ in settings.edges}
        self._pending: dict[int, _Pending] = {}
        self.local_calls = False
        """New INVITEs are served locally although the cloud is up (brownout policy)."""

    # -- what goes where ----------------------------------------------------------------------

    def set_cloud(self, flow: Flow | None, now: float | None = None) -> None:
        """The connection to the cloud edge (None: there is none). A new one is announced
        with an OPTIONS (when ``now`` is given)."""
        new = flow is not None and flow != self.cloud
        self.cloud = flow
        if new and now is not None:
            self._announce(flow, now)

    def _announce(self, flow: Flow, now: float) -> None:
        core = self.core
        host = f"[{flow.host}]" if ":" in flow.host else flow.host
        uri = f"sip:{host}:{flow.port};transport={flow.transport}"
        sent_by = self._sent_by(flow)
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{flow.transport.upper()} {sent_by};rport;"
                           f"branch={new_branch()}")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<sip:appliance@{sent_by}>;tag={new_tag()}")
        headers.add("To", f"<{uri}>")
        headers.add("Call-ID", f"{new_tag()}{new_tag()}@{sent_by}")
        headers.add("CSeq", "1 OPTIONS")
        headers.add("User-Agent", "jbcd in-path relay")
        core.layer.new_client(Request("OPTIONS", uri, headers), flow, reliable=flow.reliable,
                              user=_Announcement(core), now=now)

    def from_cloud(self, flow: Flow) -> bool:
        cloud = self.cloud
        if cloud is not None and flow.connection is not None \
                and flow.connection == cloud.connection:
            return True
        return flow.host in self._edge_hosts

    def takes(self, request: Request, flow: Flow, own_routes: Sequence[SipUri]) -> bool:
        """Whether a request that passed the core's checks is the relay's to forward."""
        core = self.core
        method = request.method
        in_dialog = request.to_tag is not None
        if method == "OPTIONS" and not in_dialog and self._addressed_to_us(request):
            return False  # a keep-alive or capability query for the appliance itself
        if self.from_cloud(flow):
            return True
        if core.is_trusted(flow):
            return False  # the trunk gateway talks to the local proxy only
        if in_dialog:
            # A relayed dialog's requests carry our flow token in their route; a dialog the
            # local proxy set up ends where it began.
            return self._relayed_dialog(own_routes) and not core.proxy.knows(request)
        if core.serving:
            return False
        if method == "REGISTER":
            return not self._addressed_to_us(request)
        # under the brownout policy new calls are served locally
        return not (method == "INVITE" and not in_dialog and self.local_calls)

    def _relayed_dialog(self, own_routes: Sequence[SipUri]) -> bool:
        return any(uri.user and self.tokens.flow(uri.user_text) is not None
                   for uri in own_routes)

    def _addressed_to_us(self, request: Request) -> bool:
        uri = request.uri
        return isinstance(uri, SipUri) and not uri.user and self.core.is_us(uri)

    # -- forwarding ---------------------------------------------------------------------------

    def forward(self, request: Request, tx: ServerTransaction, flow: Flow,
                own_routes: Sequence[SipUri], now: float) -> None:
        if self.from_cloud(flow):
            self._towards_phone(request, tx, flow, own_routes, now)
        else:
            self._towards_cloud(request, tx, flow, now)

    def _towards_cloud(self, request: Request, tx: ServerTransaction, flow: Flow,
                       now: float) -> None:
        core = self.core
        original = request.copy()
        if core.serving and request.to_tag is not None:
            local = self._short_cut(request, now)
            if local is not None:
                # A call that was up through the cloud at the cut, between two of the site's
                # phones: its BYE (or re-INVITE) goes straight to the other phone instead of
                # into the dead cloud, so both ends hang up.
                core.count("relay_short_cut")
                self._start(request, tx, local, now)
                return
        cloud = self.cloud
        if cloud is None:
            core.count("relay_no_cloud")
            # Without Retry-After: the phone tries its next server (the cloud directly).
            tx.respond(request.response(503, "Cloud Not Reachable"), now)
            return
        token = self.tokens.token(_phone_flow(flow))
        if request.method == "REGISTER":
            request.headers.add_before("Path", f"<sip:{token}@{self._sent_by(flow)};lr;ob>")
        elif request.method in DIALOG_METHODS and request.to_tag is None:
            self._record_route(request, phone_side=flow, token=token, towards_cloud=True)
        ctx = self._start(request, tx, cloud, now)
        if request.method == "REGISTER":
            ctx.observer = lambda response, at: self._mirror(original, response, flow, at)
        if request.method == "INVITE":
            self._pending[id(tx)] = _Pending(tx, original, flow, towards_cloud=True)
        core.count("relayed_to_cloud")

    def _towards_phone(self, request: Request, tx: ServerTransaction, flow: Flow,
                       own_routes: Sequence[SipUri], now: float) -> None:
        core = self.core
        original = request.copy()
        target = self._phone_of(request, own_routes, now)
        if target is None:
            core.count("relay_flow_failed")
            # RFC 5626 section 5.3: the flow the cloud names is gone.
            tx.respond(request.response(430, "Flow Failed"), now)
            return
        if request.method in DIALOG_METHODS and request.to_tag is None:
            self._record_route(request, phone_side=target,
                               token=self.tokens.token(_phone_flow(target)),
                               towards_cloud=False)
        self._start(request, tx, target, now)
        if request.method == "INVITE":
            self._pending[id(tx)] = _Pending(tx, original, flow, towards_cloud=False)
        core.count("relayed_to_phone")

    def _start(self, request: Request, tx: ServerTransaction, target: Flow,
               now: float) -> ResponseContext:
        if request.method == "INVITE":
            tx.respond(request.response(100), now)
        return self.core.proxy.relay(request, tx, target, now)

    def _short_cut(self, request: Request, now: float) -> Flow | None:
        """During an outage: the flow of the site's phone an in-dialog request is for (its
        Request-URI is that phone's registered contact), with the route through the cloud
        removed; None when it is not one of ours."""
        uri = request.uri
        if not isinstance(uri, SipUri):
            return None
        binding = self.core.registrations.find(uri, now)
        if binding is None:
            return None
        request.headers.remove("route")
        return self.core.binding_flow(binding)

    def _phone_of(self, request: Request, own_routes: Sequence[SipUri],
                  now: float) -> Flow | None:
        """Where a request from the cloud goes: the flow named by the token in our own Route
        entry, else the flow of the binding whose contact is the Request-URI."""
        for uri in own_routes:
            if uri.user:
                found = self.tokens.flow(uri.user_text)
                if found is not None:
                    return self._live(found)
        uri = request.uri
        if isinstance(uri, SipUri):
            binding = self.core.registrations.find(uri, now)
            if binding is not None:
                return self.core.binding_flow(binding)
        return None

    @staticmethod
    def _live(flow: Flow) -> Flow:
        """A token names transport, address and port; the shell finds a TCP/TLS connection
        to that remote address (or, for TCP, opens one)."""
        return Flow(flow.transport, flow.host, flow.port)

    def forward_ack(self, request: Request, flow: Flow, own_routes: Sequence[SipUri],
                    now: float) -> bool:
        """ACK for a 2xx of a relayed dialog: end to end, stateless (RFC 3261 16.11)."""
        if self.from_cloud(flow):
            target = self._phone_of(request, own_routes, now)
        elif self._relayed_dialog(own_routes) and not self.core.proxy.knows(request):
            target = (self._short_cut(request, now) if self.core.serving else None) \
                or self.cloud
        else:
            return False
        if target is None:
            self.core.count("relay_ack_unroutable")
            return True
        self.core.proxy.relay_ack(request, target)
        return True

    # -- Record-Route and Path ----------------------------------------------------------------

    def _sent_by(self, flow: Flow) -> str:
        core = self.core
        return core.sent_by(flow.transport) or core.sent_by("udp") or core.sent_by("tcp")

    def _cloud_side_uri(self) -> str:
        """The entry the cloud sees: ``ob`` (RFC 5626) tells it to reach us over the
        connection we opened, which is also why its port may be any of our listeners'."""
        core = self.core
        transport = self.cloud.transport if self.cloud is not None else "tls"
        sent_by = core.sent_by("tls") or core.sent_by("tcp") or core.sent_by("udp")
        return f"<sip:{sent_by};transport={transport};lr;ob>"

    def _record_route(self, request: Request, *, phone_side: Flow, token: str,
                      towards_cloud: bool) -> None:
        """RFC 5658 double Record-Route: the entry facing the next hop ends up on top."""
        tail = "" if phone_side.transport == "udp" else f";transport={phone_side.transport}"
        phone_uri = f"<sip:{token}@{self._sent_by(phone_side)}{tail};lr>"
        cloud_uri = self._cloud_side_uri()
        first, second = (phone_uri, cloud_uri) if towards_cloud else (cloud_uri, phone_uri)
        request.headers.add_before("Record-Route", first)
        request.headers.add_before("Record-Route", second)

    # -- mirrored bindings --------------------------------------------------------------------

    def _mirror(self, request: Request, response: Response, flow: Flow, now: float) -> None:
        """The cloud's 2xx to a REGISTER we relayed: mirror what it granted this phone."""
        if response.status >= 300:
            return
        core = self.core
        to_uri = request.to.uri
        user = to_uri.user_text if isinstance(to_uri, SipUri) else ""
        directory = core.directory
        device = None
        credentials = request.headers.get_all("authorization")
        for value in credentials:
            name = _digest_username(value)
            if name:
                device = directory.device_for_username(name)
                if device is not None:
                    break
        if device is None:
            device = directory.device_for_username(user)
        extension = device.extension if device is not None else (
            user if directory.extension(user) is not None else None)
        if extension is None or (device is not None and user not in (
                device.username, device.extension)):
            core.count("relay_mirror_unknown")
            return  # nothing unauthenticated, and nobody the directory does not know
        if request.headers.values("contact") == ["*"]:
            core.registrations.mirror(extension, [], [
                b.key for b in core.registrations.bindings_of(extension)
                if b.origin == "cloud"])
            return
        try:
            asked = request.addresses("contact")
            answered = response.addresses("contact")
        except Exception:  # a malformed Contact from the cloud costs the mirror, not the relay
            core.count("relay_mirror_malformed")
            return
        header_expires = response.int_header("expires")
        granted_by_key: dict[str, tuple[SipUri, int]] = {}
        for address in answered:
            uri = address.uri
            if not isinstance(uri, SipUri):
                continue
            expires_text = address.param("expires")
            expires = int(expires_text) if expires_text and expires_text.isdigit() \
                else header_expires
            if expires:
                granted_by_key[uri.without_headers().binding_key()] = (uri, expires)
        had = bool(core.registrations.bindings_of(extension))
        granted: list[Binding] = []
        removed: list[str] = []
        user_agent = request.headers.get("user-agent") or ""
        phone = _phone_flow(flow) if not flow.reliable else flow
        for address in asked:
            uri = address.uri
            if not isinstance(uri, SipUri):
                continue
            plain = uri.without_headers()
            instance = address.param("+sip.instance")
            instance = unquote_string(instance) if instance else None
            reg_id = address.param("reg-id")
            key = f"instance:{instance}:{reg_id or ''}" if instance else plain.binding_key()
            found = granted_by_key.get(plain.binding_key())
            if found is None:
                removed.append(key)
                continue
            q_text = address.param("q")
            try:
                q = float(q_text) if q_text else 1.0
            except ValueError:
                q = 1.0
            granted.append(Binding(
                aor=extension, contact=str(plain), uri=plain, key=key, q=q,
                expires_at=now + found[1], call_id=request.call_id, cseq=request.cseq[0],
                flow=phone, device_id=device.id if device is not None else "",
                user_agent=user_agent, instance=instance, reg_id=reg_id, registered_at=now,
                origin="cloud"))
        core.registrations.mirror(extension, granted, removed)
        core.count("relay_mirrored")
        if granted:
            core.sightings.granted(extension, round(granted[0].expires_at - now), now,
                                   by="cloud")
        if granted and not had:
            core.notice("mirrored", f"{extension} registered at the cloud through the "
                        f"appliance from {flow.describe()}; mirrored for "
                        f"{granted[0].expires_at - now:.0f} s",
                        {"aor": extension, "source": flow.describe(),
                         "expires_s": round(granted[0].expires_at - now)})
        log.debug("mirrored %s: %d granted, %d removed", extension, len(granted), len(removed))

    # -- the cut ------------------------------------------------------------------------------

    def cut(self, now: float) -> None:
        """The appliance starts serving (an outage): no INVITE in flight to or from the cloud
        may simply disappear."""
        pending, self._pending = self._pending, {}
        proxy = self.core.proxy
        for item in pending.values():
            tx = item.tx
            if tx.last_status is not None and tx.last_status >= 200:
                continue
            ctx = proxy.contexts.get(id(tx))
            if not item.towards_cloud:
                # The cloud was offering a call to a phone: stop the ringing.
                proxy.cancel(tx, now)
                self.core.count("relay_cut_cancelled_to_phone")
                continue
            if ctx is not None:
                proxy.abandon(ctx, now)
            self.core.count("relay_cut_taken_over")
            self.core.take_over(item.original, tx, item.flow, now)

    def forget(self, tx: ServerTransaction) -> None:
        self._pending.pop(id(tx), None)


class _Announcement:
    """The transaction user of the OPTIONS announcing a new cloud connection."""

    def __init__(self, core: SipCore) -> None:
        self.core = core

    def on_response(self, tx: ClientTransaction, response: Response, now: float) -> None:
        if response.status >= 200:
            self.core.count("relay_announced")

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        self.core.count("relay_announce_unanswered")

    def on_transport_error(self, tx: ClientTransaction, now: float) -> None:
        self.core.count("relay_announce_failed")


def _phone_flow(flow: Flow) -> Flow:
    """The phone's flow without the connection id (which does not survive a restart; the
    shell finds the connection by address)."""
    return Flow(flow.transport, flow.host, flow.port)


def _digest_username(value: str) -> str | None:
    lowered = value.lower()
    start = lowered.find("username=")
    if start < 0:
        return None
    rest = value[start + len("username="):].lstrip()
    if rest.startswith('"'):
        end = rest.find('"', 1)
        return rest[1:end] if end > 0 else None
    return rest.split(",", 1)[0].strip() or None
