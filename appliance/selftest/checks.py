"""The commissioning checklist, pure: facts in, one verdict per line out, with its fix.

Every function here takes plain facts (what the subsystems report, the clock's status, the
disk's free space, ``now``) and returns :class:`CheckResult` lines. Nothing here does I/O, so
every verdict and fix is tested on made-up facts (tests/fieldops/test_selftest_checks.py);
:mod:`appliance.selftest.service` gathers the facts from the running daemon.

A line is ``pass``, ``warn`` (works, but a technician should act before the next outage),
``fail`` (failover would not work as it should) or ``skip`` (not configured, not applicable).
Every line that is not a pass says what to do about it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DAY_S = 86400.0


class Status(enum.StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"

    @property
    def rank(self) -> int:
        return {Status.SKIP: 0, Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}[self]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    id: str
    """Stable for scripts, e.g. 'trunk.lte1.sim'."""
    group: str
    title: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "group": self.group, "title": self.title,
                "status": str(self.status), "detail": self.detail, "fix": self.fix}


def passed(id: str, group: str, title: str, detail: str) -> CheckResult:
    return CheckResult(id=id, group=group, title=title, status=Status.PASS, detail=detail)


def skipped(id: str, group: str, title: str, detail: str) -> CheckResult:
    return CheckResult(id=id, group=group, title=title, status=Status.SKIP, detail=detail)


def warned(id: str, group: str, title: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(id=id, group=group, title=title, status=Status.WARN, detail=detail,
                       fix=fix)


def failed(id: str, group: str, title: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(id=id, group=group, title=title, status=Status.FAIL, detail=detail,
                       fix=fix)


def verdict(results: Iterable[CheckResult]) -> Status:
    worst = Status.PASS
    for result in results:
        if result.status.rank > worst.rank:
            worst = result.status
    return worst


def counts(results: Iterable[CheckResult]) -> dict[str, int]:
    tally = {str(s): 0 for s in Status}
    for result in results:
        tally[str(result.status)] += 1
    return tally


# -- configuration ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConfigFacts:
    source: str
    """Where the running config came from (a path, or '<built-in defaults>')."""
    running_digest: str
    file_digest: str | None = None
    """SHA-256 of the file on disk now; None when it could not be read."""
    file_problem: str | None = None
    """Why the file on disk would be refused (or could not be read), if it would."""
    builtin: bool = False


def check_config(facts: ConfigFacts) -> list[CheckResult]:
    group, id_ = "config", "config.file"
    title = "config valid and in force"
    if facts.builtin:
        return [warned(id_, group, title, "running on the built-in defaults: no "
                       "appliance.toml", "write /etc/jbc/appliance.toml from "
                       "appliance.example.toml, check it with 'jbc config check', then "
                       "'jbc config reload'")]
    if facts.file_problem:
        return [failed(id_, group, title, f"{facts.source} on disk would be refused: "
                       f"{facts.file_problem} (jbcd keeps running on the last good one)",
                       "correct the file, 'jbc config check' it, then 'jbc config reload'")]
    if facts.file_digest != facts.running_digest:
        return [warned(id_, group, title, f"{facts.source} changed on disk since jbcd loaded "
                       f"it (running {facts.running_digest[:12]}, on disk "
                       f"{(facts.file_digest or '?')[:12]})",
                       "apply it with 'jbc config reload' (or 'systemctl reload jbcd')")]
    return [passed(id_, group, title, f"{facts.source} is valid and is the one in force "
                   f"({facts.running_digest[:12]})")]


# -- trunks -------------------------------------------------------------------------------------

SIM_FIXES = {
    "missing": "insert the SIM (power the modem off first), contacts down and the cut corner "
               "as marked on the slot; a SIM in the wrong way round reads as missing",
    "pin-required": "set this trunk's 'pin' in appliance.toml and 'jbc config reload', or "
                    "remove the PIN lock from the SIM in a phone",
    "puk-required": "the SIM is PUK-locked after wrong PINs: unlock it with the PUK from the "
                    "operator in a phone, then set the right 'pin'",
    "failure": "the SIM is faulty or not seated: reseat it; if it persists ask the operator "
               "for a new SIM",
    "wrong": "this SIM is refused by the modem (wrong type or blocked): ask the operator",
    "busy": "the SIM is still starting (it answers 'busy' for a few seconds after power-on): "
            "run 'jbc selftest' again in a minute",
}


def _trunk_id(name: str, what: str) -> str:
    return f"trunk.{name}.{what}"


def check_trunk(trunk: Mapping[str, Any], *, usb_ports: Sequence[str] | None,
                min_signal_dbm: int) -> list[CheckResult]:
    """One trunk's lines. ``trunk`` is its 'jbc trunks --json' entry plus its config keys
    ('usb_id', 'at_port'); ``usb_ports`` the tty names found for its USB identity (None when it
    is configured by path)."""
    name = trunk["name"]
    group = f"trunk {name}"
    out: list[CheckResult] = []
    out.append(_check_device(trunk, usb_ports))
    if trunk.get("kind") == "voice-modem":
        out.append(_check_line(trunk))
        out.append(_check_trunk_state(trunk))
        return out
    sim = trunk.get("sim")
    if sim == "ready":
        out.append(passed(_trunk_id(name, "sim"), group, "SIM ready", "SIM ready"))
    elif sim is None:
        out.append(failed(_trunk_id(name, "sim"), group, "SIM ready",
                          "the modem has not reported its SIM yet "
                          f"({trunk.get('state')}: {trunk.get('reason') or 'no reason'})",
                          "see 'jbc trunks' for why the modem is not talking"))
    else:
        out.append(failed(_trunk_id(name, "sim"), group, "SIM ready", f"SIM {sim}",
                          SIM_FIXES.get(sim, "reseat the SIM; see 'jbc trunks'")))
    pin_id = _trunk_id(name, "pin")
    if sim in ("pin-required", "puk-required"):
        out.append(failed(pin_id, group, "SIM PIN", f"SIM locked ({sim})",
                          SIM_FIXES[sim]))
    elif sim == "ready":
        out.append(passed(pin_id, group, "SIM PIN", "unlocked (PIN accepted)"
                          if trunk.get("pin_configured") else "no PIN lock"))
    else:
        out.append(skipped(pin_id, group, "SIM PIN", "no SIM to unlock"))
    out.append(_check_signal(trunk, min_signal_dbm))
    out.append(_check_registration(trunk))
    out.append(_check_ims(trunk))
    out.append(_check_trunk_state(trunk))
    return out


def _check_device(trunk: Mapping[str, Any], usb_ports: Sequence[str] | None) -> CheckResult:
    name = trunk["name"]
    group, id_ = f"trunk {name}", _trunk_id(name, "device")
    title = "device found"
    details = trunk.get("details") or {}
    if trunk.get("usb_id"):
        wanted = trunk["usb_id"] + (f" serial {trunk['usb_serial']}"
                                    if trunk.get("usb_serial") else "")
        if not usb_ports:
            return failed(id_, group, title, f"no USB device {wanted} is attached",
                          "plug the modem in (its own power supply: a Pi's USB port is too "
                          "weak), check 'lsusb' shows it, and that usb_id in appliance.toml "
                          "matches")
        where = f" (AT port {details['at_port']})" if details.get("at_port") else ""
        return passed(id_, group, title, f"USB {wanted}: {', '.join(usb_ports)}{where}")
    if trunk.get("at_port_exists") is False:
        return failed(id_, group, title, f"{trunk.get('at_port')} does not exist",
                      "plug the modem in and check 'ls -l /dev/serial/by-id/'; prefer usb_id "
                      "so ports are found again after a reset")
    return warned(id_, group, title, f"configured by path {trunk.get('at_port')} (present)",
                  "set usb_id (from 'lsusb') instead of at_port, so the ports are found "
                  "again when a reset renames them")


def _check_signal(trunk: Mapping[str, Any], min_dbm: int) -> CheckResult:
    name = trunk["name"]
    group, id_ = f"trunk {name}", _trunk_id(name, "signal")
    title = f"signal above {min_dbm} dBm"
    dbm = trunk.get("signal_dbm")
    if dbm is None:
        return failed(id_, group, title, "no signal (the modem reports none)",
                      "connect both antennas (main and diversity) firmly; move the unit or "
                      "use an external antenna near a window; check the operator covers the "
                      "site")
    if dbm < min_dbm:
        return failed(id_, group, title, f"{dbm} dBm is too weak for calls",
                      "move the antennas or the unit, or fit an external antenna")
    if dbm < min_dbm + 10:
        return warned(id_, group, title, f"{dbm} dBm: calls may break up",
                      "improve the antenna position before relying on this line")
    return passed(id_, group, title, f"{dbm} dBm")


def _check_registration(trunk: Mapping[str, Any]) -> CheckResult:
    name = trunk["name"]
    group, id_ = f"trunk {name}", _trunk_id(name, "registration")
    title = "registered to a network"
    reg = trunk.get("registration")
    operator = trunk.get("operator") or "an operator"
    if reg == "home":
        return passed(id_, group, title, f"home network {operator}"
                      + (f" ({trunk['access_technology']})"
                         if trunk.get("access_technology") else ""))
    if reg == "roaming":
        return warned(id_, group, title, f"roaming on {operator}",
                      "check the SIM's plan allows calls while roaming, or use a local SIM")
    if reg == "denied":
        return failed(id_, group, title, "registration denied by the network",
                      "the SIM is not allowed on this network: ask the operator to activate "
                      "it for voice")
    detail = f"not registered ({reg or 'unknown'})"
    return failed(id_, group, title, detail,
                  "check signal and SIM first; a SIM without service needs activating by the "
                  "operator")


def _check_ims(trunk: Mapping[str, Any]) -> CheckResult:
    name = trunk["name"]
    group, id_ = f"trunk {name}", _trunk_id(name, "volte")
    title = "VoLTE (IMS) ready"
    ims = trunk.get("ims")
    if ims == "ready":
        return passed(id_, group, title, "IMS registered: voice over LTE works")
    if ims == "not-ready":
        if trunk.get("state") == "ready":
            return warned(id_, group, title, "IMS not registered; calls rely on 2G/3G "
                          "fallback, which many networks have switched off",
                          "ask the operator to enable VoLTE on the SIM; check the modem's "
                          "IMS profile ('jbc modem TRUNK at AT+QCFG=\"ims\"')")
        return failed(id_, group, title, "IMS not registered and no 2G/3G voice: calls "
                      "would fail", "ask the operator to enable VoLTE on the SIM; enable IMS "
                      "in the modem ('jbc modem TRUNK at AT+QCFG=\"ims\",1')")
    return skipped(id_, group, title, "the modem does not report IMS")


def _check_line(trunk: Mapping[str, Any]) -> CheckResult:
    name = trunk["name"]
    group, id_ = f"trunk {name}", _trunk_id(name, "line")
    line = trunk.get("line")
    if line == "no-dial-tone":
        return failed(id_, group, "dial tone", "no dial tone on the analog line",
                      "plug the phone line into the modem's LINE socket; test the socket "
                      "with an ordinary phone")
    if line == "dial-tone":
        return passed(id_, group, "dial tone", "dial tone present")
    return warned(id_, group, "dial tone", "not checked yet (the modem checks it when it "
                  "dials)", "place a test call: 'jbc test-call NUMBER --trunk " + name + "'")


def _check_trunk_state(trunk: Mapping[str, Any]) -> CheckResult:
    name = trunk["name"]
    group, id_ = f"trunk {name}", _trunk_id(name, "ready")
    state = trunk.get("state")
    if state == "ready":
        return passed(id_, group, "ready for calls", "ready")
    reason = trunk.get("reason") or state
    if state == "limited":
        return failed(id_, group, "ready for calls", f"emergency calls only: {reason}",
                      "fix the lines above; 'jbc trunks' shows the modem's view")
    return failed(id_, group, "ready for calls", f"{state}: {reason}",
                  "see 'jbc trunks' and 'jbc events --subsystem trunks'")


def check_test_call(trunk: str, number: str, report: Mapping[str, Any] | None,
                    error: str | None = None) -> CheckResult:
    """A test call's report, as 'jbc test-call --json' gives it (the same tone check)."""
    group, id_ = f"trunk {trunk}", _trunk_id(trunk, "test-call")
    title = f"test call to {number}"
    if error:
        return failed(id_, group, title, error, "see 'jbc events --subsystem gateway'")
    assert report is not None
    level = report.get("audio_level_dbfs")
    heard = "nothing heard" if level is None else f"{level:.0f} dBFS"
    if report.get("connected") and report.get("audio_heard"):
        return passed(id_, group, title, f"answered in {report.get('setup_s', 0):.1f} s, "
                      f"audio heard back ({heard})")
    if report.get("connected"):
        return failed(id_, group, title, f"answered but no audio came back ({heard})",
                      "one-way audio: see the trunk's audio in 'jbc trunks', and check the "
                      "number answers with sound")
    return failed(id_, group, title, f"not answered: {report.get('error') or report.get('cause')}",
                  "check the number answers, then the trunk's lines above")


# -- WAN ----------------------------------------------------------------------------------------


def check_wan(report: Mapping[str, Any], *, stale_after_s: float) -> list[CheckResult]:
    """Each probe target from the WAN monitor's report: its probes leave through the WAN
    interface only (bound to the device), so an answer proves that path."""
    if not report.get("configured"):
        return [failed("wan.configured", "wan", "WAN monitor configured",
                       "no WAN interface or probe targets: no outage can be detected",
                       "set [wan] interface and [[wan.targets]] (cloud edges per region and "
                       "two internet anchors), then 'jbc config reload'")]
    interface = report.get("interface") or "?"
    out = []
    for target in report.get("targets", []):
        name = target["name"]
        id_, title = f"wan.target.{name}", f"{name} reachable via {interface}"
        age = target.get("last_age_s")
        outcome = target.get("last_outcome")
        loss = target.get("loss_pct")
        rtt = (target.get("rtt_ms") or {}).get("avg")
        figures = "" if rtt is None else f"{rtt:.1f} ms"
        if loss:
            figures += f", {loss:.0f} % lost"
        if outcome is None or age is None:
            out.append(warned(id_, "wan", title, "not probed yet",
                              "wait for the first probe round ('jbc wan') and run again"))
        elif age > stale_after_s:
            out.append(warned(id_, "wan", title, f"last probed {age:.0f} s ago",
                              "the monitor is behind: see 'jbc status'"))
        elif outcome == "ok":
            out.append(passed(id_, "wan", title, f"answers ({figures.strip(', ')})"))
        else:
            role = "cloud edge" if target.get("role") == "cloud" else "target"
            out.append(failed(id_, "wan", title, f"{target.get('last') or outcome}",
                              f"check the {role}'s address in [[wan.targets]], the firewall "
                              f"and the route out of {interface} ('jbc wan')"))
    if not out:
        out.append(failed("wan.targets", "wan", "WAN probe targets", "no probe targets",
                          "add [[wan.targets]]"))
    return out


def check_backup_path(configured: bool, outcome: Mapping[str, Any] | None,
                      error: str | None) -> CheckResult:
    id_, title = "wan.backup-uplink", "backup uplink reaches the cloud"
    if not configured:
        return skipped(id_, "wan", title, "no backup uplink configured (sync.backup_interface)")
    if error:
        return failed(id_, "wan", title, error,
                      "check the LTE data link is up ('ip addr'), has an address and a "
                      "route, and that sync.backup_interface names it")
    assert outcome is not None
    return passed(id_, "wan", title, f"heartbeat confirmed by the cloud via "
                  f"{outcome.get('interface')} from {outcome.get('source')} in "
                  f"{outcome.get('elapsed_s', 0):.2f} s")


# -- cloud --------------------------------------------------------------------------------------


def check_cloud(status: Mapping[str, Any], *, now: float, warn_days: float,
                bundle_max_age_s: float) -> list[CheckResult]:
    group = "cloud"
    if not status.get("configured"):
        return [failed("cloud.enrolment", group, "enrolled with the cloud",
                       "cloud sync not configured", "set [sync] cloud_url, ca_file and "
                       "signing_public_key, then enrol ('jbc sync enrol TOKEN')")]
    out = []
    if not status.get("enrolled"):
        out.append(failed("cloud.enrolment", group, "enrolled with the cloud",
                          status.get("problem") or "not enrolled",
                          "enrol with the one-time token from the cloud portal: "
                          "'jbc sync enrol TOKEN'"))
        return out
    out.append(passed("cloud.enrolment", group, "enrolled with the cloud",
                      f"device {status.get('device_id')} of account {status.get('account')}"))
    expires = status.get("certificate_expires_at")
    left_days = None if expires is None else (expires - now) / DAY_S
    title = "cloud certificate valid"
    if left_days is None:
        out.append(failed("cloud.certificate", group, title, "no certificate",
                          "enrol again: 'jbc sync enrol TOKEN'"))
    elif left_days <= 0:
        out.append(failed("cloud.certificate", group, title,
                          f"expired {-left_days:.0f} days ago: the cloud refuses this device",
                          "enrol again with a new token: 'jbc sync enrol TOKEN'"))
    elif left_days < warn_days:
        problem = status.get("problem")
        why = f"; renewal failing: {problem}" if problem else ""
        out.append(warned("cloud.certificate", group, title,
                          f"expires in {left_days:.1f} days{why}",
                          "it renews by itself while the cloud is reachable: check 'jbc sync' "
                          "for the cloud's answer and run 'jbc sync now'; if it keeps failing, "
                          "enrol again ('jbc sync enrol TOKEN')"))
    else:
        out.append(passed("cloud.certificate", group, title,
                          f"valid for {left_days:.0f} more days"))
    age = status.get("bundle_age_s")
    title = "config bundle fresh"
    if age is None:
        out.append(failed("cloud.bundle", group, title, "no config bundle from the cloud yet: "
                          "no directory (extensions, passwords) to serve phones with",
                          "check 'jbc sync' (is a bundle published for this site?), then "
                          "'jbc sync now'"))
    elif age > bundle_max_age_s:
        out.append(warned("cloud.bundle", group, title,
                          f"v{status.get('directory_version')} applied {_ago(age)} ago",
                          "'jbc sync now'; if it fails, 'jbc sync' says why"))
    else:
        out.append(passed("cloud.bundle", group, title,
                          f"v{status.get('directory_version')} applied {_ago(age)} ago"))
    return out


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY_S:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY_S:.1f} days"


# -- the box ------------------------------------------------------------------------------------


def check_clock(clock: Mapping[str, Any]) -> CheckResult:
    id_, title = "system.clock", "clock synchronised"
    source = clock.get("source", "?")
    if clock.get("synchronised"):
        return passed(id_, "system", title, f"{source}: {clock.get('detail', 'synchronised')}")
    if clock.get("synchronised") is None:
        return warned(id_, "system", title, f"cannot tell: {clock.get('detail')}",
                      "install and start chrony (or systemd-timesyncd)")
    return failed(id_, "system", title, f"{source}: {clock.get('detail', 'not synchronised')}",
                  "let NTP through the WAN (UDP 123) or name a reachable NTP server in "
                  "chrony's config, then check 'chronyc tracking'; certificates and call "
                  "records need the right time")


def check_disk(free_bytes: int, total_bytes: int, *, path: str,
               min_free_mb: int) -> CheckResult:
    id_, title = "system.disk", "state directory free space"
    free_mb = free_bytes / 1e6
    detail = f"{free_mb:.0f} MB free of {total_bytes / 1e6:.0f} MB in {path}"
    if free_mb < min_free_mb:
        return failed(id_, "system", title, detail, "free space: 'jbc support-bundle' first, "
                      "then remove old files from the data partition; call records and the "
                      "journal need room during an outage")
    if free_mb < 2 * min_free_mb:
        return warned(id_, "system", title, detail, "free some space on the data partition")
    return passed(id_, "system", title, detail)


def check_watchdog(watchdog: Mapping[str, Any]) -> CheckResult:
    id_, title = "system.watchdog", "service watchdog armed"
    hardware = watchdog.get("hardware")
    hw = f"; hardware watchdog {hardware}" if hardware else ""
    interval = watchdog.get("interval_s")
    if interval is None:
        return failed(id_, "system", title, "jbcd is not under the systemd watchdog "
                      "(no WATCHDOG_USEC)" + hw,
                      "run jbcd from jbcd.service (WatchdogSec=30s), not by hand")
    if not watchdog.get("pings_sent"):
        return warned(id_, "system", title, f"armed ({interval * 3:.0f} s) but no ping sent "
                      "yet" + hw, "run the selftest again in a minute")
    return passed(id_, "system", title, f"armed: {interval * 3:.0f} s, "
                  f"{watchdog['pings_sent']} pings sent" + hw)


# -- phones -------------------------------------------------------------------------------------


def check_phones(readiness: Sequence[Mapping[str, Any]], *, mode: str,
                 sip_enabled: bool) -> list[CheckResult]:
    """One line per phone seen, from :mod:`appliance.phones.readiness` results."""
    group = "phones"
    if not sip_enabled:
        return [failed("phones.sip", group, "local SIP service", "the local registrar is off "
                       "(sip.enabled = false): phones have nowhere to fail over to",
                       "set [sip] enabled = true and listen_address, then 'jbc config "
                       "reload'")]
    if not readiness:
        return [warned("phones.seen", group, "phones seen", "no phone has contacted the "
                       f"appliance yet ({mode} mode)",
                       "point each phone's backup server (or outbound proxy) at the "
                       "appliance; phones show up here when they REGISTER or send OPTIONS "
                       "to it, or are relayed through it")]
    out = []
    for phone in readiness:
        who = phone.get("aor") or phone.get("source")
        id_ = f"phones.{who}"
        title = f"phone {who} ({phone.get('vendor_label') or 'unknown model'})"
        detail = (f"failover in ≤ {phone['failover_s']:.0f} s, failback in ≤ "
                  f"{phone['failback_s']:.0f} s ({phone.get('basis')})")
        problems = phone.get("problems") or []
        if not problems:
            out.append(passed(id_, group, title, detail))
            continue
        fix = "; ".join(phone.get("advice") or []) or "see 'jbc phones --readiness'"
        text = f"{detail}: {'; '.join(problems)}"
        if phone.get("severity") == "fail":
            out.append(failed(id_, group, title, text, fix))
        else:
            out.append(warned(id_, group, title, text, fix))
    return out
