"""Phone failover readiness, pure: a sighting and the appliance's timers in, a prediction and
what to change out.

Backup-registrar mode (the appliance is the phone's secondary server; the phone decides):

* failover, worst case = the phone's next refresh of its cloud registration (it only then
  notices the cloud is gone) + its failed attempts (each an unanswered REGISTER timing out)
  + the waits between them; the same rule the hardware bench's desk phones follow
  (``hw-testbench/jbcbench/deskphone.py``), so a prediction can be checked against a run;
* failback, worst case = the appliance hands back after its hold-down, then the phone returns
  at its next probe of the cloud, or when the appliance refuses its next refresh, whichever
  comes first.

In-path mode (the appliance is the phone's outbound proxy and mirrors its binding): failover
is the appliance's own detection plus a second, whatever the phone's timers, as long as the
phone's registrations pass through the appliance; failback is the hold-down plus the short
expiry the appliance grants during the outage.

A phone is flagged for what can be seen of it: a registration expiry above the advised one
(a warning), or a predicted failover beyond ``fail_s`` (a failure). Its retry counts cannot be
seen from the appliance, so a prediction that is long only because of assumed factory retry
counts is shown but not flagged.

The phone's own timers come from what it sent (the expiry it asked for, how often it really
refreshed); the rest from its vendor's documented defaults (:mod:`appliance.phones.vendors`),
and the prediction says which ('basis').
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .sightings import PhoneSighting
from .vendors import GENERIC_DEFAULTS, FailoverDefaults, Recommendation, Vendor, identify


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ApplianceTimers:
    mode: str
    """'backup-registrar' or 'in-path'."""
    detection_s: float
    """The WAN monitor's bound for declaring an outage (interval x fall rounds + timeout)."""
    hold_down_s: float
    local_expires_s: int
    """The longest expiry the appliance grants during an outage (sip.outage_max_expires_s)."""
    appliance: str
    """host:port of the appliance as phones reach it (for the advice)."""
    warn_s: float = 120.0
    fail_s: float = 600.0
    recommended_expires_s: int = 120


def failover_bound_s(d: FailoverDefaults, refresh_after_s: float) -> float:
    return refresh_after_s + d.failover_after * d.attempt_timeout_s + \
        max(0, d.failover_after - 1) * d.retry_interval_s


def assess(phone: PhoneSighting, timers: ApplianceTimers) -> dict[str, Any]:
    vendor = identify(phone.user_agent)
    defaults = vendor.defaults if vendor else GENERIC_DEFAULTS
    basis: list[str] = []
    problems: list[str] = []
    severity = "ok"
    asked = phone.requested_expires_s
    cloud_grant = phone.granted_expires_s if phone.granted_by == "cloud" else None
    expires = cloud_grant or asked
    if cloud_grant:
        basis.append(f"the cloud grants {cloud_grant} s")
    elif asked:
        basis.append(f"asks for {asked} s")
    refresh_after = None
    if expires:
        refresh_after = max(expires - defaults.refresh_margin_s, expires / 2
                            if expires <= defaults.refresh_margin_s else 0.0)
    if phone.refresh_interval_s and (refresh_after is None
                                     or phone.refresh_interval_s < refresh_after):
        refresh_after = phone.refresh_interval_s
        basis.append(f"refreshes every {phone.refresh_interval_s:.0f} s")
    if refresh_after is None:
        refresh_after = 3600 - defaults.refresh_margin_s
        basis.append("no REGISTER seen: assuming the 3600 s factory expiry")
    basis.append(f"{vendor.label if vendor else 'unknown vendor'} "
                 f"{'defaults' if defaults.documented else 'defaults (assumed)'}")
    local_grant = min(timers.local_expires_s, asked or timers.local_expires_s)
    local_refresh = max(local_grant - defaults.refresh_margin_s, local_grant / 2)

    if timers.mode == "in-path":
        relayed = "relay" in phone.seen_via
        failover = timers.detection_s + 1.0
        failback = timers.hold_down_s + local_refresh
        if not relayed:
            problems.append("its requests do not pass through the appliance (not relayed): "
                            "in-path failover needs the appliance as outbound proxy")
            failover = timers.detection_s + failover_bound_s(defaults, refresh_after)
            severity = "fail"
    else:
        failover = failover_bound_s(defaults, refresh_after)
        by_refusal = local_refresh + max(0, defaults.failover_after - 1) * \
            defaults.retry_interval_s
        back = min(defaults.primary_probe_s, by_refusal) if defaults.primary_probe_s else \
            by_refusal
        failback = timers.hold_down_s + back
        if expires and expires > timers.recommended_expires_s:
            problems.append(f"registration refresh {expires} s: an outage is noticed only "
                            "at the next refresh")
    if failover > timers.fail_s:
        severity = "fail"
        problems.append(f"failover could take {failover / 60:.0f} min (goal ≤ "
                        f"{timers.warn_s:.0f} s)")
    if problems and severity == "ok":
        severity = "warn"
    if phone.transport == "udp" and timers.mode == "in-path" and phone.keepalive is None \
            and not phone.outbound:
        problems.append("UDP with no keep-alive seen: a NAT between phone and appliance may "
                        "forget its flow")
        severity = "warn" if severity == "ok" else severity
    advice = _advice(vendor, timers) if problems else []
    return {
        "aor": phone.aor, "source": phone.source, "transport": phone.transport,
        "user_agent": phone.user_agent,
        "vendor": vendor.name if vendor else None,
        "vendor_label": (vendor.model(phone.user_agent) if vendor else None),
        "requested_expires_s": asked, "granted_expires_s": phone.granted_expires_s,
        "granted_by": phone.granted_by, "refresh_interval_s": phone.refresh_interval_s,
        "keepalive": None if phone.keepalive is None else
        {"kind": phone.keepalive[0], "interval_s": phone.keepalive[1]},
        "seen_via": sorted(phone.seen_via),
        "mode": timers.mode, "failover_s": round(failover, 1), "failback_s": round(failback, 1),
        "basis": "; ".join(basis), "severity": severity, "problems": problems,
        "advice": advice,
    }


def _advice(vendor: Vendor | None, timers: ApplianceTimers) -> list[str]:
    recommendation = Recommendation(expires_s=timers.recommended_expires_s,
                                    appliance=timers.appliance)
    if vendor is None:
        return [f"set the phone's registration expiry to {timers.recommended_expires_s} s, "
                "one failed attempt before its backup server, and the appliance "
                f"({timers.appliance}) as backup server"
                + (" and outbound proxy" if timers.mode == "in-path" else "")
                + " (vendor not recognised from its User-Agent)"]
    settings = vendor.in_path if timers.mode == "in-path" else vendor.backup_registrar
    return [f"{vendor.label}: {s.key} = {s.value(recommendation)} ({s.why})" for s in settings]
