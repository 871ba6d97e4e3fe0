"""Parsing and serialising SIP messages: datagrams and streams, whole and one byte at a time."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.sip.errors import RemoteProtocolError
from appliance.sip.message import Headers, Request, Response, Via
from appliance.sip.parser import PING, Limits, StreamFramer, parse_datagram
from appliance.sip.uri import NameAddr, SipUri, UriError, parse_uri, split_commas

REGISTER = (
    b"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5070;rport;branch=z9hG4bK-1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: \"Alice\" <sip:101@127.0.0.1>;tag=a1\r\n"
    b"To: <sip:101@127.0.0.1>\r\n"
    b"Call-ID: reg-1@10.0.0.5\r\n"
    b"CSeq: 7 REGISTER\r\n"
    b"Contact: <sip:101@10.0.0.5:5070;ob>;expires=60;+sip.instance=\"<urn:uuid:1>\"\r\n"
    b"Content-Length: 0\r\n\r\n")

INVITE_WITH_BODY = (
    b"INVITE sip:102@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 10.0.0.5:5070;branch=z9hG4bK-2\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:101@127.0.0.1>;tag=a1\r\n"
    b"To: <sip:102@127.0.0.1>\r\n"
    b"Call-ID: call-1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 12\r\n\r\n"
    b"v=0\r\no=x\r\n\r\n")


def test_register_parses_into_typed_views():
    message = parse_datagram(REGISTER)
    assert isinstance(message, Request)
    assert message.method == "REGISTER" and message.uri_text == "sip:127.0.0.1"
    assert message.top_via.branch == "z9hG4bK-1"
    assert message.top_via.sent_by == "10.0.0.5:5070"
    assert message.top_via.param("rport") == ""
    assert message.cseq == (7, "REGISTER")
    assert message.from_.display == '"Alice"' and message.from_tag == "a1"
    assert message.to.uri.user == "101" and message.to_tag is None
    contact = message.addresses("contact")[0]
    assert contact.param("expires") == "60"
    assert contact.param("+sip.instance") == '"<urn:uuid:1>"'
    assert contact.uri.has_param("ob")


def test_compact_forms_mean_the_long_headers():
    data = REGISTER.replace(b"Via:", b"v:").replace(b"From:", b"f:").replace(
        b"To:", b"t:").replace(b"Call-ID:", b"i:").replace(b"Contact:", b"m:").replace(
        b"Content-Length:", b"l:")
    message = parse_datagram(data)
    assert message.call_id == "reg-1@10.0.0.5"
    assert message.top_via.branch == "z9hG4bK-1"
    assert message.headers.get("contact").startswith("<sip:101@10.0.0.5")


def test_folded_header_lines_are_joined_with_one_space():
    data = REGISTER.replace(b"Contact: <sip:101@10.0.0.5:5070;ob>;expires=60;",
                            b"Contact: <sip:101@10.0.0.5:5070;ob>\r\n   ;expires=60;")
    message = parse_datagram(data)
    assert message.headers.get("contact") == \
        '<sip:101@10.0.0.5:5070;ob> ;expires=60;+sip.instance="<urn:uuid:1>"'
    assert message.addresses("contact")[0].param("expires") == "60"


def test_comma_combined_and_repeated_vias_are_the_same_list():
    combined = REGISTER.replace(
        b"Via: SIP/2.0/UDP 10.0.0.5:5070;rport;branch=z9hG4bK-1\r\n",
        b"Via: SIP/2.0/UDP 10.0.0.5:5070;rport;branch=z9hG4bK-1 , SIP/2.0/TCP 10.0.0.9;"
        b"branch=z9hG4bK-0\r\n")
    repeated = REGISTER.replace(
        b"Via: SIP/2.0/UDP 10.0.0.5:5070;rport;branch=z9hG4bK-1\r\n",
        b"Via: SIP/2.0/UDP 10.0.0.5:5070;rport;branch=z9hG4bK-1\r\n"
        b"Via: SIP/2.0/TCP 10.0.0.9;branch=z9hG4bK-0\r\n")
    for data in (combined, repeated):
        message = parse_datagram(data)
        assert [Via.parse(v).branch for v in message.headers.values("via")] == \
            ["z9hG4bK-1", "z9hG4bK-0"]
        assert message.top_via.branch == "z9hG4bK-1"


def test_popping_the_top_via_from_a_combined_header_keeps_the_rest():
    headers = Headers([("via", "Via", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=x")])
    assert headers.pop_first_value("via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert headers.get("via") == "SIP/2.0/UDP b;branch=x"
    assert headers.pop_first_value("via") == "SIP/2.0/UDP b;branch=x"
    assert "via" not in headers


def test_commas_inside_quotes_and_angle_brackets_do_not_split():
    value = '"Smith, John" <sip:j@h;x=a,b>;q=0.5, <sip:k@h>'
    assert split_commas(value) == ['"Smith, John" <sip:j@h;x=a,b>;q=0.5', "<sip:k@h>"]


@pytest.mark.parametrize(("text", "display", "user", "params"), [
    ('"Alice \\"A\\" Smith" <sip:a@h>;tag=1', '"Alice \\"A\\" Smith"', "a", (("tag", "1"),)),
    ("Bob <sip:b@h;lr>;expires=5", "Bob", "b", (("expires", "5"),)),
    ("sip:c@h;tag=9", None, "c", (("tag", "9"),)),
    ("<sips:d@[::1]:5061>", None, "d", ()),
    ('<sip:e@h>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"', None, "e",
     (("+sip.instance", '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'),)),
])
def test_name_addr_and_addr_spec_forms(text, display, user, params):
    address = NameAddr.parse(text)
    assert address.display == display
    assert address.uri.user == user
    assert address.params == params


def test_addr_spec_parameters_belong_to_the_header_not_the_uri():
    address = NameAddr.parse("sip:c@h;tag=9")
    assert not address.uri.params and address.tag == "9"
    inside = NameAddr.parse("<sip:c@h;tag=9>")
    assert inside.uri.param("tag") == "9" and inside.tag is None


@pytest.mark.parametrize("text", [
    '"unterminated <sip:a@h>', "<sip:a@h", "Bob sip:b@h", "<sip:a@@h>", "<sip:a@h:99999>",
    "<sip:a@bad_host>", "<sip:a@[::zz]>", "sip:a@h?x=y",
])
def test_bad_addresses_are_refused(text):
    with pytest.raises(UriError):
        NameAddr.parse(text)


def test_uri_parameters_headers_and_escapes():
    uri = SipUri.parse("sip:%31%30%31@h.example.com:5080;transport=TCP;lr;maddr=10.0.0.1"
                       "?subject=hello&priority=urgent")
    assert uri.user_text == "101" and uri.port == 5080
    assert uri.transport == "tcp" and uri.has_param("lr") and uri.param("maddr") == "10.0.0.1"
    assert uri.headers == (("subject", "hello"), ("priority", "urgent"))
    assert str(uri.without_headers()) == "sip:%31%30%31@h.example.com:5080;transport=TCP;lr;" \
                                        "maddr=10.0.0.1"
    assert SipUri.parse("sips:a@h").transport == "tls"
    assert SipUri.parse("sips:a@h").effective_port == 5061
    assert parse_uri("tel:+1-555-0100").user == "+1-555-0100"


def test_uris_compare_by_where_they_lead():
    assert SipUri.parse("sip:%61lice@EXAMPLE.com") == SipUri.parse("sip:alice@example.com")
    assert SipUri.parse("sip:alice@example.com;transport=tcp") != \
        SipUri.parse("sip:alice@example.com")


def test_a_response_copies_via_from_call_id_cseq_and_tags_to():
    request = parse_datagram(REGISTER)
    response = request.response(401, to_tag="t1", headers=[("WWW-Authenticate", "Digest x")])
    data = response.to_bytes()
    assert data.startswith(b"SIP/2.0 401 Unauthorized\r\n")
    again = parse_datagram(data)
    assert isinstance(again, Response)
    assert again.top_via.branch == "z9hG4bK-1"
    assert again.to_tag == "t1" and again.from_tag == "a1"
    assert again.headers.get("www-authenticate") == "Digest x"
    assert again.headers.get("contact") is None
    assert b"Content-Length: 0\r\n\r\n" in data


def test_provisional_100_does_not_tag_to_and_other_responses_do():
    request = parse_datagram(INVITE_WITH_BODY)
    assert request.response(100).to_tag is None
    assert request.response(180).to_tag is not None


def test_serialise_then_parse_round_trips_and_recomputes_content_length():
    message = parse_datagram(INVITE_WITH_BODY)
    message.body = b"v=0\r\n"
    again = parse_datagram(message.to_bytes())
    assert again.body == b"v=0\r\n"
    assert again.headers.get("content-length") == "5"
    assert [again.method, again.uri_text, again.call_id] == ["INVITE", "sip:102@127.0.0.1",
                                                             "call-1"]


def test_datagram_content_length_shorter_than_body_cuts_the_body():
    message = parse_datagram(INVITE_WITH_BODY + b"trailing junk")
    assert message.body == b"v=0\r\no=x\r\n\r\n"


def test_datagram_without_content_length_takes_the_rest_as_body():
    data = INVITE_WITH_BODY.replace(b"Content-Length: 12\r\n", b"")
    assert parse_datagram(data).body == b"v=0\r\no=x\r\n\r\n"


def test_message_over_the_size_limit_is_answered_513():
    big = REGISTER.replace(b"Content-Length: 0\r\n",
                           b"X-Padding: " + b"a" * 3000 + b"\r\nContent-Length: 0\r\n")
    with pytest.raises(RemoteProtocolError) as caught:
        parse_datagram(big, Limits(max_message_bytes=2048))
    assert caught.value.status_hint == 513 and caught.value.message is not None


def test_lf_only_line_endings_are_tolerated_on_datagrams():
    message = parse_datagram(REGISTER.replace(b"\r\n", b"\n"))
    assert message.call_id == "reg-1@10.0.0.5"


# -- streams -----------------------------------------------------------------------------------

STREAM = REGISTER + b"\r\n\r\n" + INVITE_WITH_BODY + b"\r\n" + REGISTER


def _methods(items):
    return [item.method if isinstance(item, Request) else item for item in items]


def test_stream_framing_whole():
    items = StreamFramer().feed(STREAM)
    assert _methods(items) == ["REGISTER", PING, "INVITE", "REGISTER"]
    assert items[2].body == b"v=0\r\no=x\r\n\r\n"


def test_stream_framing_one_byte_at_a_time_gives_the_same_messages():
    framer = StreamFramer()
    items = []
    for index in range(len(STREAM)):
        items.extend(framer.feed(STREAM[index:index + 1]))
    assert _methods(items) == ["REGISTER", PING, "INVITE", "REGISTER"]
    assert items[2].body == b"v=0\r\no=x\r\n\r\n"
    assert items[3].headers.get("contact") == \
        '<sip:101@10.0.0.5:5070;ob>;expires=60;+sip.instance="<urn:uuid:1>"'


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=12))
def test_stream_framing_any_chunking(cuts):
    points = sorted(set(cuts))
    chunks, start = [], 0
    for point in [*points, len(STREAM)]:
        chunks.append(STREAM[start:point])
        start = point
    framer = StreamFramer()
    items = [item for chunk in chunks for item in framer.feed(chunk)]
    assert _methods(items) == ["REGISTER", PING, "INVITE", "REGISTER"]


def test_stream_without_content_length_loses_framing_and_says_so():
    framer = StreamFramer()
    items = framer.feed(REGISTER.replace(b"Content-Length: 0\r\n", b""))
    assert len(items) == 1 and isinstance(items[0], RemoteProtocolError)
    assert items[0].fatal and items[0].message is not None
    assert framer.broken and framer.feed(REGISTER) == []


def test_stream_message_too_large_is_fatal_513():
    framer = StreamFramer(Limits(max_message_bytes=1024))
    items = framer.feed(INVITE_WITH_BODY.replace(b"Content-Length: 12", b"Content-Length: 5000"))
    assert items[0].status_hint == 513 and items[0].fatal


def test_endless_header_block_on_a_stream_is_cut_off():
    framer = StreamFramer(Limits(max_message_bytes=1024))
    items = []
    for _ in range(40):
        items += framer.feed(b"X-Junk: " + b"y" * 60 + b"\r\n")
    assert items and items[0].fatal and items[0].status_hint == 513


def test_a_bad_message_on_a_stream_is_answered_and_the_stream_continues():
    bad = REGISTER.replace(b"CSeq: 7 REGISTER", b"CSeq: 7 INVITE")
    items = StreamFramer().feed(bad + REGISTER)
    assert isinstance(items[0], RemoteProtocolError) and not items[0].fatal
    assert items[0].message is not None
    assert isinstance(items[1], Request)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_escapes_as_anything_but_a_protocol_error(data):
    with contextlib.suppress(RemoteProtocolError):
        parse_datagram(data)
    framer = StreamFramer()
    for item in framer.feed(data):
        assert isinstance(item, (Request, Response, RemoteProtocolError)) or item is PING


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(REGISTER) - 1), st.binary(min_size=1, max_size=3))
def test_mutated_messages_parse_or_fail_cleanly(position, noise):
    data = REGISTER[:position] + noise + REGISTER[position + len(noise):]
    try:
        message = parse_datagram(data)
    except RemoteProtocolError:
        return
    message.to_bytes()
