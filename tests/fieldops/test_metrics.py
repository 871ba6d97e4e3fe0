"""The OpenMetrics endpoint: off by default, bound where configured, scraped by a real
Prometheus server, and parsed by prometheus_client's own parser over a real HTTP GET."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jbcbench import prometheus

pytestmark = pytest.mark.integration

SITE = """
site_name = "metrics-site"
[sip]
enabled = true
listen_address = "127.0.0.1"
udp_port = 0
transports = ["udp"]
[metrics]
enabled = true
listen_address = "127.0.0.1"
port = 0
"""


def metrics_port(daemon) -> int:
    status = daemon.call("status")
    return next(s for s in status["subsystems"] if s["name"] == "metrics")["details"]["port"]


def scrape(port: int, accept: str = "") -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return reply.headers["Content-Type"], reply.read().decode()


def test_metrics_are_off_by_default(daemon):
    status = daemon.call("status")
    metrics = next(s for s in status["subsystems"] if s["name"] == "metrics")
    assert metrics["level"] == "disabled"


def test_a_scrape_parses_with_prometheus_client(daemon_factory):
    daemon = daemon_factory(SITE).start()
    daemon.cli("selftest", "--no-call")
    content_type, text = scrape(metrics_port(daemon))
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    info = families["jbc_appliance_info"].samples[0]
    assert info.labels["site"] == "metrics-site"
    wan = {s.labels["state"]: s.value for s in families["jbc_wan_state"].samples}
    assert wan["unconfigured"] == 1.0 and sum(wan.values()) == 1.0
    assert families["jbc_sip_registrations"].samples[0].value == 0
    checks = {s.labels["status"]: s.value for s in families["jbc_selftest_last_checks"].samples}
    assert checks["fail"] >= 1
    assert "jbcd_process_resident_memory_bytes" in text
    open_type, open_text = scrape(metrics_port(daemon),
                                  "application/openmetrics-text; version=1.0.0")
    assert open_type.startswith("application/openmetrics-text")
    assert open_text.rstrip().endswith("# EOF")


def test_anything_but_get_metrics_is_refused(daemon_factory):
    daemon = daemon_factory(SITE).start()
    port = metrics_port(daemon)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    assert error.value.code == 404
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x",
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    assert error.value.code == 405


@pytest.mark.skipif(not prometheus.available(), reason="needs Debian's prometheus package")
def test_a_real_prometheus_scrapes_the_appliance(daemon_factory, tmp_path):
    daemon = daemon_factory(SITE).start()
    port = metrics_port(daemon)
    with prometheus.PrometheusServer(tmp_path / "prometheus",
                                     [f"127.0.0.1:{port}"]) as server:
        result = server.wait_for('jbc_wan_state{state="unconfigured"}')
        assert result[0]["value"][1] == "1"
        [up] = server.wait_for('up{job="jbc"}')
        assert up["value"][1] == "1"
        health = server.targets_health()[0]
        assert health["health"] == "up", json.dumps(health)
