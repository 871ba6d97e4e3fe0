"""The proxy while the trunk gateway is not running (it cannot start, or stopped): outside and
emergency calls get a final answer at once (500 with Retry-After: never a 503 of the proxy's
own, which would make the phone shun the appliance for every request) instead of waiting for a
gateway that cannot answer, and are recorded as failed calls; an emergency call is noticed with
its verified caller (the SIP service alerts the cloud from it). In in-path mode serving calls
locally under the brownout policy they go to the reachable cloud instead. Fake network, fake
time."""

from __future__ import annotations

import pytest

from appliance.directory.model import parse_directory
from appliance.sip.relay import RelaySettings
from jbcbench.sipnet import SITE, make_core_net

from .test_sip_relay import EDGE, KEY, CloudEdge, register_through_cloud

DOWN = "SIP media agent failed to start: cannot listen on udp 127.0.0.1:5062"


def registered(net, user: str, host: str):
    phone = net.phone(user, host)
    assert phone.register().status == 200
    phone.take()
    return phone


def final(messages):
    return [m for m in messages if not m.is_request and m.status >= 200][-1]


@pytest.mark.parametrize("case", [
    ("95551234567", "5551234567", "external", True, "digest"),
    ("911", "911", "emergency", False, "registration (flow)")], ids=["external", "emergency"])
def test_outside_and_emergency_calls_get_500_with_retry_after_at_once(make_net, case):
    dialled, number, kind, authenticate, verified_by = case
    net = make_net()
    alice = registered(net, "101", "10.0.0.1")
    gateway = net.phone("gateway", "127.0.0.1", port=5062)
    net.core.set_gateway_down(DOWN, retry_after_s=4)
    net.invite(alice, dialled, authenticate=authenticate)
    answer = final(alice.take())
    assert answer.start == "SIP/2.0 500 Trunk Gateway Down"
    assert answer.header("retry-after") == "4"
    assert gateway.take() == [], "nothing is sent to a gateway that is not there"
    (notice,) = [n for n in net.notices if n.kind == "call-refused"]
    assert DOWN in notice.reason
    assert notice.details["emergency"] == (kind == "emergency")
    assert notice.details["retry_after_s"] == 4
    assert notice.details["extension"] == "101"
    assert notice.details["verified_by"] == verified_by
    (call,) = net.core.proxy.recently_ended
    assert notice.details["call"] == call.id
    assert (call.callee, call.emergency, call.record_result) == (
        number, kind == "emergency", "failed")
    assert call.result == "500 Trunk Gateway Down" and call.ended_by == "proxy"
    not_placed = [n for n in net.notices if n.kind == "emergency-call-not-placed"]
    if kind == "emergency":  # what the SIP service turns into the cloud alert
        [alert] = not_placed
        assert alert.details["call"] == call.id and alert.details["caller_verified"]
        assert DOWN in alert.details["why"]
    else:
        assert not_placed == []


def test_the_phone_keeps_using_the_proxy_after_the_refusal(make_net):
    """Registration refreshes and local calls right after the refusal are served (a phone
    that had got a 503 with Retry-After could hold them back for that long)."""
    net = make_net()
    alice = registered(net, "101", "10.0.0.1")
    bob = registered(net, "102", "10.0.0.2")
    net.core.set_gateway_down(DOWN, retry_after_s=30)
    net.invite(alice, "911", authenticate=False)
    assert final(alice.take()).status == 500
    assert alice.register().status == 200
    net.invite(alice, "102")
    assert [m.method for m in bob.take() if m.is_request] == ["INVITE"]


def test_local_calls_go_on_and_outside_calls_reach_the_gateway_once_it_runs(make_net):
    net = make_net()
    alice = registered(net, "101", "10.0.0.1")
    bob = registered(net, "102", "10.0.0.2")
    gateway = net.phone("gateway", "127.0.0.1", port=5062)
    net.core.set_gateway_down(DOWN)
    net.invite(alice, "102")
    assert [m.method for m in bob.take() if m.is_request] == ["INVITE"]
    net.core.set_gateway_down(None)
    net.invite(alice, "95551234567")
    assert [m.method for m in gateway.take() if m.is_request] == ["INVITE"]


def test_in_path_brownout_calls_go_to_the_reachable_cloud_when_the_gateway_is_down():
    net = make_core_net(serving=False, realm="cloud.test",
                        relay=RelaySettings(edges=(("tls", *EDGE),), outage_expires_s=30),
                        relay_key=KEY)
    net.edge = CloudEdge(net)
    net.core.relay.set_cloud(net.edge.flow)
    alice = net.phone("101", "10.0.0.11")
    register_through_cloud(net, alice)
    net.core.set_local_calls(True)  # brownout policy: new calls are served here
    net.core.set_gateway_down(DOWN)
    net.invite(alice, "911", authenticate=False)
    relayed = net.edge.last()
    assert relayed.method == "INVITE" and relayed.uri.startswith("sip:911@")
    (notice,) = [n for n in net.notices if n.kind == "call-to-cloud"]
    assert notice.details == {"number": "911", "emergency": True}


def test_the_on_site_extensions_are_told_of_an_emergency_call_not_connected(make_net):
    """The gateway, which rings or messages the directory's emergency notify_extensions, is
    not running: the proxy sends them a MESSAGE itself, and journals how each went."""
    site = {**SITE, "emergency": {"numbers": ["911"], "notify_extensions": ["101", "103"]}}
    net = make_net(directory=parse_directory(site, source="test"))
    alice = registered(net, "101", "10.0.0.1")
    carol = registered(net, "103", "10.0.0.3")
    net.core.set_gateway_down(DOWN)
    net.invite(alice, "911", authenticate=False)
    assert final(alice.take()).status == 500
    [message] = [m for m in carol.take() if m.is_request]
    assert message.method == "MESSAGE" and message.header("priority") == "emergency"
    text = message.body.decode()
    assert text.startswith("EMERGENCY CALL NOT CONNECTED: 101 dialled 911") and DOWN in text
    assert "1 Main St" in text  # where the caller is
    carol.respond(message, 200)
    (told,) = [n for n in net.notices if n.kind == "emergency-notify"]
    assert told.details["extensions"] == ["103"]  # not the caller's own extension
    (notified,) = [n for n in net.notices if n.kind == "emergency-notified"]
    assert notified.details["extension"] == "103"


def test_no_one_to_tell_is_journalled_too(make_net):
    net = make_net()  # the test site names no notify_extensions
    alice = registered(net, "101", "10.0.0.1")
    net.core.set_gateway_down(DOWN)
    net.invite(alice, "911", authenticate=False)
    assert final(alice.take()).status == 500
    (told,) = [n for n in net.notices if n.kind == "emergency-notify"]
    assert "no one" in told.reason and told.details["extensions"] == []
