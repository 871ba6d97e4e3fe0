"""The clock check's sources: chronyc's CSV parsed, and a real chronyd (no clock control)
asked synchronised and unsynchronised."""

from __future__ import annotations

import shutil

import pytest

from appliance.selftest.clock import kernel_status, parse_chrony_tracking
from jbcbench.chrony import ChronyDaemon

SYNCED = ("7F7F0101,,8,1796412482.387611763,0.000000123,0.000000000,0.000000000,0.000,"
          "0.000,0.000,0.000000000,0.000000000,0.0,Normal")
UNSYNCED = ("00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,"
            "1.000000000,1.000000000,0.0,Not synchronised")


def test_chrony_tracking_normal_leap_status_means_synchronised():
    status = parse_chrony_tracking(SYNCED)
    assert status["synchronised"] is True and status["stratum"] == 8


def test_chrony_tracking_not_synchronised():
    status = parse_chrony_tracking(UNSYNCED)
    assert status["synchronised"] is False and "Not synchronised" in status["detail"]


def test_garbage_from_chronyc_is_an_error_not_a_verdict():
    with pytest.raises(ValueError):
        parse_chrony_tracking("506 Cannot talk to daemon")


def test_the_kernel_always_gives_an_answer():
    assert kernel_status()["synchronised"] in (True, False, None)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("chronyd") is None, reason="needs chrony (apt chrony)")
async def test_a_real_chronyd_is_asked_both_ways(tmp_path):
    from appliance.selftest.clock import chrony_status

    async with ChronyDaemon(tmp_path / "synced", synchronised=True) as synced:
        status = await synced.wait_for(True)
        assert status["source"] == "chrony"
        assert (await chrony_status(synced.address))["synchronised"] is True
    async with ChronyDaemon(tmp_path / "unsynced", synchronised=False) as unsynced:
        await unsynced.wait_for(False)  # chronyd answering, and not in sync
        status = await chrony_status(unsynced.address)
        assert status["synchronised"] is False
        assert "Not synchronised" in status["detail"]
