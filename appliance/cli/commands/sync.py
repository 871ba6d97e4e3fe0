"""jbc sync: the cloud link at a glance; admin 'jbc sync now' and 'jbc sync rollback'."""

from __future__ import annotations

import argparse
import time

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, ControlClient
from appliance.cli.render import clock, duration, print_json


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "sync", parents=[common],
        help="cloud sync: config version, uploads, certificate, 911 alerts (now, enrol, "
        "rollback: admin)",
        description="The cloud link: config bundle version and age, last successful sync, "
        "uploads waiting, the device certificate's expiry, and whether the cloud was alerted "
        "of the latest emergency call. Exit status 1 when it needs "
        "attention (not enrolled, refused bundle, cloud unreachable, certificate expiring).")
    parser.set_defaults(run=run_status)
    actions = parser.add_subparsers(dest="sync_action", metavar="ACTION")
    now = actions.add_parser("now", parents=[common], help="(admin) sync with the cloud now",
                             description="Fetch the config bundle, upload what is pending and "
                             "send a heartbeat now, ignoring any retry backoff. Each step "
                             "fails alone (a bundle that cannot be stored still lets the "
                             "uploads and the heartbeat out); the answer names the first "
                             "failure. If the cloud link itself crashed and waits to restart, "
                             "it says so at once. Exit status 1 when something failed.")
    now.set_defaults(run=run_now)
    enrol = actions.add_parser(
        "enrol", parents=[common], help="(admin) enrol with the cloud with a one-time token",
        description="Enrol this appliance with the one-time token from the cloud portal "
        "(instead of writing it to sync.enrollment_token): a key and CSR are made here, the "
        "cloud returns the device certificate, and the first sync follows. Exit status 1 "
        "when the cloud refused the token or could not be reached.")
    enrol.add_argument("token", help="the one-time enrolment token")
    enrol.set_defaults(run=run_enrol)
    rollback = actions.add_parser(
        "rollback", parents=[common], help="(admin) go back to the previous config bundle",
        description="Make the previous config bundle current again. The cloud's next bundle "
        "is applied only if its version is newer than any applied before.")
    rollback.set_defaults(run=run_rollback)


def run_status(client: ControlClient, args: argparse.Namespace) -> int:
    status = client.call("sync.status")
    if args.json:
        print_json(status)
    else:
        print(render(status))
    return EXIT_ATTENTION if needs_attention(status) else EXIT_OK


def run_now(client: ControlClient, args: argparse.Namespace) -> int:
    result = client.call("sync.now")
    if args.json:
        print_json(result)
    else:
        print("sync done" if result["ok"] else f"sync failed: {result['problem']}")
        print(render(result["status"]))
    return EXIT_OK if result["ok"] else EXIT_ATTENTION


def run_enrol(client: ControlClient, args: argparse.Namespace) -> int:
    result = client.call("sync.enrol", {"token": args.token})
    status = result["status"]
    enrolled = status["enrolled"]
    if args.json:
        print_json(result)
    elif enrolled:
        print(f"enrolled as {status['device_id']} (account {status['account']})")
        print(render(status))
    else:
        print(f"enrolment failed: {result.get('problem') or status.get('problem')}")
    return EXIT_OK if enrolled else EXIT_ATTENTION


def run_rollback(client: ControlClient, args: argparse.Namespace) -> int:
    result = client.call("sync.rollback")
    if args.json:
        print_json(result)
    else:
        print(f"rolled back: config bundle v{result['version']} is in force")
    return EXIT_OK


def needs_attention(status: dict) -> bool:
    if not status["configured"]:
        return False
    expires = status.get("certificate_expires_at")
    return bool(status.get("problem")) or not status["enrolled"] or (
        expires is not None and expires - time.time() < 7 * 86400)


def render(status: dict) -> str:
    if not status["configured"]:
        return ("cloud sync: not configured (set [sync] cloud_url, ca_file and "
                "signing_public_key in appliance.toml)")
    now = time.time()
    version = status["directory_version"]
    lines = [f"cloud        {status['cloud_url']}"]
    if status["enrolled"]:
        lines.append(f"device       {status['device_id']} (account {status['account']})")
        expires = status["certificate_expires_at"]
        lines.append(f"certificate  expires {clock(expires)} (in {duration(expires - now)})")
    else:
        lines.append("device       not enrolled")
    age = status.get("bundle_age_s")
    issued = status.get("bundle_issued_at")
    if version is None:
        lines.append(f"config       no cloud bundle yet ({status['directory_source']})")
    else:
        lines.append(f"config       bundle v{version}, issued {duration(now - issued)} ago, "
                     f"applied {duration(age)} ago" if issued else
                     f"config       bundle v{version}, applied {duration(age)} ago")
    last = status.get("last_success")
    lines.append("last sync    " + (f"{clock(last)} ({duration(now - last)} ago)"
                                    if last else "never"))
    pending = status["pending_uploads"]
    lines.append(f"pending      {pending['call_records']} call records, {pending['events']} "
                 "events")
    heartbeat = status.get("last_heartbeat")
    if heartbeat:
        lines.append(f"heartbeat    {heartbeat['state']} via {heartbeat['uplink']}, "
                     f"{duration(now - heartbeat['at'])} ago")
    alert = status.get("last_emergency_alert")
    if alert:
        outcome = (f"delivered via {alert['uplink']}" if alert["kind"].endswith("delivered")
                   else "NOT DELIVERED")
        lines.append(f"911 alert    call {alert['call']} to {alert['number']}: {outcome}, "
                     f"{duration(now - alert['at'])} ago")
    if status.get("purge_at"):
        lines.append(f"purge        customer content purged on {clock(status['purge_at'])} "
                     "(subscription ended)")
    if status.get("problem"):
        retry = status.get("retry_in_s")
        lines.append(f"problem      {status['problem']}")
        if retry is not None:
            lines.append(f"             retrying in {duration(retry)}")
    return "\n".join(lines)
