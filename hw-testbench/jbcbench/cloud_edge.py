"""The fake cloud's edge: a SIP edge, an HTTPS health endpoint and a DNS responder.

Real protocol servers (asyncio, stdlib ``ssl``), scriptable for fault injection:

* :class:`SipEdge` answers OPTIONS and REGISTER over UDP, TCP and TLS (RFC 3261 8.2.6
  response construction: Via, From, To with a tag, Call-ID, CSeq copied). ``status`` makes
  it answer everything with e.g. 503 (a degraded cloud); ``silent`` makes it drop requests.
  Without credentials REGISTER is accepted as it comes (200 with the Contact and Expires
  echoed). Given the site's credentials (``SipEdge(credentials={user: password})``) it is the
  handsets' primary registrar: REGISTER must answer a digest challenge (RFC 3261 22.4, MD5
  with qop=auth, stateless nonces that go stale after a while), the expiry granted is capped
  at ``max_expires_s``, and every binding is kept with its wall-clock times in
  :attr:`SipEdge.registrations`, so the bench can tell when each handset is (back) on the
  cloud. :attr:`SipEdge.bindings` keeps (contact, expires) per address-of-record.
* :class:`HttpsHealth` serves ``GET /health`` (200, or 503 while ``status`` says so).
* :class:`DnsResponder` answers A queries from a small zone; it can SERVFAIL, NXDOMAIN or
  stay silent.
* :class:`TestCA` makes a CA and server certificates with ``cryptography``.

Servers take ready, bound sockets (see :meth:`jbcbench.topology.Namespace.bound_socket`), so
they can listen inside a test namespace while running in the test's own event loop, or on
loopback with port 0.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import ipaddress
import os
import pathlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# -- a test certificate authority -------------------------------------------------------------


class TestCA:
    """A throw-away CA; :meth:`issue` makes server certificates for names and addresses."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str = "JBC bench test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write_ca(self, path: pathlib.Path) -> pathlib.Path:
        path.write_bytes(self.cert_pem)
        return path

    def issue(self, names: Sequence[str], addresses: Sequence[str] = ()) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) for a server known by ``names``/``addresses``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        alt = [x509.DNSName(n) for n in names] + [
            x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                        names[0] if names else addresses[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256()))
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))

    def server_context(self, names: Sequence[str], addresses: Sequence[str] = (), *,
                       directory: pathlib.Path) -> ssl.SSLContext:
        """A TLS server context with a fresh certificate (files are written to
        ``directory``, because ``ssl`` loads certificates from files)."""
        cert_pem, key_pem = self.issue(names, addresses)
        stem = (names[0] if names else addresses[0]).replace(":", "_")
        cert_path = directory / f"{stem}.crt"
        key_path = directory / f"{stem}.key"
        cert_path.write_bytes(cert_pem + self.cert_pem)
        key_path.write_bytes(key_pem)
        key_path.chmod(0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        return context

    def client_context(self, directory: pathlib.Path) -> ssl.SSLContext:
        ca_path = self.write_ca(directory / "test-ca.pem")
        context = ssl.create_default_context(cafile=str(ca_path))
        return context


# -- SIP edge ---------------------------------------------------------------------------------

REASONS = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 407: "Proxy Authentication Required",
           408: "Request Timeout", 480: "Temporarily Unavailable", 481: "Call Does Not Exist",
           483: "Too Many Hops",
           486: "Busy Here",
           500: "Server Internal Error", 503: "Service Unavailable"}
COMPACT_NAMES = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
                 "l": "content-length"}


@dataclasses.dataclass(slots=True)
class SipRequest:
    method: str
    uri: str
    headers: list[tuple[str, str]]
    """(name as written, value) in order."""

    def values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers
                if COMPACT_NAMES.get(key.lower(), key.lower()) == wanted]

    def first(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None


def parse_sip_request(data: bytes) -> SipRequest | None:
    """A request's start line and headers; None for responses, keep-alives and garbage."""
    head = data.split(b"\r\n\r\n", 1)[0]
    try:
        lines = head.decode("utf-8").split("\r\n")
    except UnicodeDecodeError:
        return None
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        return None
    start = lines[0].split(" ")
    if len(start) != 3 or start[2] != "SIP/2.0":
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            headers[-1] = (headers[-1][0], headers[-1][1] + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            return None
        headers.append((name.strip(), value.strip()))
    return SipRequest(method=start[0], uri=start[1], headers=headers)


def _sip_frames(buffer: bytearray) -> list[bytes]:
    """Whole messages taken off the front of a stream buffer (by Content-Length)."""
    out = []
    while True:
        while buffer[:2] == b"\r\n":
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return out
        length = 0
        for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"content-length", b"l"):
                with contextlib.suppress(ValueError):
                    length = int(value.strip())
        if len(buffer) < end + 4 + length:
            return out
        out.append(bytes(buffer[:end + 4 + length]))
        del buffer[:end + 4 + length]


class SipEdge:
    """A cloud SIP edge answering OPTIONS and REGISTER; see the module docstring."""

    def __init__(self, *, name: str = "edge", credentials: Mapping[str, str] | None = None,
                 realm: str = "cloud", max_expires_s: int = 3600,
                 nonce_lifetime_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.status: int | None = None
        """Answer every request with this status (e.g. 503); None: normal answers."""
        self.silent = False
        """Drop every request without answering (a hung edge behind a live address)."""
        self.requests: dict[str, int] = {}
        self.bindings: dict[str, tuple[str, float]] = {}
        """address-of-record -> (contact, expires) of accepted REGISTERs."""
        self.credentials = dict(credentials) if credentials is not None else None
        """user name -> password; None: REGISTER needs no authentication."""
        self.realm = realm
        self.max_expires_s = max_expires_s
        self.nonce_lifetime_s = nonce_lifetime_s
        self.clock = clock
        self.registrations: dict[str, CloudBinding] = {}
        """user part of the address-of-record -> its binding (see :meth:`registered`)."""
        self.accepted: dict[str, collections.deque[float]] = {}
        """user -> wall times of its latest accepted REGISTERs (see :meth:`first_since`)."""
        self.auth_failures = 0
        self.lock = threading.Lock()
        self._nonce_key = os.urandom(16)
        self._transports: list[asyncio.BaseTransport] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._to_tag = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._writers: dict[tuple[str, tuple], asyncio.StreamWriter] = {}
        """Open connections by (transport, peer), for :meth:`send` (a proxying subclass)."""

    def first_since(self, user: str, since: float) -> float | None:
        """When the first REGISTER from ``user`` at or after ``since`` was accepted."""
        with self.lock:
            times = list(self.accepted.get(user, ()))
        return next((t for t in times if t >= since), None)

    def registered(self, at: float | None = None) -> dict[str, CloudBinding]:
        """Bindings alive at wall time ``at`` (default now), by user."""
        now = self.clock() if at is None else at
        with self.lock:
            return {user: binding for user, binding in self.registrations.items()
                    if binding.expires_at > now}

    # -- serving --

    async def serve_udp(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        edge = self

        class Protocol(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport
                edge._udp = transport

            def datagram_received(self, data, addr):
                reply = edge.handle(data, transport="UDP", source=addr)
                if reply is not None:
                    self.transport.sendto(reply, addr)

        transport, _ = await loop.create_datagram_endpoint(Protocol, sock=sock)
        self._transports.append(transport)

    async def serve_stream(self, sock: socket.socket, *,
                           ssl_context: ssl.SSLContext | None = None) -> None:
        transport_name = "TLS" if ssl_context else "TCP"

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            source = writer.get_extra_info("peername")
            buffer = bytearray()
            self._writers[(transport_name, source)] = writer
            # asyncio turns Nagle off only for sockets it made itself (proto IPPROTO_TCP);
            # ours come ready-made: a small SIP message must not wait for the peer's ACK.
            raw = writer.get_extra_info("socket")
            if raw is not None:
                with contextlib.suppress(OSError):
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                while data := await reader.read(65536):
                    buffer += data
                    for message in _sip_frames(buffer):
                        reply = self.handle(message, transport=transport_name, source=source)
                        if reply is not None:
                            writer.write(reply)
                            await writer.drain()
            except (ConnectionError, ssl.SSLError, OSError):
                pass
            finally:
                self._writers.pop((transport_name, source), None)
                writer.close()

        server = await asyncio.start_server(connection, sock=sock, ssl=ssl_context)
        self._servers.append(server)

    def send(self, transport: str, destination: tuple, data: bytes) -> bool:
        """Send ``data`` to ``destination`` over UDP, or over the open TCP/TLS connection
        from it (the edge never opens connections towards the site)."""
        if transport == "UDP":
            if self._udp is None:
                return False
            self._udp.sendto(data, destination)
            return True
        writer = self._writers.get((transport, destination))
        if writer is None or writer.is_closing():
            return False
        writer.write(data)
        return True

    async def close(self) -> None:
        for transport in self._transports:
            transport.close()
        for writer in list(self._writers.values()):
            writer.close()  # connections kept open by a peer (an in-path appliance)
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await server.wait_closed()
        self._transports.clear()
        self._servers.clear()

    # -- the SIP logic (pure: bytes in, bytes out) --

    def handle(self, data: bytes, *, transport: str, source: tuple) -> bytes | None:
        request = parse_sip_request(data)
        if request is None or request.method == "ACK":
            return None
        self.requests[request.method] = self.requests.get(request.method, 0) + 1
        if self.silent:
            return None
        if self.status is not None:
            return self.response(request, self.status, source=source,
                                 extra=[("Retry-After", "30")] if self.status == 503 else [])
        if request.method == "OPTIONS":
            return self.response(request, 200, source=source, extra=[
                ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER"),
                ("Accept", "application/sdp"), ("Supported", "path, outbound")])
        if request.method == "REGISTER":
            return self._register(request, source)
        return self.response(request, 405, source=source,
                             extra=[("Allow", "OPTIONS, REGISTER")])

    def _register(self, request: SipRequest, source: tuple) -> bytes:
        aor = _strip_name_addr(request.first("to") or "")
        user = aor.split(":", 1)[-1].split("@", 1)[0]
        if self.credentials is not None:
            refusal = self._check_digest(request, user, source)
            if refusal is not None:
                return refusal
        contacts = request.values("contact")
        expires_header = request.first("expires")
        expires = int(expires_header) if expires_header and expires_header.isdigit() else 3600
        extra: list[tuple[str, str]] = []
        now = self.clock()
        for contact in contacts:
            if contact.strip() == "*":
                self._unbind(aor, user)
                continue
            value = contact
            granted = expires
            for param in _contact_params(contact):
                key, _, number = param.strip().partition("=")
                if key.lower() == "expires" and number.isdigit():
                    granted = int(number)
            if granted == 0:
                self._unbind(aor, user)
                continue
            granted = min(granted, self.max_expires_s)
            uri = _strip_name_addr(value)
            self.bindings[aor] = (uri, granted)
            with self.lock:
                self.registrations[user] = CloudBinding(
                    user=user, contact=uri, expires_at=now + granted, registered_at=now,
                    source=f"{source[0]}:{source[1]}")
                self.accepted.setdefault(user, collections.deque(maxlen=200)).append(now)
            extra.append(("Contact", f"<{uri}>;expires={granted}"))
        return self.response(request, 200, source=source, extra=extra)

    def _unbind(self, aor: str, user: str) -> None:
        self.bindings.pop(aor, None)
        with self.lock:
            self.registrations.pop(user, None)

    # -- digest authentication (RFC 3261 22.4, RFC 2617 qop=auth, MD5) --

    def _nonce(self, issued: float) -> str:
        stamp = f"{int(issued):x}"
        mac = hmac.new(self._nonce_key, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        return f"{stamp}.{mac}"

    def _nonce_age(self, nonce: str) -> float | None:
        """Seconds since ``nonce`` was issued by us; None if we never issued it."""
        stamp = nonce.partition(".")[0]
        try:
            issued = int(stamp, 16)
        except ValueError:
            return None
        if not hmac.compare_digest(self._nonce(issued), nonce):
            return None
        return self.clock() - issued

    def _challenge(self, request: SipRequest, source: tuple, *, stale: bool,
                   proxy: bool = False) -> bytes:
        value = (f'Digest realm="{self.realm}", nonce="{self._nonce(self.clock())}", '
                 f'algorithm=MD5, qop="auth"' + (", stale=true" if stale else ""))
        if proxy:
            return self.response(request, 407, source=source,
                                 extra=[("Proxy-Authenticate", value)])
        return self.response(request, 401, source=source,
                             extra=[("WWW-Authenticate", value)])

    def _check_digest(self, request: SipRequest, user: str | None, source: tuple, *,
                      proxy: bool = False) -> bytes | None:
        """None when the request carries valid credentials for ``user`` (any known user when
        None), else the answer: 401, or 407 for ``proxy`` authentication."""
        header = request.first("proxy-authorization" if proxy else "authorization")
        if header is None or not header.lower().startswith("digest "):
            return self._challenge(request, source, stale=False, proxy=proxy)
        params = _digest_params(header[len("digest "):])
        username = params.get("username", "")
        password = self.credentials.get(username)
        age = self._nonce_age(params.get("nonce", ""))
        if password is None or (user is not None and username != user) or age is None or \
                params.get("realm") != self.realm:
            self.auth_failures += 1
            return self._challenge(request, source, stale=False, proxy=proxy)
        if age > self.nonce_lifetime_s:
            return self._challenge(request, source, stale=True, proxy=proxy)

        def md5(text: str) -> str:
            return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

        ha1 = md5(f"{username}:{self.realm}:{password}")
        ha2 = md5(f"{request.method}:{params.get('uri', '')}")
        if params.get("qop") == "auth":
            expected = md5(f"{ha1}:{params['nonce']}:{params.get('nc', '')}:"
                           f"{params.get('cnonce', '')}:auth:{ha2}")
        else:
            expected = md5(f"{ha1}:{params['nonce']}:{ha2}")
        if not hmac.compare_digest(expected, params.get("response", "").lower()):
            self.auth_failures += 1
            return self._challenge(request, source, stale=False, proxy=proxy)
        return None

    def response(self, request: SipRequest, status: int, *, source: tuple,
                 extra: Iterable[tuple[str, str]] = ()) -> bytes:
        lines = [f"SIP/2.0 {status} {REASONS.get(status, 'Unknown')}"]
        for index, via in enumerate(request.values("via")):
            if index == 0:
                via = _received(via, source)
            lines.append(f"Via: {via}")
        lines.append(f"From: {request.first('from') or ''}")
        to = request.first("to") or ""
        if ";tag=" not in to.replace(" ", ""):
            self._to_tag += 1
            to += f";tag={self.name}{self._to_tag}"
        lines.append(f"To: {to}")
        lines.append(f"Call-ID: {request.first('call-id') or ''}")
        lines.append(f"CSeq: {request.first('cseq') or ''}")
        lines.extend(f"{name}: {value}" for name, value in extra)
        lines.append(f"Server: jbcbench-{self.name}")
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclasses.dataclass(frozen=True, slots=True)
class CloudBinding:
    """One handset registered at the cloud edge (times are wall-clock seconds)."""

    user: str
    contact: str
    expires_at: float
    registered_at: float
    """When its latest successful REGISTER (first or refresh) was answered."""
    source: str


def _contact_params(contact: str) -> list[str]:
    """The header parameters of one Contact value (after the ``<URI>`` if there is one)."""
    end = contact.find(">")
    tail = contact[end + 1:] if end >= 0 else contact
    return [p for p in tail.split(";")[1 if end < 0 else 0:] if p.strip()]


def _digest_params(text: str) -> dict[str, str]:
    """``name="value", name=token`` pairs of a credentials header (names lower-case)."""
    params: dict[str, str] = {}
    i = 0
    while i < len(text):
        while i < len(text) and text[i] in " ,\t":
            i += 1
        equals = text.find("=", i)
        if equals < 0:
            break
        name = text[i:equals].strip().lower()
        i = equals + 1
        if i < len(text) and text[i] == '"':
            end = i + 1
            value = []
            while end < len(text) and text[end] != '"':
                if text[end] == "\\" and end + 1 < len(text):
                    end += 1
                value.append(text[end])
                end += 1
            params[name] = "".join(value)
            i = end + 1
        else:
            end = text.find(",", i)
            end = len(text) if end < 0 else end
            params[name] = text[i:end].strip()
            i = end
    return params


def _received(via: str, source: tuple) -> str:
    """RFC 3261 18.2.1 received= and RFC 3581 rport on the top Via."""
    host, port = source[0], source[1]
    parts = via.split(";")
    out = [parts[0]]
    for param in parts[1:]:
        if param.strip() == "rport":
            out.append(f"rport={port}")
        else:
            out.append(param)
    out.append(f"received={host}")
    return ";".join(out)


def _strip_name_addr(value: str) -> str:
    start, end = value.find("<"), value.find(">")
    if 0 <= start < end:
        return value[start + 1:end]
    return value.split(";", 1)[0].strip()


# -- HTTPS health ------------------------------------------------------------------------------


class HttpsHealth:
    """``GET /health`` answers 200 (or ``status``); anything else 404."""

    def __init__(self, path: str = "/health") -> None:
        self.path = path
        self.status = 200
        self.requests = 0
        self._servers: list[asyncio.base_events.Server] = []

    async def serve(self, sock: socket.socket, ssl_context: ssl.SSLContext) -> None:
        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
                self.requests += 1
                if len(request_line) == 3 and request_line[0] == "GET" and \
                        request_line[1] == self.path:
                    status = self.status
                else:
                    status = 404
                body = b"ok\n" if status == 200 else f"{status}\n".encode()
                reason = REASONS.get(status, "Status")
                writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
                             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                             .encode() + body)
                await writer.drain()
            except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError, TimeoutError):
                pass
            finally:
                writer.close()

        self._servers.append(await asyncio.start_server(connection, sock=sock, ssl=ssl_context))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await server.wait_closed()
        self._servers.clear()


# -- DNS ---------------------------------------------------------------------------------------

DNS_HEADER = struct.Struct("!HHHHHH")


class DnsResponder:
    """An authoritative-style responder for a small zone of A records (RFC 1035 4.1).

    ``mode``: 'answer' (default), 'servfail', 'nxdomain' or 'silent'. Written separately from
    the appliance's own DNS client code, so the two check each other."""

    def __init__(self, zone: Mapping[str, Sequence[str]], *, ttl: int = 30) -> None:
        self.zone = {name.lower().rstrip("."): list(addresses)
                     for name, addresses in zone.items()}
        self.ttl = ttl
        self.mode = "answer"
        self.queries = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        responder = self

        class Protocol(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                reply = responder.answer(data)
                if reply is not None:
                    self.transport.sendto(reply, addr)

        self._transport, _ = await loop.create_datagram_endpoint(Protocol, sock=sock)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        query_id, flags, qdcount, _an, _ns, _ar = DNS_HEADER.unpack_from(query)
        if flags & 0x8000 or qdcount != 1:
            return None
        self.queries += 1
        if self.mode == "silent":
            return None
        labels, offset = [], 12
        while True:
            if offset >= len(query):
                return None
            length = query[offset]
            if length == 0 or length > 63:
                offset += 1
                break
            labels.append(query[offset + 1:offset + 1 + length].decode("ascii", "replace"))
            offset += 1 + length
        if offset + 4 > len(query):
            return None
        qtype, qclass = struct.unpack_from("!HH", query, offset)
        question = query[12:offset + 4]
        name = ".".join(labels).lower()
        rd = flags & 0x0100
        rcode = 0
        answers = b""
        count = 0
        if self.mode == "servfail":
            rcode = 2
        elif self.mode == "nxdomain" or name not in self.zone:
            rcode = 3
        elif qtype == 1 and qclass == 1:
            for address in self.zone[name]:
                # owner name as a pointer to the question name at offset 12
                answers += struct.pack("!HHHIH", 0xC00C, 1, 1, self.ttl, 4) + \
                    ipaddress.IPv4Address(address).packed
                count += 1
        header = DNS_HEADER.pack(query_id, 0x8000 | 0x0400 | rd | 0x0080 | rcode, 1, count,
                                 0, 0)
        return header + question + answers


# -- a whole region's edge ---------------------------------------------------------------------


@dataclasses.dataclass
class RegionEdge:
    """One cloud region's public face on one address: SIP on UDP/TCP 5060 and TLS 5061, HTTPS
    health on 443, all sharing one certificate for ``server_name``."""

    name: str
    address: str
    server_name: str
    sip: SipEdge
    https: HttpsHealth
    ports: dict[str, int] = dataclasses.field(default_factory=dict)
    """Where it listens: 'sip-udp', 'sip-tcp', 'sips', 'https' (useful with port 0)."""

    @classmethod
    async def start(cls, name: str, address: str, server_name: str, *, ca: TestCA,
                    certs_dir: pathlib.Path, make_socket, sip_port: int = 5060,
                    sips_port: int = 5061, https_port: int = 443,
                    sip_edge: SipEdge | None = None) -> RegionEdge:
        """``make_socket(address, port, kind)`` returns a bound socket (see
        :meth:`jbcbench.topology.Namespace.bound_socket`). ``sip_edge``: a prepared edge
        (e.g. one with the site's credentials, to be the handsets' registrar)."""
        context = ca.server_context([server_name], [address], directory=certs_dir)
        edge = cls(name=name, address=address, server_name=server_name,
                   sip=sip_edge or SipEdge(name=name), https=HttpsHealth())

        def bound(role: str, port: int, kind: int) -> socket.socket:
            sock = make_socket(address, port, kind)
            edge.ports[role] = sock.getsockname()[1]
            return sock

        await edge.sip.serve_udp(bound("sip-udp", sip_port, socket.SOCK_DGRAM))
        await edge.sip.serve_stream(bound("sip-tcp", sip_port, socket.SOCK_STREAM))
        await edge.sip.serve_stream(bound("sips", sips_port, socket.SOCK_STREAM),
                                    ssl_context=context)
        await edge.https.serve(bound("https", https_port, socket.SOCK_STREAM), context)
        return edge

    def degrade(self, status: int | None = 503) -> None:
        """Make the region answer ``status`` (SIP and HTTPS); None restores it."""
        self.sip.status = status
        self.https.status = status or 200

    async def close(self) -> None:
        await self.sip.close()
        await self.https.close()


def loopback_socket(kind: int, address: str = "127.0.0.1") -> socket.socket:
    """A bound, non-blocking socket on a loopback address and a free port (for tests that
    run the cloud edge without namespaces)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.bind((address, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
