"""jbc events: the event journal (every state change, with its reason and who caused it)."""

from __future__ import annotations

import argparse
import json

from appliance.cli.client import EXIT_OK, ControlClient
from appliance.cli.render import clock, parse_duration, print_json, table


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "events", parents=[common], help="the event journal (audit trail)",
        description="Show recent entries of the event journal: WAN transitions, "
        "registrations, calls, sync, technician actions. With --follow --json, entries are "
        "printed as JSON lines.")
    parser.add_argument("--since", type=_duration, metavar="DURATION",
                        help="only entries newer than this, e.g. 90s, 10m, 1h30m, 2d")
    parser.add_argument("--subsystem", metavar="NAME", help="only this subsystem (e.g. wan)")
    parser.add_argument("--limit", type=int, default=200, metavar="N",
                        help="at most N entries (default 200)")
    parser.add_argument("--follow", "-f", action="store_true",
                        help="after the recent entries, keep printing new ones until Ctrl-C")
    parser.set_defaults(run=run)


def run(client: ControlClient, args: argparse.Namespace) -> int:
    request = {"limit": args.limit}
    if args.since is not None:
        request["since_s"] = args.since
    if args.subsystem:
        request["subsystem"] = args.subsystem
    events = client.call("events", request)["events"]
    if args.json and not args.follow:
        print_json(events)
    else:
        _print(events, args)
    if args.follow:
        follow_args = {"subsystem": args.subsystem} if args.subsystem else {}
        try:
            for entry in client.stream("events.follow", follow_args):
                _print([entry], args, header=False)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def _print(events: list[dict], args: argparse.Namespace, *, header: bool = True) -> None:
    if args.json:  # --follow --json: one compact JSON object per line
        for entry in events:
            print(json.dumps(entry, sort_keys=True), flush=True)
        return
    rows = [(clock(e["time"]), e["subsystem"], e["kind"], _reason(e)) for e in events]
    if not rows and header:
        print("no events in that range")
        return
    text = table(("TIME", "SUBSYSTEM", "KIND", "REASON"), rows)
    lines = text.splitlines()
    print("\n".join(lines if header else lines[1:]), flush=True)


def _reason(entry: dict) -> str:
    actor = entry.get("actor")
    return f"{entry['reason']} [by {actor}]" if actor else entry["reason"]
