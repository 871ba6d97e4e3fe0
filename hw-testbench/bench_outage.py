"""Benchmark: the outage demo's figures for both desk-phone profiles.

    .venv/bin/python hw-testbench/bench_outage.py [--outage blackhole] [--handsets 6]

Runs the outage scenario (hw-testbench/demo) once with the tuned and once with the factory
desk-phone profile, on the same default site, and prints one JSON object: per profile every
figure with its goal, and where the full outputs (JSON, plot, timeline) are. The timelines go
to stderr. About 12 minutes (the factory phones take their time, which is the point).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jbcbench  # noqa: F401 - this checkout's appliance package on the path
from jbcbench.demo import DEFAULT_OUT, run_bench
from jbcbench.sitelab import OUTAGE_KINDS, LabSettings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", choices=OUTAGE_KINDS, default="blackhole")
    parser.add_argument("--handsets", type=int, default=6)
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: dict = {"outage": args.outage, "handsets": args.handsets, "profiles": {}}
    ok = True
    for profile in ("tuned", "factory"):
        directory = DEFAULT_OUT / f"{stamp}-bench-{profile}"
        report, passed = run_bench(LabSettings(handsets=args.handsets, profile=profile),
                                   [args.outage], directory, stream=sys.stderr,
                                   command=f"hw-testbench/bench_outage.py ({profile})")
        ok = ok and passed
        outage = report["outages"][0] if report["outages"] else {}
        out["mode"] = report["mode"]
        out["profiles"][profile] = {
            "ok": passed, "phone_profile": report["settings"]["phone_profile"],
            "figures": outage.get("figures", {}),
            "first_trunk_call_s": outage.get("first_trunk_call_s", {}),
            "untested": outage.get("untested", []), "failures": report["failures"],
            "json": str(directory / "outage.json"), "plot": report["plot"]}
    out["ok"] = ok
    print(json.dumps(out, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
