"""'jbc selftest', 'jbc config' and 'jbc phones --readiness' against the real daemon."""

from __future__ import annotations

import json

import pytest

from jbcbench.handset import HandsetProcess
from jbcbench.notifysocket import NotifySocket

pytestmark = pytest.mark.integration

SITE = """
site_name = "selftest-site"
[sip]
enabled = true
listen_address = "127.0.0.1"
udp_port = 0
transports = ["udp"]
[selftest]
clock_source = "kernel"
"""


@pytest.fixture
def systemd(tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    yield notify
    notify.close()


def lines(report):
    return {line["id"]: line for line in report["results"]}


def test_selftest_under_the_watchdog_reports_and_journals(daemon_factory, systemd):
    daemon = daemon_factory(SITE, env=systemd.env(watchdog_usec=300_000)).start()
    systemd.wait_for("WATCHDOG=1")
    done = daemon.cli("--json", "selftest")
    assert done.returncode == 1, done.stderr  # no WAN, no cloud: failures, so exit 1
    report = json.loads(done.stdout)
    found = lines(report)
    assert found["system.watchdog"]["status"] == "pass"
    assert found["config.file"]["status"] == "pass"
    assert found["wan.configured"]["status"] == "fail"
    assert found["wan.configured"]["fix"]
    assert found["cloud.enrolment"]["status"] == "fail"
    assert found["phones.seen"]["status"] == "warn"
    assert report["duration_s"] < 60
    assert all(line["fix"] for line in report["results"] if line["status"] in ("warn", "fail"))
    events = json.loads(daemon.cli("--json", "events", "--subsystem", "selftest").stdout)
    assert events[-1]["kind"] == "completed"
    assert events[-1]["details"]["verdict"] == "fail"
    last = daemon.cli("--json", "selftest", "--last")
    assert json.loads(last.stdout)["finished_at"] == report["finished_at"]
    human = daemon.cli("selftest", "--last")
    assert "FAIL  WAN monitor configured" in human.stdout
    assert "fix: set [wan] interface" in human.stdout


def test_without_the_service_watchdog_the_check_fails(daemon_factory):
    daemon = daemon_factory(SITE).start()
    report = json.loads(daemon.cli("--json", "selftest").stdout)
    assert lines(report)["system.watchdog"]["status"] == "fail"


def test_config_check_reload_and_the_file_on_disk(daemon_factory, tmp_path):
    daemon = daemon_factory(SITE).start()
    assert daemon.cli("config").returncode == 0
    broken = tmp_path / "broken.toml"
    broken.write_text("[sip]\nudp_port = 'five'\n")
    checked = daemon.cli("config", "check", str(broken))
    assert checked.returncode == 1
    assert "sip.udp_port" in checked.stderr and "broken.toml" in checked.stderr
    daemon.config_path.write_text(daemon.config_path.read_text().replace(
        "selftest-site", "renamed-site"))
    changed = daemon.cli("config")
    assert changed.returncode == 1 and "jbc config reload" in changed.stdout
    report = json.loads(daemon.cli("--json", "selftest").stdout)
    assert lines(report)["config.file"]["status"] == "warn"
    assert daemon.cli("config", "check").returncode == 0
    reloaded = daemon.cli("config", "reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert json.loads(daemon.cli("--json", "status").stdout)["site"] == "renamed-site"
    report = json.loads(daemon.cli("--json", "selftest").stdout)
    assert lines(report)["config.file"]["status"] == "pass"


def test_a_phone_with_a_3600_s_refresh_is_flagged_with_its_vendor_keys(daemon_factory):
    daemon = daemon_factory(SITE).start()
    port = daemon.call("status")["subsystems"]
    sip = next(s for s in port if s["name"] == "sip")
    udp = sip["details"]["ports"]["udp"]
    # A desk phone left on its factory expiry, registering to the appliance (Yealink's default
    # concurrent registration); while the cloud is up the registrar refuses it (503), which
    # does not hide what it asked for.
    phone = HandsetProcess(user="101", password="pw-101", server=f"127.0.0.1:{udp}",
                           bind="127.0.0.1", expires=3600,
                           user_agent="Yealink SIP-T46S 66.86.0.15")
    try:
        # its REGISTER got its final answer, so jbcd has seen it
        phone.expect("reg", lambda e: e["code"] == 503, timeout=20)
        readiness = daemon.cli("phones", "--readiness")
    finally:
        phone.close()
    assert readiness.returncode == 1
    assert "SIP-T46S" in readiness.stdout
    assert "registration refresh 3600 s" in readiness.stdout
    assert "account.1.sip_server.1.expires = 120" in readiness.stdout
    report = json.loads(daemon.cli("--json", "selftest").stdout)
    line = lines(report)["phones.101"]
    assert line["status"] == "fail"
    assert "account.1.sip_server.1.expires = 120" in line["fix"]
