"""The WAN probes' pure codecs: DNS queries/answers and SIP OPTIONS, against hand-made bytes
and against the bench's independently written DNS responder and SIP edge."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.wan import dns, sip_options
from jbcbench.cloud_edge import DnsResponder, SipEdge, parse_sip_request

# -- DNS ---------------------------------------------------------------------------------------

QUERY_EXAMPLE = bytes.fromhex(
    "1234" "0100" "0001" "0000" "0000" "0000"   # id, RD, 1 question
    "076578616d706c6503636f6d00"                # example.com
    "0001" "0001")                              # A, IN


def test_a_query_is_laid_out_as_rfc_1035_says():
    assert dns.build_query(0x1234, "example.com") == QUERY_EXAMPLE
    assert dns.build_query(0x1234, "example.com.") == QUERY_EXAMPLE


def answer(*, rcode=0, flags=0x8180, records=b"", count=0, qname=b"\x07example\x03com\x00",
           query_id=0x1234, qtype=1) -> bytes:
    return (struct.pack("!HHHHHH", query_id, flags | rcode, 1, count, 0, 0) + qname
            + struct.pack("!HH", qtype, 1) + records)


def a_record(address: bytes, ttl=300, owner=b"\xc0\x0c") -> bytes:
    return owner + struct.pack("!HHIH", 1, 1, ttl, 4) + address


def test_addresses_come_out_of_a_compressed_answer_with_a_cname_chain():
    cname = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, 6) + b"\x03www\xc0\x0c"
    # the A record's owner is the CNAME target, itself a pointer into the CNAME's data
    target_offset = 12 + 13 + 4 + 12
    record = a_record(bytes([192, 0, 2, 7]), ttl=120,
                      owner=bytes([0xC0, target_offset]))
    parsed = dns.parse_response(answer(records=cname + record, count=2), query_id=0x1234,
                                name="example.com")
    assert parsed.rcode == 0 and parsed.addresses == ("192.0.2.7",) and parsed.ttl == 120


def test_several_a_records_and_the_smallest_ttl():
    records = a_record(bytes([192, 0, 2, 1]), 300) + a_record(bytes([192, 0, 2, 2]), 30)
    parsed = dns.parse_response(answer(records=records, count=2), query_id=0x1234,
                                name="EXAMPLE.com")
    assert parsed.addresses == ("192.0.2.1", "192.0.2.2") and parsed.ttl == 30


@pytest.mark.parametrize(("rcode", "name"), [(2, "SERVFAIL"), (3, "NXDOMAIN"), (5, "REFUSED")])
def test_error_rcodes_are_reported_not_raised(rcode, name):
    parsed = dns.parse_response(answer(rcode=rcode), query_id=0x1234, name="example.com")
    assert parsed.rcode_name == name and parsed.addresses == ()


@pytest.mark.parametrize(("data", "words"), [
    (answer(query_id=0x9999), "does not match"),
    (answer(flags=0x0100), "not a response"),
    (answer(qname=b"\x05other\x03com\x00"), "not our question"),
    (answer(qtype=28), "not our question"),
    (answer()[:27], "question section cut short"),
    (answer()[:20], "past the end"),
    (answer(records=b"\xc0\x0c\x00\x01", count=1), "cut short"),
    (b"\x12\x34" + b"\x81\x80\x00\x01" + b"\x00" * 6 + b"\xc0\x0c\x00\x01\x00\x01",
     "pointer loop"),
    (b"\x12\x34", "shorter than a DNS header"),
])
def test_unusable_answers_raise_dns_error(data, words):
    with pytest.raises(dns.DnsError, match=words):
        dns.parse_response(data, query_id=0x1234, name="example.com")


def test_a_truncated_answer_keeps_what_it_has():
    records = a_record(bytes([192, 0, 2, 1])) + a_record(bytes([192, 0, 2, 2]))[:7]
    parsed = dns.parse_response(answer(records=records, count=2, flags=0x8380),
                                query_id=0x1234, name="example.com")
    assert parsed.truncated and parsed.addresses == ("192.0.2.1",)


@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_dns_error(data):
    with contextlib.suppress(dns.DnsError):
        dns.parse_response(data, query_id=0x1234, name="example.com")


def test_labels_and_names_are_checked():
    with pytest.raises(ValueError):
        dns.encode_name("a" * 64 + ".com")
    with pytest.raises(ValueError):
        dns.encode_name(".".join(["abcdefghij"] * 30))


def test_our_queries_and_the_bench_responder_understand_each_other():
    responder = DnsResponder({"sip.east.cloud.test": ["10.65.0.10", "10.65.0.11"]})
    reply = responder.answer(dns.build_query(777, "SIP.east.cloud.test"))
    parsed = dns.parse_response(reply, query_id=777, name="sip.east.cloud.test")
    assert parsed.addresses == ("10.65.0.10", "10.65.0.11") and parsed.rcode == 0
    responder.mode = "servfail"
    parsed = dns.parse_response(responder.answer(dns.build_query(778, "sip.east.cloud.test")),
                                query_id=778, name="sip.east.cloud.test")
    assert parsed.rcode_name == "SERVFAIL"
    responder.mode = "answer"
    parsed = dns.parse_response(responder.answer(dns.build_query(779, "nope.cloud.test")),
                                query_id=779, name="nope.cloud.test")
    assert parsed.rcode_name == "NXDOMAIN"


# -- SIP OPTIONS -------------------------------------------------------------------------------


def options(transport="udp", port=5060):
    return sip_options.build_options(host="10.65.0.10", port=port, transport=transport,
                                     server_name="sip.east.cloud.test", local_host="10.64.0.2",
                                     local_port=40000)


@pytest.mark.parametrize(("transport", "port", "uri"), [
    ("udp", 5060, "sip:sip.east.cloud.test"),
    ("tcp", 5060, "sip:sip.east.cloud.test;transport=tcp"),
    ("tls", 5061, "sips:sip.east.cloud.test"),
    ("udp", 5080, "sip:sip.east.cloud.test:5080"),
])
def test_the_options_request_is_well_formed(transport, port, uri):
    request = options(transport, port)
    parsed = parse_sip_request(request.data)
    assert parsed.method == "OPTIONS" and parsed.uri == uri
    via = parsed.first("via")
    assert via.startswith(f"SIP/2.0/{transport.upper()} 10.64.0.2:40000;branch=z9hG4bK")
    assert request.branch in via and parsed.first("call-id") == request.call_id
    assert parsed.first("cseq") == "1 OPTIONS" and parsed.first("max-forwards") == "70"
    assert ";tag=" in parsed.first("from") and parsed.first("content-length") == "0"
    assert request.data.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("status", [200, 503])
def test_the_edge_answer_matches_our_request(status):
    edge = SipEdge()
    edge.status = None if status == 200 else status
    request = options()
    reply = edge.handle(request.data, transport="UDP", source=("10.64.0.2", 40000))
    response = sip_options.parse_response(reply)
    assert response.status == status
    assert sip_options.answers(response, request)
    assert not sip_options.answers(response, options()), "another request's answer"


def test_compact_and_folded_headers_are_understood():
    request = options()
    data = (f"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 10.64.0.2:40000;branch={request.branch}\r\n"
            f"f: <sip:wan-probe@10.64.0.2>;tag=1\r\nt: <sip:edge>;tag=2\r\n"
            f"i: {request.call_id}\r\nCSeq:\r\n  1 OPTIONS\r\nl: 0\r\n\r\n").encode()
    response = sip_options.parse_response(data)
    assert sip_options.answers(response, request)


@pytest.mark.parametrize("data", [
    b"", b"OPTIONS sip:x SIP/2.0\r\n\r\n", b"SIP/2.0 abc OK\r\n\r\n", b"SIP/2.0 99 Low\r\n\r\n",
    b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n", b"\xff\xfe\r\n\r\n",
    b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n",  # no Via, From, To, CSeq
])
def test_malformed_responses_raise_sip_probe_error(data):
    with pytest.raises(sip_options.SipProbeError):
        sip_options.parse_response(data)


@given(st.binary(max_size=300))
def test_garbage_responses_never_raise_anything_else(data):
    with contextlib.suppress(sip_options.SipProbeError):
        sip_options.parse_response(data)


def test_the_stream_framer_yields_whole_responses_fed_whole_or_byte_by_byte():
    request = options("tcp")
    edge = SipEdge()
    first = edge.handle(request.data, transport="TCP", source=("10.64.0.2", 40000))
    edge.status = 503
    second = edge.handle(request.data, transport="TCP", source=("10.64.0.2", 40000))
    stream = b"\r\n" + first + b"\r\n\r\n" + second  # a keep-alive between the two
    statuses = [r.status for r in sip_options.StreamFramer().feed(stream)]
    assert statuses == [200, 503]
    framer = sip_options.StreamFramer()
    got = []
    for byte in stream:
        got += framer.feed(bytes([byte]))
    assert [r.status for r in got] == [200, 503]
    assert all(sip_options.answers(r, request) for r in got)
    with pytest.raises(sip_options.SipProbeError):
        sip_options.StreamFramer().feed(b"SIP/2.0 200 OK\r\nContent-Length: x\r\n\r\n")
