"""Benchmark: a registration storm against the real jbcd, and INVITE -> 180 relay latency.

For each N (default 500 and 2000) a fresh jbcd is started with a directory of N devices and
sip.assume_wan_state = "outage". N handsets, each on its own loopback address (127.1.x.y,
as every phone on a LAN has its own), each do REGISTER -> 401 -> REGISTER with digest ->
200 over UDP, all starting at once, retransmitting on RFC 3261 Timer E if an answer is
lost. Reported per N: total wall time (first REGISTER sent to last 200 received),
registrations per second, p50/p99 latency of each handset's whole exchange, and jbcd's CPU
seconds per 1000 registrations (from /proc, so the handsets' own CPU is not counted).

Then, on the last daemon, one registered callee answers every INVITE with 180 then 486, and a
caller places calls one after another with digest credentials; the time from sending the
INVITE to receiving the relayed 180 is the proxy's relay latency (p50/p99).

Goals (issue 4): 500 handsets in <= 0.5 s, 2000 in <= 2 s on a 2-core machine.

    python hw-testbench/bench_sip.py [--sizes 500 2000] [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import sys
import tempfile
import time

from jbcbench import regstorm
from jbcbench.daemon import DaemonProcess
from jbcbench.regstorm import site_of
from jbcbench.sipcalls import invite_to_180
from jbcbench.sipdaemon import sip_daemon, sip_ports

GOALS_S = {500: 0.5, 2000: 2.0}
REALM = "jbc"


def start_daemon(workdir: pathlib.Path, count: int) -> tuple[DaemonProcess, int]:
    site = site_of(count)
    # One bench handset places hundreds of calls back to back for the relay-latency figure;
    # a real phone never does, so the per-source rate limit is lifted for the bench.
    daemon = sip_daemon(workdir, site, transports=["udp"], realm=REALM,
                        rate_per_source=10000.0, burst_per_source=10000.0).start()
    return daemon, sip_ports(daemon)["udp"]


def storm(port: int, count: int, daemon: DaemonProcess) -> dict:
    result = regstorm.storm(("127.0.0.1", port), count, daemon.proc.pid, realm=REALM)
    wall = result["wall_s"]
    result["goal_s"] = GOALS_S.get(count)
    result["goal_met"] = wall <= GOALS_S[count] and result["registered"] == count \
        if count in GOALS_S else None
    return result





def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.sizes) + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    results: dict = {"benchmark": "sip registration storm and INVITE relay",
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "kernel": platform.release()}}
    with tempfile.TemporaryDirectory(prefix="jbc-bench-sip-") as tmp:
        for size in args.sizes:
            workdir = pathlib.Path(tmp) / f"n{size}"
            workdir.mkdir()
            daemon, port = start_daemon(workdir, size)
            try:
                time.sleep(0.3)  # let start-up work settle before timing
                results[f"storm_{size}"] = storm(port, size, daemon)
                if size == args.sizes[-1] and args.calls:
                    results["invite_to_180"] = invite_to_180(
                        ("127.0.0.1", port), size, args.calls, domain="127.0.0.1",
                        realm=REALM, address_base="127.2.0")
            finally:
                daemon.stop()
    results["goals_met"] = all(results[f"storm_{n}"]["goal_met"] for n in args.sizes
                               if n in GOALS_S)
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
