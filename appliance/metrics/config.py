"""The [metrics] section: the OpenMetrics endpoint for the site's monitoring."""

from __future__ import annotations

import dataclasses
import ipaddress

from appliance.config.schema import between, setting


def _address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address; give the address to listen on, e.g. the " \
            "LAN address the monitoring server reaches"
    return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    enabled: bool = setting(
        False, doc="Serve metrics (WAN state, probe RTT/loss, registrations, calls, trunks, "
        "sync age, selftest and drill results) for Prometheus at http://ADDRESS:PORT/metrics.")
    listen_address: str = setting(
        "127.0.0.1", doc="Address the metrics endpoint listens on (only what the site's "
        "monitoring can reach; nothing here needs the internet).", check=_address)
    port: int = setting(9464, doc="TCP port of the metrics endpoint (0 picks a free one, for "
                        "tests).", check=between(0, 65535))
    max_clients: int = setting(8, doc="Scrapes served at once; more are refused.",
                               check=between(1, 64))
