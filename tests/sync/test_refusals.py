"""Everything the cloud link must refuse: each keeps the previous config and raises an event."""

from __future__ import annotations

import asyncio
import time

import pytest

from jbcbench.fake_cloud import make_directory
from jbcbench.inprocess import InProcessAppliance

from .conftest import sync_config


async def _enrolled_on_v5(app, cloud) -> None:
    cloud.publish(make_directory(5))
    result = await app.call("sync.now")
    assert result["ok"], result
    assert app.by_name("directory").current.version == 5


def _kept_v5_and_raised(app, kind: str) -> str:
    directory = app.by_name("directory")
    assert directory.current.version == 5
    assert directory.current.device_for_username("101").password == "pw-101-v5"
    events = app.events(kind)
    assert events, f"no {kind} event; journal: {[e.kind for e in app.events()]}"
    return events[-1].reason


@pytest.mark.parametrize("fault, code", [
    ("bad-signature", "bad-signature"),
    ("schema", "schema"),
    ("older", "old-version"),
    ("replay", "old-version"),
    ("other-account", "wrong-account"),
])
@pytest.mark.integration
async def test_bad_bundle_is_refused_and_the_previous_config_kept(tmp_path, cloud, fault, code):
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, cloud.new_token())) as app:
        await _enrolled_on_v5(app, cloud)
        if fault == "bad-signature":
            cloud.publish(make_directory(6), signer="rogue")
        elif fault == "schema":
            broken = make_directory(6)
            broken["devices"][0]["extension"] = "999"  # no such extension
            cloud.publish(broken)
        elif fault == "older":
            cloud.publish(make_directory(4))
        elif fault == "replay":
            cloud.publish(make_directory(5))  # same version, re-signed: not newer
        else:
            cloud.publish(make_directory(6), account="someone-else")
            cloud.bundles[cloud.account] = cloud.bundles.pop("someone-else")
        result = await app.call("sync.now")
        reason = _kept_v5_and_raised(app, "bundle-refused")
        assert f"({code})" in reason
        assert result["status"]["problem_kind"] == "bundle-refused"
        # A good, newer bundle afterwards is applied and clears the problem.
        cloud.publish(make_directory(7))
        result = await app.call("sync.now")
        assert app.by_name("directory").current.version == 7
        assert result["status"]["problem"] is None


@pytest.mark.integration
@pytest.mark.parametrize("certificate", ["rogue", "misnamed"])
async def test_wrong_server_certificate_is_refused(tmp_path, cloud, certificate):
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, cloud.new_token())) as app:
        await _enrolled_on_v5(app, cloud)
        served = len(cloud.requests)
        cloud.publish(make_directory(6))
        cloud.faults.certificate = certificate
        result = await app.call("sync.now")
        assert not result["ok"] and result["kind"] == "server-certificate"
        reason = _kept_v5_and_raised(app, "server-certificate-refused")
        assert "certificate" in reason
        assert len(cloud.requests) == served  # nothing was sent to the impostor
        cloud.faults.certificate = "good"
        assert (await app.call("sync.now"))["ok"]
        assert app.by_name("directory").current.version == 6
        assert app.events("cloud-reachable")


@pytest.mark.integration
async def test_expired_client_certificate_is_refused_by_the_cloud(tmp_path, cloud):
    # The cloud issues a certificate that expired a minute ago (as if the box was off a year).
    cloud.faults.certificate_not_before = time.time() - 7200
    cloud.faults.certificate_lifetime_s = 7200 - 60
    config = sync_config(cloud, cloud.new_token(), renew_before_s=60)
    cloud.publish(make_directory(5))
    async with InProcessAppliance(tmp_path, sync=config) as app:
        result = await app.call("sync.now")
        assert not result["ok"]
        assert result["kind"] == "client-certificate", result
        assert app.by_name("directory").current.version == 0  # nothing applied
        assert app.events("client-certificate-refused")
        for _ in range(100):  # the cloud's thread may note it a moment after we saw it
            if cloud.handshake_failures:
                break
            await asyncio.sleep(0.02)
        assert cloud.handshake_failures  # refused by the cloud's TLS, not by us
        assert [op for op, _, _ in cloud.requests] == ["enroll"]


@pytest.mark.integration
async def test_expired_client_certificate_keeps_the_applied_config(tmp_path, cloud):
    cloud.publish(make_directory(5))
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, cloud.new_token())) as app:
        await _enrolled_on_v5(app, cloud)
    # Replace the device certificate by one that has expired (same key, same device).
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem_path = tmp_path / "identity" / "device.pem"
    pem = pem_path.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    old = x509.load_pem_x509_certificates(pem)[0]
    import datetime
    expired = cloud.keys.ca.issue(
        key.public_key(), old.subject.rfc4514_string().split("CN=")[1].split(",")[0],
        client=True, lifetime_s=3600,
        not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2))
    pem_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
                         + expired.public_bytes(serialization.Encoding.PEM))
    cloud.publish(make_directory(6))
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, "")) as app:
        result = await app.call("sync.now")
        assert result["kind"] == "client-certificate", result
        _kept_v5_and_raised(app, "client-certificate-refused")
