"""RFC 3261 section 17 transactions on fake time: retransmissions, absorption, timers A-M."""

from __future__ import annotations

import itertools

import pytest

from appliance.sip.errors import LocalProtocolError
from appliance.sip.flow import Flow
from appliance.sip.message import Request
from appliance.sip.parser import parse_datagram
from appliance.sip.transaction import State, TimerSettings, TransactionLayer
from jbcbench import sipua

UDP = Flow("udp", "10.0.0.5", 5070)
TCP = Flow("tcp", "10.0.0.5", 40000, 7)
T1, T2, T4 = 0.5, 4.0, 5.0


def request(method: str = "INVITE", branch: str = "z9hG4bKabc") -> Request:
    data = sipua.request(method, "sip:102@127.0.0.1", local=("10.0.0.5", 5070),
                         to="<sip:102@127.0.0.1>", from_="<sip:101@127.0.0.1>;tag=f",
                         call_id="tx-1", cseq=1, branch=branch)
    return parse_datagram(data)


def response_to(req: Request, status: int):
    return req.response(status, to_tag="callee")


class User:
    """Records what a client transaction reports."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_response(self, tx, response, now):
        self.events.append(("response", response.status, now))

    def on_timeout(self, tx, now):
        self.events.append(("timeout", now))

    def on_transport_error(self, tx, now):
        self.events.append(("transport-error", now))


def run_until(layer: TransactionLayer, end: float) -> list[float]:
    """Fire timers up to ``end``; return when something was sent."""
    sent_at = []
    while True:
        deadline = layer.next_deadline()
        if deadline is None or deadline > end:
            return sent_at
        layer.handle_timers(deadline)
        sent_at.extend([deadline] * len(layer.take_transmits()))


# -- client INVITE ----------------------------------------------------------------------------

def test_client_invite_over_udp_retransmits_on_timer_a_doubling_until_timer_b():
    layer, user = TransactionLayer(), User()
    tx = layer.new_client(request(), UDP, reliable=False, user=user, now=0.0)
    assert len(layer.take_transmits()) == 1
    layer.take_transmits()
    sent = run_until(layer, 100.0)
    assert sent == pytest.approx([0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
    assert user.events == [("timeout", 32.0)]
    assert tx.state is State.TERMINATED and not layer.clients


def test_client_invite_over_tcp_never_retransmits_and_times_out_after_64_t1():
    layer, user = TransactionLayer(), User()
    layer.new_client(request(), TCP, reliable=True, user=user, now=0.0)
    layer.take_transmits()
    assert run_until(layer, 100.0) == []
    assert user.events == [("timeout", 32.0)]


def test_provisional_stops_retransmission_and_timer_b():
    layer, user = TransactionLayer(), User()
    req = request()
    tx = layer.new_client(req, UDP, reliable=False, user=user, now=0.0)
    layer.take_transmits()
    tx.receive_response(response_to(req, 180), 0.2)
    assert tx.state is State.PROCEEDING
    assert run_until(layer, 300.0) == []
    assert user.events == [("response", 180, 0.2)]


def test_client_invite_non_2xx_is_acked_by_the_transaction_and_copies_absorbed_until_timer_d():
    layer, user = TransactionLayer(), User()
    req = request()
    tx = layer.new_client(req, UDP, reliable=False, user=user, now=0.0)
    layer.take_transmits()
    tx.receive_response(response_to(req, 486), 1.0)
    ack = sipua.parse_message(layer.take_transmits()[-1].data)
    assert ack.method == "ACK" and ack.header("cseq") == "1 ACK"
    assert ack.to_tag == "callee" and ack.header("via").endswith("branch=z9hG4bKabc")
    tx.receive_response(response_to(req, 486), 2.0)  # our ACK was lost: ACK again
    assert sipua.parse_message(layer.take_transmits()[-1].data).method == "ACK"
    assert user.events == [("response", 486, 1.0)]
    assert tx.timer("D") == pytest.approx(33.0)
    run_until(layer, 33.0)
    assert tx.state is State.TERMINATED


def test_client_invite_2xx_goes_to_accepted_where_copies_pass_up_until_timer_m():
    layer, user = TransactionLayer(), User()
    req = request()
    tx = layer.new_client(req, UDP, reliable=False, user=user, now=0.0)
    tx.receive_response(response_to(req, 200), 1.0)
    assert tx.state is State.ACCEPTED
    tx.receive_response(response_to(req, 200), 2.0)
    assert user.events == [("response", 200, 1.0), ("response", 200, 2.0)]
    assert tx.timer("M") == pytest.approx(1.0 + 64 * T1)
    run_until(layer, 40.0)
    assert tx.state is State.TERMINATED


def test_transport_error_terminates_and_tells_the_user():
    layer, user = TransactionLayer(), User()
    tx = layer.new_client(request(), TCP, reliable=True, user=user, now=0.0)
    layer.client_transport_error(tx.key, 0.1)
    assert user.events == [("transport-error", 0.1)] and not layer.clients


# -- client non-INVITE ------------------------------------------------------------------------

def test_client_non_invite_timer_e_doubles_to_t2_and_timer_f_gives_up():
    layer, user = TransactionLayer(), User()
    layer.new_client(request("OPTIONS"), UDP, reliable=False, user=user, now=0.0)
    layer.take_transmits()
    sent = run_until(layer, 100.0)
    assert sent[:5] == pytest.approx([0.5, 1.5, 3.5, 7.5, 11.5])
    assert all(b - a == pytest.approx(T2) for a, b in itertools.pairwise(sent[3:]))
    assert user.events == [("timeout", 32.0)]


def test_client_non_invite_in_proceeding_retransmits_every_t2():
    layer, user = TransactionLayer(), User()
    req = request("BYE")
    tx = layer.new_client(req, UDP, reliable=False, user=user, now=0.0)
    layer.take_transmits()
    tx.receive_response(response_to(req, 100), 0.1)
    sent = run_until(layer, 20.0)
    assert sent[0] == pytest.approx(0.5)
    assert sent[1] - sent[0] == pytest.approx(T2)
    assert sent[2] - sent[1] == pytest.approx(T2)


def test_client_non_invite_final_waits_timer_k_then_ends():
    layer, user = TransactionLayer(), User()
    req = request("BYE")
    tx = layer.new_client(req, UDP, reliable=False, user=user, now=0.0)
    tx.receive_response(response_to(req, 200), 0.1)
    tx.receive_response(response_to(req, 200), 0.2)  # absorbed
    assert user.events == [("response", 200, 0.1)]
    assert tx.timer("K") == pytest.approx(0.1 + T4)
    run_until(layer, 10.0)
    assert tx.state is State.TERMINATED


# -- server INVITE ----------------------------------------------------------------------------

def test_server_invite_retransmits_final_on_timer_g_until_the_ack_then_absorbs_until_i():
    layer = TransactionLayer()
    req = request()
    tx = layer.new_server(req, UDP, reliable=False)
    tx.respond(response_to(req, 486), 0.0)
    layer.take_transmits()
    sent = run_until(layer, 4.0)
    assert sent == pytest.approx([0.5, 1.5, 3.5])
    ack = parse_datagram(sipua.request("ACK", "sip:102@127.0.0.1", local=("10.0.0.5", 5070),
                                       to="<sip:102@127.0.0.1>;tag=callee",
                                       from_="<sip:101@127.0.0.1>;tag=f", call_id="tx-1",
                                       cseq=1, branch="z9hG4bKabc"))
    assert layer.find_server(ack) is tx
    tx.receive_request(ack, 4.2)
    assert tx.state is State.CONFIRMED
    assert tx.timer("I") == pytest.approx(4.2 + T4)
    assert run_until(layer, 20.0) == []
    assert tx.state is State.TERMINATED


def test_server_invite_without_ack_gives_up_on_timer_h():
    layer = TransactionLayer()
    req = request()
    tx = layer.new_server(req, UDP, reliable=False)
    tx.respond(response_to(req, 404), 0.0)
    layer.take_transmits()
    sent = run_until(layer, 100.0)
    assert sent[-1] < 32.0
    assert all(b - a <= T2 + 1e-9 for a, b in itertools.pairwise(sent))
    assert tx.state is State.TERMINATED


def test_server_invite_resends_the_last_provisional_for_a_retransmitted_invite():
    layer = TransactionLayer()
    req = request()
    tx = layer.new_server(req, UDP, reliable=False)
    tx.respond(req.response(100), 0.0)
    tx.respond(response_to(req, 180), 0.1)
    layer.take_transmits()
    tx.receive_request(req, 0.5)
    assert [sipua.parse_message(t.data).status for t in layer.take_transmits()] == [180]


def test_server_invite_2xx_accepted_state_passes_2xx_copies_and_ends_on_timer_l():
    layer = TransactionLayer()
    req = request()
    tx = layer.new_server(req, UDP, reliable=False)
    tx.respond(response_to(req, 200), 0.0)
    assert tx.state is State.ACCEPTED
    layer.take_transmits()
    tx.receive_request(req, 0.3)  # INVITE copy: absorbed (the UAS's 2xx retransmits)
    assert layer.take_transmits() == []
    tx.respond(response_to(req, 200), 0.5)
    assert len(layer.take_transmits()) == 1
    run_until(layer, 40.0)
    assert tx.state is State.TERMINATED


def test_server_invite_over_tcp_ends_at_once_on_ack():
    layer = TransactionLayer()
    req = request()
    tx = layer.new_server(req, TCP, reliable=True)
    tx.respond(response_to(req, 486), 0.0)
    assert tx.timer("G") is None and tx.timer("H") == pytest.approx(32.0)
    tx.receive_request(parse_datagram(req.to_bytes().replace(b"INVITE sip", b"ACK sip")
                                      .replace(b"1 INVITE", b"1 ACK")), 0.1)
    assert tx.state is State.TERMINATED and not layer.servers


# -- server non-INVITE ------------------------------------------------------------------------

def test_server_non_invite_absorbs_copies_with_the_stored_response_until_timer_j():
    layer = TransactionLayer()
    req = request("REGISTER")
    tx = layer.new_server(req, UDP, reliable=False)
    tx.respond(response_to(req, 200), 0.0)
    layer.take_transmits()
    tx.receive_request(req, 1.0)
    tx.receive_request(req, 2.0)
    assert len(layer.take_transmits()) == 2
    assert tx.timer("J") == pytest.approx(64 * T1)
    run_until(layer, 40.0)
    assert tx.state is State.TERMINATED


def test_server_non_invite_over_tcp_ends_on_the_final_response():
    layer = TransactionLayer()
    req = request("REGISTER")
    tx = layer.new_server(req, TCP, reliable=True)
    tx.respond(response_to(req, 200), 0.0)
    assert tx.state is State.TERMINATED and not layer.servers


def test_a_second_final_response_is_discarded_per_17_2_2():
    layer = TransactionLayer()
    req = request("OPTIONS")
    tx = layer.new_server(req, UDP, reliable=False)
    tx.respond(response_to(req, 200), 0.0)
    tx.respond(response_to(req, 500), 0.1)
    assert [sipua.parse_message(t.data).status for t in layer.take_transmits()] == [200]


# -- the tables themselves --------------------------------------------------------------------

def test_events_outside_the_table_are_loud_bugs():
    layer = TransactionLayer()
    req = request()
    tx = layer.new_server(req, UDP, reliable=False)
    with pytest.raises(LocalProtocolError):
        tx._event("timer_Z", 0.0)
    client = layer.new_client(request(branch="z9hG4bKother"), UDP, reliable=False,
                              user=User(), now=0.0)
    with pytest.raises(LocalProtocolError):
        client._event("provisional", 0.0)


def test_client_transactions_need_an_rfc3261_branch_and_unique_keys():
    layer = TransactionLayer()
    with pytest.raises(LocalProtocolError):
        layer.new_client(request(branch="legacy"), UDP, reliable=False, user=User(), now=0.0)
    layer.new_client(request(), UDP, reliable=False, user=User(), now=0.0)
    with pytest.raises(LocalProtocolError):
        layer.new_client(request(), UDP, reliable=False, user=User(), now=0.0)


def test_timer_values_follow_the_settings():
    layer = TransactionLayer(TimerSettings(t1=0.1, t2=1.0, t4=2.0))
    user = User()
    layer.new_client(request(), UDP, reliable=False, user=user, now=0.0)
    layer.take_transmits()
    run_until(layer, 10.0)
    assert user.events == [("timeout", pytest.approx(6.4))]


def test_cancel_finds_the_invite_server_transaction():
    layer = TransactionLayer()
    req = request()
    tx = layer.new_server(req, UDP, reliable=False)
    cancel = parse_datagram(req.to_bytes().replace(b"INVITE sip", b"CANCEL sip")
                            .replace(b"1 INVITE", b"1 CANCEL"))
    assert layer.find_invite_for_cancel(cancel) is tx
    assert layer.find_server(cancel) is None
