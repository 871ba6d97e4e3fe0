"""Benchmark: in-path mode is no new single point of failure (issue 11 item 5).

For each desk-phone profile (tuned, factory), in the bench's site (network namespaces; the
WAN is fine throughout), with in-path phones (outbound proxy = the appliance; registrar and
fallback = the cloud):

1. **restart**: jbcd is SIGKILLed and started again at once (as systemd's Restart= does).
   Measured from its READY=1 (sd_notify): until it relays again (its TLS connection to the
   cloud up and announced, the mirrored bindings back from the database), and until a call
   from one phone to another, placed as soon as it relays, is answered through the
   appliance and the cloud at its first attempt (the cloud reaches the callee over the
   Path it registered before the restart). Goal: relaying again within 2 s of READY.
2. **SIGKILL, staying down**: jbcd is SIGKILLed and not restarted. A call that was up through
   the cloud (direct media) is watched; each phone notices the dead outbound proxy at its
   next registration refresh (or call), fails over to the cloud directly, and calls go
   through the cloud. Measured: each phone's time to move, and the time until a call
   between two phones is answered through the cloud directly. Then jbcd comes back and the
   phones return to it (their next probe of the primary route).

Prints one JSON object (with the load average: the figures are noisy on a shared machine).

    python hw-testbench/bench_inpath_resilience.py [--profile tuned|factory ...]

The factory profile takes minutes per step (phones notice at their next refresh: the cloud
grants 300 s, refreshed 60 s early, then 3 attempts of 32 s, 30 s apart).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from jbcbench.sitelab import LabSettings, SiteLab
from jbcbench.timeline import PhoneBoard, Timeline
from jbcbench.topology import can_build_namespaces

GOAL_RELAY_AFTER_READY_S = 2.0


def log(text: str) -> None:
    print(f"bench_inpath_resilience: {text}", file=sys.stderr, flush=True)


class NotifyListener:
    """The sd_notify socket jbcd reports READY=1 on (NOTIFY_SOCKET)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        self.sock.setblocking(True)

    def ready(self, timeout_s: float) -> float:
        self.sock.settimeout(timeout_s)
        while True:
            data = self.sock.recv(4096).decode(errors="replace")
            if "READY=1" in data.splitlines():
                return time.time()


def restart_trial(lab: SiteLab, board: PhoneBoard, notify: NotifyListener) -> dict:
    daemon = lab.daemon
    notify.drain()
    killed = time.time()
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    daemon.stop()
    daemon.start(wait=False)
    ready = notify.ready(20.0)
    a, b = lab.settings.extensions[:2]
    relaying = _wait(lambda: _relaying(lab), 20.0)
    lab.handsets[a].send("call", uri=f"sip:{b}@cloud.test")
    offered = board.wait(lambda: board.first(b, ready, lambda e: e["event"] == "incoming"),
                         20.0)
    answered = None
    if offered:
        lab.handsets[b].send("answer")
        answered = board.wait(lambda: board.first(a, ready, lambda e: e["event"] == "call" and
                                                  e["state"] == "CONFIRMED"), 10.0)
    _hang_up(lab, board, a, b)
    phones = lab.daemon.call("sip.phones")["phones"]
    return {
        "down_s": round(ready - killed, 3),
        "relaying_after_ready_s": None if relaying is None else round(relaying - ready, 3),
        "call_through_the_cloud_answered_after_ready_s":
            None if not answered else round(answered["t"] - ready, 3),
        "first_attempt": bool(answered),
        "mirrored_bindings_after_restart": sum(1 for p in phones if p["origin"] == "cloud"),
        "goal_met": relaying is not None and relaying - ready <= GOAL_RELAY_AFTER_READY_S,
    }


def kill_trial(lab: SiteLab, board: PhoneBoard, notify: NotifyListener) -> dict:
    extensions = lab.settings.extensions
    profile = lab.settings.phone_profile
    a, b, c, d = extensions[:4]
    # a call up through the cloud when jbcd dies
    lab.handsets[c].send("call", uri=f"sip:{d}@cloud.test")
    board.event(d, time.time() - 5, lambda e: e["event"] == "incoming", 15, "incoming")
    lab.handsets[d].send("answer")
    board.event(c, time.time() - 5, lambda e: e["event"] == "call" and
                e["state"] == "CONFIRMED", 10, "answered")
    killed = time.time()
    lab.daemon.proc.send_signal(signal.SIGKILL)
    lab.daemon.proc.wait()
    log(f"jbcd SIGKILLed; the {profile.name} phones notice at their next refresh")
    bound = profile.failover_bound_s(lab.settings.cloud_granted_s) + 30
    moved = board.wait(lambda: all(board.first(ext, killed, lambda e: e["event"] == "moved"
                                               and e["server"] == "backup")
                                   for ext in extensions), bound)
    moves = {}
    for ext in extensions:
        event = board.first(ext, killed, lambda e: e["event"] == "moved"
                            and e["server"] == "backup")
        moves[ext] = None if event is None else round(event["t"] - killed, 2)
    survived = board.first(c, killed, lambda e: e["event"] == "call"
                           and e["state"] == "DISCONNECTED") is None
    _hang_up(lab, board, c, d)
    answered = None
    if moved:
        since = time.time()
        lab.handsets[a].send("call", uri=f"sip:{b}@cloud.test")
        if board.wait(lambda: board.first(b, since, lambda e: e["event"] == "incoming"), 20):
            lab.handsets[b].send("answer")
            answered = board.wait(lambda: board.first(a, since, lambda e: e["event"] == "call"
                                                      and e["state"] == "CONFIRMED"), 10)
        _hang_up(lab, board, a, b)
    # back: jbcd restarts; the phones return at their next probe of the primary route
    notify.drain()
    lab.daemon.stop()
    lab.daemon.start(wait=False)
    ready = notify.ready(20.0)
    back = board.wait(lambda: all(board.first(ext, ready, lambda e: e["event"] == "moved"
                                              and e["server"] == "primary")
                                  for ext in extensions), profile.primary_probe_s + 60)
    returns = [board.first(ext, ready, lambda e: e["event"] == "moved" and
                           e["server"] == "primary") for ext in extensions]
    return {
        "phones_moved_to_the_cloud_after_s": moves,
        "all_moved_after_s": max(v for v in moves.values() if v is not None)
        if all(v is not None for v in moves.values()) else None,
        "call_through_the_cloud_directly_answered_after_s":
            None if not answered else round(answered["t"] - killed, 2),
        "call_up_at_the_kill_stayed_up_until_hung_up": survived,
        "phones_back_through_the_appliance_after_ready_s":
            round(max(e["t"] for e in returns) - ready, 2) if back else None,
    }


def _relaying(lab: SiteLab) -> float | None:
    try:
        listing = lab.daemon.call("sip.phones")
    except (OSError, ConnectionError):
        return None
    return time.time() if listing.get("relaying") else None


def _wait(probe, timeout_s: float) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.02)
    return None


def _hang_up(lab: SiteLab, board: PhoneBoard, *who: str) -> None:
    for ext in who:
        with board.lock:
            board.expect_end.add(ext)
        lab.handsets[ext].send("hangup")
    board.wait(lambda: not any(board.in_call[ext] for ext in who), 10)


def run_profile(profile: str, workdir: Path) -> dict:
    timeline = Timeline(time.time(), sys.stderr)
    board = PhoneBoard(timeline)
    settings = LabSettings(mode="in-path", handsets=4, profile=profile, modems=(),
                           gateway=False)
    notify = NotifyListener(workdir / "notify.sock")
    lab = SiteLab(workdir / "site", settings, on_event=board.on_event)
    try:
        lab.start(progress=log)
        lab.daemon.env["NOTIFY_SOCKET"] = str(notify.path)
        lab.daemon.stop()
        lab.daemon.start(wait=False)
        notify.ready(20.0)
        lab.wait_for(lambda: lab.mirrored() >= set(settings.extensions), 60,
                     "every phone mirrored again")
        restart = restart_trial(lab, board, notify)
        log(f"{profile}: restart: {restart}")
        lab.wait_for(lambda: lab.mirrored() >= set(settings.extensions), 90,
                     "every phone mirrored again")
        killed = kill_trial(lab, board, notify)
        log(f"{profile}: SIGKILL: {killed}")
        return {"profile": lab.settings.phone_profile.to_json(), "restart": restart,
                "sigkill_staying_down": killed}
    finally:
        lab.close()
        notify.sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="append", choices=("tuned", "factory"))
    args = parser.parse_args(argv)
    ok, why = can_build_namespaces()
    if not ok:
        print(json.dumps({"error": why}))
        return 2
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    results = {}
    for profile in args.profile or ["tuned", "factory"]:
        workdir = Path(tempfile.mkdtemp(prefix="bench-inpath-resilience-"))
        try:
            results[profile] = run_profile(profile, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({
        "benchmark": "in-path resilience",
        "command": "python hw-testbench/bench_inpath_resilience.py "
                   + " ".join(argv if argv is not None else sys.argv[1:]),
        "profiles": results,
        "goals": {"relaying_within_2s_of_ready": all(
            r["restart"]["goal_met"] for r in results.values())},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(), "load_avg_at_start": load_at_start,
                    "load_avg_at_end": [round(v, 2) for v in os.getloadavg()]},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
