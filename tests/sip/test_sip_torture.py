"""Our own versions of the RFC 4475 torture tests, run through the whole core.

Valid messages must be accepted (a REGISTER or INVITE is then challenged, an OPTIONS to us is
answered 200); invalid ones get the 4xx/5xx their defect calls for, or are dropped when not
even a response can be routed. Nothing raises.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.sip.abuse import AbusePolicy
from appliance.sip.core import ANSWER_MEMORY_BYTES
from appliance.sip.flow import Flow
from appliance.sip.parser import StreamFramer, parse_datagram
from jbcbench import sipua

SOURCE = Flow("udp", "10.9.0.1", 5099)


def message(*lines: str, body: bytes = b"", length: int | None = None) -> bytes:
    head = "\r\n".join(lines)
    if length is not None or body:
        head += f"\r\nContent-Length: {len(body) if length is None else length}"
    return (head + "\r\n\r\n").encode("utf-8") + body


BASE = [
    "Via: SIP/2.0/UDP 10.9.0.1:5099;branch=z9hG4bKtorture{n}",
    "Max-Forwards: 70",
    "From: <sip:101@127.0.0.1>;tag=t{n}",
    "To: <sip:102@127.0.0.1>",
    "Call-ID: torture-{n}",
]

VALID = {
    # Tortuous but legal: case, compact forms, odd white space, folding, escapes, combined Via.
    "wsinv": message(
        "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0",
        "TO :",
        " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
        'from   : "J Rosenberg \\\\\\"\"       <sip:jdrosen@example.com>',
        "  ;",
        "  tag = 98asjd8",
        "MaX-fOrWaRdS: 0068",
        "Call-ID: wsinv.ndaksdj@192.0.2.1",
        "Content-Length   : 0",
        "cseq: 0009",
        "  INVITE",
        "Via  : SIP  /   2.0",
        " /UDP",
        "    192.0.2.2;branch=390skdjuw",
        "s :",
        "NewFangledHeader:   newfangled value",
        " continued newfangled value",
        "UnknownHeaderWithUnusualValue: ;;,,;;,;",
        "Content-Type: application/sdp",
        "Route:",
        " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
        "v:  SIP  / 2.0  / TCP     spindle.example.com   ;",
        "  branch  =   z9hG4bK9ikj8  ,",
        " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
        " z9hG4bK30239",
        "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =",
        "      newvalue ;",
        "  secondparam ; q = 0.33"),
    "intmeth": message(
        "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$"
        "/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0",
        "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
        'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy'
        "?,/;;*@example.com>",
        "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
        '"\\"\\"\\"\\"\\"\\"\\"\\"\\"\\"";tag=_token~1\'+`*%!-.',
        "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
        "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~",
        "Max-Forwards: 255",
        "extensionHeader-!.%*+_`'~:\ufeffamazing",
        "Content-Length: 0"),
    "esc01": message(
        "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0",
        "To: sip:%75se%72@example.com",
        "From: <sip:I%20have%20spaces@example.net>;tag=938",
        "Max-Forwards: 87",
        "i: esc01.239409asdfakjkn23onasd0-3234",
        "CSeq: 234234 INVITE",
        "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
        "C: application/sdp",
        "Contact: <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
        "Content-Length: 0"),
    "escnull": message(
        "REGISTER sip:example.com SIP/2.0",
        "To: sip:null-%00-null@example.com",
        "From: sip:null-%00-null@example.com;tag=839923423",
        "Max-Forwards: 70",
        "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
        "CSeq: 14398234 REGISTER",
        "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
        "Contact: <sip:%00@host5.example.com>",
        "Contact: <sip:%00%00@host5.example.com>",
        "L:0"),
    "lwsdisp": message(
        "OPTIONS sip:127.0.0.1 SIP/2.0",
        "To: sip:user@example.com",
        "From: caller<sip:caller@example.com>;tag=323",
        "Max-Forwards: 70",
        "Call-ID: lwsdisp.1234abcd@funky.example.com",
        "CSeq: 60 OPTIONS",
        "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw",
        "l: 0"),
    "longreq": message(
        "INVITE sip:user@example.com SIP/2.0",
        "To: \"I have a user name of " + "extreme " * 60 + "proportion\"<sip:user@example.com"
        ":6000;unknownparam=" + "very" * 100 + "long>",
        "From: sip:" + "amazinglylongcallername" * 20 + "@example.net;tag=12982424;"
        "unknownheaderparamname=" + "unknowheaderparamvalue" * 30,
        "Call-ID: longreq.onereallyreallyreallyreallyreallyreallyreallyreallylongcallid",
        "CSeq: 3882340 INVITE",
        "Max-Forwards: 70",
        *[f"Via: SIP/2.0/TCP sip{i}.example.com;branch=z9hG4bK{i}" for i in range(1, 60)],
        "Content-Length: 0"),
    "semiuri": message(
        "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0",
        "To: sip:j_user@example.com",
        "From: sip:caller@example.org;tag=33242",
        "Max-Forwards: 3",
        "Call-ID: semiuri.0ha0isndaksdj",
        "CSeq: 8 OPTIONS",
        "Accept: application/sdp, application/pkcs7-mime,",
        "        multipart/mixed, multipart/signed,",
        "        message/sip, message/sipfrag",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw",
        "l: 0"),
    "transports": message(
        "OPTIONS sip:127.0.0.1 SIP/2.0",
        "To: sip:user@example.com",
        "From: <sip:caller@example.com>;tag=323",
        "Max-Forwards: 70",
        "Call-ID: transports.kijh4akdnaqjkwendsasfdj",
        "Accept: application/sdp",
        "CSeq: 60 OPTIONS",
        "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
        "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
        "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj",
        "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
        "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee",
        "l: 0"),
    "novelsc": message(
        "OPTIONS sip:127.0.0.1 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK3j4kKdj",
        "To: isbn:2983792873",
        "From: <http://www.example.com>;tag=3234233",
        "Call-ID: novelsc.0ha0isndaksdj@192.0.2.2",
        "CSeq: 1 OPTIONS",
        "Max-Forwards: 70",
        "Contact: <name:John_Smith>",
        "l: 0"),
    "noreason-response": message(
        "SIP/2.0 100 ",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnoreason",
        "From: <sip:a@h>;tag=1", "To: <sip:b@h>", "Call-ID: noreason", "CSeq: 1 INVITE",
        "l: 0"),
    "unreason-response": message(
        "SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKunreason",
        "From: <sip:a@h>;tag=1", "To: <sip:b@h>;tag=2", "Call-ID: unreason",
        "CSeq: 1 INVITE", "l: 0"),
    "inv2543": message(
        "INVITE sip:UserB@example.com SIP/2.0",
        "Via: SIP/2.0/UDP iftgw.example.com",
        "From: <sip:+13035551111@ift.client.example.net;user=phone>",
        "Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>",
        "To: sip:+16505552222@ss1.example.net;user=phone",
        "Call-ID: inv2543.1717@ift.client.example.com",
        "CSeq: 56 INVITE",
        "Content-Type: application/sdp",
        body=b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.5\r\ns=-\r\n"
             b"c=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 49217 RTP/AVP 0\r\n"),
    "mpart01": message(
        "MESSAGE sip:kumiko@example.org SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-",
        "Max-Forwards: 70",
        "Route: <sip:127.0.0.1:5060;lr>",
        "Call-ID: 0009b7da-0352000f-30a69b83-0e7b53d6@127.0.0.1",
        "CSeq: 1 MESSAGE",
        "From: \"Fred\" <sip:fluffy@example.com>;tag=2fb0dcc9",
        "To: sip:kumiko@example.org",
        'Content-Type: multipart/mixed;boundary="boundary1"',
        body=b"--boundary1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--boundary1--\r\n"),
}

INVALID = {
    # name: (message, expected status or None for "dropped")
    "clerr": (message("INVITE sip:102@127.0.0.1 SIP/2.0", *BASE, "CSeq: 1 INVITE",
                      "Content-Type: application/sdp", body=b"v=0\r\n", length=9999), 400),
    "ncl": (message("INVITE sip:102@127.0.0.1 SIP/2.0", *BASE, "CSeq: 1 INVITE",
                    "Content-Length: -999"), 400),
    "scalar02-cseq": (message("REGISTER sip:127.0.0.1 SIP/2.0", *BASE,
                              "CSeq: 36893488147419103232 REGISTER", "l: 0"), 400),
    "scalar02-max-forwards": (message("REGISTER sip:127.0.0.1 SIP/2.0", *BASE[:1], *BASE[2:],
                                      "Max-Forwards: 300", "CSeq: 1 REGISTER", "l: 0"), 400),
    "scalarlg-expires": (message("REGISTER sip:127.0.0.1 SIP/2.0", *BASE, "CSeq: 1 REGISTER",
                                 "Expires: 1" + "0" * 20, "l: 0"), 400),
    "quotbal": (message("INVITE sip:102@127.0.0.1 SIP/2.0", *BASE[:2],
                        'From: "Bell, Alexander <sip:a.g.bell@bell-tel.com>;tag=43',
                        *BASE[3:], "CSeq: 1 INVITE", "l: 0"), 400),
    "ltgtruri": (message("INVITE <sip:102@127.0.0.1> SIP/2.0", *BASE, "CSeq: 1 INVITE",
                         "l: 0"), 400),
    "lwsruri": (message("INVITE sip:user@example.com; lr SIP/2.0", *BASE, "CSeq: 1 INVITE",
                        "l: 0"), 400),
    "lwsstart": (message("INVITE  sip:102@127.0.0.1  SIP/2.0", *BASE, "CSeq: 1 INVITE",
                         "l: 0"), 400),
    "trws": (message("OPTIONS sip:127.0.0.1 SIP/2.0 ", *BASE, "CSeq: 1 OPTIONS", "l: 0"), 400),
    "escruri": (message("INVITE sip:102@127.0.0.1?Route=%3Csip:example.com%3E SIP/2.0", *BASE,
                        "CSeq: 1 INVITE", "l: 0"), 400),
    "badaspec": (message("OPTIONS sip:127.0.0.1 SIP/2.0", *BASE[:2],
                         "From: sip:user@example.org;tag=1", "To: sip:user@example.com:5060;"
                         "transport=udp ?x=y", *BASE[4:], "CSeq: 1 OPTIONS", "l: 0"), 400),
    "baddn": (message("OPTIONS sip:127.0.0.1 SIP/2.0", *BASE[:2],
                      "From: Bell, Alexander <sip:a.g.bell@bell-tel.com>;tag=43",
                      *BASE[3:], "CSeq: 1 OPTIONS", "l: 0"), 400),
    "badvers": (message("OPTIONS sip:127.0.0.1 SIP/7.0", *BASE, "CSeq: 1 OPTIONS", "l: 0"),
                505),
    "mismatch01": (message("OPTIONS sip:127.0.0.1 SIP/2.0", *BASE, "CSeq: 1 INVITE", "l: 0"),
                   400),
    "mismatch02": (message("NEWMETHOD sip:127.0.0.1 SIP/2.0", *BASE, "CSeq: 1 INVITE",
                           "l: 0"), 400),
    "insuf": (message("INVITE sip:102@127.0.0.1 SIP/2.0", BASE[0], "CSeq: 1 INVITE",
                      "l: 0"), 400),
    "multi01": (message("INVITE sip:102@127.0.0.1 SIP/2.0", *BASE, "CSeq: 1 INVITE",
                        "To: <sip:103@127.0.0.1>", "Call-ID: other", "l: 0"), 400),
    "unkscm": (message("OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0", *BASE,
                       "CSeq: 1 OPTIONS", "l: 0"), 416),
    "zeromf": (message("INVITE sip:102@127.0.0.1 SIP/2.0", *BASE[:1], *BASE[2:],
                       "Max-Forwards: 0", "CSeq: 1 INVITE", "l: 0"), 483),
    "bext01": (message("OPTIONS sip:102@127.0.0.1 SIP/2.0", *BASE, "CSeq: 1 OPTIONS",
                       "Proxy-Require: newfeature1, newfeature2", "l: 0"), 420),
    "regbadct": (message("REGISTER sip:127.0.0.1 SIP/2.0", *BASE[:3],
                         "To: sip:101@127.0.0.1", *BASE[4:], "CSeq: 1 REGISTER",
                         "Contact: sip:101@10.9.0.1:5099?Route=x", "l: 0"), 400),
    "badbranch-quote": (message('OPTIONS sip:127.0.0.1 SIP/2.0',
                                'Via: SIP/2.0/UDP 10.9.0.1:5099;branch="z9hG4bK1',
                                *BASE[1:], "CSeq: 1 OPTIONS", "l: 0"), None),
    "no-via": (message("OPTIONS sip:127.0.0.1 SIP/2.0", *BASE[1:], "CSeq: 1 OPTIONS", "l: 0"),
               None),
    "bigcode-response": (message("SIP/2.0 4294967301 better not break the receiver",
                                 *BASE, "CSeq: 1 INVITE", "l: 0"), None),
    "no-empty-line": (("OPTIONS sip:127.0.0.1 SIP/2.0\r\n" + "\r\n".join(BASE)).encode(),
                      None),
}


def _fill(data: bytes, n: int) -> bytes:
    return data.replace(b"{n}", str(n).encode())


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_torture_message_parses(name):
    message = parse_datagram(VALID[name])
    message.to_bytes()  # and serialises back


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_torture_message_is_accepted_by_the_core(name, net):
    before = net.core.stats["malformed"]
    net.core.receive_datagram(VALID[name], SOURCE, net.now)
    sent = [sipua.parse_message(item.data) for item in net.core.take_transmits()]
    assert net.core.stats["malformed"] == before
    assert net.core.stats["internal_errors"] == 0
    for reply in sent:
        assert reply.status not in (400, 500), (name, reply.start)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_torture_message_gets_its_answer(name, net):
    data, expected = INVALID[name]
    net.core.receive_datagram(_fill(data, 1), SOURCE, net.now)
    sent = [sipua.parse_message(item.data) for item in net.core.take_transmits()]
    assert net.core.stats["internal_errors"] == 0
    if expected is None:
        assert sent == [], [m.start for m in sent]
    else:
        assert [m.status for m in sent] == [expected], [m.start for m in sent]
        assert sent[0].header("via") is not None


def test_wsinv_reads_the_way_the_rfc_intends():
    message = parse_datagram(VALID["wsinv"])
    assert message.to_tag == "1918181833n"
    assert message.from_tag == "98asjd8"
    assert message.cseq == (9, "INVITE")
    assert message.int_header("max-forwards") == 68
    assert message.top_via.transport == "UDP" and message.top_via.host == "192.0.2.2"
    vias = message.headers.values("via")
    assert len(vias) == 3
    contact = message.addresses("contact")[0]
    assert contact.param("q") == "0.33"
    assert message.headers.get("newfangledheader") == "newfangled value continued newfangled value"


def test_escaped_user_parts_are_read_unescaped():
    message = parse_datagram(VALID["esc01"])
    assert message.uri.user_text == "sips:user@example.com"
    assert message.from_.uri.user_text == "I have spaces"
    null = parse_datagram(VALID["escnull"])
    assert null.to.uri.user_text == "null-\x00-null"


def test_rfc2543_invite_without_branch_is_answered_and_its_retransmission_gets_that_answer(
        net):
    gateway = Flow("udp", "127.0.0.1", 5062)  # trusted: no challenge, routed (to nowhere)
    data = VALID["inv2543"].replace(b"Via: SIP/2.0/UDP iftgw.example.com",
                                    b"Via: SIP/2.0/UDP 127.0.0.1:5062")
    net.core.receive_datagram(data, gateway, net.now)
    first = [sipua.parse_message(i.data).status for i in net.core.take_transmits()]
    net.core.receive_datagram(data.replace(b"\r\n\r\n", b"\r\n\r\n", 1), gateway,
                              net.now + 0.5)
    again = [sipua.parse_message(i.data).status for i in net.core.take_transmits()]
    assert first == [404] and again == [404]
    assert not net.core.layer.servers  # answered at once: statelessly, remembered by bytes
    assert net.core.stats["retransmissions"] == 1


def test_challenges_leave_no_transaction_behind(net):
    net.core.receive_datagram(VALID["inv2543"], SOURCE, net.now)
    assert [sipua.parse_message(i.data).status for i in net.core.take_transmits()] == [407]
    assert not net.core.layer.servers


VARIANTS = [VALID["wsinv"], VALID["esc01"], VALID["mpart01"], VALID["inv2543"],
            *(data for data, _ in INVALID.values())]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(VARIANTS), st.integers(min_value=0, max_value=2000),
       st.binary(min_size=1, max_size=8))
def test_no_mutated_message_ever_raises_out_of_the_core(make_net, data, position, noise):
    net = make_net()
    position %= len(data)
    mutated = data[:position] + noise + data[position + len(noise):]
    net.core.receive_datagram(mutated, SOURCE, net.now)
    for item in StreamFramer().feed(mutated):
        net.core.receive_stream_item(item, Flow("tcp", "10.9.0.1", 40000, 1), net.now)
    assert net.core.stats["internal_errors"] == 0


@pytest.mark.parametrize("where", ["unechoed header", "echoed To header"])
def test_a_flood_of_huge_unauthenticated_requests_is_remembered_by_bytes(make_net, where):
    net = make_net(abuse=AbusePolicy(burst=100_000))
    padding = "x" * 50_000
    for index in range(300):  # 15 MB of requests (and, echoed, of answers) for an 8 MiB table
        flow = Flow("udp", f"10.1.{index % 50}.1", 5060)
        local = (flow.host, flow.port)
        if where == "unechoed header":
            data = sipua.register("101", "127.0.0.1", local=local, call_id=f"f{index}",
                                  cseq=1, headers=[("X-Padding", padding)])
        else:
            data = sipua.request("REGISTER", "sip:127.0.0.1", local=local, call_id=f"f{index}",
                                 cseq=1, to=f'"{padding}" <sip:101@127.0.0.1>',
                                 from_="<sip:101@127.0.0.1>;tag=f")
        net.core.receive_datagram(data, flow, net.now)
        assert [sipua.parse_message(t.data).status for t in net.core.take_transmits()] == [401]
    memory = net.core.answers
    assert memory.bytes <= ANSWER_MEMORY_BYTES
    assert all(len(digest) == 16 for digest, _, _ in memory._entries)  # never the request
    assert not net.core.layer.servers
    net.core.receive_datagram(data, flow, net.now + 1)  # the last one, retransmitted
    assert len(net.core.take_transmits()) == 1 and net.core.stats["retransmissions"] == 1


def test_an_unterminated_quote_in_a_list_header_is_answered_400_not_an_internal_error(net):
    data = sipua.request("OPTIONS", "sip:102@127.0.0.1", local=("10.9.0.1", 5099),
                         to="<sip:102@127.0.0.1>", from_="<sip:101@127.0.0.1>;tag=q",
                         call_id="quote", cseq=1,
                         headers=[("Proxy-Require", '"newfeature1, newfeature2')])
    net.core.receive_datagram(data, SOURCE, net.now)
    assert [sipua.parse_message(t.data).status for t in net.core.take_transmits()] == [400]
    assert net.core.stats["internal_errors"] == 0
