"""jbc update: the OS image's A/B slots, and (admin) installing a signed update bundle."""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, EXIT_USAGE, ControlClient
from appliance.cli.render import print_json, table


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "update", parents=[common], help="OS image slots and updates (install: admin)",
        description="The appliance's OS image has two root slots, A and B. An update bundle "
        "(signed, .raucb) is installed into the slot not running, and the appliance reboots "
        "into it; the new slot is kept only if jbcd is ready and its self-check passes, "
        "otherwise the appliance goes back to the previous slot by itself.")
    parser.set_defaults(run=run_status)
    actions = parser.add_subparsers(dest="update_action", metavar="ACTION")
    status = actions.add_parser(
        "status", parents=[common], help="slots, versions, the last install and boot checks",
        description="Which slot is running, what each slot holds, whether the running one is "
        "committed or still on trial, the last install and the recent boot checks.")
    status.set_defaults(run=run_status)
    install = actions.add_parser(
        "install", parents=[common], help="(admin) install a bundle and reboot into it",
        description="Install a signed update bundle into the other slot, then reboot into it. "
        "Refused during an outage or while a call is up, unless --force; when a call starts "
        "during the install, the reboot waits for it to end.")
    install.add_argument("bundle", metavar="FILE", help="the update bundle (.raucb); copy it to "
                         "/data/updates on the appliance first")
    install.add_argument("--force", action="store_true",
                         help="install and reboot even during an outage or a call")
    install.add_argument("--no-reboot", action="store_true",
                         help="install only; reboot later with 'jbc update reboot'")
    install.set_defaults(run=run_install)
    reboot = actions.add_parser(
        "reboot", parents=[common], help="(admin) reboot into the installed update",
        description="Reboot into the update installed with --no-reboot (waits for calls and "
        "outages to end unless --force).")
    reboot.add_argument("--force", action="store_true", help="reboot now, whatever is going on")
    reboot.set_defaults(run=run_reboot)


def run_status(client: ControlClient, args: argparse.Namespace) -> int:
    status = client.call("update.status")
    if args.json:
        print_json(status)
    else:
        print(render_status(status))
    attention = not status.get("available") or status.get("trial") or (
        status.get("install", {}).get("state") == "failed") or bool(status.get("rauc_error"))
    return EXIT_ATTENTION if attention else EXIT_OK


def render_status(status: dict) -> str:
    if not status.get("available"):
        return f"updates unavailable: {status.get('reason', 'not an A/B image')}"
    image = status.get("image") or {}
    booted = status.get("booted") or "?"
    lines = [f"image {image.get('version', '?')} ({image.get('arch', '?')}), running slot "
             f"{booted}, " + ("on TRIAL (not yet committed; committed slot "
                              f"{status.get('committed')})" if status.get("trial")
                              else "committed")]
    if status.get("rauc_error"):
        lines.append(f"RAUC: {status['rauc_error']}")
    rows = [(s.get("bootname"), s.get("name"), s.get("state"), s.get("boot_status") or "-",
             s.get("bundle_version") or "-", s.get("installed_at") or "-")
            for s in status.get("slots", [])]
    if rows:
        lines += ["", table(("SLOT", "RAUC", "STATE", "BOOT", "VERSION", "INSTALLED"), rows)]
    install = status.get("install") or {}
    if install.get("state") not in (None, "idle"):
        lines += ["", f"last install: {install.get('state')} {install.get('bundle', '')}"
                  + (f" ({install['error']})" if install.get("error") else "")]
    if status.get("reboot_pending"):
        lines.append(f"reboot pending until {status.get('reboot_waiting_for', 'it may')}")
    checks = status.get("boot_checks") or []
    if checks:
        lines += ["", table(("BOOT CHECK", "SLOT", "RESULT", "ACTION", "REASON"), [
            (_when(c.get("at")), c.get("slot"), "passed" if c.get("passed") else "FAILED",
             c.get("action"), (c.get("reason") or "")[:60]) for c in checks])]
    lines.append("")
    lines.append("an install may start now" if status.get("may_install_now")
                 else f"an install would wait: {status.get('refusal')}")
    return "\n".join(lines)


def _when(at) -> str:
    if not isinstance(at, int | float):
        return "-"
    return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M")


def run_install(client: ControlClient, args: argparse.Namespace) -> int:
    bundle = os.path.abspath(args.bundle)
    if not os.path.isfile(bundle):
        print(f"jbc: {bundle}: no such file (copy the bundle to /data/updates first)",
              file=sys.stderr)
        return EXIT_USAGE
    outcome = None
    last = -1
    for item in client.stream("update.install", {"bundle": bundle, "force": args.force,
                                                 "reboot": not args.no_reboot}):
        if "progress" in item:
            if args.json:
                print_json(item)
            elif item["progress"] != last:
                print(f"{item['progress']:3d}% {item.get('what', '')}", flush=True)
                last = item["progress"]
        else:
            outcome = item
    if outcome is None:
        print("jbc: jbcd ended the install without a result; see 'jbc update status'",
              file=sys.stderr)
        return EXIT_ATTENTION
    if args.json:
        print_json(outcome)
    else:
        print(f"installed {outcome.get('bundle')} in {outcome.get('took_s')} s; reboot: "
              f"{outcome.get('reboot')}")
    return EXIT_OK


def run_reboot(client: ControlClient, args: argparse.Namespace) -> int:
    result = client.call("update.reboot", {"force": args.force})
    if args.json:
        print_json(result)
    else:
        print(f"reboot: {result.get('reboot')}")
    return EXIT_OK
