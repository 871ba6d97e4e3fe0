"""The [selftest] section: thresholds of the commissioning checklist ('jbc selftest')."""

from __future__ import annotations

import dataclasses
from typing import Literal

from appliance.config.schema import between, setting


def _dial_string(value: str) -> str | None:
    if value and not all(ch.isdigit() or ch in "+*#" for ch in value):
        return f"{value!r} is not a number a trunk can dial"
    return None


def _host_port(value: str) -> str | None:
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{value!r} is not host:port (e.g. '127.0.0.1:323')"
    return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SelftestConfig:
    min_signal_dbm: int = setting(
        -105, doc="An LTE trunk whose signal is below this fails the signal check (warns within "
        "10 dB above it). -105 dBm is about one bar: calls drop.", check=between(-120, -50))
    test_call_number: str = setting(
        "", doc="A number each trunk calls during 'jbc selftest' (a tone-echo or answering "
        "line the site may call). Empty: no test call.", check=_dial_string,
        example="+15555550123")
    certificate_warn_days: float = setting(
        30.0, doc="Warn when the cloud certificate expires within this many days.",
        check=between(1, 365))
    bundle_max_age_s: float = setting(
        86400.0, doc="Warn when the last config bundle from the cloud was applied longer ago "
        "than this (a stale directory means stale passwords during an outage).",
        check=between(60, 90 * 86400))
    min_free_mb: int = setting(
        200, doc="Fail when the state directory has less free space than this (MB); warn under "
        "twice as much.", check=between(1, 1_000_000))
    clock_source: Literal["auto", "chrony", "timesyncd", "kernel"] = setting(
        "auto", doc="How the clock check learns whether the clock is synchronised: ask chronyd "
        "(chronyc tracking), systemd-timesyncd (its 'synchronized' flag), or the kernel's NTP "
        "status (adjtimex, set by either daemon). 'auto' asks chronyd, then timesyncd, then "
        "the kernel.")
    chrony_address: str = setting(
        "", doc="chronyd's command address as host:port for chronyc -h/-p; empty: chronyc's "
        "default (its Unix socket, or 127.0.0.1:323).", check=_host_port,
        example="127.0.0.1:323")
    phone_expires_s: int = setting(
        120, doc="The registration expiry phones are advised to use (their refresh is when a "
        "phone in backup-registrar mode notices a dead cloud).", check=between(30, 3600))
    phone_failover_warn_s: float = setting(
        120.0, doc="Warn about a phone whose predicted failover takes longer than this.",
        check=between(5, 3600))
    phone_failover_fail_s: float = setting(
        600.0, doc="Fail a phone whose predicted failover takes longer than this.",
        check=between(5, 7200))
    timeout_s: float = setting(
        55.0, doc="The whole checklist, test calls included, ends within this long; a check "
        "still running then is reported as failed (timed out).", check=between(5, 60))
