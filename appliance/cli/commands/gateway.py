"""jbc test-call: place a test call on a trunk; and the trunk-calls part of 'jbc calls'.

'jbc calls' is one command in one module (``sip.py``): calls through the proxy, then, when
the daemon runs the gateway, the trunk calls rendered here from ``gateway.calls``.
"""

from __future__ import annotations

import argparse

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, ControlClient
from appliance.cli.render import duration, print_json, table

TEST_CALL_SLACK_S = 30.0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    test = subparsers.add_parser(
        "test-call", parents=[common], help="(admin) place a test call on a trunk",
        description="Dial NUMBER on a trunk (the policy's choice, or --trunk), wait for the "
        "answer, send a 1 kHz tone for a few seconds while listening, hang up, and report "
        "whether the call connected and whether audio came back. Exit status 0 only when "
        "both are true. Use a number that answers with audio (an echo test line, a "
        "colleague's mobile). Emergency numbers are refused.")
    test.add_argument("number", help="the number to dial, as sent to the phone network")
    test.add_argument("--trunk", metavar="T", help="use this trunk (see 'jbc trunks')")
    test.set_defaults(run=run_test_call)


# -- the trunk section of 'jbc calls' ----------------------------------------------------------


def trunk_calls(client: ControlClient) -> dict | None:
    """The gateway's view of trunk calls, or None when this daemon runs no gateway (or it is
    disabled in appliance.toml)."""
    offered = {c["name"] for c in client.call("commands")["commands"]}
    if "gateway.calls" not in offered:
        return None
    result = client.call("gateway.calls", {"recent": 0})
    return result if result.get("enabled", True) else None


def _media(row: dict) -> str:
    codec = row.get("codec")
    if not codec:
        return "-"
    return f"{codec}{' srtp' if row.get('srtp') else ''}"


def render_trunk_calls(result: dict) -> str:
    lines = []
    active = result.get("active", [])
    if not result.get("running", True):
        lines.append("The trunk gateway is not running (see 'jbc status').")
    trunks = ", ".join(f"{t['trunk']} {t['state']} {t['calls']}/{t['max_calls']}"
                       for t in result.get("trunks", [])) or "none configured"
    lines.append(f"TRUNK CALLS: {len(active)} in progress   trunks: {trunks}")
    if active:
        rows = [(r["call"], ("SOS " if r.get("emergency") else "") + r["direction"][:3],
                 r.get("from") or "-", r.get("to") or "-", r.get("trunk") or "-",
                 r.get("state"), duration(r.get("duration_s")), _media(r))
                for r in active]
        lines.append(table(("CALL", "DIR", "FROM", "TO", "TRUNK", "STATE", "TIME", "MEDIA"),
                           rows))
    return "\n".join(lines)


# -- jbc test-call -------------------------------------------------------------------------------


def run_test_call(client: ControlClient, args: argparse.Namespace) -> int:
    # The daemon waits for the answer (test_call_timeout_s) and listens a few seconds more.
    client.timeout_s = max(client.timeout_s, 300.0 + TEST_CALL_SLACK_S)
    request = {"number": args.number}
    if args.trunk:
        request["trunk"] = args.trunk
    report = client.call("gateway.test_call", request)
    ok = bool(report.get("connected") and report.get("audio_heard"))
    if args.json:
        print_json(report)
        return EXIT_OK if ok else EXIT_ATTENTION
    trunk = report.get("trunk") or "no trunk"
    if report.get("connected"):
        print(f"{args.number} on {trunk}: connected in {report.get('setup_s')} s")
        level = report.get("audio_level_dbfs")
        if report.get("audio_heard"):
            print(f"audio heard back: yes (loudest {level} dBFS)")
        else:
            print("audio heard back: NO" + (f" (loudest {level} dBFS)" if level is not None
                                           else " (no audio frames at all)"))
            print("The call connected but no sound came back: check the modem's audio port "
                  "and 'jbc events --subsystem trunks'.")
    else:
        why = report.get("error") or report.get("cause") or "unknown"
        print(f"{args.number} on {trunk}: NOT connected: {why}")
    return EXIT_OK if ok else EXIT_ATTENTION
