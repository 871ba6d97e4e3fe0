#!/usr/bin/env python3
"""Root's 'jbc status' while other local users hold control connections (issue 14, finding 3).

The independent check locked root out of 'jbc status' for 30 s at a time with 40 idle
connections from a user without a role. This runs the real jbcd and, for each of two socket
set-ups, measures root's status round trip (connect, request, answer: what 'jbc status' waits
for once Python has started) while:

* technicians (10 uids in the technician group) hold every connection they are allowed,
* a user without a role keeps 40 connections open or opening, as fast as it can.

Set-ups: ``acl`` (the socket as jbcd makes it: the no-role user cannot even connect) and
``open`` (the socket made world-writable, as on a file system without ACLs: the no-role user
connects and is closed at accept). Goal: every status answered, p95 and max <= 100 ms.

Needs root (switches users). Prints one JSON object; exit 1 if a goal is missed::

    sudo .venv/bin/python hw-testbench/bench_control.py [--samples 200]
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pathlib
import shutil
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from appliance.cli.client import ControlClient
from appliance.control.socket_access import ACL_XATTR
from jbcbench.daemon import DaemonProcess
from jbcbench.localusers import ConnectionFlood, HeldConnections, shared_workdir

GOAL_MS = 100.0
TECH_GROUP = "users"
TECH_UIDS = range(60000, 60010)
FLOOD_CONNECTIONS = 40


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200,
                        help="root status requests per set-up (default 200)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(json.dumps({"error": "needs root (it switches to other users)"}))
        return 2
    tech_gid = grp.getgrnam(TECH_GROUP).gr_gid
    workdir = shared_workdir("bench-control-")
    results = {"goal_ms": GOAL_MS, "load": os.getloadavg()}
    try:
        daemon = DaemonProcess(workdir, f'[control]\ntechnician_group = "{TECH_GROUP}"\n')
        daemon.start()
        daemon.runtime_dir.chmod(0o755)
        try:
            for setup in ("acl", "open"):
                if setup == "open":
                    os.removexattr(daemon.socket_path, ACL_XATTR)
                    daemon.socket_path.chmod(0o666)
                results[setup] = measure(daemon, tech_gid, args.samples)
            results["refusals_journalled"] = sum(
                1 for e in daemon.call("events", {"subsystem": "control", "limit": 10000})
                ["events"] if e["kind"] == "access-refused")
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["ok"] = all(results[s]["answered"] == results[s]["asked"]
                        and results[s]["max_ms"] <= GOAL_MS for s in ("acl", "open"))
    print(json.dumps(results, indent=2))
    return 0 if results["ok"] else 1


def measure(daemon: DaemonProcess, tech_gid: int, samples: int) -> dict:
    held = [HeldConnections(daemon.socket_path, uid=uid, gids=[tech_gid], count=8)
            for uid in TECH_UIDS]
    for holder in held:
        holder.__enter__()
    flood = ConnectionFlood(daemon.socket_path, connections=FLOOD_CONNECTIONS).start()
    try:
        times, answered = [], 0
        for _ in range(samples):
            started = time.perf_counter()
            try:
                with ControlClient(daemon.socket_path, timeout_s=30) as client:
                    client.call("status")
                answered += 1
            except Exception:
                pass
            times.append((time.perf_counter() - started) * 1000)
    finally:
        flood.stop()
        for holder in held:
            holder.__exit__(None, None, None)
    codes = [code for holder in held for code in holder.codes()]
    return {
        "asked": samples, "answered": answered,
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(statistics.quantiles(times, n=20)[-1], 2),
        "max_ms": round(max(times), 2),
        "technician_connections_held": codes.count(None),
        "technician_connections_refused": len(codes) - codes.count(None),
    }


if __name__ == "__main__":
    sys.exit(main())
