"""Every phone jbcd has seen, and what its requests tell about its failover timers. Pure.

A phone shows itself to the appliance in three ways: a REGISTER (to the local registrar, also
while the cloud is up and the registrar refuses it: the refusal does not hide what the phone
asked for), an OPTIONS ping (phones probe their backup server with it), and -- in in-path mode --
every request the relay carries to the cloud (the relay calls :meth:`PhoneSightings.observe`
with ``via="relay"`` and, for a REGISTER, :meth:`PhoneSightings.granted` with the cloud's
answer). From those requests we keep what predicts failover: the User-Agent (vendor and
model), the registration expiry asked for and granted, how often it actually refreshes, the
transport, and how it keeps its flow alive (OPTIONS pings, CRLF keep-alives, RFC 5626
outbound with ``+sip.instance``/``reg-id``).

No sockets, no clocks: requests and ``now`` in. Bounded: at most ``max_phones`` entries, the
oldest forgotten first, and header values are cut to a sane length.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator
from typing import Any, NamedTuple

MAX_UA_CHARS = 200
MAX_SOURCES_PER_PHONE = 16
"""Source addresses remembered per phone (a phone behind a NAT may hop ports)."""
MAX_INTERVALS = 8
MIN_INTERVAL_S = 2.0
"""Requests closer together than this are retransmissions or auth round trips, not cadence."""


@dataclasses.dataclass(slots=True, kw_only=True)
class PhoneSighting:
    key: str
    """The phone's address-of-record user (extension or username), else its source address."""
    aor: str | None
    source: str
    transport: str
    user_agent: str = ""
    first_seen: float
    last_seen: float
    seen_via: set[str] = dataclasses.field(default_factory=set)
    requested_expires_s: int | None = None
    granted_expires_s: int | None = None
    granted_by: str | None = None
    """'appliance' (our registrar) or 'cloud' (seen through the in-path relay)."""
    last_register_at: float | None = None
    register_intervals: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=MAX_INTERVALS))
    last_options_at: float | None = None
    options_intervals: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=MAX_INTERVALS))
    last_crlf_at: float | None = None
    crlf_intervals: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=MAX_INTERVALS))
    outbound: bool = False
    """RFC 5626: the Contact carried +sip.instance and reg-id."""
    registers: int = 0
    options: int = 0

    @property
    def refresh_interval_s(self) -> float | None:
        """The shortest REGISTER-to-REGISTER gap seen (the phone's real refresh cadence)."""
        return min(self.register_intervals) if self.register_intervals else None

    @property
    def keepalive(self) -> tuple[str, float] | None:
        """How the phone keeps its flow alive and how often: ('options'|'crlf', seconds)."""
        candidates = []
        if self.options_intervals:
            candidates.append(("options", _median(self.options_intervals)))
        if self.crlf_intervals:
            candidates.append(("crlf", _median(self.crlf_intervals)))
        return min(candidates, key=lambda c: c[1]) if candidates else None

    def to_json(self, now: float) -> dict[str, Any]:
        keepalive = self.keepalive
        return {
            "key": self.key, "aor": self.aor, "source": self.source,
            "transport": self.transport, "user_agent": self.user_agent,
            "seen_via": sorted(self.seen_via), "first_seen_ago_s": round(now - self.first_seen),
            "last_seen_ago_s": round(now - self.last_seen),
            "requested_expires_s": self.requested_expires_s,
            "granted_expires_s": self.granted_expires_s, "granted_by": self.granted_by,
            "refresh_interval_s": self.refresh_interval_s,
            "keepalive": None if keepalive is None else {"kind": keepalive[0],
                                                         "interval_s": round(keepalive[1], 1)},
            "outbound": self.outbound, "registers": self.registers, "options": self.options,
        }


def _median(values: collections.deque) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


class Observation(NamedTuple):
    """What one request says about the phone that sent it (see :func:`observation_of`).
    A named tuple, not a frozen dataclass: the SIP core makes one per REGISTER and OPTIONS,
    and a tuple is made five times faster."""

    method: str
    aor: str | None
    host: str
    port: int
    transport: str
    user_agent: str
    expires_s: int | None
    outbound: bool


def observation_of(request: Any, transport: str, host: str, port: int) -> Observation | None:
    """Read a REGISTER or OPTIONS (an :class:`appliance.sip.message.Request`) for a sighting.
    Anything unreadable gives None: a sighting is never worth an error."""
    method = request.method
    if method not in ("REGISTER", "OPTIONS"):
        return None
    try:
        party = request.to if method == "REGISTER" else request.from_
        aor = getattr(party.uri, "user_text", None) or None
    except Exception:
        aor = None
    user_agent = (request.headers.get("user-agent") or "")[:MAX_UA_CHARS]
    expires = None
    outbound = False
    if method == "REGISTER":
        try:
            contacts = [] if request.headers.values("contact") == ["*"] else \
                request.addresses("contact")
        except Exception:
            contacts = []
        try:
            header_expires = request.int_header("expires")
        except Exception:
            header_expires = None
        expires, outbound = register_facts(contacts, header_expires)
    return Observation(method=method, aor=aor, host=host, port=port, transport=transport,
                       user_agent=user_agent, expires_s=expires, outbound=outbound)


def register_facts(contacts: Any, header_expires: int | None) -> tuple[int | None, bool]:
    """What a REGISTER's contacts (name-addrs with ``params``) say about its phone: the expiry
    asked for (the last contact's expires parameter, else the Expires header) and whether it
    uses RFC 5626 outbound (+sip.instance with reg-id)."""
    expires = None
    outbound = False
    for contact in contacts:
        params = contact.params
        if not params:
            continue
        params = dict(params)
        if "expires" in params and (params["expires"] or "").isdigit():
            expires = int(params["expires"])
        if "+sip.instance" in params and "reg-id" in params:
            outbound = True
    return (header_expires if expires is None else expires), outbound


class PhoneSightings:
    def __init__(self, *, max_phones: int = 2000) -> None:
        self.max_phones = max_phones
        self._phones: collections.OrderedDict[str, PhoneSighting] = collections.OrderedDict()
        self._by_source: dict[tuple[str, str, int], str] = {}
        self._sources_of: dict[str, set[tuple[str, str, int]]] = {}
        """The reverse of ``_by_source``, so that forgetting a phone costs O(its sources)."""

    def __iter__(self) -> Iterator[PhoneSighting]:
        return iter(list(self._phones.values()))

    def __len__(self) -> int:
        return len(self._phones)

    def get(self, key: str) -> PhoneSighting | None:
        return self._phones.get(key)

    def observe(self, observation: Observation, now: float, *, via: str = "direct") -> None:
        source_key = (observation.transport, observation.host, observation.port)
        key = observation.aor or self._by_source.get(source_key) or \
            f"{observation.host}:{observation.port}"
        phone = self._phones.get(key)
        if phone is None:
            phone = PhoneSighting(key=key, aor=observation.aor,
                                  source=f"{observation.transport}:{observation.host}:"
                                  f"{observation.port}",
                                  transport=observation.transport, first_seen=now,
                                  last_seen=now)
            self._phones[key] = phone
            while len(self._phones) > self.max_phones:
                old_key, _ = self._phones.popitem(last=False)
                for source in self._sources_of.pop(old_key, ()):
                    if self._by_source.get(source) == old_key:
                        del self._by_source[source]
        else:
            self._phones.move_to_end(key)
        self._note_source(source_key, key)
        phone.last_seen = now
        phone.seen_via.add(via if via != "direct" else observation.method.lower())
        phone.transport = observation.transport
        phone.source = f"{observation.transport}:{observation.host}:{observation.port}"
        if observation.aor and not phone.aor:
            phone.aor = observation.aor
        if observation.user_agent:
            phone.user_agent = observation.user_agent
        if observation.method == "REGISTER":
            phone.registers += 1
            if observation.expires_s is not None and observation.expires_s > 0:
                phone.requested_expires_s = observation.expires_s
            phone.outbound = phone.outbound or observation.outbound
            phone.last_register_at = _note_interval(phone.register_intervals,
                                                    phone.last_register_at, now)
        else:
            phone.options += 1
            phone.last_options_at = _note_interval(phone.options_intervals,
                                                   phone.last_options_at, now)

    def granted(self, aor: str, expires_s: int, now: float, *, by: str) -> None:
        """A registrar (ours: ``by='appliance'``; the cloud's, seen through the relay:
        ``by='cloud'``) granted ``aor`` a registration for ``expires_s``."""
        phone = self._phones.get(aor)
        if phone is None:
            return
        phone.granted_expires_s = expires_s
        phone.granted_by = by
        phone.last_seen = now

    def crlf_keepalive(self, transport: str, host: str, port: int, now: float) -> None:
        """A CRLF-CRLF ping (RFC 5626 3.5.1) arrived on a stream from this source."""
        key = self._by_source.get((transport, host, port))
        phone = self._phones.get(key) if key else None
        if phone is None:
            return
        phone.last_seen = now
        phone.last_crlf_at = _note_interval(phone.crlf_intervals, phone.last_crlf_at, now)

    def _note_source(self, source_key: tuple[str, str, int], key: str) -> None:
        self._by_source[source_key] = key
        sources = self._sources_of.setdefault(key, set())
        sources.add(source_key)
        if len(sources) > MAX_SOURCES_PER_PHONE:  # a phone hopping ports behind a NAT
            for source in [s for s in sources if s != source_key]:
                if self._by_source.get(source) == key:
                    del self._by_source[source]
            sources.intersection_update({source_key})

    def clear(self) -> int:
        count = len(self._phones)
        self._phones.clear()
        self._by_source.clear()
        self._sources_of.clear()
        return count


def _note_interval(intervals: collections.deque, last: float | None, now: float) -> float:
    """Note the gap since ``last``; returns the new 'last'. A request right after another
    (an authenticated retry, a retransmission) belongs to the same burst: the burst's first
    request stays the reference."""
    if last is None:
        return now
    if now - last < MIN_INTERVAL_S:
        return last
    intervals.append(round(now - last, 1))
    return now
