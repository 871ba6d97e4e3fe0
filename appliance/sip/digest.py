"""HTTP digest authentication for SIP (RFC 3261 22, RFC 7616, RFC 8760): MD5 and SHA-256.

Nonces are stateless to issue: ``base64url(time || counter || MAC)`` keyed with a per-process
secret, so a flood of unauthenticated requests costs no memory. State appears only when a
nonce is first used successfully: its highest nonce-count, so that a replayed request (same
nonce, same or lower ``nc``) is refused. A nonce older than the lifetime, or one this process
did not issue (after a restart), is answered ``stale=true`` when the digest itself is right,
so a handset with the right password re-authenticates at once and is never counted as a
failed attempt.

An unknown user is checked against a throw-away secret with the same work as a known one
and gets exactly the same answer as a wrong password: no extension enumeration.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import hmac
import itertools
import os
import re
import struct
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .errors import LocalProtocolError
from .message import Request

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_PARAM_RE = re.compile(r'([A-Za-z0-9_\-]+)[ \t]*=[ \t]*(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([^\s,"]+))')


def digest_hex(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode("utf-8")).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    return digest_hex(algorithm, f"{username}:{realm}:{password}")


@dataclasses.dataclass(frozen=True, slots=True)
class Credential:
    """One device's secrets for our realm, as HA1 per algorithm (never the password)."""

    username: str
    device_id: str
    extension: str
    ha1: Mapping[str, str]


class Verdict(enum.Enum):
    OK = "ok"
    MISSING = "missing"      # no credentials for our realm: challenge
    FAILED = "failed"        # a well-formed wrong answer (wrong password, unknown user): a guess
    MALFORMED = "malformed"  # credentials for our realm that are not a digest answer: junk
    STALE = "stale"          # right digest, old or replayed nonce: challenge with stale=true


class AuthResult(NamedTuple):
    """The verdict on one request's credentials (a named tuple: one per authenticated
    request, made faster than a frozen dataclass)."""

    verdict: Verdict
    username: str | None = None
    credential: Credential | None = None
    reason: str = ""
    known_user: bool = False
    """For FAILED: whether the user name exists (only the core's guard needs to know)."""


_HEX_DIGITS = "0123456789abcdef"
_URLSAFE_DECODE = bytes.maketrans(b"-_", b"+/")
_URLSAFE_ENCODE = bytes.maketrans(b"+/", b"-_")
_MISSING = AuthResult(Verdict.MISSING)


class DigestAuthenticator:
    def __init__(self, realm: str, *, algorithms: Iterable[str] = ("MD5", "SHA-256"),
                 nonce_lifetime_s: float = 300.0, max_tracked_nonces: int = 100_000,
                 key: bytes | None = None) -> None:
        self.realm = realm
        self.algorithms = tuple(algorithms)
        for algorithm in self.algorithms:
            if algorithm not in ALGORITHMS:
                raise LocalProtocolError(f"unsupported digest algorithm {algorithm!r} (the "
                                         "config check allows only MD5 and SHA-256)")
        self.nonce_lifetime_s = nonce_lifetime_s
        self.max_tracked_nonces = max_tracked_nonces
        self._key = key or os.urandom(32)
        self._counter = itertools.count()
        self._opaque = base64.urlsafe_b64encode(
            hashlib.blake2b(b"opaque", key=self._key, digest_size=9).digest()).decode()
        self._credentials: dict[str, Credential] = {}
        self._nonce_counts: dict[str, tuple[float, int]] = {}
        self._floor = float("-inf")
        self._dummy = {a: digest_hex(a, os.urandom(16).hex()) for a in ALGORITHMS}

    # -- credentials --------------------------------------------------------------------------

    def set_credentials(self, credentials: Iterable[Credential]) -> None:
        self._credentials = {c.username: c for c in credentials}

    def credential(self, username: str) -> Credential | None:
        return self._credentials.get(username)

    # -- challenges ---------------------------------------------------------------------------

    def new_nonce(self, now: float) -> str:
        raw = struct.pack(">dI", now, next(self._counter) & 0xFFFFFFFF)
        mac = hashlib.blake2b(raw, key=self._key, digest_size=12).digest()
        # base64.urlsafe_b64encode, without its wrappers
        return binascii.b2a_base64(raw + mac, newline=False).translate(_URLSAFE_ENCODE).decode()

    def challenge(self, now: float, *, stale: bool = False, proxy: bool = False
                  ) -> list[tuple[str, str]]:
        """The WWW-Authenticate (or Proxy-Authenticate) headers: one per algorithm, the
        preferred first (RFC 8760 3). All share one nonce."""
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        nonce = self.new_nonce(now)
        tail = ', stale=true' if stale else ""
        return [(name, f'Digest realm="{self.realm}", nonce="{nonce}", '
                       f'opaque="{self._opaque}", algorithm={algorithm}, qop="auth"{tail}')
                for algorithm in self.algorithms]

    # -- verification -------------------------------------------------------------------------

    def verify(self, request: Request, now: float, *, proxy: bool = False) -> AuthResult:
        """The verdict on the request's credentials for our realm (Authorization, or
        Proxy-Authorization with ``proxy``): the first for our realm counts."""
        key = "proxy-authorization" if proxy else "authorization"
        params = None
        for value in request.headers.get_all(key):
            candidate = parse_digest_params(value)
            if candidate is not None and candidate.get("realm") == self.realm:
                params = candidate
                break
        return self.check(params, request.method, now)

    def check(self, params: Mapping[str, str] | None, method: str, now: float) -> AuthResult:
        """The verdict on one digest credential for our realm (its parameters, as
        :func:`parse_digest_params` reads them; None when the request offered none)."""
        if params is None:
            return _MISSING
        username = params.get("username")
        if not username:
            return AuthResult(Verdict.MALFORMED, reason="no username")
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm == "SHA256":
            algorithm = "SHA-256"
        nonce = params.get("nonce", "")
        response = params.get("response", "").lower()
        qop = params.get("qop", "").lower()
        nc_text = params.get("nc", "")
        cnonce = params.get("cnonce", "")
        uri = params.get("uri", "")
        if algorithm not in self.algorithms:
            return AuthResult(Verdict.MALFORMED, username, reason=f"algorithm {algorithm}")
        if qop != "auth" or not cnonce or len(nc_text) != 8 or not nonce:
            return AuthResult(Verdict.MALFORMED, username, reason="qop=auth with nonce, nc "
                              "and cnonce is required")
        if len(response) != len(self._dummy[algorithm]) or response.strip(_HEX_DIGITS):
            return AuthResult(Verdict.MALFORMED, username, reason="response is not a digest")
        try:
            nc = int(nc_text, 16)
        except ValueError:
            return AuthResult(Verdict.MALFORMED, username, reason="bad nc")
        credential = self._credentials.get(username)
        secret = credential.ha1.get(algorithm) if credential else None
        known = secret is not None
        ha2 = digest_hex(algorithm, f"{method}:{uri}")
        expected = digest_hex(algorithm, f"{secret if known else self._dummy[algorithm]}:"
                                         f"{nonce}:{nc_text}:{cnonce}:{qop}:{ha2}")
        if not hmac.compare_digest(expected, response) or not known:
            return AuthResult(Verdict.FAILED, username, reason="wrong digest or unknown user",
                              known_user=credential is not None)
        issued = self._nonce_time(nonce)
        if issued is None or issued <= self._floor or now - issued > self.nonce_lifetime_s \
                or issued > now + 1.0:
            return AuthResult(Verdict.STALE, username, credential, reason="nonce expired")
        seen = self._nonce_counts.get(nonce)
        if seen is not None and nc <= seen[1]:
            return AuthResult(Verdict.STALE, username, credential,
                              reason=f"nonce count {nc} replayed")
        self._remember(nonce, issued, nc, now)
        return AuthResult(Verdict.OK, username, credential)

    def _nonce_time(self, nonce: str) -> float | None:
        try:  # base64.urlsafe_b64decode, without its wrappers
            raw = binascii.a2b_base64(nonce.encode("ascii").translate(_URLSAFE_DECODE),
                                      strict_mode=False)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return None
        if len(raw) != 24:
            return None
        body, mac = raw[:12], raw[12:]
        if not hmac.compare_digest(
                hashlib.blake2b(body, key=self._key, digest_size=12).digest(), mac):
            return None
        return struct.unpack(">dI", body)[0]

    def _remember(self, nonce: str, issued: float, nc: int, now: float) -> None:
        counts = self._nonce_counts
        if nonce in counts:
            counts[nonce] = (issued, nc)
            return
        counts[nonce] = (issued, nc)
        if len(counts) > self.max_tracked_nonces:
            # Forget the oldest entries. Any nonce issued before the newest one forgotten
            # becomes stale: forgetting must never make a replay acceptable again.
            cutoff = now - self.nonce_lifetime_s
            for old in list(itertools.islice(counts, len(counts) // 10 + 1)):
                issued_old = counts.pop(old)[0]
                if issued_old > cutoff:
                    self._floor = max(self._floor, issued_old)

    def expire(self, now: float) -> None:
        """Drop nonce counts of nonces that are stale anyway (call now and then)."""
        cutoff = now - self.nonce_lifetime_s
        counts = self._nonce_counts
        for nonce in [n for n, (issued, _) in counts.items() if issued < cutoff]:
            del counts[nonce]


def parse_digest_params(value: str) -> dict[str, str] | None:
    """``Digest a="b", c=d`` into ``{"a": "b", "c": "d"}`` (names lower-case); None if not
    a Digest credential. Quoted strings are read whole, so a quoted value cannot smuggle in
    another parameter."""
    value = value.strip()
    if value[:7].lower() != "digest ":
        return None
    params: dict[str, str] = {}
    for name, quoted, token in _PARAM_RE.findall(value, 7):
        if token:
            params[name.lower()] = token
        else:
            params[name.lower()] = re.sub(r"\\(.)", r"\1", quoted) if "\\" in quoted else quoted
    return params

