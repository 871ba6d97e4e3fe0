"""Flow tokens (RFC 5626 section 5.2): which phone connection a Path or Record-Route entry
of ours stands for.

In in-path mode the appliance puts its own URI in the Path of every REGISTER it relays and in
the Record-Route of every dialog, with a token in the user part that names the phone's flow
(transport, address, port). A request coming back from the cloud carries that URI as its
Route; the token says where to send it, without trusting anything else in the request. The
token is authenticated (HMAC-SHA256, 64 bits) so that nobody can make the appliance send to
an address it did not see a phone register from; the key is kept in the state directory so
that tokens stay valid across a restart (the bindings do too).

Pure: no sockets, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from .flow import Flow

TRANSPORTS = ("udp", "tcp", "tls")
MAC_BYTES = 8


class FlowTokens:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a flow-token key needs at least 16 bytes")
        self._key = key

    def token(self, flow: Flow) -> str:
        """The token for a phone's ``flow``: URI-user safe (base32, lower case)."""
        payload = f"{TRANSPORTS.index(flow.transport)}{flow.host}|{flow.port}".encode()
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:MAC_BYTES]
        return base64.b32encode(mac + payload).decode("ascii").rstrip("=").lower()

    def flow(self, token: str) -> Flow | None:
        """The flow a token names, or None when it is not one of ours (or malformed)."""
        if not token or len(token) > 120:
            return None
        text = token.upper()
        try:
            raw = base64.b32decode(text + "=" * (-len(text) % 8))
        except (binascii.Error, ValueError):
            return None
        mac, payload = raw[:MAC_BYTES], raw[MAC_BYTES:]
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()[:MAC_BYTES]
        if len(mac) != MAC_BYTES or not hmac.compare_digest(mac, expected):
            return None
        try:
            text = payload.decode("ascii")
            transport = TRANSPORTS[int(text[0])]
            host, port = text[1:].rsplit("|", 1)
            return Flow(transport, host, int(port))
        except (UnicodeDecodeError, ValueError, IndexError):
            return None
