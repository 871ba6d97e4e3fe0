"""Benchmark: the outage demo's figures for both desk-phone profiles.

    .venv/bin/python hw-testbench/bench_outage.py [--outage blackhole] [--handsets 6]
    .venv/bin/python hw-testbench/bench_outage.py --mode both --outage all    # side by side

Runs the outage scenario (hw-testbench/demo) once with the tuned and once with the factory
desk-phone profile, on the same default site, and prints one JSON object: per profile every
figure with its goal, and where the full outputs (JSON, plot, timeline) are. The timelines go
to stderr. About 12 minutes for one blackhole (the factory phones take their time, which is
the point).

``--mode both`` puts a group of backup-registrar phones and a group of in-path phones on the
same appliance through the same outages: the JSON then has a ``side_by_side`` table per
profile (outage kind x figure x mode), the comparison issue 11 asks for. ``--outage all``
runs the four outage kinds back to back (about 40 minutes with both profiles).
``--fast-fail`` turns sip.fast_fail on; ``--phone-transport tcp`` puts the phones on TCP (a
refused TCP connection fails a phone's request at once; pjsua ignores ICMP errors on UDP).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jbcbench  # noqa: F401 - this checkout's appliance package on the path
from jbcbench.demo import DEFAULT_OUT, run_bench
from jbcbench.sitelab import MODE_CHOICES, OUTAGE_KINDS, LabSettings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", choices=(*OUTAGE_KINDS, "all"), default="blackhole")
    parser.add_argument("--handsets", type=int, default=6)
    parser.add_argument("--mode", choices=MODE_CHOICES, default="backup-registrar")
    parser.add_argument("--profile", action="append", choices=("tuned", "factory"))
    parser.add_argument("--fast-fail", action="store_true")
    parser.add_argument("--phone-transport", choices=("udp", "tcp"), default="udp")
    args = parser.parse_args()
    kinds = list(OUTAGE_KINDS) if args.outage == "all" else [args.outage]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    command = "python hw-testbench/bench_outage.py " + " ".join(sys.argv[1:])
    out: dict = {"outage": args.outage, "handsets": args.handsets, "mode": args.mode,
                 "fast_fail": args.fast_fail, "phone_transport": args.phone_transport,
                 "command": command,
                 "load_avg_at_start": [round(v, 2) for v in os.getloadavg()], "profiles": {}}
    ok = True
    for profile in args.profile or ["tuned", "factory"]:
        directory = DEFAULT_OUT / f"{stamp}-bench-{profile}"
        settings = LabSettings(handsets=args.handsets, profile=profile, mode=args.mode,
                               fast_fail=args.fast_fail,
                               phone_transport=args.phone_transport)
        report, passed = run_bench(settings, kinds, directory, stream=sys.stderr,
                                   command=f"{command} ({profile})")
        ok = ok and passed
        out["site"] = report["mode"]
        out["profiles"][profile] = {
            "ok": passed, "phone_profile": report["settings"]["phone_profile"],
            "outages": [{key: outage.get(key) for key in
                         ("kind", "mode", "figures", "first_trunk_call_s", "untested")}
                        for outage in report["outages"]],
            "side_by_side": report.get("side_by_side"),
            "failures": report["failures"],
            "json": str(directory / "outage.json"), "plot": report["plot"]}
    out["ok"] = ok
    out["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
