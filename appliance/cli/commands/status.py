"""jbc status: one screen saying what the appliance is doing and whether anything needs care."""

from __future__ import annotations

import argparse
import textwrap

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, ControlClient
from appliance.cli.render import clock, duration, print_json, shorten_left, table


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "status", parents=[common], help="state, uptime, versions and subsystem health",
        description="One screen: the appliance's state and since when, uptime, versions and "
        "the health of each subsystem (control socket, storage and the subsystems). A "
        "subsystem whose task crashed in the last five minutes shows 'warning' with the task, "
        "how often it crashed, the last error and when it restarts (crashed tasks are "
        "restarted by themselves, with backoff). A subsystem that cannot start, or died while "
        "running (the gateway's media agent), shows 'failed' with why and when it is tried "
        "again, then 'warning' for five minutes once it runs again; --json lists each task. "
        "Exit status 1 when something needs attention.")
    parser.set_defaults(run=run)


def run(client: ControlClient, args: argparse.Namespace) -> int:
    status = client.call("status")
    if args.json:
        print_json(status)
    else:
        print(render_status(status))
    return EXIT_ATTENTION if status.get("needs_attention") else EXIT_OK


def render_status(status: dict) -> str:
    state = status["state"].upper()
    lines = [
        f"{state} since {clock(status['state_since'])} ({duration(status['state_for_s'])})"
        f"  site {status['site']}",
    ]
    if status.get("cause"):
        lines += textwrap.wrap(f"cause: {status['cause']}", width=80, initial_indent="  ",
                               subsequent_indent="    ")
    config = status["config"]
    directory = status.get("directory_version") or "none"
    lines.append(f"jbcd {status['version']}, pid {status['pid']}, up "
                 f"{duration(status['uptime_s'])}; directory version {directory}")
    lines.append(f"config {config['digest']} from " + shorten_left(config["source"], 80 - 25))
    lines.append("")
    rows = [(s["name"], s["level"], s["summary"]) for s in status["subsystems"]]
    lines.append(table(("SUBSYSTEM", "HEALTH", "SUMMARY"), rows))
    if status.get("needs_attention"):
        lines.append("")
        lines.append("Needs attention (and what to do); more in 'jbc events --since 1h':")
        for row in status["subsystems"]:
            if row["level"] in ("warning", "failed"):
                lines += textwrap.wrap(f"{row['name']}: {row['summary']}", width=80,
                                       initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)
