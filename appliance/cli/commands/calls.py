"""jbc calls: calls in progress and recent ones; jbc test-call: place a test call on a trunk.

One command, one module: trunk calls come from the gateway (``gateway.calls``). Calls
between handsets, which only the SIP proxy sees, are another section of the same screen,
added by the proxy's own control command; :data:`SECTIONS` lists the sections in order.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, ClientError, ControlClient
from appliance.cli.render import clock, duration, print_json, table

TEST_CALL_SLACK_S = 30.0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "calls", parents=[common], help="calls in progress and recent calls",
        description="Trunk calls in progress (outside, inbound and emergency calls: parties, "
        "trunk, state, duration, codec, SRTP) and the most recent finished ones.")
    parser.add_argument("--recent", type=int, default=10, metavar="N",
                        help="also show the N most recent finished calls (default 10, 0: none)")
    parser.set_defaults(run=run)

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


# -- jbc calls -----------------------------------------------------------------------------------


def _trunk_section(client: ControlClient, args: argparse.Namespace) -> tuple[str, dict]:
    result = client.call("gateway.calls", {"recent": max(0, args.recent)})
    return render_trunk_calls(result, recent=args.recent), result


SECTIONS: list[tuple[str, Callable[[ControlClient, argparse.Namespace], tuple[str, dict]]]] = [
    ("trunk", _trunk_section),
]
"""(JSON key, renderer) per section of 'jbc calls'."""


def run(client: ControlClient, args: argparse.Namespace) -> int:
    if args.recent < 0:
        raise ClientError("--recent must not be negative", code="bad_request")
    texts, results = [], {}
    for key, section in SECTIONS:
        text, result = section(client, args)
        texts.append(text)
        results[key] = result
    if args.json:
        print_json(results)
    else:
        print("\n\n".join(texts))
    return EXIT_OK


def _media(row: dict) -> str:
    codec = row.get("codec")
    if not codec:
        return "-"
    return f"{codec}{' srtp' if row.get('srtp') else ''}"


def render_trunk_calls(result: dict, *, recent: int) -> str:
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
    if recent:
        finished = result.get("recent", [])
        lines.append("")
        if not finished:
            lines.append("RECENT: none")
        else:
            lines.append("RECENT")
            rows = [(clock(r["started_at"])[5:], ("SOS " if r.get("emergency") else "")
                     + r["direction"][:3], r.get("from") or "-", r.get("to") or "-",
                     r.get("trunk") or "-", duration(r.get("talk_s") if r.get("talk_s")
                                                     is not None else r.get("duration_s")),
                     r.get("result") or "-")
                    for r in finished]
            lines.append(table(("STARTED", "DIR", "FROM", "TO", "TRUNK", "TIME", "RESULT"),
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
