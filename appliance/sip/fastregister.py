"""The REGISTER fast path: the common REGISTER over UDP, answered from the raw datagram.

A registration storm is two REGISTERs per handset (a challenge, then the registration), and
every phone refreshes its registration every minute or two during an outage. The full path
(:func:`~appliance.sip.parser.parse_datagram` -> :class:`~appliance.sip.message.Request` ->
``SipCore._dispatch`` -> ``_register`` -> ``_authenticate`` ->
:meth:`~appliance.sip.registrar.RegistrationStore.register` ->
:class:`~appliance.sip.message.Response`) is general: it keeps every header as an object and
looks each up by name as it goes. This path reads only what a REGISTER needs, in one pass over
the header block, and builds the answer from the request's own header lines.

It answers exactly what the full path answers (``tests/sip/test_sip_fastregister.py`` sends
random valid and invalid REGISTERs through both and compares the answers and the state they
leave), because it takes only the REGISTERs it fully understands:

* over UDP, to a core that serves handsets (an outage) and is not in in-path mode;
* ASCII with CRLF line endings, no folded line, no control character, no body;
* one Via, From, To, Call-ID and CSeq field each, at most one Contact (one value, not ``*``),
  Authorization, Max-Forwards (not 0), Expires and Content-Length (0); no Route, Require or
  Proxy-Require; a sip or sips Request-URI without headers;
* everything the full path would refuse with 400 is left to it: From, To, Via, Contact,
  CSeq, Max-Forwards, Expires and the Contact's expires and q are read with the very parsers
  the full path uses, and any complaint hands the request over;
* no (source, user) lockout in force, and the user not under guard.

Anything else returns False before anything has changed, and the full path handles the
datagram. What it handles, it handles the way the full path does, in the same order and
through the same parts: the request counted, the Via stamped, the phone sighted, the digest
checked (:meth:`~appliance.sip.digest.DigestAuthenticator.check`), failures booked
(``SipCore.refused``), the guard told, the bindings applied
(:meth:`~appliance.sip.registrar.RegistrationStore.apply`), a registration booked
(``SipCore.registered``), and the answer remembered for retransmissions.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, NamedTuple

from appliance.phones.sightings import MAX_UA_CHARS, Observation, register_facts

from .digest import AuthResult, Verdict, parse_digest_params
from .errors import RemoteProtocolError
from .flow import Flow, response_flow, stamp
from .message import DISPLAY_NAMES, REASONS, Via, header_key, new_tag, parse_cseq
from .parser import DEFAULT_LIMITS, Limits, _header_name
from .registrar import ExpiryPolicy, contact_request
from .transaction import Transmit
from .uri import NameAddr, SipUri, UriError, parse_uri

if TYPE_CHECKING:
    from .core import DatagramKey, SipCore

log = logging.getLogger(__name__)

_PLAIN = bytes(range(0x20, 0x7F)) + b"\t\r\n"
"""The bytes a header block the fast path takes is made of: printable ASCII, tab, CR, LF.
(With no other control character in it, ``str.strip`` removes exactly the spaces and tabs
around a value, as the full path's does.)"""

_COPIED_KEYS = frozenset({"via", "from", "to", "call-id", "cseq"})
"""Fields a response copies from its request (RFC 3261 8.2.6); each may appear once."""
_READ_KEYS = frozenset({"contact", "authorization", "max-forwards", "expires",
                        "content-length"})
"""Other fields the fast path reads; each may appear once."""
_REFUSED_KEYS = frozenset({"route", "require", "proxy-require"})
"""Fields whose handling is left to the full path."""
_COPIED, _READ, _USER_AGENT, _REFUSED, _IGNORED = "copied", "read", "user-agent", "refused", \
    "ignored"
_ROLES: dict[str, tuple[str, str, str]] = {}
"""Field name as written -> (key, name written in responses, role), as the parser's _NAMES."""
_MAX_EXPIRES = 2**32 - 1
_CACHED_ADDRESS_CHARS = 200


@functools.lru_cache(maxsize=4096)
def _cached_address(text: str) -> NameAddr:
    return NameAddr.parse(text)


def parse_address(text: str) -> NameAddr:
    """:meth:`NameAddr.parse`, remembered for short values: a phone sends the same From, To
    and Contact in each of its REGISTERs (and name-addrs are never changed once parsed)."""
    if len(text) > _CACHED_ADDRESS_CHARS:
        return NameAddr.parse(text)
    return _cached_address(text)


class FastRegister(NamedTuple):
    """A REGISTER as the fast path reads it: the values it needs, parsed."""

    uri: SipUri
    via: Via
    to: NameAddr
    contact: NameAddr | None
    call_id: str
    cseq: int
    expires: int | None
    authorization: str | None
    user_agent: str | None
    copied: list[tuple[str, str, str]]
    """(key, name as written in responses, value) of the fields a response copies, in the
    request's order."""


@functools.lru_cache(maxsize=64)
def _written(name: str) -> str:
    """How a header the core adds to an answer is written (as Headers.add writes it)."""
    return DISPLAY_NAMES.get(header_key(name), name)


def read_register(data: bytes, limits: Limits = DEFAULT_LIMITS) -> FastRegister | None:
    """The REGISTER in ``data`` if it is one the fast path takes (see the module), else None.
    Pure: nothing is remembered."""
    if not data.startswith(b"REGISTER ") or len(data) > limits.max_message_bytes:
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 != len(data):
        return None  # no end of the header block, or a body
    head = data[:end]
    if head.translate(None, _PLAIN):
        return None  # non-ASCII or a control character
    text = head.decode("ascii")
    lines = text.split("\r\n")
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks or \
            breaks > DEFAULT_LIMITS.max_headers:
        return None  # a CR or LF outside a CRLF, or too many fields
    _, _, rest = lines[0].partition(" ")
    uri_text, _, version = rest.partition(" ")
    if version != "SIP/2.0" or not uri_text:
        return None
    fields: dict[str, str] = {}
    copied: list[tuple[str, str, str]] = []
    user_agent = None
    roles = _ROLES
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        role = roles.get(name)
        if role is None:
            role = _role_of(name) if colon else None
            if role is None:
                return None
        key, written, what = role
        if what is _IGNORED:
            continue
        value = value.strip()
        if what is _READ:
            if key in fields:
                return None
            fields[key] = value
        elif what is _COPIED:
            if key in fields:
                return None
            fields[key] = value
            copied.append((key, written, value))
        elif what is _USER_AGENT:
            if user_agent is None:
                user_agent = value
        else:
            return None  # a field left to the full path
    if len(copied) != 5:
        return None  # Via, From, To, Call-ID or CSeq missing
    try:
        return _parsed(fields, uri_text, copied, user_agent)
    except (RemoteProtocolError, UriError):
        return None


def _role_of(name: str) -> tuple[str, str, str] | None:
    """What the fast path does with a field of this name: (key, name written in responses,
    role); None for a name that is not a token."""
    known = _header_name(name)
    if known is None:
        return None
    key, written = known
    if key in _COPIED_KEYS:
        role = (key, written, _COPIED)
    elif key in _READ_KEYS:
        role = (key, written, _READ)
    elif key == "user-agent":
        role = (key, written, _USER_AGENT)
    elif key in _REFUSED_KEYS:
        role = (key, written, _REFUSED)
    else:
        role = (key, written, _IGNORED)
    if len(_ROLES) < 2048 and len(name) <= 40:
        _ROLES[name] = role
    return role


def _parsed(fields: dict[str, str], uri_text: str, copied: list[tuple[str, str, str]],
            user_agent: str | None) -> FastRegister | None:
    """The fields' values read with the full path's own parsers (which raise what it would
    answer with 400)."""
    length = fields.get("content-length")
    if length is not None and length != "0":
        return None
    cseq, method = parse_cseq(fields["cseq"])
    if method != "REGISTER":
        return None
    hops = fields.get("max-forwards")
    if hops is not None and (not hops.isdigit() or len(hops) > 10 or not 0 < int(hops) <= 255):
        return None
    expires_text = fields.get("expires")
    expires = None
    if expires_text is not None:
        if not expires_text.isdigit() or len(expires_text) > 10 or \
                int(expires_text) > _MAX_EXPIRES:
            return None
        expires = int(expires_text)
    via_text = fields["via"]
    if "," in via_text:
        return None
    uri = parse_uri(uri_text)
    if not isinstance(uri, SipUri) or uri.headers:
        return None
    parse_address(fields["from"])
    contact_text = fields.get("contact")
    contact = None
    if contact_text is not None:
        if "," in contact_text or contact_text == "*":
            return None
        contact = parse_address(contact_text)
    return FastRegister(uri, Via.parse(via_text), parse_address(fields["to"]), contact,
                        fields["call-id"], cseq, expires, fields.get("authorization"),
                        user_agent, copied)


class RegisterFastPath:
    """The core's fast path for REGISTER (see the module)."""

    def __init__(self, core: SipCore) -> None:
        self.core = core

    def handle(self, data: bytes, flow: Flow, now: float, key: DatagramKey) -> bool:
        """Answer the datagram if it is a REGISTER this path takes; False (and nothing
        changed) if the full path must."""
        core = self.core
        if core.relay is not None or not core.serving or flow.reliable:
            return False
        request = read_register(data, core.settings.limits)
        if request is None:
            return False
        policy = core.expiry_policy()
        if policy is None:
            return False
        params = None
        if request.authorization is not None:
            params = parse_digest_params(request.authorization)
            if params is not None and params.get("realm") != core.auth.realm:
                params = None
        guard = core.guard
        if guard.any_pair_locked or (params is not None and params.get("username") and
                                     guard.user_guarded(params["username"], now)):
            return False
        # The full path would now look for a live server transaction the request belongs to;
        # none is ever made for a REGISTER (it is always answered at once, see
        # StatelessAnswer), so there is none to find.
        self._register(request, params=params, policy=policy, flow=flow, now=now, key=key)
        return True

    def _register(self, request: FastRegister, *, params: dict[str, str] | None,
                  policy: ExpiryPolicy, flow: Flow, now: float, key: DatagramKey) -> None:
        core = self.core
        core.stats["requests"] += 1
        core.stats["register_fast_path"] += 1
        stamped = stamp(request.via, flow)
        answer = _Answer(request, request.via.text if stamped is None else stamped[1],
                         response_flow(request.via, flow))
        try:
            to_user = request.to.uri.user_text if isinstance(request.to.uri, SipUri) else ""
            self._sight(request, to_user, flow, now)
            result = core.auth.check(params, "REGISTER", now) if params is not None else \
                AuthResult(Verdict.MISSING)
            source = flow.host
            if result.verdict is not Verdict.OK:
                stale = core.refused(result, source, now)
                core.guard.challenged(source)
                answer.send(core, 401, None, core.auth.challenge(now, stale=stale))
            else:
                credential = result.credential
                core.guard.authenticated(source)
                if to_user not in (credential.username, credential.extension):
                    answer.send(core, 403, "Not Your Address-Of-Record", [])
                else:
                    aor = credential.extension
                    registrations = core.registrations
                    had = registrations.has_bindings(aor)
                    wanted = [] if request.contact is None else \
                        [contact_request(request.contact, request.expires, policy)]
                    status, reason, headers = registrations.apply(
                        aor, wanted, call_id=request.call_id, cseq=request.cseq,
                        user_agent=request.user_agent or "", device_id=credential.device_id,
                        flow=Flow("udp", flow.host, flow.port), now=now, policy=policy)
                    answer.send(core, status, reason, headers)
                    if status == 200:
                        core.registered(credential, to_user, flow, had=had, now=now)
        except RemoteProtocolError as error:
            answer.send(core, error.status_hint, error.reason, [])
            core.stats["rejected"] += 1
        except Exception:
            log.exception("SIP REGISTER handling failed (fast path) from %r", flow)
            core.stats["internal_errors"] += 1
            answer.send(core, 500, None, [])
        if answer.data is not None:
            core.answers.remember(key, now, answer.data, answer.flow)

    def _sight(self, request: FastRegister, to_user: str, flow: Flow, now: float) -> None:
        """What the full path's observation_of and PhoneSightings.observe note."""
        core = self.core
        aor = to_user or None
        if aor in core.probes:
            return
        contacts = [] if request.contact is None else [request.contact]
        expires, outbound = register_facts(contacts, request.expires)
        core.sightings.observe(Observation(
            "REGISTER", aor, flow.host, flow.port, flow.transport,
            (request.user_agent or "")[:MAX_UA_CHARS], expires, outbound), now, via="direct")


class _Answer:
    """The one answer to a fast-path REGISTER, built from its copied header lines the way
    :meth:`~appliance.sip.message.Request.response` and ``Response.to_bytes`` build it."""

    __slots__ = ("data", "flow", "request", "via")

    def __init__(self, request: FastRegister, via: str, flow: Flow) -> None:
        self.request = request
        self.via = via
        """The top Via's text, stamped with the source address."""
        self.flow = flow
        """Where the answer goes (the stamp changes nothing about it)."""
        self.data: bytes | None = None

    def send(self, core: SipCore, status: int, reason: str | None,
             headers: list[tuple[str, str]]) -> None:
        if self.data is not None:
            return  # only the first answer goes out, as from a server transaction
        lines = [f"SIP/2.0 {status} {reason or REASONS.get(status, '')}"]
        request = self.request
        for key, name, value in request.copied:
            if key == "via":
                value = self.via
            elif key == "to" and status > 100 and request.to.tag is None:
                value = f"{value};tag={new_tag()}"
            lines.append(f"{name}: {value}")
        for name, value in headers:
            lines.append(f"{_written(name)}: {value}")
        lines.append("Content-Length: 0\r\n\r\n")
        self.data = "\r\n".join(lines).encode("utf-8", "surrogateescape")
        core.layer.transmit(Transmit(self.data, self.flow))
