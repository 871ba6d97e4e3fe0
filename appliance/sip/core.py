"""The SIP server's sans-I/O heart: transactions, registrar, digest auth, proxy, abuse guard.

The shell (``service.py``) hands it bytes with the :class:`Flow` they came over and the
current time, the way h11 and aioquic are driven:

* in: :meth:`SipCore.receive_datagram`, :meth:`SipCore.receive_stream_item`,
  :meth:`SipCore.handle_timer` (at :meth:`SipCore.next_deadline`, which includes the
  periodic housekeeping), :meth:`SipCore.transport_error`, :meth:`SipCore.connection_closed`,
  and the settings that come from outside (:meth:`SipCore.set_serving`,
  :meth:`SipCore.set_directory`);
* out, drained after every input: :meth:`SipCore.take_transmits` (bytes to send and where),
  :meth:`SipCore.take_notices` (things worth a journal entry) and
  :meth:`SipCore.take_changes` (bindings and calls to persist).

It never raises for anything a peer sends: malformed input is answered with the status its
error carries (400, 420, 483, 513...) or dropped, and counted in ``stats``.

Order of checks for a request: the source's rate limit and lockout (before parsing), syntax,
transaction matching (retransmissions are absorbed), then Max-Forwards, Proxy-Require and
URI scheme, then authentication, and only then registration or routing. The single
exception to "authenticate first" is a call to an emergency number
(``emergency_without_auth``): a handset whose credentials are wrong must still reach 911.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal

from appliance.directory.model import Directory
from appliance.phones.sightings import PhoneSightings, observation_of

from .abuse import AbuseGuard, AbusePolicy
from .dialplan import Destination, DialPlan
from .digest import AuthResult, Credential, DigestAuthenticator, Verdict, ha1
from .errors import RemoteProtocolError
from .fastregister import RegisterFastPath
from .flow import Flow, response_flow, stamped_via
from .message import Request, Response
from .parser import PING, Limits, parse_datagram
from .proxy import Call, Identity, Proxy
from .registrar import ExpiryPolicy, RegistrationStore
from .relay import Relay, RelaySettings
from .transaction import ServerTransaction, State, TimerSettings, TransactionLayer, Transmit
from .uri import (
    AbsoluteUri,
    NameAddr,
    SipUri,
    UriError,
    parse_hostport,
    unquote_string,
)

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, REFER, MESSAGE, PRACK, " \
        "NOTIFY"
SUPPORTED_OPTIONS: frozenset[str] = frozenset()
"""Option tags this server implements for Require/Proxy-Require (none beyond RFC 3261)."""
ROUTED_METHODS = frozenset({"INVITE", "MESSAGE", "OPTIONS"})
ANSWER_MEMORY_S = 32.0
"""As long as a non-INVITE server transaction would absorb retransmissions (64*T1)."""
ANSWER_MEMORY_BYTES = 8 * 1024 * 1024
"""At most this much is kept for remembered answers (their bytes plus bookkeeping): about
10,000 answers, 32 s of a whole site registering at once, so that a retransmission whose
answer was lost still gets that answer."""
ENTRY_OVERHEAD_BYTES = 320
"""What one remembered answer costs besides its bytes (key, tuple, table slot)."""
HOUSEKEEPING_S = 5.0
"""How often expired bindings, nonce counts, remembered answers and locks are swept."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CoreSettings:
    realm: str = "jbc"
    advertised_host: str = "127.0.0.1"
    ports: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"udp": 5060})
    """Transports we listen on, with the ports handsets reach them at."""
    algorithms: tuple[str, ...] = ("MD5",)
    nonce_lifetime_s: float = 300.0
    default_expires_s: int = 3600
    min_expires_s: int = 60
    outage_max_expires_s: int = 120
    online_max_expires_s: int = 3600
    online_register: Literal["refuse", "accept"] = "refuse"
    max_contacts_per_aor: int = 10
    abuse: AbusePolicy = dataclasses.field(default_factory=AbusePolicy)
    trusted_peers: tuple[str, ...] = ()
    """Peers ("ip" or "ip:port") whose requests are routed without digest auth."""
    gateway_uri: str = ""
    ring_timeout_s: float = 60.0
    timer_c_s: float = 180.0
    emergency_without_auth: bool = True
    max_calls: int = 500
    dialog_idle_timeout_s: float = 4 * 3600.0
    timers: TimerSettings = dataclasses.field(default_factory=TimerSettings)
    limits: Limits = dataclasses.field(default_factory=Limits)
    register_fast_path: bool = True
    """Answer the common REGISTER from the raw datagram (fastregister.py). Off only to
    compare it with the full path in tests and benchmarks: the answers are the same."""


PROBE_EXPIRY = ExpiryPolicy(default_s=60, min_s=10, max_s=60)
"""Registrations of internal test identities: short, in any WAN state."""
REFRESH_LEAD_CAP_S = 120
"""In-path outage refreshes: how much of a phone's refresh lead is added to the short grant
(:attr:`ExpiryPolicy.lead_cap_s`); desk phones refresh 60 s early by default."""


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """Something worth a journal entry (kind, human reason, details)."""

    kind: str
    reason: str
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)


DatagramKey = tuple[bytes, str, int]
"""A datagram's identity: a digest of its bytes (never the bytes: they may be 64 kB), the
source host and the source port."""


def datagram_key(data: bytes, flow: Flow) -> DatagramKey:
    return (hashlib.blake2b(data, digest_size=16).digest(), flow.host, flow.port)


class AnswerMemory:
    """The final answers the core gave on its own over UDP in the last ``ANSWER_MEMORY_S``
    (challenges, errors, registrations, OPTIONS), by the datagram they answered, so that a
    retransmission gets the same answer back without being parsed and no transaction has to
    wait out Timer J or H. Bounded by bytes: the oldest are forgotten first (a forgotten one
    is simply handled afresh)."""

    def __init__(self, *, max_bytes: int = ANSWER_MEMORY_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: collections.OrderedDict[DatagramKey, tuple[float, bytes, Flow]] = \
            collections.OrderedDict()

    def get(self, key: DatagramKey, now: float) -> tuple[bytes, Flow] | None:
        entry = self._entries.get(key)
        if entry is None or now - entry[0] >= ANSWER_MEMORY_S:
            return None
        return entry[1], entry[2]

    def remember(self, key: DatagramKey, now: float, data: bytes, flow: Flow) -> None:
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old[1]) + ENTRY_OVERHEAD_BYTES
        entries[key] = (now, data, flow)
        self.bytes += len(data) + ENTRY_OVERHEAD_BYTES
        while self.bytes > self.max_bytes and entries:
            _, (_, dropped, _) = entries.popitem(last=False)
            self.bytes -= len(dropped) + ENTRY_OVERHEAD_BYTES

    def expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, (when, data, _) = next(iter(entries.items()))
            if now - when < ANSWER_MEMORY_S:
                return
            del entries[key]
            self.bytes -= len(data) + ENTRY_OVERHEAD_BYTES

    def __len__(self) -> int:
        return len(self._entries)


class StatelessAnswer:
    """Stands in for a server transaction where the core always answers at once and keeps
    nothing (RFC 3261 8.2.7): REGISTER. Only the first final response is sent, as a
    non-INVITE server transaction would (17.2.2); ``dropped`` means answer nothing."""

    __slots__ = ("_layer", "dropped", "flow", "last_response_bytes", "last_status")

    def __init__(self, layer: TransactionLayer, flow: Flow) -> None:
        self._layer = layer
        self.flow = flow
        self.last_status: int | None = None
        self.last_response_bytes: bytes | None = None
        self.dropped = False

    def respond(self, response: Response, now: float) -> None:
        if self.last_status is not None or self.dropped:
            return
        self.last_status = response.status
        self.last_response_bytes = data = response.to_bytes()
        self._layer.transmit(Transmit(data, self.flow))


Answerer = ServerTransaction | StatelessAnswer
"""Whatever a request's answer is sent through."""


@dataclasses.dataclass(frozen=True, slots=True)
class Changes:
    """What changed since the last :meth:`SipCore.take_changes`: the AORs whose bindings
    changed (persist each AOR's current bindings) and the calls whose state changed."""

    aors: set[str]
    calls: set[Call]

    def __bool__(self) -> bool:
        return bool(self.aors or self.calls)


class SipCore:
    """``serving``: whether handsets are served locally (REGISTER accepted with outage
    expiries); the shell decides it from the WAN state. ``now``: the clock the core starts at
    (housekeeping is first due ``HOUSEKEEPING_S`` after it)."""

    def __init__(self, settings: CoreSettings, *, directory: Directory, serving: bool = False,
                 now: float = 0.0, relay: RelaySettings | None = None,
                 relay_key: bytes | None = None) -> None:
        self.settings = settings
        self.layer = TransactionLayer(settings.timers)
        self.layer.on_server_terminated = self._server_terminated
        self._datagrams: dict[DatagramKey, ServerTransaction] = {}
        """Live UDP server transactions by the datagram that opened them."""
        self._datagram_of: dict[ServerTransaction, DatagramKey] = {}
        self.answers = AnswerMemory()
        self._notices: list[Notice] = []
        self._housekeeping_at = now + HOUSEKEEPING_S
        self.stats: Counter[str] = Counter()
        self.auth = DigestAuthenticator(settings.realm, algorithms=settings.algorithms,
                                        nonce_lifetime_s=settings.nonce_lifetime_s)
        self.registrations = RegistrationStore(max_contacts=settings.max_contacts_per_aor)
        self.probes: dict[str, Credential] = {}
        """Internal test identities (the fire drill's test user agent): they may register
        whatever the WAN state, and are routed to as their own address of record."""
        self.sightings = PhoneSightings()
        """Every phone seen (REGISTER, OPTIONS): 'jbc phones --readiness' reads it."""
        self.proxy = Proxy(self)
        self.gateway: SipUri | None = SipUri.parse(settings.gateway_uri) \
            if settings.gateway_uri else None
        self.gateway_down: str | None = None
        """Why the trunk gateway is not running (None: it is, or nothing says otherwise)."""
        self.gateway_retry_after_s = 30
        self._trusted = self._trusted_peers(settings)
        self.guard = AbuseGuard(settings.abuse, exempt={p[0] for p in self._trusted})
        self._local = {(settings.advertised_host, port) for port in settings.ports.values()}
        self._serving = serving
        self._policies: dict[tuple[bool, bool], ExpiryPolicy | None] = {}
        self.directory = directory
        self.dialplan = DialPlan(directory)
        self.set_directory(directory)
        self.relay: Relay | None = None
        """In-path mode (sip.mode = "in-path"): the relay to the cloud (relay.py)."""
        if relay is not None:
            self.relay = Relay(self, relay, relay_key or b"")
        self._fast = RegisterFastPath(self) if settings.register_fast_path else None
        """The REGISTER fast path (fastregister.py): the common REGISTER over UDP answered
        from the raw datagram, exactly as the full path would."""

    # -- configuration from outside -----------------------------------------------------------

    def set_directory(self, directory: Directory) -> None:
        """A new directory: credentials and dial plan change; bindings and calls stay."""
        realm = self.settings.realm
        credentials = []
        for device in directory.devices:
            secrets: dict[str, str] = {}
            if device.password is not None:
                for algorithm in ("MD5", "SHA-256"):
                    secrets[algorithm] = ha1(algorithm, device.username, realm, device.password)
            if device.ha1_md5:
                secrets["MD5"] = device.ha1_md5.lower()
            if device.ha1_sha256:
                secrets["SHA-256"] = device.ha1_sha256.lower()
            credentials.append(Credential(device.username, device.id, device.extension,
                                          secrets))
        self.auth.set_credentials(credentials + list(self.probes.values()))
        self.directory = directory
        self.dialplan = DialPlan(directory)

    def add_probe(self, username: str, password: str) -> None:
        """An internal test identity (see ``probes``), until :meth:`remove_probe`."""
        realm = self.settings.realm
        secrets = {algorithm: ha1(algorithm, username, realm, password)
                   for algorithm in ("MD5", "SHA-256")}
        self.probes[username] = Credential(username, f"probe:{username}", username, secrets)
        self.set_directory(self.directory)

    def remove_probe(self, username: str) -> None:
        if self.probes.pop(username, None) is not None:
            self.set_directory(self.directory)

    def set_serving(self, serving: bool, now: float | None = None) -> None:
        """Serve handsets locally (an outage) or not (the cloud serves them). Calls in
        progress are never affected; only how REGISTER is answered changes. In in-path mode
        the start of serving is the cut: INVITEs in flight to the cloud are taken over
        (``now`` is needed then)."""
        starting = serving and not self._serving
        self._serving = serving
        if starting and self.relay is not None and now is not None:
            self.relay.cut(now)

    def set_gateway_down(self, reason: str | None, retry_after_s: int = 30) -> None:
        """The trunk gateway is not running (``reason``), or runs again (None). While it is
        down, outside and emergency calls get an immediate 500 with Retry-After instead of
        waiting for a gateway that cannot answer (see ``Proxy._refuse_gateway_down``), or go to
        the cloud in in-path mode when it is reachable (see :meth:`_route_new`)."""
        self.gateway_down = reason
        self.gateway_retry_after_s = max(1, retry_after_s)

    def set_local_calls(self, local: bool) -> None:
        """In-path mode's brownout policy: new INVITEs are served locally while the cloud is
        still reachable (registrations and everything else go on to the cloud)."""
        if self.relay is not None:
            self.relay.local_calls = local

    @property
    def serving(self) -> bool:
        """Whether handsets are served locally (REGISTER accepted with outage expiries)."""
        return self._serving

    def expiry_policy(self, *, through_us: bool = False) -> ExpiryPolicy | None:
        """``through_us``: a REGISTER a phone sent through the appliance as its outbound
        proxy (in-path mode), not to it as its registrar."""
        key = (self._serving, through_us and self.relay is not None)
        if key not in self._policies:
            self._policies[key] = self._new_expiry_policy(through_us=through_us)
        return self._policies[key]

    def _new_expiry_policy(self, *, through_us: bool) -> ExpiryPolicy | None:
        s = self.settings
        if self.serving and through_us and self.relay is not None:
            maximum = self.relay.settings.outage_expires_s
            return ExpiryPolicy(default_s=s.default_expires_s,
                                min_s=min(s.min_expires_s, maximum), max_s=maximum,
                                lead_cap_s=REFRESH_LEAD_CAP_S)
        elif self.serving:
            maximum = s.outage_max_expires_s
        elif s.online_register == "accept":
            maximum = s.online_max_expires_s
        else:
            return None
        return ExpiryPolicy(default_s=s.default_expires_s,
                            min_s=min(s.min_expires_s, maximum), max_s=maximum)

    # -- input --------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, flow: Flow, now: float) -> None:
        if len(data) <= 4 and not data.strip(b"\r\n"):
            self.stats["keepalives"] += 1  # a CRLF keep-alive over UDP: nothing to answer
            self.sightings.crlf_keepalive(flow.transport, flow.host, flow.port, now)
            return
        if not self.guard.admit(flow.host, now):
            return
        key = datagram_key(data, flow)
        answered = self.answers.get(key, now)
        if answered is not None:
            self.stats["retransmissions"] += 1
            self.layer.transmit(Transmit(*answered))
            return
        retransmitted = self._datagrams.get(key)
        if retransmitted is not None:
            # The very same bytes from the same place: a UDP retransmission of a request
            # whose transaction is alive. Let the transaction answer it without re-parsing.
            self.stats["retransmissions"] += 1
            retransmitted.retransmitted(now)
            return
        if self._fast is not None and data[:9] == b"REGISTER " and \
                self._fast.handle(data, flow, now, key):
            return
        try:
            message = parse_datagram(data, self.settings.limits)
        except RemoteProtocolError as error:
            self._reject(error, flow, now)
            return
        except Exception:  # a parser bug must cost one datagram, never the daemon
            log.exception("parsing a datagram from %s failed", flow.describe())
            self.stats["internal_errors"] += 1
            return
        self._handle(message, flow, now, key)

    def receive_stream_item(self, item: Any, flow: Flow, now: float) -> None:
        """One item from a connection's :class:`~appliance.sip.parser.StreamFramer`."""
        if item is PING:
            self.stats["keepalives"] += 1
            self.sightings.crlf_keepalive(flow.transport, flow.host, flow.port, now)
            self.layer.transmit(Transmit(b"\r\n", flow))  # RFC 5626 pong
            return
        if not self.guard.admit(flow.host, now):
            return
        if isinstance(item, RemoteProtocolError):
            self._reject(item, flow, now)
            return
        self._handle(item, flow, now)

    def transport_error(self, client_key: tuple[str, str] | None, now: float) -> None:
        if client_key is not None:
            self.layer.client_transport_error(client_key, now)

    def connection_closed(self, connection: int) -> None:
        self.registrations.drop_flow(connection)

    # -- output -------------------------------------------------------------------------------

    def take_transmits(self) -> list[Transmit]:
        """What to send, oldest first, since the last call."""
        return self.layer.take_transmits()

    def take_notices(self) -> list[Notice]:
        """Things worth a journal entry since the last call."""
        notices, self._notices = self._notices, []
        return notices

    def take_changes(self) -> Changes:
        """Bindings and calls that changed since the last call (to persist)."""
        return Changes(self.registrations.take_changed(), self.proxy.take_changed())

    # -- timers -------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When :meth:`handle_timer` must next run: the earliest transaction or proxy timer,
        or the next housekeeping round."""
        deadline = self._housekeeping_at
        for other in (self.layer.next_deadline(), self.proxy.next_deadline()):
            if other is not None and other < deadline:
                deadline = other
        return deadline

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now`` (the shell passes max(deadline, clock))."""
        try:
            self.layer.handle_timers(now)
            self.proxy.handle_timers(now)
            if now >= self._housekeeping_at:
                self._housekeeping_at = now + HOUSEKEEPING_S
                self._housekeeping(now)
        except Exception:
            log.exception("SIP timer handling failed")
            self.stats["internal_errors"] += 1

    def _housekeeping(self, now: float) -> None:
        """Expire bindings, old nonce counts, remembered answers and locks."""
        gone_aors = {b.aor for b in self.registrations.expire(now)}
        for aor in sorted(gone_aors):
            if not self.registrations.lookup(aor, now):
                self.notice("unregistered", f"{aor}: registration expired", {"aor": aor})
        self.auth.expire(now)
        self.answers.expire(now)
        self.guard.sweep(now)

    # -- handling -----------------------------------------------------------------------------

    def _handle(self, message: Request | Response, flow: Flow, now: float,
                key: DatagramKey | None = None) -> None:
        try:
            if isinstance(message, Response):
                self._on_response(message, flow, now)
            else:
                self._on_request(message, flow, now, key)
        except RemoteProtocolError as error:
            if error.message is None:
                error.message = message if isinstance(message, Request) else None
            self._reject(error, flow, now)
        except Exception:
            log.exception("SIP message handling failed for %r from %r", message, flow)
            self.stats["internal_errors"] += 1
            if isinstance(message, Request):
                tx = self._find_server(message)
                if tx is not None and tx.last_status is None and message.method != "ACK":
                    tx.respond(message.response(500), now)

    def _find_server(self, request: Request) -> ServerTransaction | None:
        try:
            return self.layer.find_server(request)
        except RemoteProtocolError:
            return None

    def _on_response(self, response: Response, flow: Flow, now: float) -> None:
        tx = self.layer.find_client(response)
        if tx is None:
            self.stats["responses_unmatched"] += 1
            return
        self.guard.refund(flow.host)  # an answer to our own request: honest traffic
        tx.receive_response(response, now)

    def _on_request(self, request: Request, flow: Flow, now: float,
                    key: DatagramKey | None = None) -> None:
        self.stats["requests"] += 1
        _stamp_via(request, flow)
        tx = self.layer.find_server(request)
        if tx is not None:
            self.stats["retransmissions"] += 1
            tx.receive_request(request, now)
            return
        method = request.method
        if method == "ACK":
            if request.to_tag is not None:
                own = self._pop_own_routes(request)
                relayed = self.relay is not None and self.relay.forward_ack(request, flow, own,
                                                                            now)
                if relayed or self.proxy.forward_ack(request, now):
                    self.guard.refund(flow.host)
            return
        if method == "REGISTER":
            self._on_register(request, flow, now, key)
            return
        tx = self.layer.new_server(request, _response_flow(request, flow),
                                   reliable=flow.reliable)
        if key is not None:
            self._datagrams[key] = tx
            self._datagram_of[tx] = key
        try:
            self._dispatch(request, tx, flow, now)
        except RemoteProtocolError as error:
            if tx.last_status is None:
                tx.respond(self._error_response(request, error), now)
            self.stats["rejected"] += 1
        if tx.state is State.COMPLETED:
            self._answered_statelessly(tx, key, now)

    def _on_register(self, request: Request, flow: Flow, now: float,
                     key: DatagramKey | None) -> None:
        """REGISTER is always answered at once: no transaction, the answer remembered."""
        answer = StatelessAnswer(self.layer, _response_flow(request, flow))
        try:
            self._dispatch(request, answer, flow, now)
        except RemoteProtocolError as error:
            answer.respond(self._error_response(request, error), now)
            self.stats["rejected"] += 1
        except Exception:
            log.exception("SIP REGISTER handling failed for %r from %r", request, flow)
            self.stats["internal_errors"] += 1
            answer.respond(request.response(500), now)
        if key is not None and answer.last_response_bytes is not None:
            self.answers.remember(key, now, answer.last_response_bytes, answer.flow)

    def _answered_statelessly(self, tx: ServerTransaction, key: DatagramKey | None,
                              now: float) -> None:
        """RFC 3261 8.2.7: a request the core answered at once with a final response (a
        challenge, an error, a registration, OPTIONS) leaves no transaction behind. Over UDP
        the answer's bytes are remembered, in a table bounded by bytes, so that a
        retransmission gets the same answer back unparsed."""
        if key is not None and tx.last_response_bytes is not None:
            self.answers.remember(key, now, tx.last_response_bytes, tx.flow)
        self.layer.discard(tx)

    def _dispatch(self, request: Request, tx: Answerer, flow: Flow,
                  now: float) -> None:
        method = request.method
        if method == "CANCEL":
            self._cancel(request, tx, now)
            return
        request.from_  # noqa: B018  (a malformed From or To is answered 400 here)
        request.to  # noqa: B018
        uri = request.uri
        if not isinstance(uri, SipUri) and uri.scheme != "tel":
            tx.respond(request.response(416), now)
            return
        if isinstance(uri, SipUri) and uri.headers:
            tx.respond(request.response(400, "Headers Not Allowed In Request-URI"), now)
            return
        hops = request.int_header("max-forwards", maximum=255)
        to_us = self._addressed_to_us(request)
        if hops == 0 and not (method == "OPTIONS" and to_us):
            tx.respond(request.response(483), now)
            return
        unsupported = [t for t in request.option_tags("proxy-require")
                       if t not in SUPPORTED_OPTIONS]
        if method in ("REGISTER", "OPTIONS") and to_us:
            unsupported += [t for t in request.option_tags("require")
                            if t not in SUPPORTED_OPTIONS]
        if unsupported:
            tx.respond(request.response(420, headers=[("Unsupported", ", ".join(unsupported))]),
                       now)
            return
        own = self._pop_own_routes(request)
        relayed = self.relay is not None and self.relay.takes(request, flow, own)
        if method == "REGISTER" or (method == "OPTIONS" and to_us):
            observation = observation_of(request, flow.transport, flow.host, flow.port)
            if observation is not None and observation.aor not in self.probes:
                self.sightings.observe(observation, now, via="relay" if relayed else "direct")
        if relayed:
            self.relay.forward(request, tx, flow, own, now)
        elif method == "REGISTER":
            self._register(request, tx, flow, now)
        elif request.to_tag is not None:
            if self.proxy.forward_in_dialog(request, tx, now):
                self.guard.refund(flow.host)
        elif method == "OPTIONS" and self._addressed_to_us(request):
            tx.respond(request.response(200, headers=[
                ("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", "")]), now)
        elif method in ROUTED_METHODS:
            self._route_new(request, tx, flow, now)
        elif method in ("SUBSCRIBE", "PUBLISH"):
            if self._authenticate(request, tx, flow, now, proxy=True) is not None:
                tx.respond(request.response(489), now)
        elif method in ("BYE", "INFO", "UPDATE", "PRACK", "NOTIFY", "REFER"):
            tx.respond(request.response(481), now)
        else:
            tx.respond(request.response(501), now)

    # -- registration -------------------------------------------------------------------------

    def _register(self, request: Request, tx: Answerer, flow: Flow,
                  now: float) -> None:
        uri = request.uri
        through_us = not (isinstance(uri, SipUri) and self.is_us(uri))
        policy = self.expiry_policy(through_us=through_us)
        if policy is None and isinstance(request.to.uri, SipUri) and \
                request.to.uri.user_text in self.probes:
            policy = PROBE_EXPIRY
        if policy is None:
            # The cloud is up: send handsets back to their primary server. 503 without
            # Retry-After makes them try the next server (RFC 3263 / RFC 5626 failover).
            self.stats["register_refused_online"] += 1
            tx.respond(request.response(503, "Use Primary Server"), now)
            return
        if request.headers.values("contact") != ["*"]:
            request.addresses("contact")  # malformed contacts get 400 before any challenge
        credential = self._authenticate(request, tx, flow, now, proxy=False)
        if credential is None:
            return
        to_user = request.to.uri.user_text if isinstance(request.to.uri, SipUri) else ""
        if to_user not in (credential.username, credential.extension):
            tx.respond(request.response(403, "Not Your Address-Of-Record"), now)
            return
        aor = credential.extension
        had = self.registrations.has_bindings(aor)
        binding_flow = flow if flow.reliable else Flow("udp", flow.host, flow.port)
        response = self.registrations.register(request, aor=aor, device_id=credential.device_id,
                                               flow=binding_flow, now=now, policy=policy)
        tx.respond(response, now)
        if response.status == 200:
            self.registered(credential, to_user, flow, had=had, now=now)

    def registered(self, credential: Credential, to_user: str, flow: Flow, *, had: bool,
                   now: float) -> None:
        """A REGISTER was answered 200: count it, tell the phone sightings what was granted
        and journal a phone that appeared or went (``had``: it had bindings before)."""
        aor = credential.extension
        self.stats["registrations"] += 1
        bindings = self.registrations.bindings_of(aor)
        if bindings:
            latest = bindings[0].expires_at
            for binding in bindings:
                latest = max(latest, binding.expires_at)
            self.sightings.granted(to_user, round(latest - now), now, by="appliance")
        has = bool(bindings)
        if has and not had:
            self.notice("registered", f"{aor} registered from {flow.describe()}",
                        {"aor": aor, "device": credential.device_id,
                         "source": flow.describe()})
        elif had and not has:
            self.notice("unregistered", f"{aor} unregistered", {"aor": aor})

    # -- authentication -----------------------------------------------------------------------

    def _authenticate(self, request: Request, tx: Answerer, flow: Flow, now: float,
                      *, proxy: bool) -> Credential | None:
        """Return the verified credential, or answer with a challenge and return None.

        Wrong password, unknown user, malformed credentials and a user under guard all get
        the same fresh challenge. A request for a user name whose guesses locked it out from
        this address gets no answer at all (see :mod:`appliance.sip.abuse`).
        """
        result = self.auth.verify(request, now, proxy=proxy)
        verdict = result.verdict
        guard = self.guard
        source = flow.host
        if guard.any_pair_locked and \
                guard.pair_locked(source, result.username or _claimed_user(request), now):
            self.stats["auth_dropped_locked"] += 1
            guard.dropped_locked += 1
            if isinstance(tx, StatelessAnswer):
                tx.dropped = True
            else:
                self.layer.discard(tx)
            return None
        if verdict is Verdict.OK:
            credential = result.credential
            if not guard.user_guarded(credential.username, now) or \
                    self._known_device(credential, request, flow, now):
                guard.authenticated(source)
                return credential
            self.stats["auth_guarded_user"] += 1
            stale = False
        else:
            stale = self.refused(result, source, now)
        guard.challenged(source)
        status = 407 if proxy else 401
        tx.respond(request.response(status, headers=self.auth.challenge(
            now, stale=stale, proxy=proxy)), now)
        return None  # answered statelessly (see _answered_statelessly)

    def refused(self, result: AuthResult, source: str, now: float) -> bool:
        """Book credentials that are not accepted (stale, wrong, junk or missing) against
        their source and user; returns whether the new challenge says stale=true."""
        verdict = result.verdict
        if verdict is Verdict.STALE:
            self.stats["auth_stale"] += 1
            return True
        if verdict is Verdict.FAILED:
            self.stats["auth_failed"] += 1
            self._lockouts(self.guard.record_guess(source, result.username, now,
                                                   known_user=result.known_user), now)
        elif verdict is Verdict.MALFORMED:
            self.stats["auth_malformed"] += 1
            self._lockouts(self.guard.record_junk(source, now), now)
        return False

    def _known_device(self, credential: Credential, request: Request, flow: Flow,
                      now: float) -> bool:
        """Whether a request for a user under guard comes from one of its own devices: an
        address it is registered from, or the Call-ID or instance id of one of its recent
        registrations (a phone whose address changed keeps both)."""
        extension = credential.extension
        if self.registrations.holds(extension, flow.host, now):
            return True
        instances = []
        if request.method == "REGISTER":
            try:
                instances = [unquote_string(i) for a in request.addresses("contact")
                             if (i := a.param("+sip.instance"))]
            except RemoteProtocolError:
                instances = []
        return self.registrations.knows_device(extension, request.call_id, instances)

    def _lockouts(self, engaged, now: float) -> None:
        for lockout in engaged:
            who = {"source": f"address {lockout.subject}",
                   "pair": f"user {lockout.user} from address {lockout.subject}",
                   "user": f"user {lockout.subject} (from new addresses)"}[lockout.kind]
            self.notice("lockout", f"{who} locked out for {round(lockout.until - now)} s "
                        f"after {lockout.failures} failed authentications",
                        {"kind": lockout.kind, "subject": lockout.subject,
                         "user": lockout.user, "for_s": round(lockout.until - now)})

    # -- routing ------------------------------------------------------------------------------

    def _route_new(self, request: Request, tx: ServerTransaction, flow: Flow,
                   now: float) -> None:
        uri = request.uri
        number = uri.user_text if isinstance(uri, SipUri) else (uri.user or "")
        if isinstance(uri, AbsoluteUri) and uri.scheme != "tel":
            tx.respond(request.response(416), now)
            return
        destination = self.dialplan.route(number)
        if number in self.probes:
            destination = Destination("extension", number)
        if destination.kind in ("external", "emergency") and self.gateway_down is not None \
                and self.relay is not None and self.relay.cloud is not None \
                and not self._serving and not self.is_trusted(flow):
            # In-path mode serving calls locally during a brownout, with no trunk gateway:
            # the reachable cloud is the best way out there is.
            self.notice("call-to-cloud", f"{destination.kind} call to {destination.number} "
                        "sent to the cloud: the trunk gateway is not running "
                        f"({self.gateway_down})", {"number": destination.number,
                                                   "emergency": destination.kind == "emergency"})
            self.relay.forward(request, tx, flow, (), now)
            return
        if self.is_trusted(flow):
            identity = Identity("trunk")
        elif destination.kind == "emergency" and self.settings.emergency_without_auth \
                and request.method == "INVITE":
            verified = self.auth.verify(request, now, proxy=True)
            credential = verified.credential if verified.verdict is Verdict.OK else None
            identity = Identity("extension", credential.extension, credential.device_id) \
                if credential else self._registered_caller(request, flow, now)
        else:
            credential = self._authenticate(request, tx, flow, now, proxy=True)
            if credential is None:
                return
            identity = Identity("extension", credential.extension, credential.device_id)
        _strip_own_credentials(request, self.settings.realm)
        self.proxy.route_new(request, tx, destination, identity, now)

    def take_over(self, request: Request, tx: ServerTransaction, flow: Flow,
                  now: float) -> None:
        """In-path mode, at the cut: route an INVITE that was on its way to the cloud as a
        new local call (challenged like any other; an emergency call is routed at once)."""
        self._route_new(request, tx, flow, now)

    def _registered_caller(self, request: Request, flow: Flow, now: float) -> Identity:
        """An emergency call is never challenged (that would delay it); its caller is the
        live registration its flow, contact or source matches, else unverified."""
        try:
            contacts = request.addresses("contact")
        except RemoteProtocolError:
            contacts = []
        contact = contacts[0].uri if contacts and isinstance(contacts[0].uri, SipUri) else None
        match = self.registrations.identify(flow, contact, now)
        if match is None:
            return Identity("unverified")
        binding, how = match
        return Identity("extension", binding.aor, binding.device_id,
                        verified_by=f"registration ({how})")

    def _cancel(self, request: Request, tx: ServerTransaction, now: float) -> None:
        invite = self.layer.find_invite_for_cancel(request)
        if invite is None:
            tx.respond(request.response(481), now)
            return
        tx.respond(request.response(200), now)
        if invite.last_status is None or invite.last_status < 200:
            self.proxy.cancel(invite, now)

    # -- addresses ----------------------------------------------------------------------------

    def resolve(self, uri: SipUri, now: float) -> Flow | None:
        """Where to send a request for ``uri``: over the flow of the handset registered with
        that contact, else to the URI's own address (IP literals only: no DNS here)."""
        binding = self.registrations.find(uri, now)
        if binding is not None:
            flow = self.binding_flow(binding)
            if flow is not None:
                return flow
        if not uri.host_is_ip:
            return None
        transport = uri.transport
        if transport not in self.settings.ports:
            return None
        return Flow(transport, uri.host, uri.effective_port)

    def binding_flow(self, binding) -> Flow | None:
        flow = binding.flow
        if flow.reliable and flow.connection is None:
            # The handset's connection is gone (or we restarted): try its contact address.
            uri = binding.uri
            if not uri.host_is_ip or flow.transport not in self.settings.ports:
                return None
            return Flow(flow.transport, uri.host, uri.effective_port)
        return flow

    def sent_by(self, transport: str) -> str | None:
        port = self.settings.ports.get(transport)
        if port is None:
            return None
        host = self.settings.advertised_host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def record_route_uri(self, transport: str) -> str:
        sent_by = self.sent_by(transport) or self.sent_by("udp")
        tail = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{sent_by}{tail};lr>"

    def is_us(self, uri: SipUri) -> bool:
        return (uri.host, uri.effective_port) in self._local or (
            uri.port is None and any(h == uri.host for h, _ in self._local))

    def _addressed_to_us(self, request: Request) -> bool:
        uri = request.uri
        return isinstance(uri, SipUri) and not uri.user and (
            self.is_us(uri) or not uri.host_is_ip)

    def _pop_own_routes(self, request: Request) -> list[SipUri]:
        """RFC 3261 16.4 and RFC 5658: remove the Route entries that name us (returned: in
        in-path mode they carry flow tokens); repair a Request-URI a strict router replaced
        with our Record-Route."""
        popped: list[SipUri] = []
        uri = request.uri
        if isinstance(uri, SipUri) and not uri.user and self.is_us(uri) \
                and uri.has_param("lr") and "route" in request.headers:
            routes = request.headers.values("route")
            last = routes[-1]
            request.set_uri(last.strip().lstrip("<").split(">", 1)[0])
            request.headers.remove("route")
            for value in routes[:-1]:
                request.headers.add("Route", value)
        while True:
            routes = request.headers.values("route")
            if not routes:
                return popped
            try:
                first = NameAddr.parse(routes[0]).uri
            except UriError:
                raise RemoteProtocolError("bad Route header", message=request) from None
            if not isinstance(first, SipUri) or not self.is_us(first):
                return popped
            request.headers.pop_first_value("route")
            popped.append(first)

    def is_trusted(self, flow: Flow) -> bool:
        return (flow.host, flow.port) in self._trusted or (flow.host, None) in self._trusted

    @staticmethod
    def _trusted_peers(settings: CoreSettings) -> set[tuple[str, int | None]]:
        peers: set[tuple[str, int | None]] = set()
        for peer in settings.trusted_peers:
            peers.add(parse_hostport(peer))
        if settings.gateway_uri:
            gateway = SipUri.parse(settings.gateway_uri)
            peers.add((gateway.host, gateway.effective_port))
        return peers

    # -- errors, notices, reports -------------------------------------------------------------

    def _reject(self, error: RemoteProtocolError, flow: Flow, now: float) -> None:
        """Answer a message we cannot accept with its status, statelessly, or drop it."""
        self.stats["malformed"] += 1
        request = error.message
        log.debug("rejected message from %s: %s", flow.describe(), error.text)
        if not isinstance(request, Request) or request.method == "ACK":
            return
        try:
            destination = _response_flow(request, flow)
            response = self._error_response(request, error)
            self.layer.transmit(Transmit(response.to_bytes(), destination))
        except RemoteProtocolError:
            return

    @staticmethod
    def _error_response(request: Request, error: RemoteProtocolError) -> Response:
        return request.response(error.status_hint, error.reason)

    def notice(self, kind: str, reason: str, details: Mapping[str, Any] | None = None) -> None:
        self._notices.append(Notice(kind, reason, dict(details or {})))

    def count(self, name: str) -> None:
        self.stats[name] += 1

    def _server_terminated(self, tx: ServerTransaction) -> None:
        self.proxy.forget_context(tx)
        if self.relay is not None:
            self.relay.forget(tx)
        key = self._datagram_of.pop(tx, None)
        if key is not None:
            del self._datagrams[key]

    def phones(self, now: float) -> list[dict[str, Any]]:
        rows = []
        for binding in self.registrations:
            if binding.expires_at <= now:
                continue
            rows.append({"aor": binding.aor, "device": binding.device_id,
                         "contact": binding.contact, "transport": binding.flow.transport,
                         "source": f"{binding.flow.host}:{binding.flow.port}",
                         "expires_in_s": round(binding.expires_at - now),
                         "user_agent": binding.user_agent, "q": binding.q,
                         "origin": binding.origin})
        rows.sort(key=lambda r: (r["aor"], r["contact"]))
        return rows


def _stamp_via(request: Request, flow: Flow) -> None:
    via = stamped_via(request.top_via, flow)
    if via is not None:
        request.headers.replace_first_value("via", via.text)
        request.set_top_via(via)


def _response_flow(request: Request, flow: Flow) -> Flow:
    return response_flow(request.top_via, flow)


def _strip_own_credentials(request: Request, realm: str) -> None:
    """RFC 3261 22.3: credentials meant for us are not passed on."""
    values = request.headers.get_all("proxy-authorization")
    if not values:
        return
    request.headers.remove("proxy-authorization")
    marker = f'realm="{realm}"'
    for value in values:
        if marker not in value:
            request.headers.add("Proxy-Authorization", value)


def _claimed_user(request: Request) -> str:
    """The user a request without credentials speaks for: the AOR of a REGISTER, the caller
    of anything else."""
    try:
        uri = (request.to if request.method == "REGISTER" else request.from_).uri
    except RemoteProtocolError:
        return ""
    return uri.user_text if isinstance(uri, SipUri) else ""
