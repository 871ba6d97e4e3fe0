"""The HTTP/1.1 response parser (h11 with the strict reader's limits), fed whole, byte by byte,
and split at random points."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.sync.http import HttpError, IncompleteResponse, ResponseParser, encode_request

CASES = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"v1\"\r\n\r\nhello", 200, b"hello"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nX-Trailer: 1\r\n\r\n", 200, b"hello"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}",
     201, b"{}"),
    (b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n", 304, b""),
    (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
    (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
     503, b""),
]


def _parse(chunks, method="GET"):
    parser = ResponseParser(request_method=method)
    for chunk in chunks:
        response = parser.feed(chunk)
        if response is not None:
            return response
    return parser.end_of_stream()


@pytest.mark.parametrize("raw, status, body", CASES)
def test_whole_and_byte_by_byte_give_the_same_response(raw, status, body):
    whole = _parse([raw])
    single = _parse([raw[i:i + 1] for i in range(len(raw))])
    assert whole == single
    assert (whole.status, whole.body) == (status, body)


@given(st.sampled_from(CASES), st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_any_split_gives_the_same_response(case, cuts):
    raw, status, body = case
    points = sorted({c % (len(raw) + 1) for c in cuts})
    chunks = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    response = _parse(chunks)
    assert (response.status, response.body) == (status, body)


def test_repeated_headers_are_joined_and_names_lower_cased():
    response = _parse([b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n"])
    assert response.header("X-A") == "1, 2"


def test_body_delimited_by_close():
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.0 200 OK\r\n\r\npart one, ") is None
    assert parser.feed(b"part two") is None
    assert parser.end_of_stream().body == b"part one, part two"


def test_head_response_has_no_body_whatever_content_length_says():
    response = _parse([b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"], method="HEAD")
    assert response.body == b""


@pytest.mark.parametrize("raw, message", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "Transfer-Encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n", "chunk footer"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 30 + b"\r\n",
     "bad chunk"),
    (b"HTTP/2 200\r\n\r\n", "status line"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", "illegal header line"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "more than 100"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 40000 + b"\r\n\r\n", "longer than"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n", "over the limit"),
])
def test_protocol_violations_are_refused(raw, message):
    with pytest.raises(HttpError, match=message):
        _parse([raw])


def test_a_head_longer_than_the_limit_is_refused_however_it_arrives():
    raw = b"HTTP/1.1 200 OK\r\nX: " + b"a" * 40000 + b"\r\n\r\n"
    for chunks in ([raw], [raw[:20000], raw[20000:]]):
        with pytest.raises(HttpError, match="longer than"):
            _parse(chunks)


def test_a_body_over_the_limit_is_refused_however_it_is_framed():
    for head in (b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 5000,
                 b"\r\n"):  # chunked, or delimited by close
        parser = ResponseParser(max_body=4096)
        with pytest.raises(HttpError, match="over the limit"):
            parser.feed(b"HTTP/1.1 200 OK\r\n" + head + b"x" * 5000)
            parser.end_of_stream()


def test_truncated_response_is_incomplete():
    with pytest.raises(IncompleteResponse):
        _parse([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"])
    with pytest.raises(IncompleteResponse):
        _parse([b"HTTP/1.1 200 OK\r\nContent-Le"])


def test_request_encoding():
    data = encode_request("POST", "/v1/enroll", host="127.0.0.1:8443",
                          headers={"Content-Type": "application/json"}, body=b"{}")
    assert data == (b"POST /v1/enroll HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nConnection: close\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    with pytest.raises(ValueError):
        encode_request("GET", "/x\r\nInjected: 1", host="h")
    with pytest.raises(ValueError):
        encode_request("GET", "/", host="h", headers={"X": "a\r\nB: c"})
