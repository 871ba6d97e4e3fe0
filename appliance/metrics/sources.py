"""Where each part of the metrics comes from: the subsystems' public faces, read at scrape
time on the loop thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.selftest.service import Selftest
    from appliance.sip.service import SipService
    from appliance.sync.service import SyncService
    from appliance.trunks.service import TrunkPool
    from appliance.wan.service import WanMonitor


def sip_facts(sip: SipService) -> dict[str, Any] | None:
    core = sip.core
    if core is None:
        return None
    now = asyncio.get_running_loop().time()
    return {"registrations": len(core.phones(now)), "phones_seen": len(core.sightings),
            "calls": len(core.proxy.active_calls()), "serving": core.serving}


def appliance_sources(*, wan: WanMonitor, sip: SipService, trunks: TrunkPool,
                      sync: SyncService, selftest: Selftest,
                      drill: Any = None) -> dict[str, Callable[[], Any]]:
    sources: dict[str, Callable[[], Any]] = {
        "wan": wan.report, "sip": lambda: sip_facts(sip), "trunks": trunks.health_summaries,
        "sync": sync.status, "selftest": lambda: selftest.last}
    if drill is not None:
        sources["drill"] = lambda: drill.last
    return sources
