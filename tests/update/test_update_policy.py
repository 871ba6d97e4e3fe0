"""An update never starts or reboots during an outage or a call, unless forced."""

from __future__ import annotations

import pytest

from appliance.update.policy import SiteActivity, refusal


def activity(state: str = "online", *, local: bool = False, calls: int = 0) -> SiteActivity:
    return SiteActivity(wan_state=state, serving_locally=local, calls=calls)


@pytest.mark.parametrize(("site", "refused_because"), [
    (activity("online"), None),
    (activity("degraded"), None),
    (activity("starting"), None),
    (activity("outage", local=True), "serving the site's phones (WAN outage)"),
    (activity("forced", local=True), "serving the site's phones (WAN forced)"),
    (activity("recovering", local=True), "serving the site's phones (WAN recovering)"),
    (activity("online", calls=1), "a call is in progress"),
    (activity("online", calls=3), "3 calls are in progress"),
])
def test_refusal_names_what_stands_in_the_way(site, refused_because):
    why = refusal(site, force=False)
    if refused_because is None:
        assert why is None
    else:
        assert refused_because in why
        assert why.endswith("try again later, or use --force")


def test_outage_and_call_are_both_named():
    why = refusal(activity("outage", local=True, calls=2), force=False)
    assert "WAN outage" in why and "2 calls are in progress" in why


def test_force_overrides_outage_and_calls():
    assert refusal(activity("outage", local=True, calls=5), force=True) is None
