"""A hostile cloud reply costs that request, never the cloud link (issue 14, finding 4: a 200 kB
deeply nested JSON reply crashed the sync task for good, 'jbc sync now' waited 30 s and failed
with an empty reason, and 'jbc sync' showed a stale state)."""

from __future__ import annotations

import asyncio
import base64

import pytest

from appliance.control.commands import CommandError
from appliance.sync.bundle import BundleRejected, verify_bundle
from jbcbench.fake_cloud import make_directory
from jbcbench.inprocess import InProcessAppliance

from .conftest import sync_config

DEEP = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # 200 kB nested 100,000 deep
HOSTILE = {
    "deep": DEEP,
    "nan": b'{"subscription": {"status": "active", "ended_at": NaN}, "bundle_version": 1}',
    "not-json": b"\xff\xfe<html>",
    "huge-number": b'{"bundle_version": 1e999}',
}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("operation", ["heartbeat", "getBundle"])
async def test_a_hostile_reply_costs_the_request_not_the_link(tmp_path, cloud, case, operation):
    cloud.publish(make_directory(1))
    async with InProcessAppliance(tmp_path, sync=sync_config(cloud, cloud.new_token())) as app:
        assert (await app.call("sync.now"))["ok"]
        cloud.faults.raw_body, cloud.faults.raw_body_operations = (HOSTILE[case],
                                                                   frozenset({operation}))
        uploads = len(cloud.requests)
        outcome = await asyncio.wait_for(app.call("sync.now"), 10)
        assert outcome["ok"] is False and outcome["kind"] == "contract"
        assert operation in outcome["problem"] and outcome["problem"].strip()
        assert outcome["status"]["problem"] == outcome["problem"]  # 'jbc sync' is current
        done = [op for op, _, _ in cloud.requests[uploads:]]
        assert "heartbeat" in done  # the other steps of the round still ran
        status = await app.call("status")
        sync = next(s for s in status["subsystems"] if s["name"] == "sync")
        assert [t["crashes"] for t in sync["tasks"]] == [0, 0]
        cloud.faults.raw_body = None
        cloud.publish(make_directory(2))
        recovered = await app.call("sync.now")
        assert recovered["ok"], recovered
        assert recovered["status"]["directory_version"] == 2
        assert recovered["status"]["problem"] is None


def _signed(cloud, payload: bytes) -> bytes:
    signature = cloud.keys.signing_key.sign(b"jbc-config-bundle/1\n" + payload)
    return (b'{"format": "jbc-config-bundle/1", "payload": "' + base64.b64encode(payload)
            + b'", "signature": "' + base64.b64encode(signature) + b'"}')


@pytest.mark.parametrize(("payload", "words"), [
    (b'{"account": "acme-001", "version": 2, "issued_at": 1, "directory": '
     + b"[" * 5000 + b"]" * 5000 + b"}", "nested deeper than 12"),
    (b'{"account": "acme-001", "version": 2, "issued_at": NaN, "directory": {}}',
     "finite numbers only"),
])
def test_a_signed_but_hostile_bundle_is_refused_not_crashed_on(cloud_keys, payload, words):
    class Keys:
        keys = cloud_keys

    with pytest.raises(BundleRejected) as refused:
        verify_bundle(_signed(Keys, payload), cloud_keys.signing_key.public_key(),
                      account="acme-001", applied_version=1)
    assert refused.value.code == "schema" and words in refused.value.message


def test_a_bundle_envelope_nested_deep_is_malformed():
    with pytest.raises(BundleRejected) as refused:
        verify_bundle(DEEP, None, account=None, applied_version=None)
    assert refused.value.code == "malformed"


@pytest.mark.integration
async def test_sync_now_gives_the_real_reason_when_the_link_itself_crashed(tmp_path, cloud):
    """A bug under the link (here: a trunk's health report raising while the heartbeat is
    built) crashes the task; 'jbc sync now' says so at once instead of waiting 30 s for an
    empty reason, and 'jbc sync' shows it until the restarted link works again."""
    from appliance.daemon_config import DaemonConfig

    cloud.publish(make_directory(1))
    daemon = DaemonConfig(state_dir=tmp_path, runtime_dir=tmp_path / "run", restart_min_s=1.0)
    async with InProcessAppliance(tmp_path, daemon=daemon,
                                  sync=sync_config(cloud, cloud.new_token())) as app:
        assert (await app.call("sync.now"))["ok"]
        sync = app.by_name("sync")
        healthy = sync.trunk_health

        def broken():
            raise RuntimeError("trunk lte1 reported garbage")

        sync.trunk_health = broken
        crashed = await asyncio.wait_for(app.call("sync.now"), 10)
        assert crashed["ok"] is False and crashed["kind"] == "crash"
        assert "RuntimeError: trunk lte1 reported garbage" in crashed["problem"]
        with pytest.raises(CommandError) as down:
            await app.call("sync.now")
        assert down.value.code == "link_down" and "restarts by itself in" in down.value.message
        status = await app.call("sync.status")
        assert status["problem"].startswith("the cloud link crashed (RuntimeError")
        sync.trunk_health = healthy
        record = next(r for r in app.supervisor.tasks_of("sync") if r.name == "cloud-link")
        while record.state != "running":  # noqa: ASYNC110 - the restart is 1 s away
            await asyncio.sleep(0.1)
        assert (await app.call("sync.now"))["ok"]
        assert (await app.call("sync.status"))["problem"] is None
