"""A fake network around :class:`~appliance.sip.core.SipCore` for tests: handsets that talk
to the core with :mod:`jbcbench.sipua` (which shares no code with the core), on fake time,
plus the test site directory they belong to."""

from __future__ import annotations

import dataclasses
import itertools

from appliance.directory.model import Directory, parse_directory
from appliance.sip.core import CoreSettings, Notice, SipCore
from appliance.sip.digest import ha1
from appliance.sip.flow import Flow
from jbcbench import sipua

REALM = "jbc"

SITE = {
    "schema": 1, "version": 7, "site": "test",
    "locations": [{"id": "hq", "address": "1 Main St, Springfield"}],
    "extensions": [{"number": n, "name": name, "location": "hq"} for n, name in (
        ("101", "Alice"), ("102", "Bob"), ("103", "Carol"), ("104", "Dave"), ("105", "Erin"),
        ("106", "Frank"))],
    "devices": [
        {"id": "alice-desk", "extension": "101", "username": "101", "password": "alice-pw"},
        {"id": "alice-soft", "extension": "101", "username": "alice-soft",
         "password": "alice-soft-pw"},
        {"id": "bob-desk", "extension": "102", "username": "102", "password": "bob-pw"},
        {"id": "carol-desk", "extension": "103", "username": "103", "password": "carol-pw"},
        {"id": "dave-desk", "extension": "104", "username": "104", "password": "dave-pw"},
        {"id": "erin-desk", "extension": "105", "username": "105",
         "ha1_md5": ha1("MD5", "105", REALM, "erin-pw")},
        {"id": "frank-desk", "extension": "106", "username": "106",
         "ha1_sha256": ha1("SHA-256", "106", REALM, "frank-pw")},
    ],
    "ring_groups": [
        {"number": "600", "name": "Front desk", "strategy": "simultaneous",
         "members": ["102", "103"], "timeout_s": 20, "fallback": "104"},
        {"number": "601", "name": "Hunt", "strategy": "sequential", "members": ["102", "103"],
         "member_timeout_s": 10, "timeout_s": 25, "fallback": "104"},
        {"number": "602", "name": "No fallback", "strategy": "simultaneous",
         "members": ["102", "103"], "timeout_s": 15},
    ],
    "dial_plan": {"outside_prefix": "9", "external_patterns": ["\\+?[0-9]{7,15}"]},
    "emergency": {"numbers": ["911", "112"]},
}
PASSWORDS = {"101": "alice-pw", "alice-soft": "alice-soft-pw", "102": "bob-pw",
             "103": "carol-pw", "104": "dave-pw", "105": "erin-pw", "106": "frank-pw"}


class Phone:
    """A handset on the fake network: builds requests, answers challenges, keeps an inbox."""

    _ports = itertools.count(5070)

    def __init__(self, net: FakeNet, user: str, *, host: str, port: int | None = None,
                 transport: str = "UDP", password: str | None = None) -> None:
        self.net = net
        self.user = user
        self.password = PASSWORDS.get(user, "") if password is None else password
        self.host = host
        self.port = port or next(self._ports)
        self.transport = transport
        self.inbox: list[sipua.Message] = []
        self.cseq = itertools.count(1)
        self.call_id = sipua.unique("reg-")
        self.tag = sipua.unique("tag-")
        self.contact_params = ""
        """Appended after the Contact's <URI>, e.g. ';q=0.5'."""
        net.phones[(host, self.port)] = self

    @property
    def local(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def contact(self) -> str:
        tail = "" if self.transport == "UDP" else f";transport={self.transport.lower()}"
        return f"<sip:{self.user}@{self.host}:{self.port}{tail}>{self.contact_params}"

    def send(self, data: bytes) -> None:
        self.net.deliver(data, self)

    def take(self) -> list[sipua.Message]:
        self.net.pump()
        messages, self.inbox = self.inbox, []
        return messages

    def last(self) -> sipua.Message:
        messages = self.take()
        assert messages, f"{self.user} received nothing"
        return messages[-1]

    def register(self, *, expires: int = 300, aor: str | None = None,
                 algorithm: str | None = None, password: str | None = None,
                 headers: list[tuple[str, str]] | tuple = ()) -> sipua.Message:
        """REGISTER, answer the 401, return the final response."""
        aor = aor or self.user
        self.send(sipua.register(aor, "127.0.0.1", local=self.local, call_id=self.call_id,
                                 cseq=next(self.cseq), expires=expires, tag=self.tag,
                                 transport=self.transport, contact=self.contact,
                                 headers=headers))
        challenge = self.last()
        if challenge.status != 401:
            return challenge
        authorization = self.answer(challenge, "REGISTER", "sip:127.0.0.1",
                                    algorithm=algorithm, password=password)
        self.send(sipua.register(aor, "127.0.0.1", local=self.local, call_id=self.call_id,
                                 cseq=next(self.cseq), expires=expires, tag=self.tag,
                                 transport=self.transport, contact=self.contact,
                                 authorization=authorization, headers=headers))
        return self.last()

    def answer(self, challenge: sipua.Message, method: str, uri: str, *,
               algorithm: str | None = None, password: str | None = None, nc: int = 1) -> str:
        values = challenge.all("www-authenticate") + challenge.all("proxy-authenticate")
        chosen = values[0]
        if algorithm is not None:
            chosen = next(v for v in values if f"algorithm={algorithm}" in v)
        return sipua.digest_answer(chosen, method=method, uri=uri, username=self.user,
                                   password=self.password if password is None else password,
                                   nc=nc)

    def request(self, method: str, uri: str, *, call_id: str, cseq: int, to: str,
                from_tag: str | None = None, branch: str | None = None,
                headers: list[tuple[str, str]] | tuple = (), body: bytes = b"",
                max_forwards: int = 70) -> bytes:
        return sipua.request(method, uri, local=self.local, transport=self.transport, to=to,
                             from_=f"<sip:{self.user}@127.0.0.1>;tag={from_tag or self.tag}",
                             call_id=call_id, cseq=cseq, branch=branch, contact=self.contact,
                             headers=headers, body=body, max_forwards=max_forwards)

    def respond(self, request: sipua.Message, status: int, *, to_tag: str | None = None,
                body: bytes = b"", headers: list[tuple[str, str]] | tuple = ()) -> None:
        extra = list(headers)
        if 200 <= status < 300 and request.method == "INVITE":
            extra.append(("Contact", self.contact))
        self.send(sipua.response_for(request, status, to_tag=to_tag, body=body,
                                     headers=extra))


@dataclasses.dataclass
class Call:
    """What a caller needs to continue a call it started through the proxy."""

    caller: Phone
    uri: str
    call_id: str
    from_tag: str
    branch: str
    cseq: int
    invite: bytes


class FakeNet:
    """The core plus handsets, on fake time. ``pump`` delivers what the core sent and keeps
    its notices (``notices``), the way the service drains the core."""

    def __init__(self, core: SipCore, now: float = 1000.0) -> None:
        self.core = core
        self.now = now
        self.phones: dict[tuple[str, int], Phone] = {}
        self.undelivered: list[tuple[Flow, bytes]] = []
        self.sent: list[tuple[Flow, bytes]] = []
        self.notices: list[Notice] = []

    def phone(self, user: str, host: str, **kwargs) -> Phone:
        return Phone(self, user, host=host, **kwargs)

    def deliver(self, data: bytes, phone: Phone) -> None:
        transport = phone.transport.lower()
        self.core.receive_datagram(data, Flow(transport, phone.host, phone.port), self.now)
        self.pump()

    def pump(self) -> None:
        self.notices += self.core.take_notices()
        while True:
            items = self.core.take_transmits()
            if not items:
                return
            for item in items:
                self.sent.append((item.flow, item.data))
                phone = self.phones.get((item.flow.host, item.flow.port))
                if phone is None:
                    self.undelivered.append((item.flow, item.data))
                else:
                    phone.inbox.append(sipua.parse_message(item.data))

    def advance(self, seconds: float) -> None:
        """Let fake time pass, firing every timer on the way in order."""
        target = self.now + seconds
        while True:
            deadline = self.core.next_deadline()
            if deadline > target:
                break
            self.now = max(self.now, deadline)
            self.core.handle_timer(self.now)
            self.pump()
        self.now = target

    def invite(self, caller: Phone, target: str, *, body: bytes = b"",
               headers: list[tuple[str, str]] | tuple = (), authenticate: bool = True) -> Call:
        """Place a call: INVITE, answer the 407 (ACKing it), INVITE again with credentials."""
        uri = target if target.startswith(("sip:", "sips:", "tel:")) else f"sip:{target}@127.0.0.1"
        call_id, from_tag = sipua.unique("call-"), sipua.unique("ft-")
        branch = sipua.unique("z9hG4bK")
        invite = caller.request("INVITE", uri, call_id=call_id, cseq=1, to=f"<{uri}>",
                                from_tag=from_tag, branch=branch, body=body, headers=headers)
        caller.send(invite)
        if not authenticate:
            return Call(caller, uri, call_id, from_tag, branch, 1, invite)
        challenge = caller.last()
        assert challenge.status == 407, challenge.start
        caller.send(caller.request("ACK", uri, call_id=call_id, cseq=1,
                                   to=challenge.header("to"), from_tag=from_tag, branch=branch))
        authorization = caller.answer(challenge, "INVITE", uri)
        branch = sipua.unique("z9hG4bK")
        invite = caller.request("INVITE", uri, call_id=call_id, cseq=2, to=f"<{uri}>",
                                from_tag=from_tag, branch=branch, body=body,
                                headers=[*headers, ("Proxy-Authorization", authorization)])
        caller.send(invite)
        return Call(caller, uri, call_id, from_tag, branch, 2, invite)


def settings(**overrides) -> CoreSettings:
    base = {"ports": {"udp": 5060, "tcp": 5060}, "gateway_uri": "sip:127.0.0.1:5062",
            "advertised_host": "127.0.0.1", "algorithms": ("SHA-256", "MD5")}
    base.update(overrides)
    return CoreSettings(**base)


def test_site() -> Directory:
    return parse_directory(SITE, source="test-site")


def make_core_net(directory: Directory | None = None, serving: bool = True,
                  now: float = 1000.0, relay=None, relay_key: bytes | None = None,
                  **overrides) -> FakeNet:
    """A core serving handsets (an outage) unless ``serving`` is False (the cloud is up);
    ``relay`` (:class:`~appliance.sip.relay.RelaySettings`) makes it an in-path one."""
    core = SipCore(settings(**overrides), directory=directory or test_site(), serving=serving,
                   now=now, relay=relay, relay_key=relay_key)
    return FakeNet(core, now)
