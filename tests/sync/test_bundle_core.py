"""The pure bundle verifier: whatever arrives, the answer is a verified bundle or a refusal."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from appliance.sync.bundle import BundleRejected, verify_bundle
from jbcbench.fake_cloud import make_directory, sign_bundle

KEY = Ed25519PrivateKey.generate()
GOOD = sign_bundle(KEY, account="acme", version=3, directory=make_directory(3))


def _verify(envelope: bytes, applied: int | None = None):
    return verify_bundle(envelope, KEY.public_key(), account="acme", applied_version=applied)


def test_a_good_bundle_verifies():
    bundle = _verify(GOOD, applied=2)
    assert (bundle.version, bundle.account, len(bundle.directory.extensions)) == (3, "acme", 3)


def _resigned(mutate) -> bytes:
    outer = json.loads(GOOD)
    payload = json.loads(base64.b64decode(outer["payload"]))
    mutate(payload)
    raw = json.dumps(payload).encode()
    return json.dumps({"format": outer["format"], "payload": base64.b64encode(raw).decode(),
                       "signature": base64.b64encode(
                           KEY.sign(b"jbc-config-bundle/1\n" + raw)).decode()}).encode()


@pytest.mark.parametrize("envelope, code", [
    (b"not json", "malformed"),
    (b"[]", "malformed"),
    (GOOD.replace(b"jbc-config-bundle/1", b"jbc-config-bundle/2", 1), "malformed"),
    (_resigned(lambda p: p.update(version=4)), "schema"),            # differs from directory
    (_resigned(lambda p: p.update(version=True)), "schema"),
    (_resigned(lambda p: p.pop("issued_at")), "schema"),
    (_resigned(lambda p: p["directory"].update(schema=2)), "schema"),
    (_resigned(lambda p: p.update(account="other")), "wrong-account"),
])
def test_refusals_name_their_reason(envelope, code):
    with pytest.raises(BundleRejected) as refused:
        _verify(envelope)
    assert refused.value.code == code


def test_signature_covers_every_payload_byte():
    outer = json.loads(GOOD)
    payload = bytearray(base64.b64decode(outer["payload"]))
    for index in range(0, len(payload), max(1, len(payload) // 50)):
        tampered = bytearray(payload)
        tampered[index] ^= 0x20
        outer["payload"] = base64.b64encode(bytes(tampered)).decode()
        with pytest.raises(BundleRejected) as refused:
            _verify(json.dumps(outer).encode())
        assert refused.value.code == "bad-signature"


def test_forward_only():
    assert _verify(GOOD, applied=None).version == 3
    for applied in (3, 4, 100):
        with pytest.raises(BundleRejected, match="not newer"):
            _verify(GOOD, applied=applied)


@given(st.binary(max_size=300) | st.builds(lambda d: json.dumps(d).encode(),
                                           st.dictionaries(st.text(max_size=10),
                                                           st.text(max_size=20), max_size=4)))
def test_arbitrary_input_is_refused_cleanly(data):
    with pytest.raises(BundleRejected):
        _verify(data)
