"""The bench cloud's SIP edge as the handsets' primary registrar: digest authentication with
the site's credentials, capped expiries, bindings with their times. Driven with
jbcbench.sipua, which shares no code with it."""

from __future__ import annotations

import pytest

from jbcbench import sipua
from jbcbench.cloud_edge import SipEdge

SOURCE = ("192.168.50.11", 40000)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def edge(clock) -> SipEdge:
    return SipEdge(credentials={"101": "pw-101", "102": "pw-102"}, realm="cloud.test",
                   max_expires_s=300, clock=clock)


def register(edge: SipEdge, user: str, password: str, *, expires: int = 3600,
             cseq: int = 1, challenge: sipua.Reply | None = None,
             call_id: str = "reg-1") -> sipua.Reply:
    authorization = None
    if challenge is not None:
        authorization = sipua.digest_answer(
            challenge.header("www-authenticate"), method="REGISTER", uri="sip:10.65.0.10",
            username=user, password=password)
    data = sipua.register(user, "10.65.0.10", local=SOURCE, call_id=call_id, cseq=cseq,
                          expires=expires, authorization=authorization)
    return sipua.parse_reply(edge.handle(data, transport="UDP", source=SOURCE))


def test_register_without_credentials_is_challenged(edge):
    reply = register(edge, "101", "pw-101")
    assert reply.status == 401
    params = sipua.challenge_params(reply.header("www-authenticate"))
    assert params["realm"] == "cloud.test" and params["qop"] == "auth"
    assert edge.registered() == {}


def test_the_right_answer_registers_with_the_expiry_capped(edge, clock):
    challenge = register(edge, "101", "pw-101")
    reply = register(edge, "101", "pw-101", cseq=2, challenge=challenge)
    assert reply.status == 200
    assert reply.header("contact").endswith(";expires=300")
    binding = edge.registered()["101"]
    assert binding.registered_at == clock.now and binding.expires_at == clock.now + 300
    assert binding.source == "192.168.50.11:40000"


def test_a_wrong_password_or_someone_elses_address_of_record_is_challenged_again(edge):
    challenge = register(edge, "101", "pw-101")
    assert register(edge, "101", "wrong", cseq=2, challenge=challenge).status == 401
    data = sipua.register("102", "10.65.0.10", local=SOURCE, call_id="x", cseq=3,
                          authorization=sipua.digest_answer(
                              challenge.header("www-authenticate"), method="REGISTER",
                              uri="sip:10.65.0.10", username="101", password="pw-101"))
    assert sipua.parse_reply(edge.handle(data, transport="UDP", source=SOURCE)).status == 401
    assert edge.auth_failures == 2 and edge.registered() == {}


def test_an_old_nonce_is_answered_stale(edge, clock):
    challenge = register(edge, "101", "pw-101")
    clock.now += 301
    reply = register(edge, "101", "pw-101", cseq=2, challenge=challenge)
    assert reply.status == 401
    assert sipua.challenge_params(reply.header("www-authenticate")).get("stale") == "true"


def test_bindings_expire_and_unregister(edge, clock):
    challenge = register(edge, "101", "pw-101")
    assert register(edge, "101", "pw-101", cseq=2, challenge=challenge, expires=60).status \
        == 200
    assert set(edge.registered()) == {"101"}
    assert edge.registered(at=clock.now + 61) == {}
    assert register(edge, "101", "pw-101", cseq=3, challenge=challenge, expires=0).status \
        == 200
    assert edge.registered() == {}


def test_without_credentials_the_edge_accepts_any_register():
    edge = SipEdge()
    data = sipua.register("999", "10.65.0.10", local=SOURCE, call_id="r", cseq=1)
    assert sipua.parse_reply(edge.handle(data, transport="UDP", source=SOURCE)).status == 200
    assert "999" in edge.registered()
