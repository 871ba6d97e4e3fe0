"""The registrar through the whole core (RFC 3261 section 10.3), on fake time."""

from __future__ import annotations

import re

import pytest

from appliance.directory.model import parse_directory
from appliance.sip.abuse import AbusePolicy
from appliance.sip.core import HOUSEKEEPING_S, CoreSettings
from appliance.sip.flow import Flow
from jbcbench import sipua
from jbcbench.sipnet import SITE


def contacts(reply) -> dict[str, int]:
    found = {}
    for value in reply.all("contact"):
        for part in value.split(","):
            uri = re.search(r"<([^>]+)>", part).group(1)
            found[uri] = int(re.search(r"expires=(\d+)", part).group(1))
    return found


def test_register_with_digest_is_granted_the_outage_expiry(net):
    phone = net.phone("101", "10.0.0.11")
    reply = phone.register(expires=3600)
    assert reply.status == 200
    assert contacts(reply) == {f"sip:101@10.0.0.11:{phone.port}": 120}
    assert [p["aor"] for p in net.core.phones(net.now)] == ["101"]
    assert [n.kind for n in net.notices] == ["registered"]


@pytest.mark.parametrize(("user", "algorithm"), [("101", "MD5"), ("101", "SHA-256"),
                                                 ("105", "MD5"), ("106", "SHA-256")])
def test_both_algorithms_and_stored_ha1s_work(net, user, algorithm):
    phone = net.phone(user, "10.0.0.12")
    assert phone.register(algorithm=algorithm).status == 200


def test_by_default_only_md5_is_offered_so_md5_only_handsets_never_choke(make_net):
    net = make_net(algorithms=CoreSettings().algorithms)
    phone = net.phone("101", "10.0.0.11")
    phone.send(sipua.register("101", "127.0.0.1", local=phone.local, call_id="d", cseq=1))
    challenge = phone.last()
    assert len(challenge.all("www-authenticate")) == 1
    assert "algorithm=MD5" in challenge.header("www-authenticate")


def test_a_second_device_of_the_extension_registers_to_the_same_aor(net):
    desk = net.phone("101", "10.0.0.11")
    soft = net.phone("alice-soft", "10.0.0.13")
    assert desk.register().status == 200
    reply = soft.register()  # To: its own user name, meaning its extension
    assert reply.status == 200
    assert len(contacts(reply)) == 2
    assert {p["device"] for p in net.core.phones(net.now)} == {"alice-desk", "alice-soft"}


def test_a_device_cannot_register_someone_elses_address_of_record(net):
    phone = net.phone("102", "10.0.0.14")
    assert phone.register(aor="101").status == 403


def test_too_short_expiry_gets_423_with_min_expires(net):
    phone = net.phone("101", "10.0.0.11")
    reply = phone.register(expires=10)
    assert reply.status == 423 and reply.header("min-expires") == "60"


def test_expires_zero_removes_the_binding_and_star_removes_all(net):
    phone = net.phone("101", "10.0.0.11")
    phone.register()
    assert phone.register(expires=0).status == 200
    assert net.core.phones(net.now) == []
    phone.register()
    other = net.phone("alice-soft", "10.0.0.13")
    other.register()
    phone.send(sipua.register("101", "127.0.0.1", local=phone.local, call_id=phone.call_id,
                              cseq=next(phone.cseq), expires=0, contact="*"))
    challenge = phone.last()
    authorization = phone.answer(challenge, "REGISTER", "sip:127.0.0.1")
    phone.send(sipua.register("101", "127.0.0.1", local=phone.local, call_id=phone.call_id,
                              cseq=next(phone.cseq), expires=0, contact="*",
                              authorization=authorization))
    assert phone.last().status == 200
    assert net.core.phones(net.now) == []
    assert net.notices[-1].kind == "unregistered"


def test_star_with_nonzero_expires_is_a_bad_request(net):
    phone = net.phone("101", "10.0.0.11")
    reply = phone.register(headers=())
    assert reply.status == 200
    phone.send(sipua.register("101", "127.0.0.1", local=phone.local, call_id="x", cseq=1,
                              expires=60, contact="*"))
    challenge = phone.last()
    phone.send(sipua.register("101", "127.0.0.1", local=phone.local, call_id="x", cseq=2,
                              expires=60, contact="*", authorization=phone.answer(
                                  challenge, "REGISTER", "sip:127.0.0.1")))
    assert phone.last().status == 400


def test_an_old_cseq_on_the_same_call_id_is_refused(net):
    phone = net.phone("101", "10.0.0.11")
    phone.register()
    phone.cseq = iter(range(1, 100))  # rewind: a stale, reordered REGISTER
    assert phone.register().status == 500


def test_bindings_per_aor_are_bounded_and_the_soonest_to_expire_goes(make_net):
    net = make_net(max_contacts_per_aor=2)
    phones = [net.phone("101", f"10.0.1.{i}") for i in range(3)]
    phones[0].register(expires=60)
    phones[1].register(expires=100)
    reply = phones[2].register(expires=100)
    assert set(contacts(reply)) == {f"sip:101@10.0.1.1:{phones[1].port}",
                                    f"sip:101@10.0.1.2:{phones[2].port}"}


def test_q_values_order_the_contacts(net):
    low = net.phone("101", "10.0.0.21")
    low.contact_params = ";q=0.2"
    low.register()
    high = net.phone("alice-soft", "10.0.0.22")
    high.contact_params = ";q=0.9"
    reply = high.register()
    assert "q=0.2" in " ".join(reply.all("contact"))
    order = [b.device_id for b in net.core.registrations.lookup("101", net.now)]
    assert order == ["alice-soft", "alice-desk"]


def test_a_handset_reconnecting_with_the_same_instance_id_replaces_its_binding(net):
    instance = '"<urn:uuid:00000000-0000-1000-8000-0000000000aa>"'
    phone = net.phone("101", "10.0.0.11")
    for port in (5080, 5081):
        phone.port = port
        net.phones[(phone.host, port)] = phone
        phone.send(sipua.register("101", "127.0.0.1", local=phone.local, call_id=f"c{port}",
                                  cseq=1, contact=f"<sip:101@10.0.0.11:{port}>;"
                                  f"+sip.instance={instance};reg-id=1"))
        challenge = phone.last()
        phone.send(sipua.register(
            "101", "127.0.0.1", local=phone.local, call_id=f"c{port}", cseq=2,
            contact=f"<sip:101@10.0.0.11:{port}>;+sip.instance={instance};reg-id=1",
            authorization=phone.answer(challenge, "REGISTER", "sip:127.0.0.1")))
        assert phone.last().status == 200
    assert [p["contact"] for p in net.core.phones(net.now)] == ["sip:101@10.0.0.11:5081"]


def test_bindings_expire_with_time(net):
    phone = net.phone("101", "10.0.0.11")
    phone.register(expires=60)
    net.advance(59)
    assert net.core.registrations.lookup("101", net.now)
    net.advance(1 + HOUSEKEEPING_S)  # the next housekeeping round sweeps it
    assert not net.core.registrations.lookup("101", net.now)
    assert net.notices[-1].kind == "unregistered"


def test_responses_follow_rport_to_the_source_port_and_via_gets_received(net):
    phone = net.phone("101", "10.0.0.11", port=5090)
    data = sipua.register("101", "127.0.0.1", local=("10.0.0.99", 5070), call_id="r", cseq=1)
    net.core.receive_datagram(data, phone_flow(phone), net.now)
    net.pump()
    reply = phone.last()
    assert reply.status == 401
    assert "rport=5090" in reply.header("via") and "received=10.0.0.11" in reply.header("via")


def phone_flow(phone) -> Flow:
    return Flow("udp", phone.host, phone.port)


def test_without_rport_the_response_goes_to_the_via_port(net):
    sender = net.phone("101", "10.0.0.11", port=5091)
    listener = net.phone("101", "10.0.0.11", port=5070)
    data = sipua.register("101", "127.0.0.1", local=("10.0.0.11", 5070), call_id="r", cseq=1)
    data = data.replace(b";rport", b"")
    net.core.receive_datagram(data, phone_flow(sender), net.now)
    net.pump()
    assert sender.take() == [] and listener.last().status == 401


def test_binding_remembers_the_source_address_when_via_and_contact_disagree(net):
    phone = net.phone("101", "10.0.0.11", port=5092)
    challenge = None
    for cseq in (1, 2):
        auth = None
        if cseq == 2:
            auth = phone.answer(challenge, "REGISTER", "sip:127.0.0.1")
        data = sipua.register("101", "127.0.0.1", local=("10.0.0.11", 6000), call_id="r",
                              cseq=cseq, authorization=auth)
        net.core.receive_datagram(data, phone_flow(phone), net.now)
        net.pump()
        challenge = phone.last()
    assert challenge.status == 200
    assert net.core.phones(net.now)[0]["source"] == "10.0.0.11:5092"


# -- serving or standing by ------------------------------------------------------------------

def test_while_the_cloud_is_up_register_is_refused_with_503_and_no_retry_after(make_net):
    net = make_net(serving=False)
    phone = net.phone("101", "10.0.0.11")
    phone.send(sipua.register("101", "127.0.0.1", local=phone.local, call_id="r", cseq=1))
    reply = phone.last()
    assert reply.status == 503 and reply.header("retry-after") is None


def test_online_accept_mode_registers_with_the_online_expiry(make_net):
    net = make_net(serving=False, online_register="accept")
    reply = net.phone("101", "10.0.0.11").register(expires=3600)
    assert reply.status == 200 and list(contacts(reply).values()) == [3600]


def test_outage_begins_and_ends_live(make_net):
    net = make_net(serving=False)
    phone = net.phone("101", "10.0.0.11")
    phone.send(sipua.register("101", "127.0.0.1", local=phone.local, call_id="r", cseq=1))
    assert phone.last().status == 503
    net.core.set_serving(True)
    assert phone.register().status == 200
    net.core.set_serving(True)
    assert phone.register().status == 200
    net.core.set_serving(False)
    phone.send(sipua.register("101", "127.0.0.1", local=phone.local, call_id="r2", cseq=1))
    assert phone.last().status == 503
    assert net.core.registrations.lookup("101", net.now)  # kept: calls may still need it


# -- directory changes ------------------------------------------------------------------------

def test_directory_update_applies_live_and_keeps_bindings(net):
    phone = net.phone("101", "10.0.0.11")
    assert phone.register().status == 200
    changed = {**SITE, "version": 8,
               "devices": [d for d in SITE["devices"] if d["id"] != "alice-desk"] + [
                   {"id": "alice-new", "extension": "101", "username": "alice-new",
                    "password": "new-pw"}]}
    net.core.set_directory(parse_directory(changed, source="v8"))
    assert net.core.registrations.lookup("101", net.now)  # not dropped
    assert phone.register().status == 401  # its credentials are gone
    newcomer = net.phone("alice-new", "10.0.0.15", password="new-pw")
    assert newcomer.register().status == 200


# -- enumeration, lockout ---------------------------------------------------------------------

def _shape(reply) -> list[str]:
    """A response with every random token blanked: what an attacker can compare."""
    text = reply.start + "\n" + "\n".join(f"{n}: {v}" for n, v in reply.fields)
    text = re.sub(r'nonce="[^"]+"', 'nonce="N"', text)
    text = re.sub(r"tag=[^;>\s]+", "tag=T", text)
    text = re.sub(r"branch=[^;\s]+", "branch=B", text)
    return text.replace("999", "101").replace("c-unknown", "c-wrong").splitlines()


def test_wrong_password_and_unknown_user_are_indistinguishable_on_the_wire(net):
    wrong = net.phone("101", "10.0.0.31", password="guess")
    unknown = net.phone("999", "10.0.0.32", password="guess")
    wrong.call_id, unknown.call_id = "c-wrong", "c-unknown"
    wrong.tag = unknown.tag = "same"
    after_wrong, after_unknown = wrong.register(), unknown.register()
    assert after_wrong.status == after_unknown.status == 401
    shape_wrong = [line for line in _shape(after_wrong) if not line.startswith("Via")]
    shape_unknown = [line for line in _shape(after_unknown) if not line.startswith("Via")]
    assert len(shape_wrong) >= 6 and shape_wrong == shape_unknown


def test_repeated_guesses_lock_that_user_out_from_that_address_silently_and_it_expires(
        make_net):
    net = make_net(abuse=AbusePolicy(failures_per_source=3, window_s=60, lockout_s=30))
    attacker = net.phone("101", "10.0.0.66", password="guess")
    for _ in range(3):
        assert attacker.register().status == 401
    assert [(n.kind, n.details["kind"]) for n in net.notices] == [("lockout", "pair")]
    attacker.send(sipua.register("101", "127.0.0.1", local=attacker.local, call_id="z",
                                 cseq=1))
    assert attacker.take() == []  # dropped: no answer at all
    neighbour = net.phone("102", "10.0.0.66")  # another phone behind the same NAT
    assert neighbour.register().status == 200
    legit = net.phone("101", "10.0.0.11")
    assert legit.register().status == 200  # other addresses are unaffected
    net.advance(31)
    attacker.password = "alice-pw"
    assert attacker.register().status == 200


def test_guessing_many_users_from_one_address_locks_the_address(make_net):
    net = make_net(abuse=AbusePolicy(users_per_source=3, window_s=60, lockout_s=30))
    for user in ("101", "102", "999"):
        assert net.phone(user, "10.0.0.67", password="guess").register().status == 401
    assert net.notices[-1].details == {"kind": "source", "subject": "10.0.0.67",
                                       "user": None, "for_s": 30}
    honest = net.phone("103", "10.0.0.67")
    honest.send(sipua.register("103", "127.0.0.1", local=honest.local, call_id="h", cseq=1))
    assert honest.take() == [] and net.core.guard.dropped_locked == 1


def test_a_guarded_user_still_serves_its_own_devices(make_net):
    net = make_net(abuse=AbusePolicy(failures_per_source=100, failures_per_user=3,
                                     window_s=60, lockout_s=30))
    legit = net.phone("101", "10.0.0.11")
    assert legit.register().status == 200
    for index in range(3):
        assert net.phone("101", f"10.0.2.{index}", password="guess").register().status == 401
    assert net.core.guard.user_guarded("101", net.now)
    assert net.notices[-1].details["kind"] == "user"
    assert legit.register().status == 200  # from the address it is registered from
    moved = net.phone("101", "10.0.0.12")  # the same phone after a DHCP change: same Call-ID
    moved.call_id, moved.cseq = legit.call_id, legit.cseq
    assert moved.register().status == 200
    newcomer = net.phone("101", "10.0.0.13")  # right password, new device, new address
    assert newcomer.register().status == 401
    net.advance(31)
    assert newcomer.register().status == 200


def test_a_phone_with_an_instance_id_is_known_by_it_after_a_restart_and_an_address_change(
        make_net):
    net = make_net(abuse=AbusePolicy(failures_per_source=100, failures_per_user=3,
                                     window_s=60, lockout_s=30))
    instance = ';+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000101>"'
    phone = net.phone("101", "10.0.0.11")
    phone.contact_params = instance
    assert phone.register().status == 200
    for index in range(3):
        net.phone("101", f"10.0.2.{index}", password="guess").register()
    rebooted = net.phone("101", "10.0.0.14")  # new Call-ID after a reboot, same instance
    rebooted.contact_params = instance
    assert rebooted.register().status == 200


def test_malformed_credentials_never_put_a_user_under_guard(make_net):
    net = make_net(abuse=AbusePolicy(failures_per_source=100, failures_per_user=3,
                                     window_s=60, lockout_s=30))
    for index in range(10):
        junk = net.phone("101", f"10.0.3.{index}")
        junk.send(sipua.register("101", "127.0.0.1", local=junk.local, call_id=f"j{index}",
                                 cseq=1, authorization='Digest username="101", realm="jbc", '
                                 'nonce="x", uri="sip:127.0.0.1", response="00"'))
        assert junk.last().status == 401
    assert not net.core.guard.user_guarded("101", net.now)
    assert net.core.stats["auth_malformed"] == 10
    assert net.phone("101", "10.0.0.15").register().status == 200


def test_five_hundred_handsets_behind_one_address_register_without_a_drop(make_net):
    site = dict(SITE)
    site["extensions"] = [{"number": str(3000 + i), "name": f"h{i}"} for i in range(500)]
    site["devices"] = [{"id": f"d{i}", "extension": str(3000 + i), "username": str(3000 + i),
                        "password": f"pw{i}"} for i in range(500)]
    site["ring_groups"] = []
    net = make_net(directory=parse_directory(site, source="nat"), abuse=AbusePolicy())
    phones = [net.phone(str(3000 + i), "10.0.9.1", password=f"pw{i}") for i in range(500)]
    challenges = []
    for phone in phones:  # the whole site at once: every first REGISTER before any answer
        phone.send(sipua.register(phone.user, "127.0.0.1", local=phone.local,
                                  call_id=phone.call_id, cseq=1, tag=phone.tag))
    for phone in phones:
        [challenge] = phone.take()
        challenges.append(challenge)
    for phone, challenge in zip(phones, challenges, strict=True):
        phone.send(sipua.register(phone.user, "127.0.0.1", local=phone.local,
                                  call_id=phone.call_id, cseq=2, tag=phone.tag,
                                  authorization=phone.answer(challenge, "REGISTER",
                                                             "sip:127.0.0.1")))
    assert [phone.last().status for phone in phones] == [200] * 500
    assert net.core.guard.dropped_rate == 0


def test_unauthenticated_invite_never_reaches_the_callee(net):
    callee = net.phone("102", "10.0.0.41")
    callee.register()
    callee.take()
    caller = net.phone("101", "10.0.0.42")
    call = net.invite(caller, "102", authenticate=False)
    assert caller.last().status == 407
    assert callee.take() == [] and call.call_id not in net.core.proxy.calls


def test_options_to_the_appliance_is_answered_locally_without_credentials(net):
    phone = net.phone("101", "10.0.0.11")
    phone.send(phone.request("OPTIONS", "sip:127.0.0.1:5060", call_id="o", cseq=1,
                             to="<sip:127.0.0.1>"))
    reply = phone.last()
    assert reply.status == 200 and "INVITE" in reply.header("allow")
