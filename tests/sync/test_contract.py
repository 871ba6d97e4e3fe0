"""Our client and the fake cloud both follow appliance/sync/cloud-api.json."""

from __future__ import annotations

import asyncio
import pathlib
import re
import time

import pytest

from appliance.gateway.events import EmergencyCallStarted
from appliance.sync.cloud import CloudClient, CloudError, Endpoint
from appliance.sync.contract import Contract, ContractViolation
from appliance.sync.http import Response
from jbcbench.fake_cloud import FakeCloud, make_directory
from jbcbench.inprocess import InProcessAppliance

from .conftest import sync_config

SYNC_SOURCES = pathlib.Path(__file__).parents[2] / "appliance" / "sync"
UPLOAD_SOURCES = [SYNC_SOURCES, SYNC_SOURCES.parent / "drill"]
"""The client's code, and that of the other records the outbox uploads (drill reports)."""


@pytest.mark.integration
def test_every_operation_is_used_by_the_client_and_served_by_the_fake_cloud():
    contract = Contract.load()
    client_text = "\n".join(p.read_text() for d in UPLOAD_SOURCES for p in d.glob("*.py"))
    used = set(re.findall(r'"(enroll|renewCertificate|getBundle|heartbeat|uploadEvents|'
                          r'uploadCallRecords|[a-z]+[A-Z][A-Za-z]+)"', client_text))
    assert set(contract.operations) <= used
    served = {name[4:] for name in dir(FakeCloud) if name.startswith("_op_")} | {"enroll"}
    assert served == set(contract.operations)


def test_every_schema_uses_only_keywords_the_checker_knows():
    contract = Contract.load()
    for name, schema in contract.document["components"]["schemas"].items():
        # Checking a value of the wrong type walks the schema's keywords without raising.
        list(contract.problems(schema, {}, name))
        list(contract.problems(schema, None, name))


@pytest.mark.integration
async def test_a_full_session_exercises_every_operation_within_the_contract(tmp_path, cloud):
    cloud.faults.certificate_lifetime_s = 3600  # so the client renews at once
    cloud.publish(make_directory(2))
    config = sync_config(cloud, cloud.new_token(), renew_before_s=7200)
    async with InProcessAppliance(tmp_path, sync=config) as app:
        records = app.by_name("sync").call_records
        records.ended(records.start(direction="inbound", from_party="+15550001111",
                                    to_party="600", trunk="pots1"), result="no-answer",
                      cause="487 Request Terminated")
        app.by_name("drill").reports.add({  # a drill report goes up like call records
            "id": "0b5c6c4e-1f7a-4f4e-9a55-3c1d2f6e7a80", "kind": "standard",
            "trigger": "manual", "actor": "test", "site": "site", "started_at": 1.0,
            "finished_at": 2.0, "passed": True, "steps": [
                {"id": "local-sip", "title": "local SIP", "outcome": "passed",
                 "detail": "ok", "elapsed_s": 0.1}]})
        assert (await app.call("sync.now"))["ok"]
        app.bus.publish(EmergencyCallStarted(call="c1", extension=None, caller_verified=False,
                                             number="911", location=None,
                                             started_at=time.time()))
        assert (await app.call("sync.now"))["ok"]  # second poll: 304
        while not app.events("emergency-alert-delivered"):
            assert not app.events("emergency-alert-failed")
            await asyncio.sleep(0.02)
    operations = {op for op, _, _ in cloud.requests}
    assert operations == set(Contract.load().operations)
    assert ("getBundle", "127.0.0.1", 304) in cloud.requests
    assert cloud.violations == []


@pytest.mark.parametrize("body, problem", [
    ({"stored": [], "duplicates": []}, None),
    ({"stored": []}, "missing required 'duplicates'"),
    ({"stored": [1], "duplicates": []}, "expected string"),
    ({"stored": [], "duplicates": [], "extra": 1}, "unexpected property 'extra'"),
    ([], "expected object"),
])
def test_checker_finds_what_is_wrong(body, problem):
    contract = Contract.load()
    if problem is None:
        contract.check_response("uploadEvents", 200, body)
        return
    with pytest.raises(ContractViolation, match=re.escape(problem)):
        contract.check_response("uploadEvents", 200, body)


def test_client_refuses_replies_outside_the_contract():
    client = CloudClient(Endpoint.from_url("https://127.0.0.1:1"), timeout=1)
    undocumented = Response(status=418, reason="", headers={}, body=b"")
    with pytest.raises(CloudError) as error:
        client._interpret("heartbeat", undocumented)
    assert error.value.kind == "contract"
    missing_etag = Response(status=200, reason="OK", headers={},
                            body=b'{"format":"jbc-config-bundle/1","payload":"","signature":""}')
    with pytest.raises(CloudError, match="ETag"):
        client._interpret("getBundle", missing_etag)
    refused = Response(status=503, reason="", headers={"retry-after": "7"},
                       body=b'{"error":{"code":"busy","message":"later"}}')
    with pytest.raises(CloudError) as error:
        client._interpret("heartbeat", refused)
    assert (error.value.kind, error.value.status, error.value.retry_after) == ("refused", 503, 7)


@pytest.mark.integration
def test_fake_cloud_refuses_requests_outside_the_contract(cloud: FakeCloud):
    import asyncio

    from appliance.sync.http import exchange
    from appliance.sync.identity import client_context

    async def post():
        return await exchange(host=cloud.host, port=cloud.port,
                              ssl_context=client_context(cloud.keys.ca_file, None),
                              server_hostname=cloud.host, method="POST", target="/v1/enroll",
                              headers={"Content-Type": "application/json"},
                              body=b'{"token": "x"}', timeout_s=5)

    response = asyncio.run(post())
    assert response.status == 400
    assert cloud.violations and "missing required 'csr'" in cloud.violations[0]
    cloud.violations.clear()
