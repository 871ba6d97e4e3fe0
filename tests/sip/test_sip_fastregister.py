"""The REGISTER fast path (appliance/sip/fastregister.py) answers exactly what the full path
answers, and leaves the core in exactly the same state.

Two cores, one with the fast path and one without (``register_fast_path=False``), get the
same datagrams at the same moments; their answers (byte for byte, but for the To tag, which
is a fresh token in each), journal notices, bindings to persist, phones, phone sightings,
counters and abuse guard must be the same after every datagram. The REGISTERs are random:
valid ones in every spelling the grammar allows, and broken ones of every kind, with right,
wrong, stale, replayed, junk and foreign credentials, from several handsets at once.
"""

from __future__ import annotations

import os
import re

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from appliance.sip.abuse import AbusePolicy
from appliance.sip.core import SipCore
from appliance.sip.digest import DigestAuthenticator
from appliance.sip.fastregister import read_register
from appliance.sip.flow import Flow
from appliance.sip.message import _TAG_PREFIX
from jbcbench import sipnet, sipua
from jbcbench.sipnet import PASSWORDS, REALM

MAX_EXAMPLES = int(os.environ.get("JBC_FASTREGISTER_EXAMPLES", "400"))
KEY = bytes(range(32))
START = 1000.0
HANDSETS = [("101", "10.1.0.1", 5070), ("alice-soft", "10.1.0.1", 5071),
            ("102", "10.1.0.2", 5070), ("105", "10.1.0.3", 5072), ("106", "10.1.0.4", 5073),
            ("999", "10.1.0.5", 5074)]
"""(user, address, port): known users (an HA1-only MD5 one, a SHA-256-only one) and an
unknown one, two of them behind one address."""
_OUR_TAG = re.compile(r"(\r\nTo: [^\r\n]*;tag=)" + _TAG_PREFIX + r"[0-9a-f]+")


class Twins:
    """The same core twice, with and without the fast path, fed the same datagrams."""

    def __init__(self, **overrides) -> None:
        self.now = START
        self.cores = [self._core(True, overrides), self._core(False, overrides)]
        self.last_challenge: dict[str, str] = {}
        self.last_authorization: dict[str, str] = {}

    @staticmethod
    def _core(fast: bool, overrides) -> SipCore:
        settings = sipnet.settings(register_fast_path=fast, **overrides)
        core = SipCore(settings, directory=sipnet.test_site(), serving=True, now=START)
        # One key for both, so that both issue the same nonces (and the same opaque).
        core.auth = DigestAuthenticator(REALM, algorithms=settings.algorithms,
                                        nonce_lifetime_s=settings.nonce_lifetime_s, key=KEY)
        core.set_directory(core.directory)
        return core

    @property
    def fast(self) -> SipCore:
        return self.cores[0]

    def send(self, data: bytes, flow: Flow) -> list[tuple[Flow, bytes]]:
        """Feed both cores; assert they answered and changed alike; the answers."""
        outputs = []
        for core in self.cores:
            core.receive_datagram(data, flow, self.now)
            outputs.append(([(t.flow, _untagged(t.data)) for t in core.take_transmits()],
                            core.take_notices(), core.take_changes()))
        (fast_sent, fast_notices, fast_changes), (full_sent, full_notices, full_changes) = \
            outputs
        assert fast_sent == full_sent, data
        assert fast_notices == full_notices
        assert fast_changes.aors == full_changes.aors
        self.assert_same_state()
        return fast_sent

    def assert_same_state(self) -> None:
        fast, full = self.cores
        assert fast.phones(self.now) == full.phones(self.now)
        assert [(b.aor, b.key, b.cseq, b.call_id, b.flow, b.user_agent, b.device_id)
                for b in fast.registrations] == \
            [(b.aor, b.key, b.cseq, b.call_id, b.flow, b.user_agent, b.device_id)
             for b in full.registrations]
        assert [p.to_json(self.now) for p in fast.sightings] == \
            [p.to_json(self.now) for p in full.sightings]
        assert fast.guard.snapshot(self.now) == full.guard.snapshot(self.now)
        assert _memory(fast) == _memory(full)
        fast_stats = {k: v for k, v in fast.stats.items() if k != "register_fast_path"}
        assert fast_stats == dict(full.stats)
        assert len(fast.answers) == len(full.answers)


def _memory(core: SipCore) -> tuple:
    """What the core remembers that decides later answers without showing in any report:
    the budget and challenges owed per source, the failure counts behind lockouts, the
    nonce counts behind replay protection, and the devices each AOR registered from."""
    guard = core.guard
    buckets = {source: (round(bucket.tokens, 9), bucket.last, bucket.challenges)
               for source, bucket in guard._buckets.items()}
    failures = [{key: list(times) for key, times in table.items()}
                for table in (guard._junk, guard._pair_guesses, guard._user_guesses)]
    return (buckets, failures, dict(guard._source_users), dict(core.auth._nonce_counts),
            {aor: list(devices) for aor, devices in core.registrations._devices.items()})


def _untagged(data: bytes) -> bytes:
    """The answer with our own To tag (a fresh token per answer) blanked."""
    text = data.decode("utf-8", "surrogateescape")
    return _OUR_TAG.sub(r"\1TAG", text).encode("utf-8", "surrogateescape")


# -- requests ---------------------------------------------------------------------------------

SPELLINGS = {
    "Via": ["Via", "v", "VIA", "via"], "From": ["From", "f", "from"], "To": ["To", "t", "TO"],
    "Call-ID": ["Call-ID", "i", "call-id", "Call-Id"], "CSeq": ["CSeq", "cseq", "CSEQ"],
    "Contact": ["Contact", "m", "contact"], "Expires": ["Expires", "expires"],
    "Max-Forwards": ["Max-Forwards", "max-forwards"], "Content-Length": ["Content-Length", "l"],
    "Authorization": ["Authorization", "authorization"], "User-Agent": ["User-Agent"],
}


DEFECTS = {
    # field -> broken values (one of them, now and then, replaces the good one)
    "Max-Forwards": ["0", "256", "x", "-1"],
    "From": ["<sip:bad", "nobody", "<sip:101@127.0.0.1>;tag", '"unterminated <sip:a@b>'],
    "To": ["<tel:101>", "<sip:>", "<sip:101@127.0.0.1", "a b c"],
    "Call-ID": [""],
    "CSeq": ["{cseq} INVITE", "x REGISTER", "{cseq}  REGISTER", "1 REGISTER",
             "99999999999 REGISTER"],
    "Contact": ["*", "<{contact}>, <sip:{user}@{host}:9>", "<tel:+15551234>", "<sip:@bad>", "",
                "<{contact}>;expires=10", "<{contact}>;q=2", "<{contact}>;expires=x",
                "<{contact}>;q=x", "<{contact}>;expires=0"],
    "Expires": ["x", "99999999999", "0", "30", "-5"],
    "Via": ["SIP/2.0/UDP {host}:{port};rport;branch=abc", "SIP/2.0/UDP {host}:{port}",
            "SIP/2.0/UDP {host}:{port};branch=z9hG4bKa, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb",
            "SIP/2.0/UDP {host}:99999;branch=z9hG4bKa", "SIP/2.0 {host};branch=z9hG4bKa",
            "SIP/2.0/UDP {host}:{port};branch=z9hG4bKa;rport=x"],
}
WHOLE_DEFECTS = ["lf", "fold", "lead", "nul", "utf8", "bare", "version", "ruri-tel",
                 "ruri-headers", "ruri-user", "body", "length", "length-x", "extra-route",
                 "extra-require", "extra-proxy-require", "extra-via", "extra-contact",
                 "extra-to", "extra-authorization", "sips-ruri"]


@st.composite
def registers(draw, handset: tuple[str, str, int], cseq: int, authorization: str | None
              ) -> bytes:
    """A REGISTER from ``handset``: well-formed in any of the spellings the grammar allows,
    and now and then broken in one place."""
    user, host, port = handset
    extension = {"alice-soft": "101"}.get(user, user)
    aor = draw(st.sampled_from([user] * 6 + [extension, "102", "%31%30%31"]))
    to_uri = f"sip:{aor}@127.0.0.1"
    contact = f"sip:{user}@{host}:{port}"
    via_params = draw(st.sampled_from(["rport;", "rport;", "", "rport=5;", "received=1.2.3.4;",
                                       "RPORT;", "ttl=4;"]))
    via_host = draw(st.sampled_from([f"{host}:{port}", f"{host}:{port}", host,
                                     "192.0.2.9:5060", "phone.example.com",
                                     f"[2001:db8::1]:{port}"]))
    branch = "z9hG4bK" + draw(st.text("abcdef0123456789", min_size=1, max_size=8))
    fields = {
        "Via": f"SIP/2.0/UDP {via_host};{via_params}branch={branch}",
        "Max-Forwards": draw(st.sampled_from(["70", "70", "1", "255", "0070", None])),
        "From": draw(st.sampled_from([f"<sip:{user}@127.0.0.1>;tag=ft{port}",
                                      f'"{user}" <sip:{user}@127.0.0.1>;tag=ft{port}',
                                      f"Some Body <sip:{user}@127.0.0.1>;tag=ft{port}",
                                      f"sip:{user}@127.0.0.1;tag=ft{port}"])),
        "To": draw(st.sampled_from([f"<{to_uri}>", f"<{to_uri}>", f"{to_uri}",
                                    f"<{to_uri}>;tag=old", f'"Me" <{to_uri}>',
                                    f"<{to_uri}>;tagger=1"])),
        "Call-ID": draw(st.sampled_from([f"reg-{user}@{host}", f"reg-{user}@{host}",
                                         "other-call"])),
        "CSeq": f"{cseq} REGISTER",
        "Contact": draw(st.sampled_from([
            f"<{contact}>", f"<{contact}>", f"<{contact};transport=udp>",
            f"<{contact}>;expires=60", f"<{contact}>;expires=3600", f"<{contact}>;q=0.5",
            f'<{contact}>;+sip.instance="<urn:uuid:00000000-0000-0000-0000-{port:012d}>"'
            ";reg-id=1", f'"Desk Phone" <{contact}>', contact, f"{contact};expires=90",
            f"<{contact}>;expires=0", None])),
        "Expires": draw(st.sampled_from(["120", "120", "3600", "60", "0", None, None])),
        "User-Agent": draw(st.sampled_from([None, "Yealink SIP-T46S 66.86", "A  B", ""])),
        "Authorization": authorization,
    }
    defect = draw(st.sampled_from([None] * 12 + list(DEFECTS) + WHOLE_DEFECTS))
    if defect in DEFECTS:
        fields[defect] = draw(st.sampled_from(DEFECTS[defect])).format(
            cseq=cseq, contact=contact, user=user, host=host, port=port)
    extra = draw(st.lists(st.sampled_from([
        ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER"), ("Supported", "path, gruu"),
        ("X-Thing", "1"), ("Timestamp", "1"), ("User-Agent", "second"),
        ("Content-Type", "application/sdp")]), max_size=2))
    extra += {"extra-route": [("Route", "<sip:127.0.0.1;lr>")],
              "extra-require": [("Require", "foo")],
              "extra-proxy-require": [("Proxy-Require", "bar")],
              "extra-via": [("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKsecond")],
              "extra-contact": [("Contact", f"<sip:{user}@{host}:1>")],
              "extra-to": [("To", "<sip:102@127.0.0.1>")],
              "extra-authorization": [("Authorization", 'Digest username="x"')],
              }.get(defect, [])
    pairs = [(name, value) for name, value in fields.items() if value is not None] + extra
    if draw(st.booleans()):
        pairs = draw(st.permutations(pairs))
    lines = []
    for name, value in pairs:
        name = draw(st.sampled_from(SPELLINGS.get(name, [name])))
        space = draw(st.sampled_from([" ", " ", " ", "", "  ", "\t", " \t"]))
        tail = draw(st.sampled_from(["", "", "", " ", "\t"]))
        lines.append(f"{name}:{space}{value}{tail}")
    ruri = draw(st.sampled_from(["sip:127.0.0.1", "sip:127.0.0.1", "sip:127.0.0.1:5060",
                                 "sip:elsewhere.example.com", "sip:127.0.0.1;transport=udp"]))
    ruri = {"ruri-tel": "tel:101", "ruri-headers": "sip:127.0.0.1?x=y",
            "ruri-user": "sip:101@127.0.0.1", "sips-ruri": "sips:127.0.0.1"}.get(defect, ruri)
    body = b"v=0\r\n" if defect == "body" else b""
    length = draw(st.sampled_from([None, "0"]))
    length = {"body": str(len(body)), "length": "7", "length-x": "x"}.get(defect, length)
    if length is not None:
        lines.append(f"Content-Length: {length}")
    version = "sip/2.0" if defect == "version" else "SIP/2.0"
    text = "\r\n".join([f"REGISTER {ruri} {version}", *lines]) + "\r\n\r\n"
    if defect == "lf":
        text = text.replace("\r\n", "\n")
    elif defect == "fold":
        text = text.replace("\r\nCSeq: ", "\r\nCSeq:\r\n ")
    elif defect == "lead":
        text = "\r\n" + text
    elif defect == "nul":
        text = text.replace("REGISTER sip", "REGISTER\x00 sip")
    elif defect == "utf8":
        text = text.replace("\r\n\r\n", "\r\nX-Name: Téléphone\r\n\r\n")
    elif defect == "bare":
        text = text.replace("\r\n\r\n", "\r\nX-A: 1\rX-B: 2\r\n\r\n")
    return text.encode("utf-8") + body


def answer(challenge: str, user: str, how: str, nc: int) -> str:
    """The Authorization a handset sends after ``challenge``, spoiled the way ``how`` says."""
    password = PASSWORDS.get(user, "nothing")
    if how == "wrong":
        password = "wrong"
    value = sipua.digest_answer(challenge, method="REGISTER", uri="sip:127.0.0.1",
                                username=user, password=password, nc=nc, cnonce=f"c{nc}")
    if how == "junk":
        value = value.replace("qop=auth, ", "")
    elif how == "realm":
        value = value.replace(f'realm="{REALM}"', 'realm="other"')
    elif how == "hex":
        value = re.sub(r'response="[0-9a-f]+"', 'response="zz"', value)
    return value


@st.composite
def exchanges(draw):
    """A few handsets each doing a few REGISTERs, interleaved, with time passing."""
    steps = []
    for _ in range(draw(st.integers(1, 10))):
        steps.append((draw(st.integers(0, len(HANDSETS) - 1)),
                      draw(st.sampled_from(["none", *["right"] * 6, "wrong", "replay", "junk",
                                            "realm", "hex", "stale"])),
                      draw(st.sampled_from([0.0, 0.0, 0.5, 3.0, 100.0]))))
    return steps


@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=exchanges(), data=st.data())
def test_random_registers_get_the_same_answers_and_leave_the_same_state(steps, data):
    twins = Twins()
    cseqs = dict.fromkeys(range(len(HANDSETS)), 0)
    for index, how, wait in steps:
        user, host, port = HANDSETS[index]
        flow = Flow("udp", host, port)
        twins.now += wait
        cseqs[index] += 1
        authorization = None
        challenge = twins.last_challenge.get(user)
        if how == "replay":
            authorization = twins.last_authorization.get(user)
        elif how == "stale" and challenge is not None:
            twins.now += 400.0  # past the nonce lifetime
            authorization = answer(challenge, user, "right", cseqs[index])
        elif how != "none" and challenge is not None:
            authorization = answer(challenge, user, how, cseqs[index])
        if authorization is not None:
            twins.last_authorization[user] = authorization
        request = data.draw(registers((user, host, port), cseqs[index], authorization))
        taken = twins.fast.stats["register_fast_path"]
        answers = twins.send(request, flow)
        path = "fast" if twins.fast.stats["register_fast_path"] > taken else "full"
        event(f"{path} path: {answers[0][1][8:11].decode() if answers else 'no answer'}")
        for _, sent in answers:
            found = re.search(rb"\r\nWWW-Authenticate: ([^\r\n]+)", sent)
            if found:
                twins.last_challenge[user] = found.group(1).decode()
        if data.draw(st.booleans()):
            twins.send(request, flow)  # a retransmission


def register_of(user: str, host: str, port: int, cseq: int, authorization: str | None = None,
                **kwargs) -> bytes:
    return sipua.register(user, "127.0.0.1", local=(host, port), call_id=f"reg-{user}",
                          cseq=cseq, expires=120, authorization=authorization, **kwargs)


def test_a_handset_registering_takes_the_fast_path_both_times():
    twins = Twins()
    user, host, port = HANDSETS[0]
    flow = Flow("udp", host, port)
    [(_, challenge)] = twins.send(register_of(user, host, port, 1), flow)
    assert challenge.startswith(b"SIP/2.0 401 Unauthorized\r\n")
    value = re.search(rb"WWW-Authenticate: ([^\r\n]+)", challenge).group(1).decode()
    [(_, ok)] = twins.send(register_of(user, host, port, 2, answer(value, user, "right", 1)),
                           flow)
    assert ok.startswith(b"SIP/2.0 200 OK\r\n")
    assert b"\r\nContact: <sip:101@10.1.0.1:5070>;expires=120\r\n" in ok
    assert twins.fast.stats["register_fast_path"] == 2
    assert twins.fast.stats["registrations"] == 1


def test_a_retransmitted_register_is_answered_from_memory_not_the_fast_path():
    twins = Twins()
    user, host, port = HANDSETS[2]
    request = register_of(user, host, port, 1)
    first = twins.send(request, Flow("udp", host, port))
    again = twins.send(request, Flow("udp", host, port))
    assert first == again
    assert twins.fast.stats["register_fast_path"] == 1
    assert twins.fast.stats["retransmissions"] == 1


def test_unusual_registers_are_left_to_the_full_path():
    base = register_of("101", "10.1.0.1", 5070, 1)
    assert read_register(base) is not None
    unusual = {
        "LF line endings": base.replace(b"\r\n", b"\n"),
        "folded": base.replace(b"\r\nCall-ID: ", b"\r\nCall-ID:\r\n "),
        "a body": base.replace(b"Content-Length: 0", b"Content-Length: 2") + b"hi",
        "a Route": base.replace(b"Max-Forwards", b"Route: <sip:127.0.0.1;lr>\r\nMax-Forwards"),
        "two Vias": base.replace(b"Max-Forwards", b"Via: SIP/2.0/UDP 10.0.0.9\r\nMax-Forwards"),
        "two Contacts": base.replace(b"Expires", b"Contact: <sip:101@10.1.0.1:1>\r\nExpires"),
        "a wildcard": base.replace(b"<sip:101@10.1.0.1:5070>", b"*"),
        "a non-ASCII header": base.replace(b"Expires", b"X-Name: \xc3\xa9\r\nExpires"),
        "a tel: Request-URI": base.replace(b"REGISTER sip:127.0.0.1", b"REGISTER tel:101"),
        "Max-Forwards 0": base.replace(b"Max-Forwards: 70", b"Max-Forwards: 0"),
        "a malformed From": base.replace(b"From: <sip:101@127.0.0.1>", b"From: <sip:101@"),
        "another method in CSeq": base.replace(b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE"),
    }
    for what, data in unusual.items():
        assert read_register(data) is None, what


def test_no_fast_path_in_in_path_mode_nor_when_the_cloud_serves():
    twins = Twins()
    for core in twins.cores:
        core.set_serving(False)
    user, host, port = HANDSETS[0]
    [(_, refused)] = twins.send(register_of(user, host, port, 1), Flow("udp", host, port))
    assert refused.startswith(b"SIP/2.0 503 ")
    assert twins.fast.stats["register_fast_path"] == 0


def test_a_user_under_guard_is_left_to_the_full_path():
    twins = Twins(abuse=AbusePolicy(failures_per_user=2))
    user, host, port = HANDSETS[2]
    for guesser in (("10.6.0.1", 5060), ("10.6.0.2", 5060)):
        [(_, challenge)] = twins.send(register_of(user, *guesser, 1), Flow("udp", *guesser))
        value = re.search(rb"WWW-Authenticate: ([^\r\n]+)", challenge).group(1).decode()
        twins.send(register_of(user, *guesser, 2, answer(value, user, "wrong", 1)),
                   Flow("udp", *guesser))
    assert twins.fast.guard.snapshot(twins.now)["guarded_users"] == [user]
    used = twins.fast.stats["register_fast_path"]
    [(_, challenge)] = twins.send(register_of(user, host, port, 1), Flow("udp", host, port))
    value = re.search(rb"WWW-Authenticate: ([^\r\n]+)", challenge).group(1).decode()
    [(_, refused)] = twins.send(register_of(user, host, port, 2,
                                            answer(value, user, "right", 1)),
                                Flow("udp", host, port))
    assert refused.startswith(b"SIP/2.0 401 ")  # a new device of a guarded user
    assert twins.fast.stats["register_fast_path"] == used + 1  # the challenge only
