"""Fixtures for cloud sync tests: a fake cloud on loopback and an appliance wired to it."""

from __future__ import annotations

import pytest

from appliance.sync.config import SyncConfig
from jbcbench.fake_cloud import CloudKeys, FakeCloud


@pytest.fixture(scope="module")
def cloud_keys(tmp_path_factory) -> CloudKeys:
    return CloudKeys(tmp_path_factory.mktemp("cloud-keys"))


@pytest.fixture
def cloud(cloud_keys):
    with FakeCloud(cloud_keys) as fake:
        yield fake
    assert fake.violations == [], "the client sent requests that break cloud-api.json"


def sync_config(cloud: FakeCloud, token: str = "", **overrides) -> SyncConfig:
    values = {"cloud_url": cloud.url, "ca_file": cloud.keys.ca_file,
              "signing_public_key": cloud.keys.signing_public_key_b64,
              "enrollment_token": token, "retry_min_s": 0.05, "retry_max_s": 0.5,
              "request_timeout_s": 5.0}
    values.update(overrides)
    return SyncConfig(**values)
