"""The fake cloud: the mutual-TLS API of cloud-api.json, served from a thread on loopback (or
inside a bench namespace), with scriptable faults.

It checks every request against cloud-api.json (a request that does not follow it is answered
400 and remembered in ``violations``) and every response it sends (a violation there is a bug
in the fake cloud and is remembered too). Tests assert ``violations == []``.

Faults (attributes of :class:`Faults`, changed at any time from the test):

* ``status`` + ``status_count`` + ``status_operations``: answer e.g. 503 (with Retry-After)
* ``certificate``: "good", "rogue" (another CA), "misnamed" (right CA, wrong name)
* ``slow_s`` (+ ``slow_operations``): wait this long before answering; ``in_flight`` counts
  the requests being handled, so a bench can kill the client mid-request
* ``raw_body`` (+ ``raw_body_operations``): a hostile cloud answering 200 with these bytes
* ``cut_after_store``: for uploads, store the batch, then drop the connection unanswered
* bundles: publish one signed by the wrong key, an older one, or a schema-invalid one with
  :meth:`FakeCloud.publish` arguments
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import http.server
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.sync.contract import Contract, ContractViolation

from .bundles import sign_bundle
from .pki import CloudKeys

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class Faults:
    status: int | None = None
    status_count: int | None = None
    """How many requests get ``status``; None: all of them until cleared."""
    status_operations: frozenset[str] | None = None
    retry_after: int = 1
    certificate: str = "good"
    slow_s: float = 0.0
    slow_operations: frozenset[str] | None = None
    """Which operations ``slow_s`` delays; None: all of them."""
    cut_after_store: int = 0
    """The next N upload requests are stored, then the connection is dropped unanswered."""
    certificate_lifetime_s: float = 86400 * 365
    certificate_not_before: float | None = None
    """Issue device certificates valid from this Unix time (e.g. in the past, to expire)."""
    raw_body: bytes | None = None
    """A hostile cloud: answer 200 with these bytes (JSON or not) instead of the real reply."""
    raw_body_operations: frozenset[str] | None = None
    """Which operations get ``raw_body``; None: all of them."""


@dataclasses.dataclass(slots=True)
class Device:
    device_id: str
    account: str
    serials: list[int] = dataclasses.field(default_factory=list)


class FakeCloud:
    def __init__(self, keys: CloudKeys, *, host: str = "127.0.0.1", port: int = 0,
                 account: str = "acme-001") -> None:
        self.keys = keys
        self.account = account
        self.contract = Contract.load()
        self.faults = Faults()
        self.lock = threading.RLock()
        self.tokens: dict[str, str] = {}          # token -> account, removed when used
        self.devices: dict[str, Device] = {}
        self.bundles: dict[str, tuple[int, bytes]] = {}   # account -> (version, envelope)
        self.subscription: dict[str, tuple[str, float | None]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.call_records: dict[str, dict[str, Any]] = {}
        self.drill_reports: dict[str, dict[str, Any]] = {}
        self.received_ids: dict[str, int] = {}   # every upload id -> times received
        self.heartbeats: list[dict[str, Any]] = []
        self.in_flight: dict[str, int] = {}
        """Requests being handled right now, by operation (a bench kills the client then)."""
        self.alerts: dict[str, dict[str, Any]] = {}   # alert id -> alert (+ device, peer)
        self.requests: list[tuple[str, str, int]] = []   # (operation, peer ip, status)
        self.violations: list[str] = []
        self.handshake_failures: list[str] = []
        self._contexts = {name: self._server_context(pem) for name, pem in (
            ("good", keys.server_pem), ("rogue", keys.rogue_pem),
            ("misnamed", keys.misnamed_pem))}
        self._httpd = _TLSServer((host, port), _Handler, self)
        self.host, self.port = self._httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FakeCloud:
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="fake-cloud", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    # -- scripting -------------------------------------------------------------------------

    def new_token(self, account: str | None = None) -> str:
        token = "enr-" + uuid.uuid4().hex
        with self.lock:
            self.tokens[token] = account or self.account
        return token

    def publish(self, directory: dict[str, Any], *, version: int | None = None,
                account: str | None = None, signer: str = "good") -> bytes:
        """Publish a bundle for ``account``; ``signer="rogue"`` signs it with the wrong key."""
        key = self.keys.signing_key if signer == "good" else self.keys.rogue_signing_key
        version = directory["version"] if version is None else version
        envelope = sign_bundle(key, account=account or self.account, version=version,
                               directory=directory)
        with self.lock:
            self.bundles[account or self.account] = (version, envelope)
        return envelope

    def end_subscription(self, at: float, account: str | None = None) -> None:
        with self.lock:
            self.subscription[account or self.account] = ("ended", at)

    def _server_context(self, pem) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(pem))
        context.load_verify_locations(cadata=self.keys.ca.pem.decode())
        context.verify_mode = ssl.CERT_OPTIONAL  # enrolment has no client certificate yet
        return context

    def current_context(self) -> ssl.SSLContext:
        return self._contexts[self.faults.certificate]

    # -- operations (called from handler threads) ------------------------------------------

    def handle(self, operation: str, params: dict[str, str], body: Any, headers,
               peer_cn: str | None) -> tuple[int, Any, dict[str, str]]:
        faults = self.faults
        with self.lock:
            self.in_flight[operation] = self.in_flight.get(operation, 0) + 1
        try:
            if faults.slow_s and (faults.slow_operations is None
                                  or operation in faults.slow_operations):
                time.sleep(faults.slow_s)
            return self._handle(operation, params, body, headers, peer_cn)
        finally:
            with self.lock:
                self.in_flight[operation] -= 1

    def _handle(self, operation: str, params: dict[str, str], body: Any, headers,
                peer_cn: str | None) -> tuple[int, Any, dict[str, str]]:
        faults = self.faults
        with self.lock:
            if faults.status is not None and (
                    faults.status_operations is None or operation in faults.status_operations):
                if faults.status_count is not None:
                    faults.status_count -= 1
                    if faults.status_count <= 0:
                        faults.status, faults.status_count = None, None
                return _error(503 if faults.status is None else faults.status, "unavailable",
                              "scripted fault", {"Retry-After": str(faults.retry_after)})
            if operation == "enroll":
                return self._enroll(body)
            device = self.devices.get(params.get("device_id", ""))
            if device is None or peer_cn != device.device_id:
                return _error(403, "forbidden", "the client certificate is not this device's")
            return getattr(self, f"_op_{operation}")(device, body, headers)

    def _issue(self, csr_pem: str, device: Device) -> dict[str, Any]:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        if not csr.is_signature_valid:
            raise ValueError("CSR signature invalid")
        not_before = None
        if self.faults.certificate_not_before is not None:
            not_before = datetime.datetime.fromtimestamp(self.faults.certificate_not_before,
                                                         datetime.UTC)
        cert = self.keys.ca.issue(csr.public_key(), device.device_id,
                                  organisation=device.account, client=True,
                                  lifetime_s=self.faults.certificate_lifetime_s,
                                  not_before=not_before)
        device.serials.append(cert.serial_number)
        return {"device_id": device.device_id, "account": device.account,
                "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
                "expires_at": cert.not_valid_after_utc.timestamp()}

    def _enroll(self, body) -> tuple[int, Any, dict[str, str]]:
        account = self.tokens.pop(body["token"], None)
        if account is None:
            return _error(401, "bad-token", "unknown or already used enrolment token")
        device = Device(device_id="dev-" + uuid.uuid4().hex[:12], account=account)
        try:
            reply = self._issue(body["csr"], device)
        except ValueError as error:
            self.tokens[body["token"]] = account
            return _error(400, "bad-csr", str(error))
        self.devices[device.device_id] = device
        return 201, reply, {}

    def _op_renewCertificate(self, device: Device, body, headers):
        try:
            return 200, self._issue(body["csr"], device), {}
        except ValueError as error:
            return _error(400, "bad-csr", str(error))

    def _op_getBundle(self, device: Device, body, headers):
        published = self.bundles.get(device.account)
        if published is None:
            return _error(404, "no-bundle", "no bundle published for this device yet")
        version, envelope = published
        etag = f'"v{version}-{hashlib.sha256(envelope).hexdigest()[:16]}"'
        if headers.get("If-None-Match") == etag:
            return 304, None, {"ETag": etag}
        return 200, json.loads(envelope), {"ETag": etag}

    def _op_heartbeat(self, device: Device, body, headers):
        self.heartbeats.append({**body, "device_id": device.device_id,
                                "peer": headers.get("X-Peer", "")})
        status, ended_at = self.subscription.get(device.account, ("active", None))
        published = self.bundles.get(device.account)
        return 200, {"received_at": time.time(),
                     "subscription": {"status": status, "ended_at": ended_at},
                     "bundle_version": published[0] if published else None}, {}

    def _op_sendAlert(self, device: Device, body, headers):
        self.received_ids[body["id"]] = self.received_ids.get(body["id"], 0) + 1
        duplicate = body["id"] in self.alerts
        if not duplicate:
            self.alerts[body["id"]] = {**body, "device_id": device.device_id,
                                       "peer": headers.get("X-Peer", ""),
                                       "received_at": time.time()}
        return 200, {"id": body["id"], "received_at": self.alerts[body["id"]]["received_at"],
                     "duplicate": duplicate}, {}

    def _store(self, kind: dict[str, dict[str, Any]], items: list[dict[str, Any]]):
        stored, duplicates = [], []
        for item in items:
            self.received_ids[item["id"]] = self.received_ids.get(item["id"], 0) + 1
            if item["id"] in kind:
                duplicates.append(item["id"])
            else:
                kind[item["id"]] = item
                stored.append(item["id"])
        if self.faults.cut_after_store > 0:
            self.faults.cut_after_store -= 1
            raise _CutConnection
        return 200, {"stored": stored, "duplicates": duplicates}, {}

    def _op_uploadEvents(self, device: Device, body, headers):
        return self._store(self.events, body["events"])

    def _op_uploadCallRecords(self, device: Device, body, headers):
        return self._store(self.call_records, body["call_records"])

    def _op_uploadDrillReports(self, device: Device, body, headers):
        return self._store(self.drill_reports, body["drill_reports"])


class _CutConnection(Exception):
    pass


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    return status, {"error": {"code": code, "message": message}}, headers or {}


class _TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, cloud: FakeCloud) -> None:
        self.cloud = cloud
        super().__init__(address, handler)

    def finish_request(self, request, client_address) -> None:
        request.settimeout(10)
        try:
            tls = self.cloud.current_context().wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            with self.cloud.lock:
                self.cloud.handshake_failures.append(f"{type(error).__name__}: {error}")
            request.close()
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request, client_address) -> None:
        log.debug("fake cloud: connection from %s failed", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TLSServer

    def log_message(self, format: str, *args) -> None:
        log.debug("fake cloud: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        cloud = self.server.cloud
        found = cloud.contract.match(self.command, self.path)
        if found is None:
            self._reply(None, 404, {"error": {"code": "not-found", "message": self.path}}, {})
            return
        operation, params = found
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
            cloud.contract.check_request(operation.operation_id, body)
        except (ValueError, ContractViolation) as error:
            with cloud.lock:
                cloud.violations.append(f"request: {error}")
            self._reply(operation.operation_id, 400,
                        {"error": {"code": "bad-request", "message": str(error)}}, {})
            return
        peer_cn = None
        certificate = self.connection.getpeercert()
        if certificate:
            for rdn in certificate.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        peer_cn = value
        headers = {k: v for k, v in self.headers.items()}
        headers["X-Peer"] = self.client_address[0]
        raw, only = cloud.faults.raw_body, cloud.faults.raw_body_operations
        if raw is not None and (only is None or operation.operation_id in only):
            with cloud.lock:
                cloud.requests.append((operation.operation_id, self.client_address[0], 200))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(raw)
            self.close_connection = True
            return
        try:
            status, reply, extra = cloud.handle(operation.operation_id, params, body, headers,
                                                peer_cn)
        except _CutConnection:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._reply(operation.operation_id, status, reply, extra)

    def _reply(self, operation_id: str | None, status: int, body: Any,
               headers: dict[str, str]) -> None:
        cloud = self.server.cloud
        if operation_id is not None:
            try:
                cloud.contract.check_response(operation_id, status, body, headers)
            except ContractViolation as error:
                with cloud.lock:
                    cloud.violations.append(f"response: {error}")
            with cloud.lock:
                cloud.requests.append((operation_id, self.client_address[0], status))
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        if status != 304:
            self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if status != 304:
            self.wfile.write(data)
        self.close_connection = True
