"""Signed, versioned config bundles: the pure verification core (no I/O, no clock).

On the wire a bundle is a JSON envelope::

    {"format": "jbc-config-bundle/1",
     "payload": "<base64 of the UTF-8 JSON payload>",
     "signature": "<base64 Ed25519 signature>"}

The signature covers ``SIGNING_CONTEXT + payload bytes`` (the context string keeps a
signature made for anything else from ever validating as a bundle). The payload is::

    {"account": "acme-123", "version": 42, "issued_at": 1767225600.0,
     "directory": { ...the directory JSON shape of appliance.directory.model... }}

A bundle is accepted only if, in this order: the envelope is well formed, the signature
verifies under the pinned public key, the payload is for this device's account, the
directory passes the schema and cross-checks, and the version is newer than the one applied
(an old or replayed bundle is refused).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance import boundedjson
from appliance.directory.model import Directory, DirectoryError, parse_directory

from .errors import SyncError

FORMAT = "jbc-config-bundle/1"
SIGNING_CONTEXT = b"jbc-config-bundle/1\n"
MAX_BUNDLE_BYTES = 16 * 1024 * 1024
MAX_PAYLOAD_DEPTH = 12
"""The directory's deepest value (a ring group's member list inside the payload) is at 5."""


class BundleRejected(SyncError):
    """A bundle that must not be applied. ``code`` is stable: malformed, bad-signature,
    wrong-account, schema, old-version."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedBundle:
    version: int
    account: str
    issued_at: float
    directory: Directory = dataclasses.field(repr=False)
    envelope: bytes = dataclasses.field(repr=False)
    """The exact bytes received, kept so the signature can be checked again after storage."""


def load_public_key(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))


def verify_bundle(envelope: bytes, public_key: Ed25519PublicKey | None, *,
                  account: str | None, applied_version: int | None,
                  source: str = "cloud bundle") -> VerifiedBundle:
    """Check ``envelope`` completely; return it parsed, or raise :class:`BundleRejected`.

    ``public_key`` None skips the signature check: only for our own stored copy, which the
    storage seal (AES-GCM) authenticates, when no signing key is configured any more.
    ``account`` None skips the account check; ``applied_version`` None accepts any version.
    """
    try:
        outer = boundedjson.parse(envelope, max_bytes=MAX_BUNDLE_BYTES, max_depth=2,
                                  what="the bundle envelope")
    except boundedjson.JsonRefused as error:
        raise BundleRejected("malformed", str(error)) from None
    if not isinstance(outer, dict) or set(outer) != {"format", "payload", "signature"}:
        raise BundleRejected("malformed", "bundle envelope must have exactly format, payload "
                             "and signature")
    if outer["format"] != FORMAT:
        raise BundleRejected("malformed", f"bundle format {outer['format']!r} is not {FORMAT!r}"
                             " (update jbcd?)")
    payload = _b64(outer["payload"], "payload")
    signature = _b64(outer["signature"], "signature")
    try:
        if public_key is not None:
            public_key.verify(signature, SIGNING_CONTEXT + payload)
    except InvalidSignature:
        raise BundleRejected("bad-signature", "bundle signature does not verify under the "
                             "pinned signing key (sync.signing_public_key)") from None
    try:
        inner = boundedjson.parse(payload, max_bytes=MAX_BUNDLE_BYTES,
                                  max_depth=MAX_PAYLOAD_DEPTH, what="the signed payload")
    except boundedjson.JsonRefused as error:
        raise BundleRejected("schema", str(error)) from None
    if not isinstance(inner, dict) or set(inner) != {"account", "version", "issued_at",
                                                       "directory"}:
        raise BundleRejected("schema", "signed payload must have exactly account, version, "
                             "issued_at and directory")
    version = inner["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleRejected("schema", "payload version must be an integer >= 1")
    issued_at = inner["issued_at"]
    if isinstance(issued_at, bool) or not isinstance(issued_at, int | float):
        raise BundleRejected("schema", "payload issued_at must be a number")
    if not isinstance(inner["account"], str) or not inner["account"]:
        raise BundleRejected("schema", "payload account must be a non-empty string")
    if account is not None and inner["account"] != account:
        raise BundleRejected("wrong-account", f"bundle is for account {inner['account']!r}, "
                             f"this device belongs to {account!r}")
    try:
        directory = parse_directory(inner["directory"], source=f"{source} v{version}")
    except DirectoryError as error:
        raise BundleRejected("schema", str(error)) from None
    if directory.version != version:
        raise BundleRejected("schema", f"directory.version {directory.version} differs from "
                             f"the bundle version {version}")
    if applied_version is not None and version <= applied_version:
        raise BundleRejected("old-version", f"bundle version {version} is not newer than the "
                             f"applied version {applied_version} (replayed or stale bundle)")
    return VerifiedBundle(version=version, account=inner["account"], issued_at=float(issued_at),
                          directory=directory, envelope=envelope)


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise BundleRejected("malformed", f"bundle {name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BundleRejected("malformed", f"bundle {name} is not valid base64") from None
