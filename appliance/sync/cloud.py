"""The cloud API client: one method per operation of cloud-api.json, every reply checked.

Failures become one small tree of :class:`CloudError` with a stable ``kind`` that the sync
loop turns into events and backoff:

* ``unreachable``        no connection, reset, timeout
* ``server-certificate`` the server's certificate failed verification against the pinned CA
                         or the expected name (a wrong or intercepted server)
* ``client-certificate`` the cloud refused our certificate (expired, revoked, unknown)
* ``refused``            an HTTP error answer (4xx/5xx); ``status`` and ``retry_after`` set
* ``contract``           the reply does not follow cloud-api.json
"""

from __future__ import annotations

import dataclasses
import json
import logging
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any

from appliance import boundedjson

from .bundle import MAX_BUNDLE_BYTES
from .contract import Contract, ContractViolation
from .errors import SyncError
from .http import HttpError, IncompleteResponse, Response, exchange

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = MAX_BUNDLE_BYTES + 64 * 1024
"""The largest reply is a bundle; anything bigger is refused unparsed."""
MAX_REPLY_DEPTH = 16
"""cloud-api.json's deepest reply nests 4 levels; a bundle is a flat envelope."""

_CLIENT_CERT_ALERTS = ("CERTIFICATE_EXPIRED", "CERTIFICATE_REQUIRED", "BAD_CERTIFICATE",
                       "UNKNOWN_CA", "CERTIFICATE_REVOKED", "CERTIFICATE_UNKNOWN",
                       "ACCESS_DENIED", "HANDSHAKE_FAILURE")


class CloudError(SyncError):
    def __init__(self, kind: str, message: str, *, status: int | None = None,
                 code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CloudReply:
    status: int
    body: Any
    headers: Mapping[str, str]
    raw: bytes = dataclasses.field(repr=False, default=b"")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    host: str
    port: int
    base_path: str
    server_name: str

    @classmethod
    def from_url(cls, url: str, server_name: str = "") -> Endpoint:
        parsed = urllib.parse.urlsplit(url)
        return cls(host=parsed.hostname, port=parsed.port or 443,
                   base_path=parsed.path.rstrip("/"), server_name=server_name or parsed.hostname)


class CloudClient:
    def __init__(self, endpoint: Endpoint, *, timeout: float,
                 contract: Contract | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.contract = contract or Contract.load()

    async def call(self, operation_id: str, context: ssl.SSLContext, *,
                   path: Mapping[str, str] | None = None, body: Any = None,
                   headers: Mapping[str, str] | None = None,
                   local_address: str | None = None) -> CloudReply:
        operation = self.contract.operation(operation_id)
        self.contract.check_request(operation_id, body)  # our own bug if this fails: raise
        target = self.endpoint.base_path + operation.path.format(
            **{k: urllib.parse.quote(v, safe="") for k, v in (path or {}).items()})
        all_headers = {"Accept": "application/json", "User-Agent": "jbcd"}
        all_headers.update(headers or {})
        payload = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode()
            all_headers["Content-Type"] = "application/json"
        response = await self._exchange(operation.method, target, context,
                                        headers=all_headers, payload=payload,
                                        local_address=local_address)
        return self._interpret(operation_id, response)

    async def _exchange(self, method: str, target: str, context: ssl.SSLContext, *,
                        headers: Mapping[str, str], payload: bytes | None,
                        local_address: str | None) -> Response:
        endpoint = self.endpoint
        try:
            return await exchange(host=endpoint.host, port=endpoint.port, ssl_context=context,
                                  server_hostname=endpoint.server_name, method=method,
                                  target=target, headers=headers, body=payload,
                                  timeout_s=self.timeout, local_address=local_address)
        except ssl.SSLCertVerificationError as error:
            raise CloudError("server-certificate", f"the cloud at {endpoint.host}:"
                             f"{endpoint.port} presented a certificate we do not trust: "
                             f"{error.verify_message} (check sync.ca_file and "
                             "sync.server_name)") from None
        except ssl.SSLError as error:
            reason = (error.reason or "").upper()
            if any(alert in reason for alert in _CLIENT_CERT_ALERTS):
                raise CloudError("client-certificate", f"the cloud refused our device "
                                 f"certificate ({error.reason})") from None
            raise CloudError("unreachable", f"TLS with {endpoint.host}:{endpoint.port} "
                             f"failed: {error.reason or error}") from None
        except TimeoutError:
            raise CloudError("unreachable", f"no answer from {endpoint.host}:{endpoint.port} "
                             f"within {self.timeout:g} s") from None
        except IncompleteResponse as error:
            raise CloudError("unreachable", f"connection to {endpoint.host}:{endpoint.port} "
                             f"cut: {error}") from None
        except HttpError as error:
            raise CloudError("contract", f"bad HTTP from the cloud: {error}") from None
        except OSError as error:
            raise CloudError("unreachable", f"cannot reach {endpoint.host}:{endpoint.port}: "
                             f"{error.strerror or error}") from None

    def _interpret(self, operation_id: str, response: Response) -> CloudReply:
        body: Any = None
        if response.body:
            try:
                body = boundedjson.parse(response.body, max_bytes=MAX_REPLY_BYTES,
                                         max_depth=MAX_REPLY_DEPTH,
                                         what=f"the {operation_id} reply")
            except boundedjson.JsonRefused as error:
                raise CloudError("contract", f"{operation_id}: the cloud answered "
                                 f"{response.status}, but {error}") from None
        try:
            self.contract.check_response(operation_id, response.status, body, response.headers)
        except ContractViolation as error:
            raise CloudError("contract", str(error), status=response.status) from None
        if response.status >= 400:
            error = body["error"] if isinstance(body, dict) else {}
            raise CloudError("refused", f"{operation_id}: the cloud answered {response.status} "
                             f"{error.get('code', '')}: {error.get('message', '')}".rstrip(": "),
                             status=response.status, code=error.get("code"),
                             retry_after=_retry_after(response))
        return CloudReply(status=response.status, body=body, headers=response.headers,
                          raw=response.body)


def _retry_after(response: Response) -> float | None:
    value = response.header("retry-after")
    if value is not None and value.strip().isdigit():
        return float(value.strip())
    return None
