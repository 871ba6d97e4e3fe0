"""The WAN probes: each an async function that returns a typed :class:`ProbeResult`.

Every probe leaves through the WAN interface only: its socket is bound to the device
(``SO_BINDTODEVICE``) and to the interface's own source address, so a backup uplink (an LTE
data modem with its own default route) can never make a dead WAN look alive. Datagram probes
(ICMP echo, SIP OPTIONS over UDP, DNS) resend their request every ``retry_interval_s`` until
answered, so a single lost packet does not fail a round; the first answer decides.

ICMP echo and SIP OPTIONS over UDP also say what happened to each attempt
(:attr:`ProbeResult.attempts`), for the voice-quality estimate: every attempt sent before the
one answered was lost (it had at least ``retry_interval_s`` to come back, and a voice packet
that late is lost too); attempts sent after it, and the last one of a probe that timed out,
had no fair chance to be answered and are not counted.

Their round-trip times run from just before the send to the kernel's receive timestamp of
the answer (``SO_TIMESTAMPNS``), so time the daemon's event loop spends elsewhere before it
reads the answer (a registration storm, a loaded machine) is not taken for network jitter.

Failures are never raised; they are results (timeout, refused, unreachable, error) with a few
words saying what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import os
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Iterator

from appliance.sip.message import Response

from . import dns, sip_options
from .observations import ProbeOutcome, ProbeResult, timeout

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACHABLE = 3
ICMP_TIME_EXCEEDED = 11
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
ICMP6_DEST_UNREACHABLE = 1
ICMP6_TIME_EXCEEDED = 3
RECV_SIZE = 65535
HTTP_MAX_HEAD = 16384
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux's SO_TIMESTAMPNS(_OLD) on x86 and ARM (Python's socket module does not name it): the
kernel's receive time of each datagram, a struct timespec of two C longs, as ancillary data."""
_TIMESPEC = struct.Struct("@ll")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WanBinding:
    """Where probes leave from: the WAN device and its current addresses."""

    interface: str
    ipv4: str | None = None
    ipv6: str | None = None

    def source_for(self, address: str) -> str | None:
        return self.ipv6 if ipaddress.ip_address(address).version == 6 else self.ipv4


def wan_socket(binding: WanBinding, address: str, kind: int, proto: int = 0) -> socket.socket:
    """A non-blocking socket for talking to ``address``, bound to the WAN device and address."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        if binding.interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                            binding.interface.encode())
        source = binding.source_for(address)
        if source:
            sock.bind((source, 0))
    except OSError:
        sock.close()
        raise
    return sock


def result_for_error(error: BaseException) -> ProbeResult:
    """Map an exception from socket/ssl code to a probe result."""
    if isinstance(error, TimeoutError):
        return timeout()
    if isinstance(error, ssl.SSLCertVerificationError):
        return ProbeResult(outcome=ProbeOutcome.ERROR,
                           detail=f"certificate not trusted: {error.verify_message}")
    if isinstance(error, ssl.SSLError):
        return ProbeResult(outcome=ProbeOutcome.ERROR, detail=f"TLS: {error.reason or error}")
    if isinstance(error, ConnectionRefusedError):
        return ProbeResult(outcome=ProbeOutcome.REFUSED, detail="connection refused")
    if isinstance(error, (ConnectionResetError, BrokenPipeError)):
        return ProbeResult(outcome=ProbeOutcome.ERROR, detail="connection reset")
    if isinstance(error, OSError):
        name = errno.errorcode.get(error.errno or 0, "")
        text = os.strerror(error.errno) if error.errno else str(error)
        if error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN,
                           errno.EHOSTDOWN, errno.EADDRNOTAVAIL, errno.ENODEV):
            return ProbeResult(outcome=ProbeOutcome.UNREACHABLE, detail=f"{name}: {text}")
        if error.errno in (errno.EPERM, errno.EACCES):
            return ProbeResult(outcome=ProbeOutcome.ERROR,
                               detail=f"not permitted ({name}); jbcd needs CAP_NET_RAW")
        return ProbeResult(outcome=ProbeOutcome.ERROR, detail=f"{name or 'error'}: {text}")
    return ProbeResult(outcome=ProbeOutcome.ERROR, detail=f"{type(error).__name__}: {error}")


# -- ICMP echo ----------------------------------------------------------------------------------


def icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo_request(v6: bool, ident: int, seq: int, payload: bytes) -> bytes:
    kind = ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if v6:  # the kernel fills in the ICMPv6 checksum (it covers a pseudo-header)
        return header + payload
    checksum = icmp_checksum(header + payload)
    return struct.pack("!BBHHH", kind, 0, checksum, ident, seq) + payload


def _open_icmp_socket(binding: WanBinding, address: str) -> tuple[socket.socket, bool]:
    """An ICMP socket: the unprivileged datagram kind where net.ipv4.ping_group_range lets
    our group use it, a raw one (CAP_NET_RAW) otherwise. Returns (socket, is_raw)."""
    v6 = ipaddress.ip_address(address).version == 6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    try:
        return wan_socket(binding, address, socket.SOCK_DGRAM, proto), False
    except PermissionError:
        pass
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT):
            raise
    return wan_socket(binding, address, socket.SOCK_RAW, proto), True


def parse_icmp_reply(packet: bytes, *, raw: bool, v6: bool) -> tuple[str, int, int, bytes]:
    """(kind, ident, seq, payload) of a received ICMP packet; kind is 'reply', 'unreachable',
    'expired' or 'other'. For errors, ident/seq/payload are those of the quoted request."""
    if raw and not v6:
        if len(packet) < 20:
            return "other", 0, 0, b""
        packet = packet[(packet[0] & 0x0F) * 4:]
    if len(packet) < 8:
        return "other", 0, 0, b""
    kind, _code, _checksum, ident, seq = struct.unpack_from("!BBHHH", packet)
    reply, unreachable, expired = ((ICMP6_ECHO_REPLY, ICMP6_DEST_UNREACHABLE,
                                    ICMP6_TIME_EXCEEDED) if v6 else
                                   (ICMP_ECHO_REPLY, ICMP_DEST_UNREACHABLE, ICMP_TIME_EXCEEDED))
    if kind == reply:
        return "reply", ident, seq, packet[8:]
    if kind in (unreachable, expired):
        quoted = packet[8:]
        if not v6:
            if len(quoted) < 20:
                return "other", 0, 0, b""
            quoted = quoted[(quoted[0] & 0x0F) * 4:]
        else:
            quoted = quoted[40:]
        if len(quoted) < 8:
            return "other", 0, 0, b""
        _k, _c, _s, q_ident, q_seq = struct.unpack_from("!BBHHH", quoted)
        return ("unreachable" if kind == unreachable else "expired"), q_ident, q_seq, b""
    return "other", ident, seq, b""


async def probe_icmp_echo(address: str, *, binding: WanBinding, timeout_s: float,
                          retry_interval_s: float) -> ProbeResult:
    """ICMP echo to ``address``; an echo reply to any of our attempts is success."""
    loop = asyncio.get_running_loop()
    v6 = ipaddress.ip_address(address).version == 6
    try:
        sock, raw = _open_icmp_socket(binding, address)
    except OSError as error:
        return result_for_error(error)
    token = secrets.token_bytes(16)
    ident = secrets.randbits(16)
    sent_at: dict[int, float] = {}
    stamp_receptions(sock)
    give_up_at = time.time() + timeout_s
    try:
        if not raw:
            # A datagram connect never blocks; asyncio's sock_connect would try getaddrinfo,
            # which knows no ICMP socket type.
            sock.connect((address, 0))
        async with asyncio.timeout(timeout_s):
            seq = 0
            while True:
                seq += 1
                packet = _echo_request(v6, ident, seq, token)
                sent_at[seq] = time.time()
                try:
                    if raw:
                        await loop.sock_sendto(sock, packet, (address, 0))
                    else:
                        await loop.sock_sendall(sock, packet)
                except OSError as error:
                    return result_for_error(error)
                answer = await _await_echo(loop, sock, raw=raw, v6=v6, ident=ident, token=token,
                                           address=address, sent_at=sent_at,
                                           wait_s=retry_interval_s)
                if answer is not None:
                    return answer
    except TimeoutError:
        # A loop that was busy when the time ran out may not have read a reply the kernel
        # had already received in time: look once more before calling it lost.
        for packet, sender, received_at in drain_stamped(sock):
            answer = _echo_answer(packet, sender, received_at, raw=raw, v6=v6, ident=ident,
                                  token=token, address=address, sent_at=sent_at)
            if answer is not None and received_at <= give_up_at:
                return answer
        return timeout(f"no echo reply to {len(sent_at)} requests",
                       attempts=lost_before(len(sent_at)))
    except OSError as error:
        return result_for_error(error)
    finally:
        sock.close()


async def _await_echo(loop: asyncio.AbstractEventLoop, sock: socket.socket, *, raw: bool,
                      v6: bool, ident: int, token: bytes, address: str,
                      sent_at: dict[int, float], wait_s: float) -> ProbeResult | None:
    """Wait up to ``wait_s`` for a reply to one of our requests; None when it is time to
    send the next attempt."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            while True:
                packet, sender, received_at = await recv_stamped(loop, sock)
                answer = _echo_answer(packet, sender, received_at, raw=raw, v6=v6, ident=ident,
                                      token=token, address=address, sent_at=sent_at)
                if answer is not None:
                    return answer
    return None


def _echo_answer(packet: bytes, sender: tuple, received_at: float, *, raw: bool, v6: bool,
                 ident: int, token: bytes, address: str,
                 sent_at: dict[int, float]) -> ProbeResult | None:
    """The probe's result if ``packet`` answers one of our requests, else None."""
    if raw and not _same_address(sender[0], address):
        return None
    kind, got_ident, seq, payload = parse_icmp_reply(packet, raw=raw, v6=v6)
    # The kernel owns the identifier of datagram ICMP sockets and filters for us.
    if seq not in sent_at or (raw and got_ident != ident):
        return None
    if kind == "reply" and payload.startswith(token):
        rtt = round_trip(sent_at[seq], received_at)
        return ProbeResult(outcome=ProbeOutcome.OK, rtt_s=rtt, attempts=answered_at(seq, rtt))
    if kind in ("unreachable", "expired"):
        what = "destination unreachable" if kind == "unreachable" else "time exceeded"
        return ProbeResult(outcome=ProbeOutcome.UNREACHABLE, detail=f"ICMP {what}")
    return None


def hold_receive_timestamps() -> socket.socket | None:
    """A socket to keep open while probes run, with receive timestamps on. The kernel turns
    its receive timestamping on in deferred work when the first socket asks for it, and off
    when the last one closes; probes opening and closing their own sockets would toggle it,
    and a reply arriving before that work ran is stamped when it is read, not when it
    arrived: a busy loop measured as round-trip time again. None when the kernel refuses."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        sock.close()
        return None
    return sock


def stamp_receptions(sock: socket.socket) -> None:
    """Ask the kernel to timestamp every datagram ``sock`` receives (best effort)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


async def recv_stamped(loop: asyncio.AbstractEventLoop, sock: socket.socket
                       ) -> tuple[bytes, tuple, float]:
    """The next datagram on the non-blocking ``sock``, its sender, and when it arrived
    (``time.time()``'s clock: the kernel's timestamp, or now when there is none)."""
    while True:
        try:
            data, ancillary, _flags, sender = sock.recvmsg(RECV_SIZE, 64)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, sock)
            continue
        return data, sender, receive_time(ancillary)


def receive_time(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive timestamp among ``ancillary`` data, or now when there is none."""
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and \
                len(value) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(value)
            return seconds + nanoseconds / 1e9
    return time.time()


def drain_stamped(sock: socket.socket) -> Iterator[tuple[bytes, tuple, float]]:
    """The datagrams already waiting on the non-blocking ``sock`` (as :func:`recv_stamped`
    gives them), without waiting for more."""
    while True:
        try:
            data, ancillary, _flags, sender = sock.recvmsg(RECV_SIZE, 64)
        except (BlockingIOError, InterruptedError, OSError):
            return
        yield data, sender, receive_time(ancillary)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def round_trip(sent_at: float, received_at: float) -> float:
    """``received_at - sent_at`` on the wall clock, never negative (a clock step)."""
    return max(received_at - sent_at, 0.0)


def answered_at(attempt: int, rtt: float) -> tuple[float | None, ...]:
    """Attempts 1 .. ``attempt``: all lost but the last, answered after ``rtt``."""
    return (None,) * (attempt - 1) + (rtt,)


def lost_before(sent: int) -> tuple[None, ...]:
    """A probe that timed out after ``sent`` attempts: all lost but the last, which had no
    full chance to be answered."""
    return (None,) * max(0, sent - 1)


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b)
    except ValueError:
        return False


# -- DNS ----------------------------------------------------------------------------------------


async def probe_dns(resolver: str, names: tuple[str, ...], *, binding: WanBinding,
                    timeout_s: float, retry_interval_s: float, port: int = 53) -> ProbeResult:
    """Ask ``resolver`` for the IPv4 addresses of every name; OK when all resolve."""
    if not names:
        return ProbeResult(outcome=ProbeOutcome.ERROR, detail="no names to resolve")
    loop = asyncio.get_running_loop()
    try:
        sock = wan_socket(binding, resolver, socket.SOCK_DGRAM)
    except OSError as error:
        return result_for_error(error)
    queries = {secrets.randbits(16): name for name in names}
    while len(queries) < len(names):  # ids must be distinct
        queries = {secrets.randbits(16): name for name in names}
    answers: dict[str, dns.DnsAnswer] = {}
    started = time.monotonic()
    last_answer_at = started
    try:
        await loop.sock_connect(sock, (resolver, port))
        async with asyncio.timeout(timeout_s):
            while len(answers) < len(queries):
                for query_id, name in queries.items():
                    if name not in answers:
                        await loop.sock_sendall(sock, dns.build_query(query_id, name))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(retry_interval_s):
                        while len(answers) < len(queries):
                            data = await loop.sock_recv(sock, RECV_SIZE)
                            if len(data) < 2:
                                continue
                            query_id = struct.unpack_from("!H", data)[0]
                            name = queries.get(query_id)
                            if name is None or name in answers:
                                continue
                            try:
                                answers[name] = dns.parse_response(data, query_id=query_id,
                                                                   name=name)
                            except dns.DnsError:
                                continue  # not a usable answer to our question; keep waiting
                            last_answer_at = time.monotonic()
    except TimeoutError:
        if not answers:
            return timeout(f"{resolver} did not answer")
    except OSError as error:
        return result_for_error(error)
    finally:
        sock.close()
    resolved = tuple((name, answer.addresses) for name, answer in answers.items()
                     if answer.addresses)
    problems = []
    for name in names:
        answer = answers.get(name)
        if answer is None:
            problems.append(f"{name}: no answer")
        elif answer.rcode != dns.Rcode.NOERROR:
            problems.append(f"{name}: {answer.rcode_name}")
        elif not answer.addresses:
            problems.append(f"{name}: no address")
    rtt = last_answer_at - started
    if problems:
        return ProbeResult(outcome=ProbeOutcome.ERROR, rtt_s=rtt, detail="; ".join(problems),
                           addresses=resolved)
    return ProbeResult(outcome=ProbeOutcome.OK, rtt_s=rtt, addresses=resolved)


# -- TCP + TLS ----------------------------------------------------------------------------------


async def _connect(address: str, port: int, *, binding: WanBinding) -> tuple[socket.socket, float]:
    loop = asyncio.get_running_loop()
    sock = wan_socket(binding, address, socket.SOCK_STREAM)
    started = time.monotonic()
    try:
        await loop.sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock, time.monotonic() - started


async def _open_tls(address: str, port: int, *, server_name: str, binding: WanBinding,
                    ssl_context: ssl.SSLContext, limit: int = RECV_SIZE
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    sock, connect_rtt = await _connect(address, port, binding=binding)
    try:
        reader, writer = await asyncio.open_connection(sock=sock, ssl=ssl_context,
                                                       server_hostname=server_name,
                                                       limit=limit)
    except BaseException:
        sock.close()
        raise
    return reader, writer, connect_rtt


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(0.2):
            await writer.wait_closed()


async def probe_tls_handshake(address: str, port: int, *, server_name: str,
                              binding: WanBinding, ssl_context: ssl.SSLContext,
                              timeout_s: float) -> ProbeResult:
    """TCP connect plus a TLS handshake that verifies the cloud's certificate."""
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer, connect_rtt = await _open_tls(
                address, port, server_name=server_name, binding=binding, ssl_context=ssl_context)
            version = writer.get_extra_info("ssl_object").version()
            await _close(writer)
            return ProbeResult(outcome=ProbeOutcome.OK, rtt_s=connect_rtt, detail=version)
    except (TimeoutError, OSError, ssl.SSLError) as error:
        return result_for_error(error)


async def probe_https_get(address: str, port: int, *, server_name: str, path: str,
                          binding: WanBinding, ssl_context: ssl.SSLContext,
                          timeout_s: float) -> ProbeResult:
    """GET of the cloud's health URL: 2xx is healthy, 503 degraded, anything else an error."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer, _connect_rtt = await _open_tls(
                address, port, server_name=server_name, binding=binding, ssl_context=ssl_context,
                limit=HTTP_MAX_HEAD)
            try:
                host = server_name if port == 443 else f"{server_name}:{port}"
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                             "User-Agent: jbc-wan-monitor\r\nAccept: */*\r\n"
                             "Connection: close\r\n\r\n".encode("ascii"))
                sent = time.monotonic()
                head = await reader.readuntil(b"\r\n\r\n")
                rtt = time.monotonic() - sent
            finally:
                await _close(writer)
    except asyncio.LimitOverrunError:
        return ProbeResult(outcome=ProbeOutcome.ERROR, detail="HTTP response head too long")
    except asyncio.IncompleteReadError:
        return ProbeResult(outcome=ProbeOutcome.ERROR, detail="connection closed before an "
                           "HTTP response")
    except (TimeoutError, OSError, ssl.SSLError) as error:
        return result_for_error(error)
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        return ProbeResult(outcome=ProbeOutcome.ERROR,
                           detail=f"not an HTTP response: {status_line[:60]!r}")
    status = int(parts[1])
    text = f"HTTP {status} {parts[2] if len(parts) > 2 else ''}".strip()
    if 200 <= status < 300:
        return ProbeResult(outcome=ProbeOutcome.OK, rtt_s=rtt, detail=text)
    if status == 503:
        return ProbeResult(outcome=ProbeOutcome.DEGRADED, rtt_s=rtt, detail=text)
    return ProbeResult(outcome=ProbeOutcome.ERROR, rtt_s=rtt, detail=text)


# -- SIP OPTIONS ----------------------------------------------------------------------------------


def _sip_result(response: Response, rtt: float,
                attempts: tuple[float | None, ...] = ()) -> ProbeResult:
    text = f"SIP {response.status} {response.reason}".strip()
    if response.status == 503:
        return ProbeResult(outcome=ProbeOutcome.DEGRADED, rtt_s=rtt, detail=text,
                           attempts=attempts)
    return ProbeResult(outcome=ProbeOutcome.OK, rtt_s=rtt, detail=text, attempts=attempts)


async def probe_sip_options(address: str, port: int, *, transport: str, server_name: str,
                            binding: WanBinding, timeout_s: float, retry_interval_s: float,
                            ssl_context: ssl.SSLContext | None = None) -> ProbeResult:
    """SIP OPTIONS to a cloud SIP edge: any final response means reachable; 503 degraded."""
    try:
        if transport == "udp":
            return await _sip_options_udp(address, port, server_name=server_name,
                                          binding=binding, timeout_s=timeout_s,
                                          retry_interval_s=retry_interval_s)
        async with asyncio.timeout(timeout_s):
            return await _sip_options_stream(address, port, transport=transport,
                                             server_name=server_name, binding=binding,
                                             ssl_context=ssl_context)
    except (TimeoutError, OSError, ssl.SSLError) as error:
        return result_for_error(error)
    except sip_options.SipProbeError as error:
        return ProbeResult(outcome=ProbeOutcome.ERROR, detail=f"SIP: {error}")


async def _sip_options_udp(address: str, port: int, *, server_name: str, binding: WanBinding,
                           timeout_s: float, retry_interval_s: float) -> ProbeResult:
    """Each attempt is an OPTIONS transaction of its own (same Call-ID, next CSeq, a new
    branch), so an answer tells which attempt came back: what the voice estimate needs."""
    loop = asyncio.get_running_loop()
    sock = wan_socket(binding, address, socket.SOCK_DGRAM)
    stamp_receptions(sock)
    sent: list[tuple[sip_options.OptionsRequest, float]] = []
    give_up_at = time.time() + timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            await loop.sock_connect(sock, (address, port))
            local_host, local_port = sock.getsockname()[:2]
            first = None
            while True:
                request = sip_options.build_options(
                    host=address, port=port, transport="udp", server_name=server_name,
                    local_host=local_host, local_port=local_port, cseq=len(sent) + 1,
                    call_id=first.call_id if first else None)
                first = first or request
                at = time.time()
                await loop.sock_sendall(sock, request.data)
                sent.append((request, at))
                answer = await _await_options_answer(loop, sock, sent, retry_interval_s)
                if answer is not None:
                    return answer
    except TimeoutError:
        # As for ICMP: an answer the kernel received in time counts, however late we look.
        for data, _, received_at in drain_stamped(sock):
            answer = _options_answer(data, received_at, sent)
            if answer is not None and received_at <= give_up_at:
                return answer
        return timeout(attempts=lost_before(len(sent)))
    finally:
        sock.close()


async def _await_options_answer(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                                sent: list[tuple[sip_options.OptionsRequest, float]],
                                wait_s: float) -> ProbeResult | None:
    """A final answer to any attempt so far within ``wait_s``; None: time for the next."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            while True:
                data, _, received_at = await recv_stamped(loop, sock)
                answer = _options_answer(data, received_at, sent)
                if answer is not None:
                    return answer
    return None


def _options_answer(data: bytes, received_at: float,
                    sent: list[tuple[sip_options.OptionsRequest, float]]) -> ProbeResult | None:
    """The probe's result if ``data`` is a final answer to one of the attempts, else None."""
    try:
        response = sip_options.parse_response(data)
    except sip_options.SipProbeError:
        return None
    if response.status < 200:
        return None
    for index, (attempt, at) in enumerate(sent):
        if sip_options.answers(response, attempt):
            rtt = round_trip(at, received_at)
            return _sip_result(response, rtt, attempts=answered_at(index + 1, rtt))
    return None


async def _sip_options_stream(address: str, port: int, *, transport: str, server_name: str,
                              binding: WanBinding, ssl_context: ssl.SSLContext | None
                              ) -> ProbeResult:
    if transport == "tls":
        if ssl_context is None:
            raise ValueError("SIP over TLS needs an ssl_context")
        reader, writer, _ = await _open_tls(address, port, server_name=server_name,
                                            binding=binding, ssl_context=ssl_context)
    else:
        sock, _ = await _connect(address, port, binding=binding)
        reader, writer = await asyncio.open_connection(sock=sock)
    try:
        local_host, local_port = writer.get_extra_info("sockname")[:2]
        request = sip_options.build_options(host=address, port=port, transport=transport,
                                            server_name=server_name, local_host=local_host,
                                            local_port=local_port)
        writer.write(request.data)
        sent = time.monotonic()
        framer = sip_options.StreamFramer()
        while True:
            data = await reader.read(RECV_SIZE)
            if not data:
                return ProbeResult(outcome=ProbeOutcome.ERROR,
                                   detail="connection closed before a SIP response")
            for response in framer.feed(data):
                if sip_options.answers(response, request) and response.status >= 200:
                    return _sip_result(response, time.monotonic() - sent)
    finally:
        await _close(writer)
