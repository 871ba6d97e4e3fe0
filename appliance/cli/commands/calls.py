"""jbc calls: calls in progress and recent ones; jbc test-call: place a test call on a trunk.

One command, one module, two sources: the SIP proxy's dialogs (``sip.calls``: every call
between handsets and the SIP side of trunk calls) and the gateway's trunk calls
(``gateway.calls``: which line, how long, codec, SRTP, and the latest call records). Each
section is shown when the daemon offers its command (``commands`` lists them).
"""

from __future__ import annotations

import argparse

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, ClientError, ControlClient
from appliance.cli.render import clock, duration, print_json, table

TEST_CALL_SLACK_S = 30.0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "calls", parents=[common], help="calls in progress and recent calls",
        description="Calls in progress: through the local SIP proxy (who calls whom, state, "
        "duration) and on the trunks (outside, inbound and emergency calls: parties, trunk, "
        "state, duration, codec, SRTP); then the most recent call records.")
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


def run(client: ControlClient, args: argparse.Namespace) -> int:
    if args.recent < 0:
        raise ClientError("--recent must not be negative", code="bad_request")
    offered = {c["name"] for c in client.call("commands")["commands"]}
    results: dict = {}
    if "sip.calls" in offered:
        results["proxy"] = client.call("sip.calls")
    if "gateway.calls" in offered:
        results["trunk"] = client.call("gateway.calls", {"recent": args.recent})
    if args.json:
        print_json(results)
        return EXIT_OK
    if not results:
        print("Neither the SIP proxy nor the trunk gateway is running (see 'jbc status').")
        return EXIT_ATTENTION
    print(render_calls(results, recent=args.recent))
    return EXIT_OK


def render_calls(results: dict, *, recent: int) -> str:
    """Calls through the proxy (between handsets, and every call's SIP side), trunk calls
    (which line, how long, codec, SRTP), then the most recent call records."""
    parts = []
    proxy = results.get("proxy")
    if proxy is not None:
        calls = proxy.get("calls", [])
        lines = [f"PROXY CALLS: {len(calls)} in progress"]
        if calls:
            rows = [(c["caller"], c["callee"] + (" SOS" if c.get("emergency") else ""),
                     c["state"], duration(c.get("duration_s")),
                     duration(c["talking_s"]) if c.get("talking_s") else "-") for c in calls]
            lines.append(table(("FROM", "TO", "STATE", "DURATION", "TALKING"), rows))
        parts.append("\n".join(lines))
    trunk = results.get("trunk")
    if trunk is not None:
        parts.append(render_trunk_calls(trunk))
        if recent:
            parts.append(render_recent(trunk.get("recent", [])))
    return "\n\n".join(parts)


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


def render_recent(records: list[dict]) -> str:
    if not records:
        return "RECENT: no call records yet"
    rows = [(clock(r["started_at"])[5:], ("SOS " if r.get("emergency") else "")
             + r["direction"][:3], r.get("from") or "-", r.get("to") or "-",
             r.get("trunk") or "-",
             duration(r["talk_s"]) if r.get("talk_s") is not None else "-",
             r.get("result") or "-") for r in records]
    return "RECENT\n" + table(("STARTED", "DIR", "FROM", "TO", "TRUNK", "TALKED", "RESULT"),
                               rows)


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
