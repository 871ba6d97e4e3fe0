"""What the appliance exports, read from the subsystems at scrape time (no second copy of
their state). Built with prometheus_client's metric families; the exposition format (classic
Prometheus text, or OpenMetrics when the scraper asks for it) is prometheus_client's.

Names follow Prometheus conventions: base units (seconds, ratios), ``_timestamp_seconds`` for
Unix times, one ``{state=...}`` series per possible state (1 for the current one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from appliance import __version__

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

WAN_STATES = ("starting", "online", "degraded", "outage", "recovering", "forced",
              "unconfigured")
TRUNK_STATES = ("starting", "ready", "limited", "down", "recovering")


class ApplianceCollector(Collector):
    """``sources`` maps a part name to a callable returning that part's facts (dicts as the
    control commands give them); a part that fails is skipped and counted, never fatal."""

    def __init__(self, sources: dict[str, Callable[[], Any]], site: Callable[[], str]) -> None:
        self.sources = sources
        self.site = site
        self.errors = 0

    def _read(self, name: str) -> Any:
        source = self.sources.get(name)
        if source is None:
            return None
        try:
            return source()
        except Exception:
            self.errors += 1
            log.exception("metrics: reading %s failed", name)
            return None

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("jbc_appliance", "The appliance: firmware version and site.")
        info.add_metric([], {"version": __version__, "site": self.site()})
        yield info
        for name, shape in (("wan", self._wan), ("sip", self._sip), ("trunks", self._trunks),
                            ("sync", self._sync), ("selftest", self._selftest),
                            ("drill", self._drill)):
            facts = self._read(name)
            try:
                families = list(shape(facts))
            except Exception:  # one part's odd facts cost that part, not the scrape
                self.errors += 1
                log.exception("metrics: shaping %s failed", name)
                continue
            yield from families
        errors = GaugeMetricFamily("jbc_metrics_read_errors",
                                   "Parts that could not be read for a scrape, since start.")
        errors.add_metric([], self.errors)
        yield errors

    @staticmethod
    def _wan(report: dict | None) -> Iterator[Metric]:
        if report is None:
            return
        state = GaugeMetricFamily("jbc_wan_state", "WAN state (1 for the current one).",
                                  labels=["state"])
        for name in WAN_STATES:
            state.add_metric([name], 1.0 if report.get("state") == name else 0.0)
        yield state
        since = GaugeMetricFamily("jbc_wan_state_since_timestamp_seconds",
                                  "When the WAN entered its current state.")
        since.add_metric([], report.get("since") or 0.0)
        yield since
        labels = ["target", "role", "kind"]
        up = GaugeMetricFamily("jbc_wan_probe_up", "The target answered its last probe "
                               "(through the WAN interface).", labels=labels)
        rtt = GaugeMetricFamily("jbc_wan_probe_rtt_seconds", "Average probe round-trip time "
                                "over the last minute.", labels=labels)
        loss = GaugeMetricFamily("jbc_wan_probe_loss_ratio", "Share of probe rounds lost "
                                 "over the last minute.", labels=labels)
        for target in report.get("targets") or []:
            values = [target["name"], target.get("role", ""), target.get("kind", "")]
            up.add_metric(values, 1.0 if target.get("last_outcome") == "ok" else 0.0)
            if target.get("rtt_ms"):
                rtt.add_metric(values, target["rtt_ms"]["avg"] / 1000.0)
            if target.get("loss_pct") is not None:
                loss.add_metric(values, target["loss_pct"] / 100.0)
        yield from (up, rtt, loss)

    @staticmethod
    def _sip(sip: dict | None) -> Iterator[Metric]:
        if sip is None:
            return
        registrations = GaugeMetricFamily("jbc_sip_registrations",
                                          "Handsets registered to the local registrar.")
        registrations.add_metric([], sip["registrations"])
        yield registrations
        seen = GaugeMetricFamily("jbc_phones_seen", "Phones the appliance has seen (REGISTER, "
                                 "OPTIONS, relayed).")
        seen.add_metric([], sip["phones_seen"])
        yield seen
        calls = GaugeMetricFamily("jbc_calls_active", "Calls in progress through the "
                                  "appliance.", labels=["path"])
        calls.add_metric(["local"], sip["calls"])
        yield calls
        serving = GaugeMetricFamily("jbc_sip_serving", "1 while the local registrar serves "
                                    "the handsets (failover).")
        serving.add_metric([], 1.0 if sip["serving"] else 0.0)
        yield serving

    @staticmethod
    def _trunks(trunks: list | None) -> Iterator[Metric]:
        if trunks is None:
            return
        state = GaugeMetricFamily("jbc_trunk_state", "Trunk state (1 for the current one).",
                                  labels=["trunk", "kind", "state"])
        signal = GaugeMetricFamily("jbc_trunk_signal_dbm", "LTE signal strength.",
                                   labels=["trunk"])
        calls = GaugeMetricFamily("jbc_trunk_calls_active", "Calls up on the trunk.",
                                  labels=["trunk"])
        for trunk in trunks:
            for name in TRUNK_STATES:
                state.add_metric([trunk["name"], trunk.get("kind", ""), name],
                                 1.0 if trunk.get("state") == name else 0.0)
            if trunk.get("signal_dbm") is not None:
                signal.add_metric([trunk["name"]], trunk["signal_dbm"])
            calls.add_metric([trunk["name"]], trunk.get("active_calls") or 0)
        yield from (state, signal, calls)

    @staticmethod
    def _sync(status: dict | None) -> Iterator[Metric]:
        if status is None or not status.get("configured"):
            return
        enrolled = GaugeMetricFamily("jbc_sync_enrolled", "1 when enrolled with the cloud.")
        enrolled.add_metric([], 1.0 if status.get("enrolled") else 0.0)
        yield enrolled
        pairs = [("jbc_sync_bundle_age_seconds", "Age of the config bundle in force.",
                  status.get("bundle_age_s")),
                 ("jbc_sync_last_success_timestamp_seconds", "Last successful cloud sync.",
                  status.get("last_success")),
                 ("jbc_sync_certificate_expiry_timestamp_seconds",
                  "When the device certificate expires.", status.get("certificate_expires_at"))]
        for name, help_text, value in pairs:
            if value is not None:
                gauge = GaugeMetricFamily(name, help_text)
                gauge.add_metric([], value)
                yield gauge
        pending = GaugeMetricFamily("jbc_sync_pending_uploads", "Records waiting to go to the "
                                    "cloud.", labels=["kind"])
        for kind, count in (status.get("pending_uploads") or {}).items():
            pending.add_metric([kind], count)
        yield pending

    @staticmethod
    def _selftest(last: dict | None) -> Iterator[Metric]:
        if last is None:
            return
        when = GaugeMetricFamily("jbc_selftest_last_timestamp_seconds",
                                 "When the last selftest finished.")
        when.add_metric([], last["finished_at"])
        yield when
        lines = GaugeMetricFamily("jbc_selftest_last_checks", "Lines of the last selftest by "
                                  "status.", labels=["status"])
        for status, count in last["counts"].items():
            lines.add_metric([status], count)
        yield lines

    @staticmethod
    def _drill(last: dict | None) -> Iterator[Metric]:
        if last is None:
            return
        when = GaugeMetricFamily("jbc_drill_last_timestamp_seconds",
                                 "When the last fire drill finished.")
        when.add_metric([], last["finished_at"])
        yield when
        success = GaugeMetricFamily("jbc_drill_last_success", "1 when the last fire drill "
                                    "passed every step.", labels=["kind"])
        success.add_metric([last.get("kind", "standard")], 1.0 if last["passed"] else 0.0)
        yield success
        steps = GaugeMetricFamily("jbc_drill_last_step_success", "Each step of the last fire "
                                  "drill (1 passed).", labels=["step"])
        for step in last.get("steps", []):
            if step["outcome"] != "skipped":
                steps.add_metric([step["id"]], 1.0 if step["outcome"] == "passed" else 0.0)
        yield steps
