"""Fixtures for the SIP tests: the test site and a core on a fake network (see
:mod:`jbcbench.sipnet`)."""

from __future__ import annotations

import pytest

from appliance.directory.model import Directory
from jbcbench.sipnet import FakeNet, make_core_net, test_site


@pytest.fixture
def site() -> Directory:
    return test_site()


@pytest.fixture
def make_net():
    def make(serving: bool = True, directory: Directory | None = None,
             **overrides) -> FakeNet:
        return make_core_net(directory, serving, **overrides)
    return make


@pytest.fixture
def net(make_net) -> FakeNet:
    return make_net()
