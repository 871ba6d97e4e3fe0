"""In-path mode with a real SIP client that is not pjsua: Debian's baresip registers and
calls through the relay to the cloud stand-in, then calls locally during an outage, without
registering again (issue 11, interop). The scenario is hw-testbench/interop_inpath.py."""

from __future__ import annotations

import shutil

import pytest
from interop_inpath import run

from jbcbench.topology import can_build_namespaces

pytestmark = [pytest.mark.integration, pytest.mark.netns,
              pytest.mark.skipif(not can_build_namespaces()[0],
                                 reason=can_build_namespaces()[1]),
              pytest.mark.skipif(shutil.which("baresip") is None,
                                 reason="baresip is not installed (apt-get install baresip)")]


def test_baresip_calls_through_the_relay_then_locally_in_an_outage(tmp_path):
    result = run(tmp_path)
    assert result["ok"], result
    steps = result["steps"]
    path = steps["registered_through_relay"]["cloud_path"][0]
    assert path.endswith(";lr;ob>"), "the cloud reaches baresip through the appliance"
    assert steps["online_call_to_101"] == {"answered": True, "routed_by_the_cloud": 1}
    across = steps["call_through_the_cloud_across_the_cut"]
    assert across["media_still_flowing_both_ways"]
    assert across["hang_up_reached_the_other_phone_s"] < 2.0
    assert ("103", "102", "answered") in steps["outage_call_to_102"]["through_the_local_proxy"]
    assert any("mirrored: 103 registered at the cloud through the appliance" in line
               for line in result["jbcd_journal_sip"])
    assert any("from their mirrored bindings" in line for line in result["jbcd_journal_sip"])
    baresip = "\n".join(result["baresip"])
    assert "Call established: sip:101@cloud.test" in baresip
    assert "Call established: sip:102@cloud.test" in baresip
