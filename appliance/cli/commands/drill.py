"""jbc drill run|schedule|report: fire drills that prove the failover path."""

from __future__ import annotations

import argparse
import textwrap
import time

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, ControlClient
from appliance.cli.render import print_json, terminal_width

MARKS = {"passed": "PASS", "failed": "FAIL", "skipped": "skip"}


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    drill = subparsers.add_parser(
        "drill", parents=[common], help="fire drills: prove failover works, on a schedule",
        description="A fire drill proves the failover path without taking the phones away: "
        "an internal test phone registers to the local registrar and calls itself through "
        "the proxy, each trunk calls drill.number and must hear audio back, and a heartbeat "
        "must reach the cloud over the backup uplink. A full drill (--full, opt-in) forces "
        "failover for drill.full_minutes, announced drill.full_notice_s in advance. Reports "
        "are kept and uploaded to the cloud; a failed drill alerts the cloud like an outage.")
    actions = drill.add_subparsers(dest="drill_action", metavar="ACTION", required=True)
    run = actions.add_parser("run", parents=[common], help="(admin) run a drill now",
                             description="Run a drill now and print its report (a full "
                             "drill is announced and runs in the background: see 'jbc "
                             "drill report'). Exit status 1 when a step failed.")
    run.add_argument("--full", action="store_true",
                     help="force failover for the drill (phones served locally meanwhile)")
    run.add_argument("--scheduled", action="store_true",
                     help="run only when inside drill.window and due (what jbc-drill.timer "
                     "does every hour)")
    run.set_defaults(run=run_drill)
    schedule = actions.add_parser(
        "schedule", parents=[common], help="the maintenance window and the next drill",
        description="Show the maintenance window (drill.window), how often drills run, "
        "whether one is due now and when the next one is.")
    schedule.set_defaults(run=run_schedule)
    report = actions.add_parser("report", parents=[common], help="the last drill reports",
                                description="Show the last drill report (or the last N, or "
                                "one by id), with each step and whether it was uploaded to "
                                "the cloud. Exit status 1 when the newest shown failed.")
    report.add_argument("--last", type=int, default=1, metavar="N",
                        help="show the last N reports (default 1)")
    report.add_argument("--id", help="show this report")
    report.set_defaults(run=run_report)


def run_drill(client: ControlClient, args: argparse.Namespace) -> int:
    client.timeout_s = max(client.timeout_s, 600.0)
    result = client.call("drill.run", {"full": args.full, "scheduled": args.scheduled})
    if args.json:
        print_json(result)
    elif not result["ran"]:
        print(f"no drill: {result['reason']}")
    elif result.get("announced"):
        at = time.strftime("%H:%M:%S", time.localtime(result["failover_at"]))
        print(f"full drill {result['id']} announced: failover forced at {at} for "
              f"{result['minutes']:g} min; 'jbc drill report' shows the result")
    else:
        print(render(result))
    if not result["ran"] or result.get("announced"):
        return EXIT_OK
    return EXIT_OK if result["passed"] else EXIT_ATTENTION


def run_schedule(client: ControlClient, args: argparse.Namespace) -> int:
    result = client.call("drill.schedule")
    if args.json:
        print_json(result)
        return EXIT_OK
    if not result["window"]:
        print("no maintenance window (drill.window): drills run only by hand")
    else:
        kind = (f"full ({result['full_minutes']:g} min of forced failover, announced "
                f"{result['full_notice_s'] / 60:.0f} min before)" if result["full"]
                else "standard (no phone leaves the cloud)")
        print(f"window {result['window']}, every {result['every_days']:g} days, {kind}")
        if result["next_at"]:
            print("next drill: " + time.strftime("%a %Y-%m-%d %H:%M",
                                                 time.localtime(result["next_at"])))
        print(f"now: {result['reason']}")
    print(f"drill number: {result['number'] or 'none (trunk calls skipped)'}")
    last = result["last"]
    if last:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last["started_at"]))
        print(f"last drill: {when}, {last['kind']}, "
              f"{'passed' if last['passed'] else 'FAILED'} ({last['id']})")
    print(result["timer"])
    return EXIT_OK


def run_report(client: ControlClient, args: argparse.Namespace) -> int:
    request = {"id": args.id} if args.id else {"limit": args.last}
    result = client.call("drill.report", request)
    reports = result["reports"]
    if args.json:
        print_json(result)
    else:
        if result.get("running"):
            running = result["running"]
            print(f"running now: {running['kind']} drill {running['id']} ({running['phase']})")
        if not reports:
            print("no drill has run yet ('jbc drill run')")
        print("\n\n".join(render(report) for report in reports))
    if reports and not reports[0]["passed"]:
        return EXIT_ATTENTION
    return EXIT_OK


def render(report: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report["started_at"]))
    took = report["finished_at"] - report["started_at"]
    lines = [f"{report['kind']} drill {report['id']} ({report['trigger']}, {when}, "
             f"{took:.1f} s): {'PASSED' if report['passed'] else 'FAILED'}"]
    for step in report["steps"]:
        lines += textwrap.wrap(f"{MARKS[step['outcome']]}  {step['title']}: {step['detail']} "
                               f"({step['elapsed_s']:.1f} s)", width=terminal_width(),
                               initial_indent="  ", subsequent_indent="        ")
    uploaded = report.get("uploaded_at")
    lines.append("  uploaded to the cloud " + (
        time.strftime("%H:%M:%S", time.localtime(uploaded)) if uploaded else
        "not yet (pending; 'jbc sync' shows uploads)"))
    return "\n".join(lines)
