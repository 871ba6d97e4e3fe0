"""The commissioning checklist's verdicts and fixes, on made-up facts (pure, no I/O)."""

from __future__ import annotations

import pytest

from appliance.selftest import checks
from appliance.selftest.checks import ConfigFacts, Status

NOW = 1_800_000_000.0
DAY = 86400.0


def lte(**changes):
    trunk = {"name": "lte1", "kind": "lte", "state": "ready", "reason": "", "sim": "ready",
             "registration": "home", "operator": "Bench Mobile", "access_technology": "LTE",
             "signal_dbm": -71, "ims": "ready", "usb_id": "2c7c:0125", "usb_serial": None,
             "details": {"at_port": "/dev/ttyUSB2"}, "pin_configured": False}
    trunk.update(changes)
    return trunk


def by_id(results):
    return {r.id: r for r in results}


def test_a_healthy_lte_trunk_passes_every_line():
    results = checks.check_trunk(lte(), usb_ports=["ttyUSB2 (if2)"], min_signal_dbm=-105)
    assert [r.status for r in results] == [Status.PASS] * len(results)
    assert {r.id for r in results} == {f"trunk.lte1.{w}" for w in (
        "device", "sim", "pin", "signal", "registration", "volte", "ready")}


@pytest.mark.parametrize(("changes", "line", "status", "fix_words"), [
    ({"sim": "missing", "state": "limited", "registration": "not-registered"}, "sim",
     Status.FAIL, "insert the SIM"),
    ({"sim": "pin-required", "state": "limited"}, "pin", Status.FAIL, "'pin'"),
    ({"sim": "puk-required", "state": "limited"}, "pin", Status.FAIL, "PUK"),
    ({"signal_dbm": None}, "signal", Status.FAIL, "antennas"),
    ({"signal_dbm": -111}, "signal", Status.FAIL, "antenna"),
    ({"signal_dbm": -100}, "signal", Status.WARN, "antenna"),
    ({"registration": "roaming"}, "registration", Status.WARN, "roaming"),
    ({"registration": "denied", "state": "limited"}, "registration", Status.FAIL, "operator"),
    ({"ims": "not-ready"}, "volte", Status.WARN, "VoLTE"),
    ({"ims": "not-ready", "state": "limited"}, "volte", Status.FAIL, "VoLTE"),
    ({"state": "down", "reason": "the modem does not answer AT"}, "ready", Status.FAIL,
     "jbc trunks"),
])
def test_each_trunk_fault_is_caught_with_its_fix(changes, line, status, fix_words):
    results = by_id(checks.check_trunk(lte(**changes), usb_ports=["ttyUSB2 (if2)"],
                                       min_signal_dbm=-105))
    result = results[f"trunk.lte1.{line}"]
    assert result.status is status
    assert fix_words in result.fix


def test_a_modem_missing_from_usb_fails_the_device_line():
    result = by_id(checks.check_trunk(lte(), usb_ports=[], min_signal_dbm=-105))[
        "trunk.lte1.device"]
    assert result.status is Status.FAIL
    assert "2c7c:0125" in result.detail and "lsusb" in result.fix


def test_a_trunk_found_by_path_only_is_a_warning_to_use_usb_identity():
    trunk = lte(usb_id=None, at_port="/dev/ttyUSB2", at_port_exists=True)
    result = by_id(checks.check_trunk(trunk, usb_ports=None, min_signal_dbm=-105))[
        "trunk.lte1.device"]
    assert result.status is Status.WARN and "usb_id" in result.fix


def test_an_analog_line_is_checked_for_dial_tone_not_sim():
    trunk = {"name": "pots", "kind": "voice-modem", "state": "ready", "line": "no-dial-tone",
             "usb_id": "0baf:0303", "details": {}}
    results = by_id(checks.check_trunk(trunk, usb_ports=["ttyACM0 (if0)"], min_signal_dbm=-105))
    assert "trunk.pots.sim" not in results
    assert results["trunk.pots.line"].status is Status.FAIL


def test_test_call_needs_an_answer_and_audio_back():
    ok = checks.check_test_call("lte1", "+15555550123", {
        "connected": True, "audio_heard": True, "audio_level_dbfs": -12.0, "setup_s": 2.1})
    one_way = checks.check_test_call("lte1", "+15555550123", {
        "connected": True, "audio_heard": False, "audio_level_dbfs": None})
    unanswered = checks.check_test_call("lte1", "+15555550123", {
        "connected": False, "error": "not answered in time"})
    assert ok.status is Status.PASS
    assert one_way.status is Status.FAIL and "one-way" in one_way.fix
    assert unanswered.status is Status.FAIL and "not answered in time" in unanswered.detail


@pytest.mark.parametrize(("facts", "status"), [
    (ConfigFacts(source="/etc/jbc/appliance.toml", running_digest="a" * 64,
                 file_digest="a" * 64), Status.PASS),
    (ConfigFacts(source="/etc/jbc/appliance.toml", running_digest="a" * 64,
                 file_digest="b" * 64), Status.WARN),
    (ConfigFacts(source="/etc/jbc/appliance.toml", running_digest="a" * 64,
                 file_problem="sip.udp_port: 'x' must be a whole number"), Status.FAIL),
    (ConfigFacts(source="<built-in defaults>", running_digest="a" * 64, builtin=True),
     Status.WARN),
])
def test_config_must_be_valid_and_the_one_on_disk(facts, status):
    [result] = checks.check_config(facts)
    assert result.status is status
    if status is not Status.PASS:
        assert "jbc config" in result.fix


def cloud(**changes):
    status = {"configured": True, "enrolled": True, "device_id": "dev-1", "account": "acme",
              "certificate_expires_at": NOW + 200 * DAY, "bundle_age_s": 600.0,
              "directory_version": 3, "problem": None}
    status.update(changes)
    return status


@pytest.mark.parametrize(("changes", "line", "status"), [
    ({}, "cloud.certificate", Status.PASS),
    ({"certificate_expires_at": NOW + 10 * DAY}, "cloud.certificate", Status.WARN),
    ({"certificate_expires_at": NOW - DAY}, "cloud.certificate", Status.FAIL),
    ({"bundle_age_s": 3 * DAY}, "cloud.bundle", Status.WARN),
    ({"bundle_age_s": None}, "cloud.bundle", Status.FAIL),
    ({"enrolled": False, "problem": "not enrolled"}, "cloud.enrolment", Status.FAIL),
    ({"configured": False}, "cloud.enrolment", Status.FAIL),
])
def test_cloud_lines(changes, line, status):
    results = by_id(checks.check_cloud(cloud(**changes), now=NOW, warn_days=30,
                                       bundle_max_age_s=DAY))
    assert results[line].status is status


def test_a_certificate_near_expiry_says_when_and_how_to_renew():
    results = by_id(checks.check_cloud(
        cloud(certificate_expires_at=NOW + 9.5 * DAY, problem="cloud answered 503"),
        now=NOW, warn_days=30, bundle_max_age_s=DAY))
    line = results["cloud.certificate"]
    assert "9.5 days" in line.detail and "503" in line.detail
    assert "jbc sync now" in line.fix


def test_wan_targets_need_a_fresh_answer():
    report = {"configured": True, "interface": "wan0", "targets": [
        {"name": "east-sip", "role": "cloud", "last_outcome": "ok", "last_age_s": 1.0,
         "loss_pct": 0.0, "rtt_ms": {"avg": 1.5}},
        {"name": "west-sip", "role": "cloud", "last_outcome": "timeout", "last_age_s": 1.0,
         "last": "timeout after 1.0 s"},
        {"name": "anchor", "role": "anchor", "last_outcome": "ok", "last_age_s": 500.0},
        {"name": "new", "role": "anchor", "last_outcome": None, "last_age_s": None}]}
    results = by_id(checks.check_wan(report, stale_after_s=15))
    assert results["wan.target.east-sip"].status is Status.PASS
    assert results["wan.target.west-sip"].status is Status.FAIL
    assert "wan0" in results["wan.target.west-sip"].fix
    assert results["wan.target.anchor"].status is Status.WARN
    assert results["wan.target.new"].status is Status.WARN


def test_an_unconfigured_wan_fails():
    [result] = checks.check_wan({"configured": False}, stale_after_s=15)
    assert result.status is Status.FAIL and "[wan]" in result.fix


@pytest.mark.parametrize(("clock", "status"), [
    ({"source": "chrony", "synchronised": True, "detail": "synchronised"}, Status.PASS),
    ({"source": "chrony", "synchronised": False, "detail": "leap status Not synchronised"},
     Status.FAIL),
    ({"source": "kernel", "synchronised": None, "detail": "adjtimex failed"}, Status.WARN),
])
def test_clock(clock, status):
    result = checks.check_clock(clock)
    assert result.status is status
    if status is Status.FAIL:
        assert "NTP" in result.fix


@pytest.mark.parametrize(("free_mb", "status"), [(50, Status.FAIL), (300, Status.WARN),
                                                 (5000, Status.PASS)])
def test_disk(free_mb, status):
    result = checks.check_disk(int(free_mb * 1e6), int(10e9), path="/var/lib/jbc",
                               min_free_mb=200)
    assert result.status is status


@pytest.mark.parametrize(("watchdog", "status"), [
    ({"interval_s": None, "pings_sent": 0}, Status.FAIL),
    ({"interval_s": 10.0, "pings_sent": 0}, Status.WARN),
    ({"interval_s": 10.0, "pings_sent": 3, "hardware": "active (15 s)"}, Status.PASS),
])
def test_watchdog(watchdog, status):
    assert checks.check_watchdog(watchdog).status is status


def test_phones_lines_follow_the_readiness_severity():
    phones = [
        {"aor": "101", "vendor_label": "SIP-T46S", "failover_s": 59, "failback_s": 40,
         "basis": "asks for 60 s", "problems": [], "advice": [], "severity": "ok"},
        {"aor": "102", "vendor_label": "SIP-T46S", "failover_s": 3696, "failback_s": 150,
         "basis": "asks for 3600 s", "problems": ["registration refresh 3600 s"],
         "advice": ["Yealink: account.1.sip_server.1.expires = 120"], "severity": "fail"}]
    results = by_id(checks.check_phones(phones, mode="backup-registrar", sip_enabled=True))
    assert results["phones.101"].status is Status.PASS
    assert results["phones.102"].status is Status.FAIL
    assert "account.1.sip_server.1.expires = 120" in results["phones.102"].fix


def test_no_phone_seen_is_a_warning_and_sip_off_a_failure():
    [none_seen] = checks.check_phones([], mode="backup-registrar", sip_enabled=True)
    [sip_off] = checks.check_phones([], mode="backup-registrar", sip_enabled=False)
    assert none_seen.status is Status.WARN
    assert sip_off.status is Status.FAIL


def test_verdict_is_the_worst_line_and_skips_do_not_count():
    lines = [checks.passed("a", "g", "a", "ok"), checks.skipped("b", "g", "b", "n/a")]
    assert checks.verdict(lines) is Status.PASS
    lines.append(checks.warned("c", "g", "c", "meh", "fix it"))
    assert checks.verdict(lines) is Status.WARN
    lines.append(checks.failed("d", "g", "d", "bad", "fix it"))
    assert checks.verdict(lines) is Status.FAIL
    assert checks.counts(lines) == {"pass": 1, "warn": 1, "fail": 1, "skip": 1}
