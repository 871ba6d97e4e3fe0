"""How the fake cloud makes config bundles: a directory generator and the bundle signer.

The signer follows cloud-api.json's Bundle: an envelope with the base64 payload and an Ed25519
signature over ``b"jbc-config-bundle/1\\n" + payload``. It is written here independently of
the appliance's verifier, so a mismatch between the two shows up in tests.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BUNDLE_FORMAT = "jbc-config-bundle/1"


def sign_bundle(key: Ed25519PrivateKey, *, account: str, version: int,
                directory: dict[str, Any], issued_at: float | None = None) -> bytes:
    payload = json.dumps({"account": account, "version": version,
                          "issued_at": time.time() if issued_at is None else issued_at,
                          "directory": directory}, sort_keys=True).encode()
    signature = key.sign(BUNDLE_FORMAT.encode() + b"\n" + payload)
    return json.dumps({"format": BUNDLE_FORMAT,
                       "payload": base64.b64encode(payload).decode(),
                       "signature": base64.b64encode(signature).decode()}).encode()


def make_directory(version: int, *, extensions: int = 3, site: str = "hq",
                   password_of=None) -> dict[str, Any]:
    """A valid directory of ``extensions`` extensions (101, 102, ...), one device each.

    ``password_of(number) -> str`` chooses each device's password (default: derived from
    the version, so a new version changes every password)."""
    password_of = password_of or (lambda number: f"pw-{number}-v{version}")
    numbers = [str(101 + i) if extensions <= 400 else str(1001 + i) for i in range(extensions)]
    return {
        "schema": 1, "version": version, "site": site,
        "locations": [{"id": "hq", "address": "1 Main St, Springfield, IL 62701",
                       "floor": "2", "room": "Reception"}],
        "extensions": [{"number": n, "name": f"User {n}", "location": "hq"} for n in numbers],
        "devices": [{"id": f"dev-{n}", "extension": n, "username": n,
                     "password": password_of(n)} for n in numbers],
        "ring_groups": [{"number": "600", "name": "Front desk", "strategy": "simultaneous",
                         "members": numbers[:2]}] if len(numbers) >= 2 else [],
        "dial_plan": {"outside_prefix": "9", "external_patterns": [r"\+?[0-9]{7,15}"]},
        "emergency": {"numbers": ["911", "112"], "default_location": "hq"},
        "inbound": [{"trunk": "*", "target": "600" if len(numbers) >= 2 else numbers[0]}],
    }
