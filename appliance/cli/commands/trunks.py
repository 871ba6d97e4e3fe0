"""jbc trunks: the outside lines at a glance; admin 'jbc modem TRUNK at "AT..."'."""

from __future__ import annotations

import argparse

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, ControlClient
from appliance.cli.render import print_json, table


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "trunks", parents=[common], help="outside lines: LTE modems and analog lines",
        description="Each trunk (outside line): kind, model, state, signal, operator, SIM, "
        "VoLTE (IMS) and calls, with the reason when it is not ready (what the modem's "
        "recovery is doing, or what to check). Figures are blank while a modem is out of "
        "service. Exit status 1 when a trunk is not ready.")
    parser.set_defaults(run=run_trunks)

    modem = subparsers.add_parser(
        "modem", parents=[common], help="(admin) talk to a trunk's modem directly",
        description="Send one AT command to a trunk's modem and print its answer, for "
        "diagnosis (e.g. 'jbc modem lte1 at AT+CSQ'). Refused while the trunk has a call, "
        "unless --force. One command per request, never a call: a line with a line break, "
        "a ';', a second basic command, or a command that dials, answers, holds or ends a "
        "call (ATD, ATA, ATH, ATO, A/, AT+CHUP, AT+QHUP, AT+CHLD, AT+CDV, AT+VTS, AT+VLS...) "
        "is refused with the reason and nothing is sent (place test calls with "
        "'jbc test-call').")
    modem.add_argument("trunk", help="the trunk's name, as 'jbc trunks' shows it")
    actions = modem.add_subparsers(dest="modem_action", metavar="ACTION", required=True)
    at = actions.add_parser("at", parents=[common], help="send one AT command",
                            description="Send one AT command and print every line of the "
                            "answer. Exit status 1 when the modem answered with an error or "
                            "the command was refused (one command, never a call: see "
                            "'jbc modem --help').")
    at.add_argument("command", help='the command line, e.g. "AT+CSQ" (quote it in the shell)')
    at.add_argument("--force", action="store_true",
                    help="send it even though a call is up (it may drop the call)")
    at.add_argument("--timeout", dest="at_timeout", type=float, default=10.0,
                    metavar="SECONDS", help="how long the modem may take (default 10)")
    at.set_defaults(run=run_at)


def run_trunks(client: ControlClient, args: argparse.Namespace) -> int:
    result = client.call("trunks.list")
    trunks = result["trunks"]
    if args.json:
        print_json(trunks)
    else:
        print(render(trunks))
    return EXIT_ATTENTION if any(t["state"] != "ready" for t in trunks) else EXIT_OK


def run_at(client: ControlClient, args: argparse.Namespace) -> int:
    result = client.call("trunks.at", {"trunk": args.trunk, "command": args.command,
                                       "force": args.force, "timeout_s": args.at_timeout},)
    if args.json:
        print_json(result)
    else:
        print("\n".join(result["lines"]))
    return EXIT_OK if result["ok"] else EXIT_ATTENTION


def render(trunks: list[dict]) -> str:
    if not trunks:
        return "No trunks configured (add [[trunks]] entries to appliance.toml)."
    rows = []
    for t in trunks:
        rows.append((t["name"], t["kind"], t.get("model"), t["state"], _signal(t),
                     _network(t), len(t["calls"])))
    lines = [table(("NAME", "KIND", "MODEL", "STATE", "SIGNAL", "NETWORK", "CALLS"), rows)]
    for t in trunks:
        notes = []
        if t["state"] != "ready" and t.get("reason"):
            notes.append(t["reason"])
        if t.get("audio"):
            notes.append(f"audio: {t['audio']}")
        for call in t["calls"]:
            who = call["number"] or (call["caller"] or {}).get("presentation") or "?"
            supervised = "" if call["answer_supervised"] else " (answer presumed)"
            notes.append(f"call {call['id']}: {call['direction']} {who} "
                         f"{call['state']}{supervised}")
        for note in notes:
            lines.append(f"  {t['name']}: {note}")
    return "\n".join(lines)


def _signal(t: dict) -> str:
    if t.get("signal_dbm") is None:
        return "-"
    bars = t.get("signal_bars") or 0
    return f"{t['signal_dbm']} dBm {'▮' * bars}{'▯' * (5 - bars)}"


def _network(t: dict) -> str:
    if t["kind"] == "voice-modem":
        return f"line: {t.get('line') or 'unknown'}"
    parts = [t.get("operator") or "-"]
    if t.get("access_technology"):
        parts.append(t["access_technology"])
    parts.append(f"SIM {t.get('sim') or '?'}")
    parts.append(f"IMS {t.get('ims') or '?'}")
    return " ".join(parts)
