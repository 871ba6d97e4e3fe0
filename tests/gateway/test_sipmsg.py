"""Reading the INVITEs the proxy forwards: caller, number, TLS hop, SRTP offer, emergency marks."""

from __future__ import annotations

import pytest

from appliance.gateway.sipmsg import (
    SipTextError,
    name_addr,
    parse_invite,
    parse_sdp_offer,
    sip_quote,
    uri_user,
)

SDP_SAVP = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 4000 RTP/SAVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
)
SDP_AVP = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 9 0\r\na=rtpmap:9 G722/8000\r\n"
)


def invite(*headers: str, uri="sip:95551234567@127.0.0.1:5070", body=SDP_SAVP) -> str:
    lines = [f"INVITE {uri} SIP/2.0", *headers, "Content-Type: application/sdp",
             f"Content-Length: {len(body)}"]
    return "\r\n".join(lines) + "\r\n\r\n" + body


PROXY_VIA = "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy"


def test_caller_number_and_handset_transport_from_a_proxied_tls_invite():
    text = invite(PROXY_VIA, "Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bKphone;rport",
                  'From: "Alice Ames" <sips:101@hq.example>;tag=1',
                  "To: <sip:95551234567@hq.example>", "Call-ID: abc@1",
                  "P-Asserted-Identity: <sip:101@hq.example>")
    parsed = parse_invite(text)
    assert parsed.request_user == "95551234567"
    assert parsed.caller == "101"
    assert parsed.from_display == "Alice Ames"
    assert parsed.via_protocols == ("UDP", "TLS")
    assert parsed.handset_over_tls
    assert parsed.sdp.asks_for_srtp and parsed.sdp.has_sdes
    assert parsed.sdp.crypto_suites == ("AES_CM_128_HMAC_SHA1_80",)
    assert not parsed.emergency_marked


def test_compact_forms_comma_joined_vias_and_folded_lines():
    text = invite("v: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1 ,\r\n SIP/2.0/TCP "
                  "192.0.2.11:5060;branch=z9hG4bK2", "f: <sip:102@hq>;tag=2",
                  "t: <sip:911@hq>", "i: x", body=SDP_AVP)
    parsed = parse_invite(text)
    assert parsed.via_protocols == ("UDP", "TCP")
    assert not parsed.handset_over_tls
    assert parsed.caller == "102"
    assert parsed.sdp.codecs == ("G722", "PCMU")
    assert not parsed.sdp.asks_for_srtp


def test_asserted_identity_beats_from():
    parsed = parse_invite(invite(PROXY_VIA, "From: <sip:spoof@x>;tag=1",
                                 'P-Asserted-Identity: "Bob" <sip:102@hq>, <tel:+15550102>'))
    assert parsed.caller == "102"


@pytest.mark.parametrize(("extra", "uri"), [
    ("Priority: emergency", "sip:911@127.0.0.1"),
    ("Resource-Priority: esnet.1", "sip:5551234567@127.0.0.1"),
    ("Priority: normal", "urn:service:sos.police"),
])
def test_emergency_markers(extra, uri):
    parsed = parse_invite(invite(PROXY_VIA, "From: <sip:101@hq>;tag=1", extra, uri=uri))
    assert parsed.emergency_marked


def test_unmarked_call_is_not_emergency_because_of_a_normal_priority():
    parsed = parse_invite(invite(PROXY_VIA, "From: <sip:101@hq>;tag=1", "Priority: urgent"))
    assert not parsed.emergency_marked


def test_percent_encoded_user_and_tel_uris():
    assert uri_user("sip:%2B15551234@h;user=phone") == "+15551234"
    assert uri_user("tel:+15551234;phone-context=x") == "+15551234"
    assert uri_user("sip:host-only") is None
    assert uri_user("mailto:a@b") is None


def test_name_addr_unquotes_display_names():
    assert name_addr('"A \\"quoted\\" name" <sip:1@h>;tag=x') == ('A "quoted" name', "sip:1@h")
    assert name_addr("sip:1@h;tag=x") == (None, "sip:1@h")


def test_sip_quote_escapes_and_drops_control_characters():
    assert sip_quote('EMERGENCY "911"\r\n\\') == '"EMERGENCY \\"911\\"\\\\"'


def test_sdp_without_audio_and_no_sdp_at_all():
    assert parse_sdp_offer("v=0\r\nm=video 5000 RTP/AVP 96\r\n") is None
    parsed = parse_invite(invite(PROXY_VIA, "From: <sip:101@h>;tag=1", body=""))
    assert parsed.sdp is None


@pytest.mark.parametrize("text", [
    "", "BYE sip:1@h SIP/2.0\r\n\r\n", "INVITE sip:host SIP/2.0\r\nFrom: <sip:1@h>\r\n\r\n",
    "INVITE sip:1@h SIP/2.0\r\nno colon here\r\n\r\n",
])
def test_unreadable_requests_raise(text):
    with pytest.raises(SipTextError):
        parse_invite(text)
