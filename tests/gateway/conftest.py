"""Every gateway test fails if a call met an event its table has no row for: in production
the session logs it and goes on (a call is never dropped for that), in tests it is loud."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def no_event_outside_the_call_tables(caplog):
    caplog.set_level(logging.ERROR, logger="appliance.gateway.calls")
    yield
    dropped = [r.getMessage() for when in ("setup", "call") for r in caplog.get_records(when)
               if getattr(r, "unexpected_event", False)]
    assert not dropped, f"events no call table expects: {dropped}"
