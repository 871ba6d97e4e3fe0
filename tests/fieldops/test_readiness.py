"""Phone sightings and failover readiness (pure): what a phone's requests tell, what the
prediction is in each mode, and the vendor keys advised."""

from __future__ import annotations

import pytest

from appliance.phones import vendors
from appliance.phones.readiness import ApplianceTimers, assess
from appliance.phones.sightings import (
    MAX_SOURCES_PER_PHONE,
    Observation,
    PhoneSightings,
    observation_of,
)
from appliance.sip.parser import Limits, parse_datagram

YEALINK_UA = "Yealink SIP-T46S 66.86.0.15"
TIMERS = ApplianceTimers(mode="backup-registrar", detection_s=2.5, hold_down_s=30.0,
                         local_expires_s=120, appliance="192.168.50.1")


def register(aor="101", expires=3600, ua=YEALINK_UA, *, transport="udp",
             host="192.168.50.11", port=5060, outbound=False):
    return Observation(method="REGISTER", aor=aor, host=host, port=port, transport=transport,
                       user_agent=ua, expires_s=expires, outbound=outbound)


def test_a_register_is_read_for_expiry_user_agent_and_outbound():
    raw = (b"REGISTER sip:192.168.50.1 SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 192.168.50.11:5060;branch=z9hG4bK1\r\n"
           b"From: <sip:101@192.168.50.1>;tag=1\r\nTo: <sip:101@192.168.50.1>\r\n"
           b"Call-ID: c1\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
           b'Contact: <sip:101@192.168.50.11:5060>;expires=3600;+sip.instance="<urn:uuid:1>"'
           b";reg-id=1\r\nUser-Agent: " + YEALINK_UA.encode() + b"\r\nContent-Length: 0\r\n\r\n")
    request = parse_datagram(raw, Limits())
    observation = observation_of(request, "udp", "192.168.50.11", 5060)
    assert observation.aor == "101"
    assert observation.expires_s == 3600
    assert observation.user_agent == YEALINK_UA
    assert observation.outbound is True


def test_the_expires_header_counts_when_the_contact_has_none():
    raw = (b"REGISTER sip:192.168.50.1 SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 192.168.50.12:5060;branch=z9hG4bK2\r\n"
           b"From: <sip:102@192.168.50.1>;tag=1\r\nTo: <sip:102@192.168.50.1>\r\n"
           b"Call-ID: c2\r\nCSeq: 1 REGISTER\r\nContact: <sip:102@192.168.50.12>\r\n"
           b"Expires: 300\r\nContent-Length: 0\r\n\r\n")
    observation = observation_of(parse_datagram(raw, Limits()), "udp", "192.168.50.12", 5060)
    assert observation.expires_s == 300 and observation.user_agent == ""


def test_refresh_cadence_and_options_keepalive_are_learned_from_timing():
    sightings = PhoneSightings()
    for t in (0.0, 0.2, 55.0, 110.0):  # 0.2: the authenticated retry, not a refresh
        sightings.observe(register(expires=60), t)
    options = Observation(method="OPTIONS", aor="101", host="192.168.50.11", port=5060,
                          transport="udp", user_agent=YEALINK_UA, expires_s=None,
                          outbound=False)
    for t in (10.0, 40.0, 70.0):
        sightings.observe(options, t)
    phone = sightings.get("101")
    assert phone.refresh_interval_s == 55.0
    assert phone.keepalive == ("options", 30.0)
    assert phone.seen_via == {"register", "options"}


def test_crlf_keepalives_are_attributed_to_the_phone_on_that_flow():
    sightings = PhoneSightings()
    sightings.observe(register(transport="tcp", port=40000), 0.0)
    for t in (30.0, 60.0):
        sightings.crlf_keepalive("tcp", "192.168.50.11", 40000, t)
    assert sightings.get("101").keepalive == ("crlf", 30.0)


def test_sightings_are_bounded():
    sightings = PhoneSightings(max_phones=3)
    for n in range(5):
        sightings.observe(register(aor=str(100 + n), host=f"10.0.0.{n}"), float(n))
    assert len(sightings) == 3
    assert sightings.get("100") is None and sightings.get("104") is not None


def test_forgetting_a_phone_forgets_only_its_own_sources_and_ports_stay_bounded():
    sightings = PhoneSightings(max_phones=3)
    for n in range(500):  # a site far larger than the table: each new phone pushes one out
        sightings.observe(register(aor=str(1000 + n), host=f"10.0.{n // 250}.{n % 250}"),
                          float(n))
    assert len(sightings._by_source) == 3 and len(sightings._sources_of) == 3
    for port in range(40000, 40100):  # one phone hopping ports behind a NAT
        sightings.observe(register(aor="1499", host="10.0.1.249", port=port), 600.0)
    assert len(sightings._by_source) <= 2 + MAX_SOURCES_PER_PHONE
    sightings.crlf_keepalive("udp", "10.0.1.249", 40099, 601.0)
    assert sightings.get("1499").source.endswith(":40099")


def test_a_3600_s_phone_fails_readiness_with_yealink_keys():
    sightings = PhoneSightings()
    sightings.observe(register(expires=3600), 0.0)
    result = assess(sightings.get("101"), TIMERS)
    assert result["vendor"] == "yealink" and result["vendor_label"] == "SIP-T46S"
    # the bench's factory formula: (3600 - 60) + 3 x 32 + 2 x 30
    assert result["failover_s"] == 3696.0
    assert result["severity"] == "fail"
    assert any("3600 s" in p for p in result["problems"])
    assert any("account.1.sip_server.1.expires = 120" in a for a in result["advice"])


def test_a_tuned_phone_is_ready():
    sightings = PhoneSightings()
    sightings.observe(register(expires=60), 0.0)
    result = assess(sightings.get("101"), TIMERS)
    assert result["severity"] == "ok" and result["problems"] == [] and result["advice"] == []
    # refreshed at half of 60 s, then Yealink's documented 3 attempts x 32 s, 30 s apart: its
    # retry counts cannot be seen from here, so the prediction assumes the defaults
    assert result["failover_s"] == 30 + 3 * 32 + 2 * 30
    assert "Yealink defaults" in result["basis"]


def test_in_path_failover_does_not_wait_for_the_phone_when_it_is_relayed():
    sightings = PhoneSightings()
    sightings.observe(register(expires=3600, outbound=True), 0.0, via="relay")
    sightings.granted("101", 300, 0.1, by="cloud")
    timers = ApplianceTimers(mode="in-path", detection_s=2.5, hold_down_s=30.0,
                             local_expires_s=120, appliance="192.168.50.1")
    result = assess(sightings.get("101"), timers)
    assert result["failover_s"] == pytest.approx(3.5)
    assert result["severity"] == "ok"


def test_in_path_mode_flags_a_phone_that_bypasses_the_relay_with_outbound_proxy_keys():
    sightings = PhoneSightings()
    sightings.observe(register(expires=60, ua="Grandstream GXP2170 1.0.8.50"), 0.0)
    timers = ApplianceTimers(mode="in-path", detection_s=2.5, hold_down_s=30.0,
                             local_expires_s=120, appliance="192.168.50.1")
    result = assess(sightings.get("101"), timers)
    assert result["severity"] == "fail"
    assert "Grandstream: P48 = 192.168.50.1 (the appliance as outbound proxy)" in \
        result["advice"]


@pytest.mark.parametrize(("user_agent", "vendor", "model"), [
    ("Yealink SIP-T46S 66.86.0.15", "yealink", "SIP-T46S"),
    ("PolycomVVX-VVX_411-UA/6.3.1.8427", "poly", "VVX_411"),
    ("Grandstream GXP2170 1.0.8.50", "grandstream", "GXP2170"),
    ("snomD785/10.1.54.13", "snom", "D785"),
    ("Cisco/CP-8851-3PCC-11.3.7", "cisco-mpp", "CP-8851-3PCC-11.3.7"),
    ("jbcbench-handset/101", None, None),
])
def test_vendors_are_told_apart_by_user_agent(user_agent, vendor, model):
    found = vendors.identify(user_agent)
    assert (found.name if found else None) == vendor
    if found:
        assert found.model(user_agent) == model


def test_every_vendor_has_advice_for_both_modes():
    for vendor in vendors.VENDORS:
        assert vendor.backup_registrar and vendor.in_path, vendor.name
