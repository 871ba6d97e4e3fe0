"""In-path mode's relay on fake time: Path and Record-Route, digest passed through, mirrored
bindings, the outage served from them at once, the cut, and recovery (issue 11)."""

from __future__ import annotations

import pytest

from appliance.sip.flow import Flow
from appliance.sip.flowtoken import FlowTokens
from appliance.sip.relay import RelaySettings
from jbcbench import sipua
from jbcbench.sipnet import REALM, FakeNet, Phone, make_core_net

EDGE = ("10.65.0.10", 5061)
CLOUD_DOMAIN = "cloud.test"
KEY = b"k" * 32
APPLIANCE_ROUTE = "<sip:127.0.0.1:5060;lr>"


class CloudEdge:
    """The cloud's SIP edge at the far end of the relay's TLS connection, played by the test:
    it sees what the relay sends and answers as the test says."""

    def __init__(self, net: FakeNet) -> None:
        self.net = net
        self.host, self.port = EDGE
        self.inbox: list[sipua.Message] = []
        self.raw: list[bytes] = []
        net.phones[EDGE] = self  # the fake network delivers by address

    @property
    def flow(self) -> Flow:
        return Flow("tls", self.host, self.port, 7)

    def take(self) -> list[sipua.Message]:
        self.net.pump()
        messages, self.inbox = self.inbox, []
        return messages

    def last(self) -> sipua.Message:
        messages = self.take()
        assert messages, "the cloud received nothing"
        return messages[-1]

    def send(self, data: bytes) -> None:
        self.net.core.receive_datagram(data, self.flow, self.net.now)
        self.net.pump()

    def answer(self, request: sipua.Message, status: int, **kwargs) -> None:
        self.send(sipua.response_for(request, status, **kwargs))


def in_path_net(**overrides) -> FakeNet:
    net = make_core_net(serving=False, realm=CLOUD_DOMAIN,
                        relay=RelaySettings(edges=(("tls", *EDGE),), outage_expires_s=30),
                        relay_key=KEY, **overrides)
    net.edge = CloudEdge(net)
    net.core.relay.set_cloud(net.edge.flow)
    return net


@pytest.fixture
def net() -> FakeNet:
    return in_path_net()


def in_path_register(phone: Phone, *, authorization: str | None = None,
                     expires: int = 300, cseq: int | None = None) -> bytes:
    """A REGISTER to the cloud's domain, sent through the appliance (its outbound proxy)."""
    return sipua.register(phone.user, CLOUD_DOMAIN, local=phone.local, call_id=phone.call_id,
                          cseq=cseq or next(phone.cseq), expires=expires, tag=phone.tag,
                          contact=phone.contact, authorization=authorization,
                          headers=[("Route", APPLIANCE_ROUTE)])


def cloud_challenge(request: sipua.Message, header: str = "WWW-Authenticate") -> list:
    return [(header, f'Digest realm="{CLOUD_DOMAIN}", nonce="cloudnonce1", '
                     'algorithm=MD5, qop="auth"')]


def register_through_cloud(net: FakeNet, phone: Phone, *, granted: int = 300) -> sipua.Message:
    """The whole exchange: REGISTER, the cloud's 401, the retry, the cloud's 200."""
    edge = net.edge
    phone.send(in_path_register(phone))
    first = edge.last()
    edge.answer(first, 401, headers=cloud_challenge(first))
    challenge = phone.last()
    assert challenge.status == 401
    authorization = phone.answer(challenge, "REGISTER", f"sip:{CLOUD_DOMAIN}")
    phone.send(in_path_register(phone, authorization=authorization))
    second = edge.last()
    edge.answer(second, 200, to_tag="cloudtag",
                headers=[("Contact", f"{phone.contact};expires={granted}")])
    return phone.last()


def test_a_phone_registering_through_the_relay_is_seen_and_its_cloud_grant_noted(net):
    # What phone readiness ('jbc phones --readiness') reads: seen through the relay, and the
    # registration the cloud (not the appliance) granted.
    phone = net.phone("101", "10.0.0.11")
    assert register_through_cloud(net, phone, granted=240).status == 200
    sighting = net.core.sightings.get("101")
    assert sighting is not None and "relay" in sighting.seen_via
    assert (sighting.granted_by, sighting.granted_expires_s) == ("cloud", 240)


def test_a_register_is_relayed_with_path_and_its_digest_untouched(net):
    phone = net.phone("101", "10.0.0.11")
    edge = net.edge
    phone.send(in_path_register(phone))
    relayed = edge.last()
    assert relayed.method == "REGISTER" and relayed.uri == f"sip:{CLOUD_DOMAIN}"
    path = relayed.header("path")
    assert path is not None and path.endswith(";lr;ob>") and "@127.0.0.1:5060" in path
    token = path.split("sip:", 1)[1].split("@", 1)[0]
    assert FlowTokens(KEY).flow(token) == Flow("udp", "10.0.0.11", phone.port)
    assert len(relayed.all("via")) == 2 and "127.0.0.1:5060" in relayed.all("via")[0]
    assert relayed.header("route") is None, "our own Route entry is consumed"
    # the cloud's challenge reaches the phone untouched; so does the phone's answer
    edge.answer(relayed, 401, headers=cloud_challenge(relayed))
    challenge = phone.last()
    assert challenge.status == 401 and 'realm="cloud.test"' in challenge.header(
        "www-authenticate") and "cloudnonce1" in challenge.header("www-authenticate")
    assert len(challenge.all("via")) == 1
    authorization = phone.answer(challenge, "REGISTER", f"sip:{CLOUD_DOMAIN}")
    phone.send(in_path_register(phone, authorization=authorization))
    assert edge.last().header("authorization") == authorization
    assert net.core.registrations.bindings_of("101") == [], "nothing mirrored before a 200"


def test_the_clouds_200_is_mirrored_with_the_granted_expiry(net):
    phone = net.phone("101", "10.0.0.11")
    ok = register_through_cloud(net, phone, granted=240)
    assert ok.status == 200
    bindings = net.core.registrations.bindings_of("101")
    assert len(bindings) == 1
    binding = bindings[0]
    assert binding.origin == "cloud" and binding.device_id == "alice-desk"
    assert binding.expires_at == pytest.approx(net.now + 240)
    assert binding.flow == Flow("udp", "10.0.0.11", phone.port)
    assert [n.kind for n in net.notices] == ["mirrored"]
    rows = net.core.phones(net.now)
    assert rows[0]["origin"] == "cloud" and rows[0]["aor"] == "101"
    # an unregistration the cloud accepts removes the mirror
    phone.send(in_path_register(phone, expires=0))
    unregister = net.edge.last()
    net.edge.answer(unregister, 200, to_tag="cloudtag")
    assert phone.last().status == 200
    assert net.core.registrations.bindings_of("101") == []


def test_a_phone_the_directory_does_not_know_is_relayed_but_never_mirrored(net):
    stranger = net.phone("999", "10.0.0.99", password="whatever")
    ok = register_through_cloud(net, stranger)
    assert ok.status == 200, "relaying is the cloud's business"
    assert net.core.registrations.bindings_of("999") == []
    assert net.core.stats["relay_mirror_unknown"] == 1
    # in an outage it gets nothing: its calls are challenged and no password of its works
    net.core.set_serving(True, net.now)
    bob = net.phone("102", "10.0.0.12")
    stranger.send(invite_from(stranger, "102"))
    challenge = stranger.last()
    assert challenge.status == 407
    uri = f"sip:102@{CLOUD_DOMAIN}"
    stranger.send(invite_from(stranger, "102", cseq=2, headers=[
        ("Proxy-Authorization", stranger.answer(challenge, "INVITE", uri))]))
    assert stranger.last().status == 407
    assert bob.take() == []


def test_without_a_cloud_connection_the_phone_is_sent_to_its_next_server(net):
    net.core.relay.set_cloud(None)
    phone = net.phone("101", "10.0.0.11")
    phone.send(in_path_register(phone))
    answer = phone.last()
    assert answer.status == 503 and answer.header("retry-after") is None


def invite_from(phone: Phone, target: str, *, headers=(), branch: str | None = None,
                call_id: str | None = None, cseq: int = 1, from_tag: str | None = None
                ) -> bytes:
    uri = f"sip:{target}@{CLOUD_DOMAIN}"
    return phone.request("INVITE", uri, call_id=call_id or sipua.unique("call-"), cseq=cseq,
                         to=f"<{uri}>", from_tag=from_tag, branch=branch,
                         headers=[("Route", APPLIANCE_ROUTE), *headers], body=b"v=0\r\n")


def test_a_call_to_the_cloud_is_record_routed_twice_and_its_407_passed_through(net):
    phone = net.phone("101", "10.0.0.11")
    register_through_cloud(net, phone)
    phone.send(invite_from(phone, "102"))
    trying = phone.take()
    assert [m.status for m in trying] == [100]
    invite = net.edge.last()
    rr = invite.all("record-route")
    assert len(rr) == 2 and rr[0].endswith(";lr;ob>") and "transport=tls" in rr[0]
    token = rr[1].split("sip:", 1)[1].split("@", 1)[0]
    assert FlowTokens(KEY).flow(token).host == "10.0.0.11"
    net.edge.answer(invite, 407, to_tag="c1", headers=cloud_challenge(invite,
                                                                      "Proxy-Authenticate"))
    refused = phone.last()
    assert refused.status == 407 and "cloudnonce1" in refused.header("proxy-authenticate")


def test_a_call_from_the_cloud_reaches_the_phone_over_its_path(net):
    phone = net.phone("101", "10.0.0.11")
    register_through_cloud(net, phone)
    # the cloud routes to the contact the phone registered, through the Path we inserted
    registered = net.core.registrations.bindings_of("101")[0]
    token = FlowTokens(KEY).token(Flow("udp", "10.0.0.11", phone.port))
    call_id = sipua.unique("from-cloud-")
    invite = sipua.request(
        "INVITE", registered.contact, local=EDGE, transport="TLS",
        to=f"<sip:101@{CLOUD_DOMAIN}>", from_=f"<sip:+15551234@{CLOUD_DOMAIN}>;tag=cf",
        call_id=call_id, cseq=1, headers=[("Route", f"<sip:{token}@127.0.0.1:5060;lr;ob>"),
                                          ("Record-Route", "<sip:10.65.0.10:5061;"
                                                           "transport=tls;lr>")],
        body=b"v=0\r\n")
    net.edge.send(invite)
    offered = phone.last()
    assert offered.method == "INVITE" and offered.uri == registered.contact
    rr = offered.all("record-route")
    assert len(rr) == 3, "ours twice, then the cloud's"
    assert rr[0].startswith(f"<sip:{token}@127.0.0.1:5060") and rr[1].endswith(";lr;ob>")
    phone.respond(offered, 180, to_tag="ph1")
    ringing = [m for m in net.edge.take() if not m.is_request]
    assert [m.status for m in ringing] == [100, 180]


def test_a_tampered_flow_token_gets_430_flow_failed(net):
    token = FlowTokens(b"x" * 32).token(Flow("udp", "10.0.0.66", 5060))
    invite = sipua.request(
        "INVITE", "sip:101@10.0.0.66:5060", local=EDGE, transport="TLS",
        to="<sip:101@cloud.test>", from_="<sip:x@cloud.test>;tag=x", call_id="c-tamper",
        cseq=1, headers=[("Route", f"<sip:{token}@127.0.0.1:5060;lr;ob>")])
    net.edge.send(invite)
    answers = net.edge.take()
    assert answers[-1].status == 430
    assert not any(flow.host == "10.0.0.66" for flow, _ in net.sent)


def test_an_outage_is_served_from_mirrored_bindings_at_once(net):
    alice = net.phone("101", "10.0.0.11")
    bob = net.phone("102", "10.0.0.12")
    register_through_cloud(net, alice)
    register_through_cloud(net, bob)
    net.core.set_serving(True, net.now)
    # no re-registration: Alice calls Bob; the appliance challenges, then rings Bob
    call = net.invite(alice, "102")
    offered = bob.last()
    assert offered.method == "INVITE"
    assert net.edge.take() == [], "nothing goes to the dead cloud"
    bob.respond(offered, 200, to_tag="bob1")
    assert any(m.status == 200 for m in alice.take())
    assert call.call_id == offered.header("call-id")


@pytest.mark.parametrize(("lead", "granted"), [
    (60, 90),    # factory desk phones refresh 60 s before expiry: 30 s after it the next
    (5, 35),     # a phone provisioned to refresh 5 s early
    (300, 150),  # right after registering (a rebooted phone): its lead counts up to 120 s
])
def test_a_refresh_in_an_outage_is_challenged_and_granted_a_short_expiry(net, lead, granted):
    """Short: the phone's next refresh comes 30 s (in_path_outage_expires_s) later, whatever
    its refresh lead, so after the outage it reaches the cloud soon."""
    alice = net.phone("101", "10.0.0.11")
    register_through_cloud(net, alice, granted=300)
    net.advance(300 - lead)
    net.core.set_serving(True, net.now)
    alice.send(in_path_register(alice))
    challenge = alice.last()
    assert challenge.status == 401 and f'realm="{CLOUD_DOMAIN}"' in challenge.header(
        "www-authenticate")
    authorization = alice.answer(challenge, "REGISTER", f"sip:{CLOUD_DOMAIN}")
    alice.send(in_path_register(alice, authorization=authorization, expires=300))
    ok = alice.last()
    assert ok.status == 200 and f"expires={granted}" in ok.header("contact")
    assert net.edge.take() == []
    binding = net.core.registrations.bindings_of("101")[0]
    assert binding.origin == "local"
    if lead < granted:  # its next refresh, as early as before: the same lead, the same grant
        net.advance(granted - lead)
        alice.send(in_path_register(alice))
        challenge = alice.last()
        alice.send(in_path_register(alice, authorization=alice.answer(
            challenge, "REGISTER", f"sip:{CLOUD_DOMAIN}"), expires=300))
        again = alice.last()
        assert again.status == 200 and f"expires={granted}" in again.header("contact")


def test_an_unauthenticated_refresh_in_an_outage_gets_nothing(net):
    alice = net.phone("101", "10.0.0.11")
    register_through_cloud(net, alice)
    net.core.set_serving(True, net.now)
    alice.send(in_path_register(alice))
    assert alice.last().status == 401
    wrong = alice.answer(sipua.parse_message(sipua.response_for(
        in_path_register(alice), 401, headers=[("WWW-Authenticate",
                                                 f'Digest realm="{CLOUD_DOMAIN}", '
                                                 'nonce="bogus", qop="auth"')])),
        "REGISTER", f"sip:{CLOUD_DOMAIN}", password="wrong")
    alice.send(in_path_register(alice, authorization=wrong))
    assert alice.last().status == 401


def test_an_invite_in_flight_at_the_cut_is_answered_and_retried_locally(net):
    alice = net.phone("101", "10.0.0.11")
    bob = net.phone("102", "10.0.0.12")
    register_through_cloud(net, alice)
    register_through_cloud(net, bob)
    call_id, from_tag = sipua.unique("cut-"), sipua.unique("ft-")
    alice.send(invite_from(alice, "102", call_id=call_id, from_tag=from_tag))
    assert [m.status for m in alice.take()] == [100]
    sent_to_cloud = net.edge.last()
    net.edge.answer(sent_to_cloud, 180, to_tag="c180")
    assert alice.last().status == 180
    net.core.set_serving(True, net.now)  # the cut
    answer = alice.last()
    assert answer.status == 407, "a final answer the phone acts on at once"
    assert f'realm="{CLOUD_DOMAIN}"' in answer.header("proxy-authenticate")
    # the phone retries with the appliance's challenge: served locally, Bob rings
    uri = f"sip:102@{CLOUD_DOMAIN}"
    alice.send(alice.request("ACK", uri, call_id=call_id, cseq=1, to=answer.header("to"),
                             from_tag=from_tag))
    authorization = alice.answer(answer, "INVITE", uri)
    alice.send(invite_from(alice, "102", call_id=call_id, from_tag=from_tag, cseq=2,
                           headers=[("Proxy-Authorization", authorization)]))
    offered = bob.last()
    assert offered.method == "INVITE" and offered.header("call-id") == call_id
    assert net.core.stats["relay_cut_taken_over"] == 1


def test_an_emergency_call_in_flight_at_the_cut_goes_out_at_once(net):
    alice = net.phone("101", "10.0.0.11")
    register_through_cloud(net, alice)
    gateway = net.phone("gw", "127.0.0.1", port=5062)
    alice.send(invite_from(alice, "911"))
    net.edge.take()
    net.core.set_serving(True, net.now)
    offered = gateway.last()
    assert offered.method == "INVITE" and offered.uri.startswith("sip:911@")
    assert offered.header("priority") == "emergency"


def test_a_call_the_cloud_was_offering_at_the_cut_stops_ringing(net):
    phone = net.phone("101", "10.0.0.11")
    register_through_cloud(net, phone)
    registered = net.core.registrations.bindings_of("101")[0]
    token = FlowTokens(KEY).token(Flow("udp", "10.0.0.11", phone.port))
    net.edge.send(sipua.request(
        "INVITE", registered.contact, local=EDGE, transport="TLS", to="<sip:101@cloud.test>",
        from_="<sip:x@cloud.test>;tag=cf", call_id="ringing-at-cut", cseq=1,
        headers=[("Route", f"<sip:{token}@127.0.0.1:5060;lr;ob>")]))
    offered = phone.last()
    phone.respond(offered, 180, to_tag="ph1")
    net.core.set_serving(True, net.now)
    cancel = phone.last()
    assert cancel.method == "CANCEL" and cancel.header("call-id") == "ringing-at-cut"


def test_after_recovery_refreshes_flow_to_the_cloud_and_local_calls_stay_local(net):
    alice = net.phone("101", "10.0.0.11")
    bob = net.phone("102", "10.0.0.12")
    register_through_cloud(net, alice)
    register_through_cloud(net, bob)
    net.core.set_serving(True, net.now)
    call = net.invite(alice, "102")
    offered = bob.last()
    bob.respond(offered, 200, to_tag="bob1")
    alice.take()
    net.core.set_serving(False, net.now)  # the WAN is back (after the hold-down)
    # the call set up locally stays on the appliance: Bob's BYE goes to Alice, not the cloud
    bye = bob.request("BYE", call.caller.contact.strip("<>"), call_id=call.call_id, cseq=1,
                      to=f"<sip:101@127.0.0.1>;tag={call.from_tag}", from_tag="bob1",
                      headers=[("Route", offered.header("record-route"))])
    bob.send(bye)
    assert alice.last().method == "BYE"
    assert net.edge.take() == []
    # Alice's next refresh goes to the cloud again
    alice.send(in_path_register(alice))
    assert net.edge.last().method == "REGISTER"


def test_new_calls_go_local_under_the_brownout_policy_while_registrations_go_on(net):
    alice = net.phone("101", "10.0.0.11")
    bob = net.phone("102", "10.0.0.12")
    register_through_cloud(net, alice)
    register_through_cloud(net, bob)
    net.core.set_local_calls(True)
    net.invite(alice, "102")
    assert bob.last().method == "INVITE"
    alice.send(in_path_register(alice))
    assert net.edge.last().method == "REGISTER", "registrations still go to the cloud"


def test_a_backup_registrar_phone_is_still_answered_by_the_registrar(net):
    phone = net.phone("103", "10.0.0.13")
    answer = phone.register()  # to the appliance's own address: 503 while the cloud is up
    assert answer.status == 503
    assert net.edge.take() == []
    assert REALM  # the test site's realm differs; the registrar answered before any challenge


def test_a_call_up_through_the_cloud_at_the_cut_can_still_be_hung_up(net):
    alice = net.phone("101", "10.0.0.11")
    bob = net.phone("102", "10.0.0.12")
    register_through_cloud(net, alice)
    register_through_cloud(net, bob)
    bob_contact = net.core.registrations.bindings_of("102")[0].contact
    token_alice = FlowTokens(KEY).token(Flow("udp", "10.0.0.11", alice.port))
    token_bob = FlowTokens(KEY).token(Flow("udp", "10.0.0.12", bob.port))
    # the dialog's route set as Alice sees it: our entries around the cloud's
    routes = [f"<sip:{token_alice}@127.0.0.1:5060;lr>", "<sip:127.0.0.1:5060;transport=tls;lr;ob>",
              "<sip:10.65.0.10:5061;transport=tls;lr>", "<sip:127.0.0.1:5060;transport=tls;lr;ob>",
              f"<sip:{token_bob}@127.0.0.1:5060;lr>"]
    net.core.set_serving(True, net.now)  # the cut
    bye = alice.request("BYE", bob_contact, call_id="through-cloud", cseq=2,
                        to="<sip:102@cloud.test>;tag=bobtag", from_tag="alicetag",
                        headers=[("Route", r) for r in routes])
    alice.send(bye)
    delivered = bob.last()
    assert delivered.method == "BYE" and delivered.header("route") is None
    assert net.edge.take() == [], "not into the dead cloud"
    bob.respond(delivered, 200)
    assert alice.last().status == 200


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_a_phone_on_tcp_or_tls_is_relayed_and_reached_over_its_own_connection(transport):
    net = in_path_net(ports={"udp": 5060, "tcp": 5060, "tls": 5061})
    phone = net.phone("101", "10.0.0.21", transport=transport.upper())
    register_through_cloud(net, phone)
    binding = net.core.registrations.bindings_of("101")[0]
    assert binding.flow.transport == transport and binding.origin == "cloud"
    token = FlowTokens(KEY).token(Flow(transport, "10.0.0.21", phone.port))
    net.edge.send(sipua.request(
        "INVITE", binding.contact, local=EDGE, transport="TLS", to="<sip:101@cloud.test>",
        from_="<sip:x@cloud.test>;tag=cf", call_id="to-tcp-phone", cseq=1,
        headers=[("Route", f"<sip:{token}@127.0.0.1:5060;lr;ob>")]))
    offered = phone.last()
    assert offered.method == "INVITE"
    port = 5061 if transport == "tls" else 5060  # the phone's own listener
    assert f"@127.0.0.1:{port};transport={transport};lr>" in offered.all("record-route")[0]
    sent = [flow for flow, data in net.sent if data.startswith(b"INVITE")]
    assert sent[-1].transport == transport and sent[-1].host == "10.0.0.21"
