"""The readiness report behind 'jbc phones --readiness' and the selftest's phone lines."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .readiness import ApplianceTimers, assess

if TYPE_CHECKING:
    from appliance.config import ApplianceConfig
    from appliance.sip.service import SipService
    from appliance.wan.service import WanMonitor


def appliance_timers(config: ApplianceConfig, sip: SipService) -> ApplianceTimers:
    wan = config.wan
    sip_config = config.sip
    host = sip_config.advertised_address or sip_config.listen_address
    port = sip.ports.get("udp") or sip.ports.get("tcp") or sip_config.udp_port
    selftest = config.selftest
    return ApplianceTimers(
        mode=getattr(sip_config, "mode", "backup-registrar"),
        detection_s=wan.fall_rounds * wan.interval_s + wan.round_timeout_s,
        hold_down_s=wan.hold_down_s, local_expires_s=sip_config.outage_max_expires_s,
        appliance=f"{host}:{port}" if port != 5060 else host,
        warn_s=selftest.phone_failover_warn_s, fail_s=selftest.phone_failover_fail_s,
        recommended_expires_s=selftest.phone_expires_s)


def readiness_report(config: ApplianceConfig, sip: SipService,
                     wan: WanMonitor | None = None) -> dict[str, Any]:
    timers = appliance_timers(config, sip)
    core = sip.core
    phones = [] if core is None else [assess(phone, timers) for phone in core.sightings]
    phones.sort(key=lambda p: (p["aor"] or "", p["source"]))
    return {"mode": timers.mode, "sip_enabled": config.sip.enabled,
            "appliance": timers.appliance, "detection_s": timers.detection_s,
            "hold_down_s": timers.hold_down_s, "goal_s": timers.warn_s,
            "generated_at": time.time(), "phones": phones}
