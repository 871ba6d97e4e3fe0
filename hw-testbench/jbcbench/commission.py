"""A technician commissions the bench site from a fresh install, with ``jbc`` alone.

The bench builds the site (network, cloud, modems, desk phones) with the faults a technician
meets on site already in place:

* the LTE modem's SIM is not inserted, and its antennas are off (no signal);
* the cloud issues a certificate that expires in 10 days and cannot renew it yet;
* the appliance's chronyd cannot reach an NTP server (clock not synchronised);
* the front-desk phone (a Yealink) is on its factory 3600 s registration expiry.

Then the technician's steps, each a ``jbc`` command run against the real jbcd and printed with
its output and time: check the site's config, start on it, enrol with the one-time token,
run the selftest (which flags every fault above, each with its fix), fix what it flags (the
bench plays the hands: SIM in, antennas on, NTP reachable, the cloud renews, the phone
re-provisioned with the advised key), run the selftest again until it passes, run a fire drill
(test phone through the proxy, each trunk calling the drill number and hearing audio back,
the heartbeat over the backup uplink), read the drill report (uploaded to the cloud), check
every phone's readiness, and have the site's Prometheus scrape the appliance. A step that
fails fails the walkthrough; the elapsed time is printed at the end (goal 15 minutes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import secrets
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from .chrony import ChronyDaemon
from .handset import HandsetProcess
from .notifysocket import NotifySocket
from .sitelab import LabSettings, SiteLab, site_directory
from .wanlab import BackgroundLoop

GOAL_S = 15 * 60
DRILL_NUMBER = "+15555550199"
YEALINK_UA = "Yealink SIP-T46S 66.86.0.15"
FRONT_DESK = "110"


class StepFailed(Exception):
    pass


@dataclasses.dataclass
class Step:
    title: str
    command: str
    exit_code: int
    elapsed_s: float
    ok: bool


class Walkthrough:
    def __init__(self, workdir: pathlib.Path, *, out: Callable[[str], None] = print,
                 handsets: int = 2, prometheus: bool = True, namespaces: bool | None = None,
                 fast_modems: bool = False) -> None:
        self.workdir = pathlib.Path(workdir)
        self.out = out
        self.handsets = handsets
        self.use_prometheus = prometheus
        self.namespaces = namespaces
        self.fast_modems = fast_modems
        self.started = time.monotonic()
        self.steps: list[Step] = []
        self.results: dict[str, Any] = {}
        self.lab: SiteLab | None = None
        self.chrony: ChronyDaemon | None = None
        self.notify: NotifySocket | None = None
        self.front_desk: HandsetProcess | None = None
        self.loop = BackgroundLoop()
        self.metrics_port = 9464

    # -- output ----------------------------------------------------------------------------

    def clock(self) -> str:
        elapsed = time.monotonic() - self.started
        return f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}]"

    def say(self, text: str) -> None:
        self.out(f"{self.clock()} {text}")

    def bench(self, text: str) -> None:
        self.out(f"{self.clock()} (bench) {text}")

    def jbc(self, title: str, *argv: str, expect: tuple[int, ...] = (0,),
            timeout_s: float = 180.0) -> Any:
        """Run one technician command, print it and its output; JSON commands return data."""
        self.say(f"technician: {title}")
        self.out(f"  $ jbc {shlex.join(argv)}")
        begin = time.monotonic()
        done = self.lab.daemon.cli(*argv, timeout_s=timeout_s)
        elapsed = time.monotonic() - begin
        text = (done.stdout + done.stderr).rstrip()
        if "--json" in argv and done.stdout.strip().startswith("{"):
            text = done.stderr.rstrip()  # the data is shown by the caller, not as raw JSON
        for line in text.splitlines():
            self.out(f"    {line}")
        ok = done.returncode in expect
        self.steps.append(Step(title=title, command="jbc " + shlex.join(argv),
                               exit_code=done.returncode, elapsed_s=elapsed, ok=ok))
        self.out(f"  -> exit {done.returncode} in {elapsed:.1f} s"
                 + ("" if ok else f" (expected {' or '.join(map(str, expect))}): STEP FAILED"))
        if not ok:
            raise StepFailed(f"'jbc {shlex.join(argv)}' exited {done.returncode}")
        if "--json" in argv:
            return json.loads(done.stdout)
        return done

    # -- the site --------------------------------------------------------------------------

    def build(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.notify = NotifySocket(self.workdir / "notify.sock")
        settings = LabSettings(
            handsets=self.handsets, profile="tuned", modems=("eg25",),
            fast_modems=self.fast_modems,
            namespaces=self.namespaces, backup_uplink=True,
            sync={"enrollment_token": None, "renew_before_s": 86400.0 * 30},
            daemon_env=self.notify.env(watchdog_usec=3_000_000))
        self.workdir.mkdir(parents=True, exist_ok=True)
        lab = SiteLab(self.workdir / "site", settings)
        lab.passwords[FRONT_DESK] = "pw-" + secrets.token_hex(6)
        lab.directory = site_directory([*settings.extensions, FRONT_DESK], lab.passwords)
        self.lab = lab
        lab.build(self.bench)
        cloud = lab.site.cloud_api
        self.bench("the cloud issues 10-day certificates and cannot renew them yet")
        cloud.faults.certificate_lifetime_s = 10 * 86400
        cloud.faults.status = 503
        cloud.faults.status_operations = frozenset({"renewCertificate"})
        name = next(iter(lab.trunks.sims))
        self.trunk = name
        sim = lab.trunks.sims[name]
        self.bench(f"{name}: no SIM in the slot, antennas not connected")
        self.loop_call(lambda: (setattr(sim, "sim_state", "missing"), sim.set_signal(99)))
        self.bench("the appliance's chronyd cannot reach its NTP server")
        self.chrony = ChronyDaemon(self.workdir / "chrony", synchronised=False,
                                   exec_prefix=lab.site.appliance_prefix())
        self.loop.run(self.chrony.__aenter__())
        self.site_config = lab.config_toml() + "\n" + "\n\n".join([
            _section("selftest", {"test_call_number": DRILL_NUMBER, "clock_source": "chrony",
                                  "chrony_address": self.chrony.address}),
            _section("drill", {"number": DRILL_NUMBER, "window": "Sun 02:00-04:00",
                               "full_minutes": 0.25, "full_notice_s": 5.0}),
            _section("metrics", {"enabled": True, "listen_address": lab.site.appliance_lan,
                                 "port": self.metrics_port})]) + "\n"

    def loop_call(self, function: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return function()

        return self.lab.modem_loop.run(call())

    def start_front_desk(self, expires: int) -> None:
        lab = self.lab
        if self.front_desk is not None:
            self.front_desk.close()
        index = len(lab.settings.extensions)
        self.front_desk = HandsetProcess(
            user=FRONT_DESK, password=lab.passwords[FRONT_DESK],
            server=f"{lab.site.appliance_lan}:{lab.site.sip_port}",
            bind=lab.site.handset_bind(index), exec_prefix=lab.site.handset_prefix(),
            expires=expires, user_agent=YEALINK_UA)
        # Its REGISTER got its final answer (503 while the cloud is up): jbcd has seen it.
        self.front_desk.expect("reg", timeout=30)

    def install_far_end(self) -> None:
        for name in self.lab.trunks.sims:
            self.lab.trunks.far_end(name)

    # -- the walkthrough -------------------------------------------------------------------

    def run(self) -> bool:
        try:
            self._run()
        except (StepFailed, TimeoutError) as error:
            self.out(f"{self.clock()} WALKTHROUGH FAILED: {error}")
            self.results["passed"] = False
        else:
            self.results["passed"] = True
        finally:
            self.close()
        total = time.monotonic() - self.started
        self.results["elapsed_s"] = round(total, 1)
        self.results["goal_s"] = GOAL_S
        self.results["steps"] = [dataclasses.asdict(s) for s in self.steps]
        self.out(f"commissioning {'PASSED' if self.results['passed'] else 'FAILED'}: "
                 f"{len(self.steps)} jbc commands, {total / 60:.1f} min "
                 f"(goal ≤ {GOAL_S // 60} min: "
                 f"{'met' if total <= GOAL_S else 'MISSED'})")
        return self.results["passed"] and total <= GOAL_S

    def _run(self) -> None:
        lab = self.lab
        self.say("bench: a fresh install (jbcd on its built-in defaults)")
        lab.start_appliance(self.bench, fresh=True)
        config_file = self.workdir / "appliance.toml"
        config_file.write_text(self.site_config)
        self.say(f"technician writes the site's config to {config_file}")
        self.jbc("check the site's config before using it", "config", "check",
                 str(config_file))
        self.bench("systemctl restart jbcd (the site's config in /etc/jbc/appliance.toml)")
        lab.daemon.stop()
        lab.start_appliance(self.bench, config=self.site_config)
        self.jbc("the config in force", "config")
        self.jbc("enrol with the one-time token from the portal", "sync", "enrol", lab.token)
        lab.wait_appliance_ready(self.bench, trunks=False)
        lab.start_phones(self.bench)
        self.bench("the front desk's Yealink (concurrent registration, factory 3600 s) "
                   "contacts the appliance")
        self.start_front_desk(3600)
        self.notify.wait_for("WATCHDOG=1")
        self.install_far_end()
        first = self.jbc("run the commissioning checklist", "--json", "selftest",
                         expect=(1,))
        self.show_lines(first)
        self.results["first_selftest"] = first
        self.check_caught(first)

        self.say("technician fixes what the selftest flagged")
        sim = lab.trunks.sims[self.trunk]
        self.bench(f"{self.trunk}: SIM inserted, antennas connected")
        self.loop_call(lambda: (setattr(sim, "sim_state", "ready"), sim.set_signal(22)))
        self.bench("chrony pointed at a reachable NTP server")
        self.loop.run(self.chrony.__aexit__(None, None, None))
        self.chrony = ChronyDaemon(self.workdir / "chrony-fixed", synchronised=True,
                                   exec_prefix=lab.site.appliance_prefix())
        self.chrony.command_port = _port_of(self.site_config)
        self.loop.run(self.chrony.__aenter__())
        self.loop.run(self.chrony.wait_for(True))
        self.bench("the cloud renews certificates again (a year)")
        cloud = lab.site.cloud_api
        cloud.faults.status = None
        cloud.faults.certificate_lifetime_s = 365 * 86400
        self.jbc("renew the certificate now", "sync", "now")
        self.bench("the front desk re-provisioned: account.1.sip_server.1.expires = 120")
        self.start_front_desk(120)
        lab.wait_for(self._trunk_ready, 60, "the LTE trunk ready")
        self.install_far_end()
        second = self.jbc("run the checklist again", "--json", "selftest")
        self.show_lines(second)
        self.results["second_selftest"] = {"verdict": second["verdict"],
                                           "counts": second["counts"],
                                           "duration_s": second["duration_s"]}
        self.install_far_end()
        drill = self.jbc("run a fire drill", "drill", "run")
        self.results["drill_output"] = drill.stdout
        report = self.jbc("the drill report", "--json", "drill", "report")["reports"][0]
        lab.wait_for(lambda: report["id"] in cloud.drill_reports, 30,
                     "the drill report uploaded")
        self.jbc("the drill report, uploaded", "drill", "report")
        self.results["drill"] = report
        self.jbc("each phone's failover readiness", "phones", "--readiness")
        self.install_far_end()
        full = self.jbc("a full drill: failover forced for 15 s, announced 5 s before",
                        "--json", "drill", "run", "--full")
        at = time.strftime("%H:%M:%S", time.localtime(full["failover_at"]))
        self.say(f"  announced: failover at {at} for {full['minutes']:g} min")
        lab.wait_for(lambda: self._drill_done(full["id"]), 120, "the full drill's report")
        self.jbc("the full drill's report", "drill", "report", "--id", full["id"])
        self.results["full_drill"] = self.lab.daemon.call("drill.report",
                                                          {"id": full["id"]})["reports"][0]
        self.jbc("the drill schedule", "drill", "schedule")
        if self.use_prometheus:
            self.scrape()

    def _drill_done(self, report_id: str) -> bool:
        try:
            reports = self.lab.daemon.call("drill.report", {"id": report_id})["reports"]
        except Exception:  # not finished yet: no report by that id
            return False
        return bool(reports)

    def _trunk_ready(self) -> bool:
        trunks = self.lab.daemon.call("trunks.list")["trunks"]
        return bool(trunks) and all(t["state"] == "ready" for t in trunks)

    def show_lines(self, report: dict) -> None:
        from appliance.cli.commands.selftest import render

        for line in render(report).splitlines():
            self.out(f"    {line}")

    def check_caught(self, report: dict) -> None:
        lines = {line["id"]: line for line in report["results"]}
        expected = {
            "SIM removed": (f"trunk.{self.trunk}.sim", "fail", "insert the SIM"),
            "no signal": (f"trunk.{self.trunk}.signal", "fail", "antennas"),
            "cloud certificate near expiry": ("cloud.certificate", "warn", "jbc sync now"),
            "clock unsynchronised": ("system.clock", "fail", "NTP"),
            "a phone with a 3600 s refresh": (f"phones.{FRONT_DESK}", "fail",
                                              "account.1.sip_server.1.expires = 120"),
        }
        caught = {}
        for fault, (line_id, status, fix) in expected.items():
            line = lines.get(line_id)
            ok = line is not None and line["status"] == status and fix in line["fix"]
            caught[fault] = {"line": line_id, "status": line and line["status"],
                             "detail": line and line["detail"], "fix": line and line["fix"],
                             "caught": ok}
            self.say(f"  fault '{fault}': {'caught' if ok else 'NOT CAUGHT'} "
                     f"({line_id} {line and line['status']})")
            if not ok:
                raise StepFailed(f"the selftest did not catch '{fault}' with its fix")
        self.results["faults"] = caught

    def scrape(self) -> None:
        from . import prometheus

        if not prometheus.available():
            self.bench("no prometheus installed: scrape skipped")
            return
        target = f"{self.lab.site.appliance_lan}:{self.metrics_port}"
        self.bench(f"the site's Prometheus scrapes http://{target}/metrics")
        with prometheus.PrometheusServer(self.workdir / "prometheus", [target],
                                         exec_prefix=self.lab.site.appliance_prefix()) as server:
            series = {}
            for expression in ("jbc_wan_state == 1", "jbc_wan_probe_rtt_seconds",
                               "jbc_trunk_signal_dbm", "jbc_sync_bundle_age_seconds",
                               "jbc_drill_last_success", "jbc_selftest_last_checks"):
                result = server.wait_for(expression, 60)
                series[expression] = [(r["metric"], r["value"][1]) for r in result]
                for metric, value in series[expression]:
                    labels = ",".join(f"{k}={v}" for k, v in metric.items()
                                      if k not in ("job", "instance", "__name__"))
                    self.out(f"    {metric['__name__']}{{{labels}}} = {value}")
        self.results["prometheus"] = series

    def close(self) -> None:
        if self.front_desk is not None:
            with contextlib.suppress(Exception):
                self.front_desk.close()
        if self.lab is not None:
            self.lab.close()
        if self.chrony is not None:
            with contextlib.suppress(Exception):
                self.loop.run(self.chrony.__aexit__(None, None, None))
        self.loop.close()
        if self.notify is not None:
            self.notify.close()


def _section(name: str, values: dict[str, Any]) -> str:
    from .sipdaemon import toml_value

    return "\n".join([f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in values.items())])


def _port_of(config: str) -> int:
    """chronyd's command port as the site's config names it (the fixed chronyd keeps it)."""
    for line in config.splitlines():
        if line.startswith("chrony_address"):
            return int(line.split("=", 1)[1].strip().strip('"').rsplit(":", 1)[1])
    raise ValueError("no chrony_address in the site's config")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="hw-testbench/commission", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="output directory (default hw-testbench/out/commission-<time>)")
    parser.add_argument("--phones", type=int, default=2, help="desk phones besides the "
                        "front desk (default 2)")
    parser.add_argument("--no-prometheus", action="store_true",
                        help="skip the Prometheus scrape")
    parser.add_argument("--loopback", action="store_true",
                        help="no network namespaces even as root")
    parser.add_argument("--fast-modems", action="store_true",
                        help="compressed modem timings (the tests' variant); by default the "
                        "simulated modem boots, registers and answers at realistic speed")
    args = parser.parse_args(argv)
    here = pathlib.Path(__file__).resolve().parents[1]
    out = args.out or here / "out" / time.strftime("commission-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    transcript: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        transcript.append(line)

    walkthrough = Walkthrough(out / "site", out=emit, handsets=args.phones,
                              prometheus=not args.no_prometheus,
                              namespaces=False if args.loopback else None,
                              fast_modems=args.fast_modems)
    walkthrough.build()
    passed = walkthrough.run()
    (out / "commission.txt").write_text("\n".join(transcript) + "\n")
    (out / "commission.json").write_text(json.dumps(walkthrough.results, indent=2,
                                                    default=str) + "\n")
    print(f"transcript: {out / 'commission.txt'}; figures: {out / 'commission.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
