"""The registrar (RFC 3261 section 10.3) as a pure core: bindings per address-of-record.

An address-of-record (AOR) here is an extension number. A device authenticates with its own
user name; it may register the AOR spelled as its extension number or as its user name, both
mean its extension. Each binding remembers the way back to its contact: the flow the
REGISTER came over (the received address and port for UDP, the connection for TCP/TLS).

Bindings are keyed by contact URI, or by ``+sip.instance`` and ``reg-id`` when the handset
sends them (RFC 5626), so a handset that reconnects from a new port replaces its binding
instead of adding one. Every AOR holds at most ``max_contacts`` bindings; a new one pushes
out the binding that would expire first.

The store also remembers, per AOR, the Call-IDs and instance ids of its last few successful
registrations (:meth:`RegistrationStore.knows_device`): a handset keeps its REGISTER Call-ID
for as long as it runs (RFC 3261 10.2), so a request carrying one is from a device that
registered here before, even when its address has changed since.

In in-path mode the store also holds **mirrored** bindings (``origin = "cloud"``): what the
cloud granted to a REGISTER the appliance relayed (:meth:`RegistrationStore.mirror`), so that
an outage is served from them at once. A phone that then registers here (a refresh during
the outage) turns its binding into a local one.

The AORs whose bindings changed are collected for the shell to persist
(:meth:`RegistrationStore.take_changed`).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from .errors import RemoteProtocolError
from .flow import Flow
from .message import Request, Response
from .uri import NameAddr, SipUri, unquote_string

MAX_EXPIRES = 2**32 - 1
KNOWN_DEVICES_PER_AOR = 8


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ExpiryPolicy:
    default_s: int = 3600
    """Asked-for expiry when the REGISTER names none."""
    min_s: int = 60
    """Shorter non-zero requests get 423 Interval Too Brief with Min-Expires."""
    max_s: int = 3600
    """The longest expiry granted (the core lowers it during an outage)."""
    lead_cap_s: int = 0
    """In-path mode's outage refreshes: grant ``max_s`` plus the phone's own refresh lead
    (what its current binding still had when it refreshed), counting up to this much of it,
    so the phone's next refresh comes about ``max_s`` later whatever its lead. A desk phone
    refreshing 60 s before expiry (the vendors' default) handed a 30 s grant would refresh at
    a moment nobody meant: pjsua waits out its previous grant, others refresh at once."""


class Binding:
    __slots__ = ("aor", "call_id", "contact", "cseq", "device_id", "expires_at", "flow",
                 "instance", "key", "origin", "q", "reg_id", "registered_at", "uri",
                 "user_agent")

    def __init__(self, *, aor: str, contact: str, uri: SipUri, key: str, q: float,
                 expires_at: float, call_id: str, cseq: int, flow: Flow, device_id: str,
                 user_agent: str = "", instance: str | None = None, reg_id: str | None = None,
                 registered_at: float, origin: str = "local") -> None:
        self.origin = origin
        """'local' (registered here) or 'cloud' (mirrored from the cloud's 200 OK)."""
        self.aor = aor
        self.contact = contact
        self.uri = uri
        self.key = key
        self.q = q
        self.expires_at = expires_at
        self.call_id = call_id
        self.cseq = cseq
        self.flow = flow
        self.device_id = device_id
        self.user_agent = user_agent
        self.instance = instance
        self.reg_id = reg_id
        self.registered_at = registered_at

    def contact_value(self, now: float) -> str:
        value = f"<{self.contact}>;expires={max(0, int(self.expires_at - now + 0.5))}"
        if self.q != 1.0:
            value += f";q={self.q:g}"
        if self.instance is not None:
            value += f';+sip.instance="{self.instance}"'
        if self.reg_id is not None:
            value += f";reg-id={self.reg_id}"
        return value

    def __repr__(self) -> str:
        return f"<Binding {self.aor} {self.contact} via {self.flow!r}>"


class ContactRequest(NamedTuple):
    """One Contact of a REGISTER, read: what the registrar needs to bind it (a named tuple:
    made for every REGISTER, faster than a frozen dataclass)."""

    uri: SipUri
    text: str
    key: str
    expires: int
    q: float
    instance: str | None
    reg_id: str | None


def contact_request(address: NameAddr, header_expires: int | None,
                    policy: ExpiryPolicy) -> ContactRequest:
    """Read one Contact of a REGISTER (a bad expires or q raises: 400)."""
    uri = address.uri
    if not isinstance(uri, SipUri):
        raise RemoteProtocolError(f"Contact {uri} is not a sip or sips URI")
    expires_text = address.param("expires")
    if expires_text is not None:
        if not expires_text.isdigit():
            raise RemoteProtocolError(f"bad expires {expires_text!r}")
        expires = min(int(expires_text), MAX_EXPIRES)
    elif header_expires is not None:
        expires = header_expires
    else:
        expires = policy.default_s
    q_text = address.param("q")
    q = 1.0
    if q_text:
        try:
            q = float(q_text)
        except ValueError:
            raise RemoteProtocolError(f"bad q {q_text!r}") from None
        if not 0.0 <= q <= 1.0:
            raise RemoteProtocolError(f"q {q_text} out of range")
    instance = address.param("+sip.instance")
    reg_id = address.param("reg-id")
    instance = unquote_string(instance) if instance else None
    key = f"instance:{instance}:{reg_id or ''}" if instance else uri.binding_key()
    bare = uri.without_headers()
    return ContactRequest(bare, str(bare), key, expires, q, instance, reg_id)


class RegistrationStore:
    def __init__(self, *, max_contacts: int = 10) -> None:
        self.max_contacts = max_contacts
        self._aors: dict[str, dict[str, Binding]] = {}
        self._by_key: dict[str, Binding] = {}
        self._changed: set[str] = set()
        self._devices: dict[str, collections.deque[tuple[str, str | None]]] = {}
        """Per AOR: (Call-ID, instance id) of its last successful registrations."""

    # -- REGISTER -----------------------------------------------------------------------------

    def register(self, request: Request, *, aor: str, device_id: str, flow: Flow, now: float,
                 policy: ExpiryPolicy, to_tag: str | None = None) -> Response:
        """Apply an authenticated, authorised REGISTER for ``aor``; return the response."""
        header_expires = request.int_header("expires")
        values = request.headers.values("contact")
        call_id = request.call_id
        cseq = request.cseq[0]
        if values == ["*"]:
            if header_expires != 0:
                return request.response(400, "Wildcard Contact needs Expires: 0",
                                        to_tag=to_tag)
            current = self._aors.get(aor, {})
            if any(b.call_id == call_id and cseq <= b.cseq for b in current.values()):
                return request.response(500, "Out Of Order Request", to_tag=to_tag)
            for binding in list(current.values()):
                self._remove(binding)
            return request.response(200, to_tag=to_tag, headers=self.contact_headers(aor, now))
        if "*" in values:
            return request.response(400, "Wildcard Contact must stand alone", to_tag=to_tag)
        try:
            wanted = [contact_request(address, header_expires, policy)
                      for address in request.addresses("contact")]
        except RemoteProtocolError as error:
            error.message = request
            raise
        status, reason, headers = self.apply(
            aor, wanted, call_id=call_id, cseq=cseq,
            user_agent=request.headers.get("user-agent") or "", device_id=device_id,
            flow=flow, now=now, policy=policy)
        return request.response(status, reason, to_tag=to_tag, headers=headers)

    def apply(self, aor: str, wanted: list[ContactRequest], *, call_id: str, cseq: int,
              user_agent: str, device_id: str, flow: Flow, now: float, policy: ExpiryPolicy
              ) -> tuple[int, str | None, list[tuple[str, str]]]:
        """Apply the contacts of an authenticated, authorised REGISTER (no wildcard) for
        ``aor``: the status, reason (None: the usual one) and headers to answer with."""
        current = self._aors.get(aor, {})
        for contact in wanted:
            if 0 < contact.expires < policy.min_s:
                return 423, None, [("Min-Expires", str(policy.min_s))]
        for contact in wanted:
            existing = self._find_existing(current, contact)
            if existing is not None and existing.call_id == call_id and cseq <= existing.cseq:
                return 500, "Out Of Order Request", []
        for contact in wanted:
            existing = self._find_existing(current, contact)
            if contact.expires == 0:
                if existing is not None:
                    self._remove(existing)
                continue
            granted = min(contact.expires, policy.max_s)
            if policy.lead_cap_s and existing is not None:
                lead = min(max(existing.expires_at - now, 0.0), policy.lead_cap_s)
                granted = min(contact.expires, policy.max_s + int(lead + 0.5))
            if existing is not None:
                if existing.key != contact.key:
                    self._remove(existing)  # the same instance from a new contact
                else:
                    existing.expires_at = now + granted
                    existing.call_id, existing.cseq = call_id, cseq
                    existing.flow, existing.q = flow, contact.q
                    existing.contact, existing.uri = contact.text, contact.uri
                    existing.device_id, existing.user_agent = device_id, user_agent
                    existing.instance, existing.reg_id = contact.instance, contact.reg_id
                    existing.origin = "local"
                    self._changed.add(aor)
                    self._note_device(aor, call_id, contact.instance)
                    continue
            self._add(Binding(aor=aor, contact=contact.text, uri=contact.uri,
                              key=contact.key, q=contact.q, expires_at=now + granted,
                              call_id=call_id, cseq=cseq, flow=flow, device_id=device_id,
                              user_agent=user_agent, instance=contact.instance,
                              reg_id=contact.reg_id, registered_at=now))
            self._note_device(aor, call_id, contact.instance)
        return 200, None, self.contact_headers(aor, now)

    def contact_headers(self, aor: str, now: float) -> list[tuple[str, str]]:
        """The Contact headers of a 200 to a REGISTER: every live binding of ``aor``."""
        return [("Contact", b.contact_value(now)) for b in self.lookup(aor, now)]

    def _find_existing(self, current: dict[str, Binding],
                       contact: ContactRequest) -> Binding | None:
        found = current.get(contact.key)
        if found is not None or contact.instance is None:
            return found
        return current.get(contact.uri.binding_key())

    # -- the table ----------------------------------------------------------------------------

    def _add(self, binding: Binding) -> None:
        bindings = self._aors.setdefault(binding.aor, {})
        while len(bindings) >= self.max_contacts:
            self._remove(min(bindings.values(), key=lambda b: b.expires_at))
        bindings[binding.key] = binding
        self._by_key[binding.uri.binding_key()] = binding
        self._changed.add(binding.aor)

    def _remove(self, binding: Binding) -> None:
        bindings = self._aors.get(binding.aor)
        if bindings is not None and bindings.get(binding.key) is binding:
            del bindings[binding.key]
            if not bindings:
                del self._aors[binding.aor]
        uri_key = binding.uri.binding_key()
        if self._by_key.get(uri_key) is binding:
            del self._by_key[uri_key]
        self._changed.add(binding.aor)

    def mirror(self, aor: str, granted: Iterable[Binding], removed: Iterable[str]) -> None:
        """In-path mode: what the cloud answered to a REGISTER for ``aor``. ``granted``
        become (or replace) mirrored bindings; the bindings keyed ``removed`` (contacts of
        that REGISTER the cloud no longer lists) go."""
        current = self._aors.get(aor, {})
        for key in removed:
            existing = current.get(key)
            if existing is not None:
                self._remove(existing)
        for binding in granted:
            existing = current.get(binding.key)
            if existing is not None:
                self._remove(existing)
            self._add(binding)
            self._note_device(aor, binding.call_id, binding.instance)

    def restore(self, bindings: Iterable[Binding]) -> None:
        """Load persisted bindings (after a restart) without marking them changed."""
        for binding in bindings:
            self._aors.setdefault(binding.aor, {})[binding.key] = binding
            self._by_key[binding.uri.binding_key()] = binding
            self._note_device(binding.aor, binding.call_id, binding.instance)

    def _note_device(self, aor: str, call_id: str, instance: str | None) -> None:
        devices = self._devices.get(aor)
        if devices is None:
            devices = self._devices[aor] = collections.deque(maxlen=KNOWN_DEVICES_PER_AOR)
        entry = (call_id, instance)
        if entry in devices:
            devices.remove(entry)
        devices.append(entry)

    def knows_device(self, aor: str, call_id: str, instances: Iterable[str]) -> bool:
        """Whether a request with this Call-ID (or carrying one of these instance ids) comes
        from a device that registered ``aor`` here recently."""
        devices = self._devices.get(aor)
        if not devices:
            return False
        wanted = set(instances)
        return any(c == call_id or (i is not None and i in wanted) for c, i in devices)

    def take_changed(self) -> set[str]:
        """The AORs whose bindings changed since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    # -- reading ------------------------------------------------------------------------------

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings of an AOR, highest q first."""
        bindings = self._aors.get(aor)
        if not bindings:
            return []
        live = [b for b in bindings.values() if b.expires_at > now]
        if len(live) != len(bindings):
            for binding in [b for b in bindings.values() if b.expires_at <= now]:
                self._remove(binding)
        if len(live) > 1:
            live.sort(key=lambda b: -b.q)
        return live

    def find(self, uri: SipUri, now: float) -> Binding | None:
        """The live binding whose contact is ``uri`` (to reach a handset over its own flow)."""
        binding = self._by_key.get(uri.binding_key())
        if binding is None or binding.expires_at <= now:
            return None
        return binding

    def identify(self, flow: Flow, contact: SipUri | None, now: float
                 ) -> tuple[Binding, str] | None:
        """The live registration a request that did not authenticate comes from, and how it
        was matched, strongest first: ``"flow"`` (the same TCP/TLS connection, or for UDP the
        same source address and port as the REGISTER), ``"contact"`` (its Contact is a
        registered contact and it comes from that binding's host), ``"source"`` (the one
        extension registered from that host). None when nothing matches, or when the host
        is shared by several extensions (a NAT, a DECT base) and neither flow nor contact
        tells them apart."""
        live = [b for b in self if b.expires_at > now]
        for binding in live:
            known = binding.flow
            if known.transport != flow.transport:
                continue
            if flow.reliable and flow.connection is not None \
                    and known.connection == flow.connection:
                return binding, "flow"
            if not flow.reliable and (known.host, known.port) == (flow.host, flow.port):
                return binding, "flow"
        if contact is not None:
            binding = self.find(contact, now)
            if binding is not None and binding.flow.host == flow.host:
                return binding, "contact"
        from_host = [b for b in live if b.flow.host == flow.host]
        if from_host and len({b.aor for b in from_host}) == 1:
            return from_host[0], "source"
        return None

    def holds(self, aor: str, host: str, now: float) -> bool:
        """Whether ``host`` has a live registration for ``aor`` (lockout exemption)."""
        return any(b.flow.host == host for b in self.lookup(aor, now))

    def expire(self, now: float) -> list[Binding]:
        gone = [b for bindings in self._aors.values() for b in bindings.values()
                if b.expires_at <= now]
        for binding in gone:
            self._remove(binding)
        return gone

    def clear(self) -> int:
        """Forget every binding (customer content erasure); returns how many there were."""
        count = len(self)
        self._aors.clear()
        self._by_key.clear()
        self._changed.clear()
        self._devices.clear()
        return count

    def has_bindings(self, aor: str) -> bool:
        return aor in self._aors

    def bindings_of(self, aor: str) -> list[Binding]:
        return list(self._aors.get(aor, {}).values())

    def connections(self) -> set[int]:
        """The TCP/TLS connections that carry a binding (the shell keeps those open)."""
        return {b.flow.connection for bindings in self._aors.values()
                for b in bindings.values() if b.flow.connection is not None}

    def drop_flow(self, connection: int) -> None:
        """A TCP/TLS connection closed: its bindings stay, to be reached anew by URI."""
        for binding in self:
            if binding.flow.connection == connection:
                binding.flow = Flow(binding.flow.transport, binding.flow.host,
                                    binding.flow.port, None)

    def __iter__(self) -> Iterator[Binding]:
        for bindings in list(self._aors.values()):
            yield from list(bindings.values())

    @property
    def aor_count(self) -> int:
        return len(self._aors)

    def __len__(self) -> int:
        return sum(len(b) for b in self._aors.values())
