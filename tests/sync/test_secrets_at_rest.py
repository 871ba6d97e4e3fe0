"""A known password never appears in plaintext anywhere under the state dir (SQLite files and
WAL included), nor in logs, the journal or command output; the stored bundle is sealed."""

from __future__ import annotations

import base64
import json
import logging
import stat

import pytest

from appliance.store.sealed import SealError, SealingKey
from jbcbench.fake_cloud import make_directory
from jbcbench.inprocess import InProcessAppliance

from .conftest import sync_config

PASSWORD = "Kn0wn-Secret-Pa55word-7731"


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, secret.encode("utf-16-le"), raw.hex().encode()]


@pytest.mark.integration
async def test_known_password_is_nowhere_in_plaintext(tmp_path, cloud, caplog):
    caplog.set_level(logging.DEBUG)
    directory = make_directory(4, password_of=lambda n: PASSWORD if n == "101" else f"x{n}")
    envelope = json.loads(cloud.publish(directory))
    state = tmp_path / "state"
    token = cloud.new_token()
    async with InProcessAppliance(state, sync=sync_config(cloud, token)) as app:
        result = await app.call("sync.now")
        assert result["ok"]
        assert app.by_name("directory").current.device_for_username("101").password == PASSWORD
        # Things that try to leak it: a journal entry with it in a secret-looking key, the
        # status output, a call record, an upload of the journal.
        app.journal.record("test", "attempt", "device changed", {"password": PASSWORD})
        records = app.by_name("sync").call_records
        records.ended(records.start(direction="internal", from_party="101", to_party="102"),
                      result="answered")
        assert (await app.call("sync.now"))["ok"]
        outputs = [json.dumps(await app.call("sync.status")),
                   json.dumps(app.by_name("directory").current.to_json(include_secrets=False)),
                   repr(app.by_name("directory").current)]
        # Everything is still open: the WAL holds the recent writes.
        files = [p for p in state.rglob("*") if p.is_file()]
        assert any(p.name.endswith("-wal") for p in files)
        for path in files:
            data = path.read_bytes()
            for form in [*_forms(PASSWORD), token.encode()]:
                assert form not in data, f"{path} holds the password"
            # Not even the signed payload (base64 of the JSON holding it) is stored as is.
            assert envelope["payload"][:48].encode() not in data, f"{path} holds the bundle"
    for text in [*outputs, caplog.text, json.dumps(list(cloud.events.values()))]:
        assert PASSWORD not in text
    # The sealed bundle opens only with the right key and purpose.
    sealed = (state / "bundles" / "current.sealed").read_bytes()
    key = SealingKey.load_or_create(state)
    assert PASSWORD.encode() in base64.b64decode(
        json.loads(key.open(sealed, purpose=b"jbc directory bundle"))["payload"])
    try:
        key.open(sealed, purpose=b"something else")
    except SealError:
        pass
    else:
        raise AssertionError("a sealed blob opened under another purpose")
    assert stat.S_IMODE((state / "storage.key").stat().st_mode) == 0o600


def test_tampered_or_foreign_sealed_bundle_is_not_loaded(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from appliance.sync.bundle import verify_bundle
    from appliance.sync.bundle_store import BundleStore
    from jbcbench.fake_cloud import sign_bundle

    signing = Ed25519PrivateKey.generate()
    key = SealingKey.load_or_create(tmp_path)
    store = BundleStore(tmp_path, key, signing.public_key())
    for version in (1, 2):
        store.apply(verify_bundle(sign_bundle(signing, account="a", version=version,
                                              directory=make_directory(version)),
                                  signing.public_key(), account="a", applied_version=None))
    current = tmp_path / "bundles" / "current.sealed"
    blob = bytearray(current.read_bytes())
    blob[40] ^= 0x01
    current.write_bytes(bytes(blob))
    directory, source = store.load_applied()
    assert directory.version == 1 and "previous" in source
    assert store.problems and "authentication failed" in store.problems[0]
