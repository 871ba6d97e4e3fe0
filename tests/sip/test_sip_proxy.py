"""The stateful proxy through the whole core: forking, ring groups, dialogs, CANCEL, ACK,
trunk and emergency routing, loose routing, Max-Forwards. Fake network, fake time."""

from __future__ import annotations

import re

import pytest

from appliance.sip.flow import Flow
from jbcbench import sipnet, sipua

SDP = (b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0\r\na=sendrecv\r\n")
HOLD_SDP = SDP.replace(b"a=sendrecv", b"a=sendonly")


def registered(net, user: str, host: str, **kwargs):
    phone = net.phone(user, host, **kwargs)
    assert phone.register().status == 200
    phone.take()
    return phone


def first(messages, method):
    chosen = [m for m in messages if m.is_request and m.method == method]
    assert chosen, [m.start for m in messages]
    return chosen[0]


def only(messages, method=None):
    chosen = [m for m in messages if method is None or (m.is_request and m.method == method)]
    assert len(chosen) == 1, [m.start for m in messages]
    return chosen[0]


def statuses(messages) -> list[int]:
    return [m.status for m in messages if not m.is_request]


def ack_for(caller, call, reply) -> bytes:
    """The caller's ACK for a final response (hop-by-hop for non-2xx, with the INVITE's
    branch; a new transaction for 2xx, sent along the Record-Route set)."""
    if 200 <= reply.status < 300:
        routes = [r.strip() for v in reply.all("record-route") for r in v.split(",")]
        contact = re.search(r"<([^>]+)>", reply.header("contact")).group(1)
        return caller.request("ACK", contact, call_id=call.call_id, cseq=call.cseq,
                              to=reply.header("to"), from_tag=call.from_tag,
                              headers=[("Route", r) for r in reversed(routes)])
    return caller.request("ACK", call.uri, call_id=call.call_id, cseq=call.cseq,
                          to=reply.header("to"), from_tag=call.from_tag, branch=call.branch)


@pytest.fixture
def pair(net):
    alice = registered(net, "101", "10.0.0.1")
    bob = registered(net, "102", "10.0.0.2")
    return net, alice, bob


def test_call_between_two_handsets_end_to_end(pair):
    net, alice, bob = pair
    call = net.invite(alice, "102", body=SDP, headers=[("Content-Type", "application/sdp")])
    assert statuses(alice.take()) == [100]
    invite = only(bob.take(), "INVITE")
    assert invite.uri == f"sip:102@10.0.0.2:{bob.port}"
    assert invite.header("max-forwards") == "69"
    assert invite.all("via")[0].startswith("SIP/2.0/UDP 127.0.0.1:5060;rport;branch=z9hG4bK")
    assert invite.header("record-route") == "<sip:127.0.0.1:5060;lr>"
    assert invite.header("proxy-authorization") is None  # our credentials stay here
    assert invite.body == SDP
    rows = net.core.proxy.active_calls()
    assert [(c.caller, c.callee, c.state) for c in rows] == [("101", "102", "trying")]

    bob.respond(invite, 180, to_tag="bob1")
    assert statuses(alice.take()) == [180]
    assert rows[0].state == "ringing"
    bob.respond(invite, 200, to_tag="bob1", body=SDP)
    ok = only(alice.take())
    assert ok.status == 200 and ok.header("record-route") == "<sip:127.0.0.1:5060;lr>"
    assert ok.header("via").startswith("SIP/2.0/UDP 10.0.0.1")  # our Via is gone
    assert rows[0].state == "answered"

    alice.send(ack_for(alice, call, ok))  # ACK for 2xx: end to end, via our Route
    ack = only(bob.take(), "ACK")
    assert ack.uri == f"sip:102@10.0.0.2:{bob.port}" and ack.header("route") is None

    bye = bob.request("BYE", f"sip:101@10.0.0.1:{alice.port}", call_id=call.call_id, cseq=1,
                      to=f"<sip:101@127.0.0.1>;tag={call.from_tag}", from_tag="bob1",
                      headers=[("Route", "<sip:127.0.0.1:5060;lr>")])
    bob.send(bye)
    forwarded = only(alice.take(), "BYE")
    alice.respond(forwarded, 200)
    assert statuses(bob.take()) == [200]
    assert not net.core.proxy.active_calls()
    finished = net.core.proxy.recently_ended[-1]
    assert (finished.state, finished.ended_by, finished.result) == ("ended", "callee",
                                                                      "completed")


def test_parallel_forking_first_2xx_wins_and_the_rest_are_cancelled(net):
    desk = registered(net, "101", "10.0.0.1")
    soft = registered(net, "alice-soft", "10.0.0.3")
    bob = registered(net, "102", "10.0.0.2")
    net.invite(bob, "101")
    invites = {p.user: only(p.take(), "INVITE") for p in (desk, soft)}
    assert invites["101"].all("via")[0] != invites["alice-soft"].all("via")[0]
    desk.respond(invites["101"], 180, to_tag="d")
    soft.respond(invites["alice-soft"], 180, to_tag="s")
    assert statuses(bob.take()) == [100, 180, 180]
    soft.respond(invites["alice-soft"], 200, to_tag="s")
    assert statuses(bob.take()) == [200]
    cancel = only(desk.take(), "CANCEL")
    assert cancel.header("cseq") == "1 CANCEL".replace("1", invites["101"].header(
        "cseq").split()[0])
    assert cancel.all("via")[0] == invites["101"].all("via")[0]
    desk.respond(cancel, 200)
    desk.respond(invites["101"], 487, to_tag="d")
    ack = only(desk.take(), "ACK")  # hop-by-hop ACK for the 487, from the proxy
    assert ack.to_tag == "d"
    assert statuses(bob.take()) == []  # the 487 is not relayed: the call was answered


def test_busy_callee_gives_busy_and_the_ack_is_hop_by_hop(pair):
    net, alice, bob = pair
    call = net.invite(alice, "102")
    invite = only(bob.take(), "INVITE")
    bob.respond(invite, 486, to_tag="b")
    assert only(bob.take(), "ACK").to_tag == "b"
    busy = [m for m in alice.take() if not m.is_request and m.status >= 300]
    assert [m.status for m in busy] == [486]
    alice.send(ack_for(alice, call, busy[0]))
    assert bob.take() == []  # absorbed by the proxy's server transaction
    assert net.core.proxy.recently_ended[-1].result.startswith("486")


def test_cancel_before_answer(pair):
    net, alice, bob = pair
    call = net.invite(alice, "102")
    invite = only(bob.take(), "INVITE")
    bob.respond(invite, 180, to_tag="b")
    alice.take()
    cancel = alice.request("CANCEL", call.uri, call_id=call.call_id, cseq=call.cseq,
                           to=f"<{call.uri}>", from_tag=call.from_tag, branch=call.branch)
    alice.send(cancel)
    assert statuses(alice.take()) == [200]
    downstream = only(bob.take(), "CANCEL")
    bob.respond(downstream, 200)
    bob.respond(invite, 487, to_tag="b")
    assert statuses(alice.take()) == [487]
    assert net.core.proxy.recently_ended[-1].ended_by == "caller"


def test_cancel_for_an_unknown_transaction_is_481(pair):
    _, alice, _ = pair
    alice.send(alice.request("CANCEL", "sip:102@127.0.0.1", call_id="nope", cseq=1,
                             to="<sip:102@127.0.0.1>"))
    assert statuses(alice.take()) == [481]


@pytest.mark.parametrize(("target", "status"), [("199", 404), ("103", 480), ("602", 480)])
def test_unknown_and_unregistered_targets(net, target, status):
    alice = registered(net, "101", "10.0.0.1")  # nobody else is registered
    net.invite(alice, target)
    assert statuses(alice.take())[-1] == status


def test_unanswered_call_is_cancelled_after_the_ring_timeout_and_answered_408(make_net):
    net = make_net(ring_timeout_s=30)
    alice = registered(net, "101", "10.0.0.1")
    bob = registered(net, "102", "10.0.0.2")
    net.invite(alice, "102")
    invite = only(bob.take(), "INVITE")
    bob.respond(invite, 180, to_tag="b")
    net.advance(29)
    assert statuses(alice.take()) == [100, 180]
    assert bob.take() == []
    net.advance(1.1)
    cancel = only(bob.take(), "CANCEL")
    bob.respond(cancel, 200)
    bob.respond(invite, 487, to_tag="b")
    assert statuses(alice.take())[-1] == 408


def test_simultaneous_ring_group_rings_members_then_the_fallback(net):
    alice = registered(net, "101", "10.0.0.1")
    bob = registered(net, "102", "10.0.0.2")
    carol = registered(net, "103", "10.0.0.3")
    dave = registered(net, "104", "10.0.0.4")
    net.invite(alice, "600")
    invites = {p.user: only(p.take(), "INVITE") for p in (bob, carol)}
    assert dave.take() == []
    for phone in (bob, carol):
        phone.respond(invites[phone.user], 180, to_tag=phone.user)
    net.advance(20.5)  # the CANCELs were sent at 20 s and retransmitted at 20.5 s
    for phone in (bob, carol):
        cancel = first(phone.take(), "CANCEL")
        phone.respond(cancel, 200)
        phone.respond(invites[phone.user], 487, to_tag=phone.user)
    fallback = only(dave.take(), "INVITE")
    dave.respond(fallback, 200, to_tag="d")
    assert statuses(alice.take())[-1] == 200
    assert net.core.proxy.active_calls()[0].state == "answered"


def test_sequential_ring_group_hunts_members_in_order(net):
    alice = registered(net, "101", "10.0.0.1")
    bob = registered(net, "102", "10.0.0.2")
    carol = registered(net, "103", "10.0.0.3")
    dave = registered(net, "104", "10.0.0.4")
    net.invite(alice, "601")
    first = only(bob.take(), "INVITE")
    assert carol.take() == [] and dave.take() == []
    bob.respond(first, 486, to_tag="b")  # busy: next member at once
    bob.take()
    second = only(carol.take(), "INVITE")
    carol.respond(second, 180, to_tag="c")
    net.advance(10.2)  # member timeout
    cancel = only(carol.take(), "CANCEL")
    carol.respond(cancel, 200)
    carol.respond(second, 487, to_tag="c")
    third = only(dave.take(), "INVITE")  # the fallback
    dave.respond(third, 486, to_tag="d")
    assert statuses(alice.take())[-1] == 486


def test_ring_group_with_nobody_registered_goes_straight_to_the_fallback(net):
    alice = registered(net, "101", "10.0.0.1")
    dave = registered(net, "104", "10.0.0.4")
    net.invite(alice, "600")
    assert only(dave.take(), "INVITE")


def test_external_number_goes_to_the_gateway_with_the_prefix_stripped_and_caller_asserted(
        pair):
    net, alice, _ = pair
    gateway = net.phone("gateway", "127.0.0.1", port=5062)
    net.invite(alice, "95551234567")
    invite = only(gateway.take(), "INVITE")
    assert invite.uri == "sip:5551234567@127.0.0.1:5062"
    assert invite.header("p-asserted-identity") == "<sip:101@jbc>"
    assert invite.header("priority") is None and invite.header("resource-priority") is None


@pytest.mark.parametrize(("dialled", "sent"), [("911", "911"), ("9911", "911"),
                                               ("112", "112")])
def test_emergency_calls_go_to_the_gateway_marked_even_without_credentials(pair, dialled,
                                                                           sent):
    net, alice, _ = pair
    gateway = net.phone("gateway", "127.0.0.1", port=5062)
    net.invite(alice, dialled, authenticate=False)  # no 407 first: never delay 911
    invite = only(gateway.take(), "INVITE")
    assert invite.uri == f"sip:{sent}@127.0.0.1:5062"
    assert invite.header("priority") == "emergency"
    assert invite.header("resource-priority") == "esnet.0"
    # not challenged, yet known: it comes over the flow Alice registered from
    assert invite.header("p-asserted-identity") == "<sip:101@jbc>"
    call = net.core.proxy.active_calls()[0]
    assert call.emergency and call.caller == "101"
    (notice,) = [n for n in net.notices if n.kind == "emergency-call"]
    assert notice.details["verified_by"] == "registration (flow)"


def emergency_caller(net, phone, **kwargs) -> tuple[str, str | None]:
    """(the caller the proxy recorded, the P-Asserted-Identity the gateway got)."""
    gateway = net.phone("gateway", "127.0.0.1", port=5062)
    net.invite(phone, "911", authenticate=False, **kwargs)
    invite = only(gateway.take(), "INVITE")
    return net.core.proxy.active_calls()[-1].caller, invite.header("p-asserted-identity")


def test_an_unregistered_device_claiming_an_extension_is_placed_but_unverified(net):
    registered(net, "101", "10.0.0.1")
    stranger = net.phone("555", "10.0.0.99")
    assert emergency_caller(net, stranger) == ("555 (unverified)", None)


def test_an_emergency_call_is_the_registration_it_comes_from_not_what_it_claims(net):
    registered(net, "101", "10.0.0.1")
    bob = registered(net, "102", "10.0.0.2")
    bob.user = "101"  # its From now claims Alice's extension
    assert emergency_caller(net, bob) == ("102", "<sip:102@jbc>")


def test_a_registered_contact_calling_from_its_host_on_another_port_is_verified(net):
    """Two extensions share the host (no guessing by source), but the INVITE's Contact is
    one of them, sent from that binding's host: a phone that places calls from a second
    socket."""
    alice = registered(net, "101", "10.0.0.1")
    registered(net, "102", "10.0.0.1")
    gateway = net.phone("gateway", "127.0.0.1", port=5062)
    second_socket = net.phone("101", "10.0.0.1")
    uri = "sip:911@127.0.0.1"
    second_socket.send(sipua.request(
        "INVITE", uri, local=second_socket.local, to=f"<{uri}>",
        from_="<sip:101@127.0.0.1>;tag=x", call_id="c-contact", cseq=1,
        contact=alice.contact))
    assert only(gateway.take(), "INVITE").header("p-asserted-identity") == "<sip:101@jbc>"
    (notice,) = [n for n in net.notices if n.kind == "emergency-call"]
    assert notice.details["verified_by"] == "registration (contact)"
    forged = net.phone("102", "10.0.0.7")  # the same Contact from another host proves nothing
    forged.send(sipua.request(
        "INVITE", uri, local=forged.local, to=f"<{uri}>", from_="<sip:102@127.0.0.1>;tag=y",
        call_id="c-forged", cseq=1, contact=alice.contact))
    assert only(gateway.take(), "INVITE").header("p-asserted-identity") is None


def test_the_only_extension_registered_from_a_host_is_the_caller_from_that_host(net):
    alice = registered(net, "101", "10.0.0.1")
    new_port = net.phone("anyone", "10.0.0.1", port=alice.port + 7)
    assert emergency_caller(net, new_port) == ("101", "<sip:101@jbc>")


def test_a_host_shared_by_several_extensions_does_not_guess(net):
    registered(net, "101", "10.0.0.1")
    registered(net, "102", "10.0.0.1")
    third_port = net.phone("103", "10.0.0.1")
    assert emergency_caller(net, third_port) == ("103 (unverified)", None)


def test_an_expired_registration_verifies_nothing(net):
    alice = registered(net, "101", "10.0.0.1")
    net.advance(400)  # registered for 300 s
    assert emergency_caller(net, alice) == ("101 (unverified)", None)


def test_emergency_call_with_credentials_asserts_the_caller(pair):
    net, alice, _bob = pair
    gateway = net.phone("gateway", "127.0.0.1", port=5062)
    uri = "sip:102@127.0.0.1"
    alice.send(alice.request("OPTIONS", uri, call_id="nonce", cseq=1, to=f"<{uri}>"))
    challenge = alice.last()  # a handset keeps the nonce of its last challenge
    authorization = alice.answer(challenge, "INVITE", "sip:911@127.0.0.1")
    net.invite(alice, "911", authenticate=False,
               headers=[("Proxy-Authorization", authorization)])
    invite = only(gateway.take(), "INVITE")
    assert invite.header("p-asserted-identity") == "<sip:101@jbc>"
    assert invite.header("proxy-authorization") is None
    assert net.core.proxy.active_calls()[0].caller == "101"


def test_emergency_without_auth_can_be_switched_off(make_net):
    net = make_net(emergency_without_auth=False)
    alice = registered(net, "101", "10.0.0.1")
    net.invite(alice, "911", authenticate=False)
    assert statuses(alice.take()) == [407]


def test_calls_from_the_gateway_need_no_digest_and_reach_ring_groups(net):
    bob = registered(net, "102", "10.0.0.2")
    carol = registered(net, "103", "10.0.0.3")
    gateway = net.phone("trunk", "127.0.0.1", port=5062)
    net.invite(gateway, "600", authenticate=False)
    assert statuses(gateway.take()) == [100]
    assert only(bob.take(), "INVITE") and only(carol.take(), "INVITE")
    assert net.core.proxy.active_calls()[0].caller.startswith("trunk:")


def test_the_gateway_cannot_use_the_proxy_to_call_out_again(net):
    gateway = net.phone("trunk", "127.0.0.1", port=5062)
    net.invite(gateway, "5551234567", authenticate=False)
    assert statuses(gateway.take()) == [403]


def test_without_a_gateway_external_calls_get_500_never_a_503_the_phone_would_shun(make_net):
    net = make_net(gateway_uri="")
    alice = registered(net, "101", "10.0.0.1")
    net.invite(alice, "5551234567")
    assert statuses(alice.take())[-1] == 500
    assert net.notices[-1].kind == "call-refused"


def test_the_gateways_no_trunk_503_reaches_the_handset_as_500_keeping_retry_after(pair):
    net, alice, _ = pair
    gateway = net.phone("gateway", "127.0.0.1", port=5062)
    net.invite(alice, "5551234567")
    invite = only(gateway.take(), "INVITE")
    gateway.respond(invite, 503, headers=[("Retry-After", "30")])
    final = [m for m in alice.take() if not m.is_request and m.status >= 200][-1]
    assert final.status == 500  # 16.7 step 6: a 503 would read "this proxy is down"
    assert final.header("retry-after") == "30"  # but the caller still learns when to retry


def test_an_unanswered_trunk_call_is_recorded_as_no_answer(pair):
    net, alice, _ = pair
    gateway = net.phone("gateway", "127.0.0.1", port=5062)
    net.invite(alice, "5551234567")
    gateway.respond(only(gateway.take(), "INVITE"), 480)
    (call,) = net.core.proxy.recently_ended
    assert call.record_result == "no-answer"


def test_a_call_from_the_gateway_with_its_own_record_gets_no_second_record(net):
    bob = registered(net, "102", "10.0.0.2")
    gateway = net.phone("trunk", "127.0.0.1", port=5062)
    net.invite(gateway, "102", authenticate=False,
               headers=[("X-JBC-Call-Record", "gw-record-1")])
    assert only(bob.take(), "INVITE")
    (call,) = net.core.proxy.active_calls()
    assert call.id == "gw-record-1" and call.owns_record is False
    handset = net.phone("101", "10.0.0.1")
    assert handset.register().status == 200
    net.invite(handset, "102")
    assert [c.owns_record for c in net.core.proxy.active_calls()] == [False, True]


def test_gateway_unreachable_reads_500_not_503(pair):
    net, alice, _ = pair
    call = net.invite(alice, "5551234567")
    branch_key = next(iter(net.core.layer.clients))
    net.core.transport_error(branch_key, net.now)
    net.pump()
    assert statuses(alice.take())[-1] == 500
    assert call.call_id in net.core.proxy.calls


def test_max_forwards_is_decremented_and_zero_is_483(pair):
    net, alice, bob = pair
    net.invite(alice, "102", headers=())
    assert only(bob.take(), "INVITE").header("max-forwards") == "69"
    alice.take()
    call_uri = "sip:102@127.0.0.1"
    alice.send(alice.request("OPTIONS", call_uri, call_id="mf", cseq=1, to=f"<{call_uri}>",
                             max_forwards=0))
    assert statuses(alice.take()) == [483]


def test_options_to_a_user_is_routed_after_authentication(pair):
    _net, alice, bob = pair
    uri = "sip:102@127.0.0.1"
    alice.send(alice.request("OPTIONS", uri, call_id="opt", cseq=1, to=f"<{uri}>"))
    challenge = alice.last()
    assert challenge.status == 407
    alice.send(alice.request("OPTIONS", uri, call_id="opt", cseq=2, to=f"<{uri}>", headers=[
        ("Proxy-Authorization", alice.answer(challenge, "OPTIONS", uri))]))
    options = only(bob.take(), "OPTIONS")
    assert options.header("record-route") is None  # not dialog-creating
    bob.respond(options, 200, to_tag="o")
    assert statuses(alice.take()) == [200]


def _answered_call(net, alice, bob):
    call = net.invite(alice, "102", body=SDP)
    invite = only(bob.take(), "INVITE")
    bob.respond(invite, 200, to_tag="b", body=SDP)
    ok = next(m for m in alice.take() if not m.is_request and m.status == 200)
    alice.send(ack_for(alice, call, ok))
    bob.take()
    return call


def test_hold_by_reinvite_is_relayed_and_shown(pair):
    net, alice, bob = pair
    call = _answered_call(net, alice, bob)
    reinvite = alice.request("INVITE", f"sip:102@10.0.0.2:{bob.port}", call_id=call.call_id,
                             cseq=3, to="<sip:102@127.0.0.1>;tag=b", from_tag=call.from_tag,
                             headers=[("Route", "<sip:127.0.0.1:5060;lr>")], body=HOLD_SDP)
    alice.send(reinvite)
    relayed = only(bob.take(), "INVITE")
    assert relayed.body == HOLD_SDP and relayed.header("route") is None
    assert net.core.proxy.active_calls()[0].state == "on hold"
    bob.respond(relayed, 200, body=SDP.replace(b"sendrecv", b"recvonly"))
    assert statuses(alice.take())[-1] == 200


def test_in_dialog_request_for_an_unknown_dialog_is_481(pair):
    _, alice, bob = pair
    alice.send(alice.request("BYE", f"sip:102@10.0.0.2:{bob.port}", call_id="never", cseq=2,
                             to="<sip:102@127.0.0.1>;tag=zz",
                             headers=[("Route", "<sip:127.0.0.1:5060;lr>")]))
    assert statuses(alice.take()) == [481]
    assert bob.take() == []


def test_loose_routing_sends_to_the_next_route_and_keeps_the_request_uri(pair):
    net, alice, bob = pair
    call = _answered_call(net, alice, bob)
    relay = net.phone("relay", "10.0.0.77", port=5099)
    alice.send(alice.request(
        "INFO", f"sip:102@10.0.0.2:{bob.port}", call_id=call.call_id, cseq=4,
        to="<sip:102@127.0.0.1>;tag=b", from_tag=call.from_tag,
        headers=[("Route", "<sip:127.0.0.1:5060;lr>"), ("Route", "<sip:10.0.0.77:5099;lr>")]))
    info = only(relay.take(), "INFO")
    assert info.uri == f"sip:102@10.0.0.2:{bob.port}"
    assert info.header("route") == "<sip:10.0.0.77:5099;lr>"


def test_a_strict_router_request_uri_is_repaired(pair):
    net, alice, bob = pair
    call = _answered_call(net, alice, bob)
    alice.send(alice.request(
        "INFO", "sip:127.0.0.1:5060;lr", call_id=call.call_id, cseq=5,
        to="<sip:102@127.0.0.1>;tag=b", from_tag=call.from_tag,
        headers=[("Route", f"<sip:102@10.0.0.2:{bob.port}>")]))
    info = only(bob.take(), "INFO")
    assert info.uri == f"sip:102@10.0.0.2:{bob.port}" and info.header("route") is None


def test_callee_on_tcp_and_caller_on_udp_get_one_record_route_each(net):
    alice = registered(net, "101", "10.0.0.1")
    bob = registered(net, "102", "10.0.0.2", transport="TCP")
    net.invite(alice, "102")
    invite = only(bob.take(), "INVITE")
    assert invite.all("record-route") == ["<sip:127.0.0.1:5060;transport=tcp;lr>",
                                          "<sip:127.0.0.1:5060;lr>"]
    assert invite.all("via")[0].startswith("SIP/2.0/TCP ")


def test_a_late_2xx_after_the_caller_got_a_final_answer_is_acked_and_ended(make_net):
    net = make_net(ring_timeout_s=10)
    alice = registered(net, "101", "10.0.0.1")
    bob = registered(net, "102", "10.0.0.2")
    net.invite(alice, "102")
    invite = only(bob.take(), "INVITE")
    net.advance(11)  # no provisional: the branch is abandoned, the caller gets 408
    assert statuses(alice.take())[-1] == 408
    bob.take()  # INVITE retransmissions (bob never even said 180)
    bob.respond(invite, 200, to_tag="late")
    sent = [m for m in bob.take() if m.is_request and m.method != "INVITE"]
    assert [m.method for m in sent] == ["ACK", "BYE"]
    assert all(m.to_tag == "late" for m in sent)


def test_retransmitted_invite_is_absorbed_not_forked_again(pair):
    net, alice, bob = pair
    call = net.invite(alice, "102")
    assert only(bob.take(), "INVITE")
    alice.take()
    alice.send(call.invite)
    assert bob.take() == []
    assert statuses(alice.take()) == [100]


def test_calls_table_limit(make_net):
    net = make_net(max_calls=1)
    alice = registered(net, "101", "10.0.0.1")
    registered(net, "102", "10.0.0.2")
    net.invite(alice, "102")
    net.invite(alice, "102")
    assert statuses(alice.take())[-1] == 503


def test_responses_nobody_asked_for_are_dropped_and_counted(net):
    net.core.receive_datagram(sipua.response_for(sipua.request(
        "INVITE", "sip:x@y", local=("10.0.0.9", 5060), to="<sip:x@y>", from_="<sip:a@b>;tag=1",
        call_id="stray", cseq=1), 200, to_tag="x"), Flow("udp", "10.0.0.9", 5060), net.now)
    assert net.core.take_transmits() == [] and net.core.stats["responses_unmatched"] == 1


def test_calls_in_progress_survive_the_end_of_serving(pair):
    net, alice, bob = pair
    call = _answered_call(net, alice, bob)
    for serving in (True, False):
        net.core.set_serving(serving)
        assert [c.call_id for c in net.core.proxy.active_calls()] == [call.call_id]
    alice.send(alice.request("BYE", f"sip:102@10.0.0.2:{bob.port}", call_id=call.call_id,
                             cseq=9, to="<sip:102@127.0.0.1>;tag=b", from_tag=call.from_tag,
                             headers=[("Route", "<sip:127.0.0.1:5060;lr>")]))
    bye = only(bob.take(), "BYE")
    bob.respond(bye, 200)
    assert statuses(alice.take()) == [200]


def test_requests_in_an_early_dialog_are_routed(pair):
    net, alice, bob = pair
    call = net.invite(alice, "102")
    invite = only(bob.take(), "INVITE")
    bob.respond(invite, 183, to_tag="early", headers=[("Require", "100rel"), ("RSeq", "1")])
    alice.take()
    alice.send(alice.request("PRACK", f"sip:102@10.0.0.2:{bob.port}", call_id=call.call_id,
                             cseq=3, to="<sip:102@127.0.0.1>;tag=early",
                             from_tag=call.from_tag, headers=[
                                 ("Route", "<sip:127.0.0.1:5060;lr>"), ("RAck", "1 2 INVITE")]))
    prack = only(bob.take(), "PRACK")
    bob.respond(prack, 200)
    assert statuses(alice.take()) == [200]


class SipsPhone(sipnet.Phone):
    """A handset on TLS that registers a sips: Contact (as pjsua does by default)."""

    @property
    def contact(self) -> str:
        return f"<sips:{self.user}@{self.host}:{self.port}>{self.contact_params}"


@pytest.mark.parametrize("caller_transport", ["UDP", "TLS"])
def test_a_phone_that_registered_a_sips_contact_is_reached_over_tls_by_a_sip_caller(
        make_net, caller_transport):
    # A sips: Request-URI would make the phone refuse the call (480, Warning 381 "SIPS
    # Required": the caller's Contact is not sips); the caller did not ask for sips, so the
    # phone gets sip:...;transport=tls, over its own TLS flow.
    net = make_net(ports={"udp": 5060, "tcp": 5060, "tls": 5061})
    alice = registered(net, "101", "10.0.0.1", transport=caller_transport)
    bob = SipsPhone(net, "102", host="10.0.0.2", transport="TLS")
    assert bob.register().status == 200
    bob.take()
    assert str(net.core.registrations.bindings_of("102")[0].uri).startswith("sips:")
    net.invite(alice, "102", body=SDP, headers=[("Content-Type", "application/sdp")])
    invite = only(bob.take(), "INVITE")
    assert invite.uri == f"sip:102@10.0.0.2:{bob.port};transport=tls"
    assert "transport=tls" in invite.all("record-route")[0]  # what tells the gateway: SRTP
    sent = [flow for flow, data in net.sent if data.startswith(b"INVITE")]
    assert (sent[-1].transport, sent[-1].host, sent[-1].port) == ("tls", "10.0.0.2", bob.port)
    # bob answers with his sips: Contact: a caller on UDP could never send its ACK and BYE
    # to it, so it gets the sip:...;transport=tls form (which comes back through us)
    bob.respond(invite, 200, to_tag="bob1", body=SDP)
    ok = next(m for m in alice.take() if m.status == 200)
    contact = ok.header("contact")
    if caller_transport == "UDP":
        assert contact == f"<sip:102@10.0.0.2:{bob.port};transport=tls>"
    else:
        assert contact == f"<sips:102@10.0.0.2:{bob.port}>"


def test_a_caller_that_asks_for_sips_keeps_it_to_a_sips_phone(make_net):
    net = make_net(ports={"udp": 5060, "tcp": 5060, "tls": 5061})
    alice = SipsPhone(net, "101", host="10.0.0.1", transport="TLS")
    assert alice.register().status == 200
    bob = SipsPhone(net, "102", host="10.0.0.2", transport="TLS")
    assert bob.register().status == 200
    alice.take(), bob.take()
    net.invite(alice, "sips:102@127.0.0.1")
    invite = only(bob.take(), "INVITE")
    assert invite.uri == f"sips:102@10.0.0.2:{bob.port}"


def not_placed(net) -> list:
    return [n for n in net.notices if n.kind == "emergency-call-not-placed"]


def test_an_emergency_call_without_a_gateway_still_tells_the_cloud(make_net):
    net = make_net(gateway_uri="")
    alice = registered(net, "101", "10.0.0.1")
    net.invite(alice, "911", authenticate=False)
    assert statuses(alice.take())[-1] == 500
    (notice,) = not_placed(net)
    assert notice.details == {"call": notice.details["call"], "extension": "101",
                              "caller_verified": True, "number": "911",
                              "location": notice.details["location"],
                              "why": "no trunk gateway configured (sip.gateway_uri)"}
    assert notice.reason.startswith("EMERGENCY CALL NOT PLACED: ext 101 dialled 911")


def test_an_emergency_call_the_gateway_never_answers_tells_the_cloud_once(pair):
    net, alice, _ = pair
    net.invite(alice, "911", authenticate=False)  # nobody listens at the gateway's address
    assert not_placed(net) == []
    net.advance(200.0)  # the INVITE's transaction times out
    assert statuses(alice.take())[-1] >= 400
    (notice,) = not_placed(net)
    assert notice.details["extension"] == "101" and notice.details["caller_verified"]
    assert notice.details["call"] == net.core.proxy.recently_ended[-1].id


def test_an_unverified_emergency_caller_is_named_as_claimed_and_unverified(make_net):
    net = make_net(gateway_uri="")
    stranger = net.phone("555", "10.0.0.99")
    net.invite(stranger, "911", authenticate=False)
    (notice,) = not_placed(net)
    assert notice.details["extension"] == "555" and not notice.details["caller_verified"]
    assert "ext 555 (unverified) dialled 911" in notice.reason


@pytest.mark.parametrize("gateway_answer", [100, 503])
def test_an_emergency_call_the_gateway_heard_is_its_to_alert(pair, gateway_answer):
    # The gateway raises the alert itself for every emergency call it gets, placed or not.
    net, alice, _ = pair
    gateway = net.phone("gateway", "127.0.0.1", port=5062)
    net.invite(alice, "911", authenticate=False)
    invite = only(gateway.take(), "INVITE")
    gateway.respond(invite, gateway_answer)
    if gateway_answer == 100:
        gateway.respond(invite, 503)
    net.advance(1.0)
    assert statuses(alice.take())[-1] == 500
    assert not_placed(net) == []


def test_an_emergency_call_is_placed_even_at_the_call_limit(make_net):
    net = make_net(max_calls=1)
    alice = registered(net, "101", "10.0.0.1")
    bob = registered(net, "102", "10.0.0.2")
    carol = registered(net, "103", "10.0.0.3")
    gateway = net.phone("gateway", "127.0.0.1", port=5062)
    net.invite(alice, "102")
    only(bob.take(), "INVITE")
    net.invite(carol, "104")
    assert statuses(carol.take())[-1] == 503  # the limit holds for ordinary calls
    net.invite(carol, "911", authenticate=False)
    assert only(gateway.take(), "INVITE").uri == "sip:911@127.0.0.1:5062"
