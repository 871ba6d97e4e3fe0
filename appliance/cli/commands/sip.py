"""jbc phones and jbc calls: the handsets registered locally and the calls through the proxy
(followed by the trunk calls when the daemon runs the trunk gateway; see gateway.py)."""

from __future__ import annotations

import argparse

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, ControlClient
from appliance.cli.commands.gateway import render_trunk_calls, trunk_calls
from appliance.cli.render import clock, duration, print_json, table


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    phones = subparsers.add_parser(
        "phones", parents=[common], help="handsets the appliance can reach (registered here, "
        "or mirrored from the cloud in in-path mode)",
        description="Every handset the appliance holds a binding for: its extension (address "
        "of record), transport, source address, when the binding expires, where it was "
        "registered (REG: 'local' at the appliance, 'cloud' mirrored from the cloud's answer "
        "to a REGISTER the appliance relayed, in in-path mode), its user agent and contact. "
        "During an outage these are the phones that can make and take calls. The first line "
        "says whether the appliance serves them, relays to the cloud (in-path mode, and over "
        "which connection) or stands by.")
    phones.add_argument("--extension", metavar="EXT", help="only this extension")
    phones.add_argument("--readiness", action="store_true",
                        help="every phone seen (REGISTER, OPTIONS, relayed): its predicted "
                        "failover and failback time in the current mode, and the provisioning "
                        "keys to change (Yealink, Poly, Grandstream, Snom, Cisco MPP); exit "
                        "status 1 when a phone needs attention")
    phones.set_defaults(run=run_phones)
    calls = subparsers.add_parser(
        "calls", parents=[common], help="calls through the local SIP proxy and on the trunks",
        description="Calls in progress through the local proxy: who calls whom, state "
        "(trying, ringing, answered, on hold) and duration; then, when the trunk gateway "
        "runs, the trunk calls (which line, state, duration, codec, SRTP). --recent adds "
        "the last call records.")
    calls.add_argument("--recent", type=int, default=0, metavar="N",
                       help="also show the last N finished calls")
    calls.set_defaults(run=run_calls)


def run_phones(client: ControlClient, args: argparse.Namespace) -> int:
    if args.readiness:
        return run_readiness(client, args)
    result = client.call("sip.phones")
    phones = [p for p in result["phones"]
              if args.extension is None or p["aor"] == args.extension]
    if args.json:
        print_json({**result, "phones": phones})
        return EXIT_OK
    if result["serving"]:
        mode = "serving handsets locally"
    elif result.get("mode") == "in-path":
        mode = (f"in-path: relaying to the cloud over {result.get('cloud_link')}"
                if result.get("relaying") else
                f"in-path: NOT relaying ({result.get('cloud_link')})")
    else:
        mode = "standing by"
    print(f"{mode} (WAN {result['wan_state']}): {len(phones)} registration"
          f"{'' if len(phones) == 1 else 's'}")
    if phones:
        rows = [(p["aor"], p["transport"].upper(), p["source"], duration(p["expires_in_s"]),
                 p.get("origin", "local"), p["user_agent"] or "-", p["contact"])
                for p in phones]
        print(table(("EXT", "VIA", "SOURCE", "EXPIRES", "REG", "USER AGENT", "CONTACT"),
                    rows))
    relaying_down = result.get("mode") == "in-path" and not result["serving"] \
        and not result.get("relaying")
    return EXIT_ATTENTION if relaying_down else EXIT_OK


def run_readiness(client: ControlClient, args: argparse.Namespace) -> int:
    result = client.call("phones.readiness")
    phones = [p for p in result["phones"]
              if args.extension is None or p["aor"] == args.extension]
    attention = any(p["severity"] != "ok" for p in phones)
    if args.json:
        print_json({**result, "phones": phones})
        return EXIT_ATTENTION if attention else EXIT_OK
    print(f"{result['mode']} mode: {len(phones)} phone{'' if len(phones) == 1 else 's'} "
          f"seen; goal: failover within {result['goal_s']:.0f} s")
    if phones:
        rows = [(p["aor"] or "-", p["vendor_label"] or "?", p["transport"].upper(),
                 p["requested_expires_s"] or "-", f"{p['failover_s']:.0f}s",
                 f"{p['failback_s']:.0f}s", p["severity"].upper()) for p in phones]
        print(table(("EXT", "MODEL", "VIA", "EXPIRES", "FAILOVER", "FAILBACK", "READY"),
                    rows))
    for p in phones:
        if p["severity"] == "ok":
            continue
        print(f"\n{p['aor'] or p['source']} ({p['user_agent'] or 'no User-Agent'}): "
              f"{'; '.join(p['problems'])}")
        print(f"  basis: {p['basis']}")
        for line in p["advice"]:
            print(f"  set {line}")
    return EXIT_ATTENTION if attention else EXIT_OK


def run_calls(client: ControlClient, args: argparse.Namespace) -> int:
    request = {"recent": args.recent} if args.recent else {}
    result = client.call("sip.calls", request)
    trunk = trunk_calls(client)  # the gateway's trunk calls, when it runs
    if args.json:
        print_json(result if trunk is None else {**result, "trunk": trunk})
        return EXIT_OK
    calls = result["calls"]
    if calls:
        rows = [(c["caller"], c["callee"] + (" (EMERGENCY)" if c["emergency"] else ""),
                 c["state"], duration(c["duration_s"]),
                 duration(c["talking_s"]) if c["talking_s"] else "-") for c in calls]
        print(table(("FROM", "TO", "STATE", "DURATION", "TALKING"), rows))
    else:
        print("no calls in progress")
    recent = result.get("recent")
    if recent is not None:
        print()
        if not recent:
            print("no call records yet")
        else:
            rows = [(clock(r["started_at"]), r["from"], r["to"], r["direction"],
                     r["result"] or "-", _talked(r)) for r in recent]
            print(table(("STARTED", "FROM", "TO", "DIRECTION", "RESULT", "TALKED"), rows))
    if trunk is not None:
        print()
        print(render_trunk_calls(trunk))
    return EXIT_OK


def _talked(record: dict) -> str:
    if record["answered_at"] is None or record["ended_at"] is None:
        return "-"
    return duration(record["ended_at"] - record["answered_at"])
