"""WAN monitor benchmark: detection and recovery latency, and false outages under loss.

Runs the real jbcd with its default [wan] timing in the namespace testbed (see
``jbcbench/wanlab.py``) and measures, over many trials:

* carrier loss -> outage (the WAN router's end of the cable goes down), and recovery after
  it: the cable back after a few seconds -> recovering, and -> online (= hold-down + rise),
* a silent blackhole (nftables drops everything, the link stays up) -> outage,
* recovery after the blackhole: -> recovering, and -> online (= hold-down + rise time),
* a flapping WAN (10 s blackhole, 10 s clear, six times): hand-backs into a dead cloud (the
  WAN monitor saying online or degraded while the blackhole is on) that must not happen,
* a soak under 20 % random loss in each direction: outages that should not happen.

Every trial starts from a freshly started jbcd with an empty state dir (a first outage, no
flap damping carried over), waits until it is online, then injects the fault at a random
phase of the probe rounds. Latency is measured from just before the fault command to the
journal entry of the transition (both wall-clock on this machine).

Prints one JSON object on stdout; progress goes to stderr. Needs root (namespaces).

    python hw-testbench/bench_wan.py                  # 20 trials each, 10-minute soak
    python hw-testbench/bench_wan.py --trials 5 --soak-s 60 --flap-cycles 3   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jbcbench.topology import can_build_namespaces
from jbcbench.wanlab import WanLab

GOALS = {"carrier_loss_s": 1.0, "blackhole_p95_s": 3.0, "recovery_minus_hold_down_s": 1.0,
         "false_outages": 0, "handbacks_into_blackhole": 0}


def log(message: str) -> None:
    print(f"bench_wan: {message}", file=sys.stderr, flush=True)


def stats(samples: list[float]) -> dict:
    values = np.array(samples, dtype=float)
    return {"trials": len(samples), "p50_s": round(float(np.percentile(values, 50)), 4),
            "p95_s": round(float(np.percentile(values, 95)), 4),
            "min_s": round(float(values.min()), 4), "max_s": round(float(values.max()), 4),
            "samples_s": [round(v, 4) for v in samples]}


def fresh_daemon(lab: WanLab) -> None:
    """Restart jbcd with an empty state dir and wait until it is online."""
    lab.daemon.stop()
    shutil.rmtree(lab.daemon.state_dir, ignore_errors=True)
    lab.daemon.start()
    lab.wait_for_state("online", 20.0)


def random_phase(interval_s: float) -> None:
    time.sleep(random.uniform(0.0, interval_s))


def carrier_trials(lab: WanLab, trials: int, interval_s: float, hold_down_s: float
                   ) -> tuple[list[float], list[float], list[float]]:
    detect, to_recovering, to_online = [], [], []
    for trial in range(trials):
        fresh_daemon(lab)
        time.sleep(1.0)
        random_phase(interval_s)
        cut = lab.at(lab.bed.carrier_down)
        outage = lab.wait_for_state("outage", 10.0, since=cut)
        detect.append(outage["time"] - cut)
        # Long enough for the probes sent meanwhile to leave the gateway's neighbour entry
        # unresolved, as a real cable pull does.
        time.sleep(3.0 + random.uniform(0.0, interval_s))
        back = lab.at(lab.bed.carrier_up)
        recovering = lab.wait_for_state("recovering", 10.0, since=back)
        online = lab.wait_for_state("online", hold_down_s + 10.0, since=back)
        to_recovering.append(recovering["time"] - back)
        to_online.append(online["time"] - back)
        log(f"carrier loss trial {trial + 1}/{trials}: outage after {detect[-1]:.3f} s "
            f"({outage['details']['cause']}); back: recovering after {to_recovering[-1]:.3f} "
            f"s, online after {to_online[-1]:.3f} s")
    return detect, to_recovering, to_online


def flap_trial(lab: WanLab, cycles: int, down_s: float, up_s: float) -> dict:
    """The WAN blackholed for ``down_s``, clear for ``up_s``, ``cycles`` times. A hand-back
    (a transition to online or degraded) while the blackhole is on is a hand-back into a
    dead cloud."""
    fresh_daemon(lab)
    time.sleep(1.0)
    start = time.time()
    blackholes: list[tuple[float, float]] = []
    for cycle in range(cycles):
        began = lab.at(lab.impair.drop_all)
        time.sleep(down_s)
        ended = lab.at(lambda: lab.impair.clear("blackhole"))
        blackholes.append((began, ended))
        time.sleep(up_s)
        log(f"flap cycle {cycle + 1}/{cycles}: WAN is {lab.status()['state']}")
    transitions = lab.transitions(start)
    into_dead = [e for e in transitions if e["details"]["state"] in ("online", "degraded")
                 and any(began <= e["time"] <= ended for began, ended in blackholes)]
    return {"cycles": cycles, "blackhole_s": down_s, "clear_s": up_s,
            "handbacks_into_blackhole": len(into_dead),
            "transitions": [{"at_s": round(e["time"] - start, 2), "to": e["details"]["state"],
                             "cause": e["details"]["cause"]} for e in transitions],
            "blackholes_at_s": [[round(b - start, 2), round(e - start, 2)]
                                for b, e in blackholes]}


def blackhole_trials(lab: WanLab, trials: int, interval_s: float,
                     hold_down_s: float) -> tuple[list[float], list[float], list[float]]:
    detect, to_recovering, to_online = [], [], []
    for trial in range(trials):
        fresh_daemon(lab)
        time.sleep(1.0)
        random_phase(interval_s)
        start = lab.at(lab.impair.drop_all)
        outage = lab.wait_for_state("outage", 10.0, since=start)
        detect.append(outage["time"] - start)
        time.sleep(2.0 + random.uniform(0.0, interval_s))
        back = lab.at(lambda: lab.impair.clear("blackhole"))
        recovering = lab.wait_for_state("recovering", 10.0, since=back)
        online = lab.wait_for_state("online", hold_down_s + 10.0, since=back)
        to_recovering.append(recovering["time"] - back)
        to_online.append(online["time"] - back)
        log(f"blackhole trial {trial + 1}/{trials}: outage after {detect[-1]:.3f} s; back: "
            f"recovering after {to_recovering[-1]:.3f} s, online after {to_online[-1]:.3f} s")
    return detect, to_recovering, to_online


def soak(lab: WanLab, seconds: float, loss_pct: float) -> dict:
    fresh_daemon(lab)
    start = lab.at(lambda: lab.impair.random_loss(loss_pct))
    log(f"soak: {loss_pct:g} % loss each way for {seconds:g} s")
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(30.0, max(0.0, end - time.monotonic())))
        status = lab.status()
        samples.append({t["name"]: t["loss_pct"] for t in status["targets"]})
        log(f"soak: {seconds - (end - time.monotonic()):.0f} s, state {status['state']}")
    stop = time.time()
    transitions = lab.transitions(start)
    lab.impair.clear("loss")
    states = [e["details"]["state"] for e in transitions]
    # time spent in each state during the soak
    spent: dict[str, float] = {}
    current, since = "online", start
    for entry in transitions:
        spent[current] = spent.get(current, 0.0) + entry["time"] - since
        current, since = entry["details"]["state"], entry["time"]
    spent[current] = spent.get(current, 0.0) + stop - since
    names = samples[-1].keys() if samples else []
    observed = {name: round(float(np.mean([s[name] for s in samples
                                            if s.get(name) is not None])), 1)
                for name in names}
    return {"duration_s": round(stop - start, 1), "loss_pct_each_way": loss_pct,
            "false_outages": states.count("outage"), "transitions": [
                {"at_s": round(e["time"] - start, 2), "to": e["details"]["state"],
                 "cause": e["details"]["cause"]} for e in transitions],
            "time_in_state_s": {k: round(v, 1) for k, v in spent.items()},
            "probe_loss_pct_per_target_last_minute_avg": observed}


def _stop(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per fault (default 20)")
    parser.add_argument("--soak-s", type=float, default=600.0,
                        help="length of the 20 %% loss soak in seconds (default 600)")
    parser.add_argument("--loss-pct", type=float, default=20.0,
                        help="random loss in each direction during the soak (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for the phases")
    parser.add_argument("--flap-cycles", type=int, default=6,
                        help="10 s blackhole / 10 s clear cycles of the flap trial (default 6; "
                        "0 skips it)")
    args = parser.parse_args(argv)
    ok, why = can_build_namespaces()
    if not ok:
        print(json.dumps({"error": why}))
        return 2
    random.seed(args.seed)
    # SIGTERM (and SIGINT, even when a shell started us in the background with it ignored)
    # unwind through the 'with' blocks, so namespaces and daemons are always removed.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    # jbcbench has put this checkout on sys.path; the appliance package is importable now.
    from appliance.wan.config import WanConfig
    from appliance.wan.decision import DecisionParams

    defaults = WanConfig()
    params = DecisionParams.from_config(defaults)
    started = time.time()
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-wan-") as tmp, WanLab(Path(tmp)) as lab:
        names = ", ".join(ns.name for ns in lab.bed.namespaces.values())
        log(f"testbed up: namespaces {names}")
        carrier, carrier_recovering, carrier_online = carrier_trials(
            lab, args.trials, params.interval_s, params.hold_down_s)
        detect, to_recovering, to_online = blackhole_trials(
            lab, args.trials, params.interval_s, params.hold_down_s)
        flaps = flap_trial(lab, args.flap_cycles, 10.0, 10.0) if args.flap_cycles else None
        soaked = soak(lab, args.soak_s, args.loss_pct)
    recovery_extra = [online - params.hold_down_s for online in to_online]
    carrier_extra = [online - params.hold_down_s for online in carrier_online]
    result = {
        "benchmark": "wan",
        "command": "python hw-testbench/bench_wan.py " + " ".join(argv or sys.argv[1:]),
        "settings": {
            "defaults": True, "interval_s": params.interval_s,
            "round_timeout_s": params.round_timeout_s, "fall_rounds": params.fall_rounds,
            "rise_rounds": params.rise_rounds, "hold_down_s": params.hold_down_s,
            "detection_bound_s": params.detection_bound_s,
            "targets": "2 regions x (ICMP, SIP/UDP by name, SIP/TLS, HTTPS), 2 ICMP anchors, "
                       "1 resolver"},
        "carrier_loss_detection": stats(carrier),
        "carrier_loss_recovery": {"to_recovering": stats(carrier_recovering),
                                  "to_online": stats(carrier_online),
                                  "to_online_minus_hold_down": stats(carrier_extra)},
        "blackhole_detection": stats(detect),
        "recovery": {"to_recovering": stats(to_recovering), "to_online": stats(to_online),
                     "to_online_minus_hold_down": stats(recovery_extra)},
        "flaps": flaps,
        "soak": soaked,
        "goals": {
            "carrier_loss_max_le_1s": max(carrier) <= GOALS["carrier_loss_s"],
            "blackhole_p95_le_3s": float(np.percentile(detect, 95)) <= GOALS["blackhole_p95_s"],
            "recovery_le_hold_down_plus_1s": max(recovery_extra) <=
            GOALS["recovery_minus_hold_down_s"],
            "carrier_recovery_le_hold_down_plus_1s": max(carrier_extra) <=
            GOALS["recovery_minus_hold_down_s"],
            "no_handback_into_blackhole": flaps is None or
            flaps["handbacks_into_blackhole"] == GOALS["handbacks_into_blackhole"],
            "false_outages_0": soaked["false_outages"] == GOALS["false_outages"],
        },
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(),
                    "load_avg_at_start": load_at_start,
                    "load_avg_at_end": [round(v, 2) for v in os.getloadavg()]},
        "elapsed_s": round(time.time() - started, 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
