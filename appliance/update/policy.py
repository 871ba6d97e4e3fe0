"""When an update may install or reboot: never during an outage or a call, unless forced."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SiteActivity:
    """What the site is doing now, as far as an update is concerned."""

    wan_state: str
    serving_locally: bool
    """The appliance is what keeps the phones working now (outage, recovering, forced)."""
    calls: int


def refusal(activity: SiteActivity, *, force: bool) -> str | None:
    """Why an update must not start (or reboot) now, or None when it may."""
    if force:
        return None
    reasons = []
    if activity.serving_locally:
        reasons.append(f"the appliance is serving the site's phones (WAN {activity.wan_state})")
    if activity.calls:
        calls = "a call is" if activity.calls == 1 else f"{activity.calls} calls are"
        reasons.append(f"{calls} in progress")
    if not reasons:
        return None
    return " and ".join(reasons) + "; try again later, or use --force"
