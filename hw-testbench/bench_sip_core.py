"""Benchmark: jbcd's REGISTER path in one process, without sockets or an event loop.

The SIP core (appliance.sip.core.SipCore, with jbcd's default [sip] settings, serving an
outage) and its store (appliance.sip.store.SipStore on a real SQLite file) are driven the way
the service drives them: datagrams in batches of 64 (the UDP endpoint's batch), each batch
drained (transmits, notices, changes, the next deadline), and the changed bindings written in
one transaction per flush. N handsets from 254 source addresses each send REGISTER, get 401,
answer the digest (MD5, qop=auth) and get 200: the same exchange as bench_kamailio.py's
storm. Only the appliance's side is timed: all first REGISTERs go in (challenges out), the
handsets' answers are computed untimed, then all second REGISTERs go in (registrations out),
then the flushes. CPU time (``time.process_time``) per registration, best and median of the
rounds, so that a change to the hot path can be measured on a busy machine.

--instructions counts instead the CPU instructions the appliance's side executes per
registration (valgrind's callgrind, collecting only while the core and the store work; the
same count on a busy machine as on a quiet one, so it compares changes exactly). It needs
valgrind and gcc (apt-get install valgrind gcc); it runs one round, about 50 times slower.

    python hw-testbench/bench_sip_core.py [--handsets 2000] [--rounds 5] [--flush-every 500]
        [--paths fast full] [--profile PATH] [--instructions]

By default each round runs the REGISTER fast path (appliance/sip/fastregister.py) and the
full path (CoreSettings(register_fast_path=False)) one after the other.

--profile writes a cProfile of one more round to PATH.prof and the top functions to
PATH.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import json
import os
import pathlib
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time

from appliance.directory.model import parse_directory
from appliance.sip.core import CoreSettings, SipCore
from appliance.sip.flow import Flow
from appliance.sip.store import SipStore
from appliance.store.database import Database
from jbcbench import regstorm, sipua

BATCH = 64
"""Datagrams per wake-up (appliance.sip.transport.UdpEndpoint's batch)."""
START = 1000.0
TOGGLE_SOURCE = ("#include <valgrind/callgrind.h>\n"
                 "void jbc_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }\n")


class Timer:
    """The CPU time of the timed sections; under callgrind (--instructions) it also switches
    instruction counting on and off around them."""

    def __init__(self, toggle_library: str | None = None) -> None:
        self.toggle = ctypes.CDLL(toggle_library).jbc_toggle if toggle_library else None

    def __call__(self) -> float:
        if self.toggle is not None:
            self.toggle()
        return time.process_time()


def count_instructions(args: argparse.Namespace) -> dict:
    """Run one round of this benchmark under callgrind; instructions per registration."""
    with tempfile.TemporaryDirectory(prefix="jbc-bench-sip-core-cg-") as tmp:
        library = pathlib.Path(tmp) / "toggle.so"
        source = pathlib.Path(tmp) / "toggle.c"
        source.write_text(TOGGLE_SOURCE)
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source)],
                       check=True)
        out = {}
        for path in args.paths:
            report = pathlib.Path(tmp) / f"callgrind.{path}"
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--collect-atstart=no",
                 f"--callgrind-out-file={report}", sys.executable, __file__,
                 "--handsets", str(args.handsets), "--sources", str(args.sources),
                 "--rounds", "1", "--paths", path, "--flush-every", str(args.flush_every)],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "JBC_BENCH_TOGGLE": str(library), "PYTHONHASHSEED": "0"})
            totals = [line for line in report.read_text().splitlines()
                      if line.startswith(("summary:", "totals:"))]
            out[path] = {"instructions_per_registration":
                         round(int(totals[-1].split()[1]) / args.handsets)}
        return out


class Handsets:
    """N handsets' first REGISTERs, their flows and (after the challenges) their answers."""

    def __init__(self, count: int, sources: int) -> None:
        self.items = []
        for index in range(count):
            host = regstorm.spread_address(index, sources)
            port = 20000 + index // sources
            user = regstorm.user_of(index)
            call_id = f"core-{index}"
            first = sipua.register(user, "127.0.0.1", local=(host, port), call_id=call_id,
                                   cseq=1, expires=120)
            self.items.append((index, user, Flow("udp", host, port), call_id, first))

    def answers(self, challenges: dict[int, bytes]) -> list[tuple[bytes, Flow]]:
        out = []
        for index, user, flow, call_id, _ in self.items:
            challenge = sipua.parse_message(challenges[index])
            authorization = sipua.digest_answer(
                challenge.header("www-authenticate"), method="REGISTER", uri="sip:127.0.0.1",
                username=user, password=regstorm.password_of(index), cnonce=f"{index:08x}")
            out.append((sipua.register(user, "127.0.0.1", local=(flow.host, flow.port),
                                       call_id=call_id, cseq=2, expires=120,
                                       authorization=authorization), flow))
        return out


def drive(core: SipCore, datagrams: list[tuple[bytes, Flow]], now: float,
          changed: set[str]) -> list[bytes]:
    """Feed datagrams in batches and drain the core after each batch, as the service does."""
    sent: list[bytes] = []
    receive = core.receive_datagram
    for start in range(0, len(datagrams), BATCH):
        for data, flow in datagrams[start:start + BATCH]:
            receive(data, flow, now)
        for item in core.take_transmits():
            sent.append(item.data)
        core.take_notices()
        changed |= core.take_changes().aors
        core.next_deadline()
    return sent


def flush(core: SipCore, store: SipStore, aors: list[str], now: float, every: int) -> None:
    wall = time.time()
    for start in range(0, len(aors), every):
        with store.transaction():
            store.replace_all_bindings({aor: core.registrations.bindings_of(aor)
                                        for aor in aors[start:start + every]}, now, wall)


def one_round(handsets: Handsets, directory, workdir: pathlib.Path, every: int, *,
              fast: bool = True, profiler: cProfile.Profile | None = None,
              clock: Timer | None = None) -> dict:
    clock = clock or Timer()
    database = Database.open_in(workdir)
    store = SipStore(database)
    core = SipCore(CoreSettings(ports={"udp": 5060}, register_fast_path=fast),
                   directory=directory, serving=True, now=START)
    now = START + 1.0
    changed: set[str] = set()
    first = [(data, flow) for _, _, flow, _, data in handsets.items]
    if profiler:
        profiler.enable()
    t0 = clock()
    challenges = drive(core, first, now, changed)
    t1 = clock()
    if profiler:
        profiler.disable()
    by_index = {}
    for (index, *_), data in zip(handsets.items, challenges, strict=True):
        assert data.startswith(b"SIP/2.0 401 "), data[:40]
        by_index[index] = data
    second = handsets.answers(by_index)
    if profiler:
        profiler.enable()
    t2 = clock()
    registered = drive(core, second, now + 0.05, changed)
    t3 = time.process_time()
    flush(core, store, sorted(changed), now + 0.2, every)
    t4 = clock()
    if profiler:
        profiler.disable()
    assert all(data.startswith(b"SIP/2.0 200 ") for data in registered), \
        [d[:40] for d in registered if not d.startswith(b"SIP/2.0 200 ")][:3]
    assert len(registered) == len(first)
    rows = database.connection.execute("SELECT count(*) FROM sip_bindings").fetchone()[0]
    assert rows == len(first), rows
    database.close()
    n = len(first)
    return {"challenge_us": (t1 - t0) / n * 1e6, "register_us": (t3 - t2) / n * 1e6,
            "flush_us": (t4 - t3) / n * 1e6, "total_us": (t1 - t0 + t4 - t2) / n * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--handsets", type=int, default=2000)
    parser.add_argument("--sources", type=int, default=254)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flush-every", type=int, default=500,
                        help="bindings per flush transaction (the service flushes what "
                        "changed in 0.2 s)")
    parser.add_argument("--paths", nargs="+", choices=("fast", "full"), default=["fast", "full"],
                        help="the REGISTER fast path (the default), the full path, or both "
                        "in alternating rounds")
    parser.add_argument("--profile", type=pathlib.Path,
                        help="profile one more round of the first of --paths")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per registration under callgrind instead")
    args = parser.parse_args()
    if args.instructions:
        result = {"benchmark": "SIP core REGISTER path, in process (instructions per "
                  "registration, callgrind)", "handsets": args.handsets,
                  "sources": args.sources, "python": platform.python_version(),
                  **count_instructions(args)}
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    clock = Timer(os.environ.get("JBC_BENCH_TOGGLE"))
    site = regstorm.site_of(args.handsets)
    directory = parse_directory(site, source="bench")
    handsets = Handsets(args.handsets, args.sources)
    rounds: dict[str, list[dict]] = {path: [] for path in args.paths}
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="jbc-bench-sip-core-") as tmp:
        for index in range(args.rounds):
            for path in args.paths:
                rounds[path].append(one_round(handsets, directory,
                                              pathlib.Path(tmp) / f"{path}-{index}",
                                              args.flush_every, fast=path == "fast",
                                              clock=clock))
        if args.profile is not None:
            profiler = cProfile.Profile()
            one_round(handsets, directory, pathlib.Path(tmp) / "profiled", args.flush_every,
                      fast=args.paths[0] == "fast", profiler=profiler)
            args.profile.parent.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(str(args.profile.with_suffix(".prof")))
            with args.profile.with_suffix(".txt").open("w") as out:
                pstats.Stats(str(args.profile.with_suffix(".prof")), stream=out) \
                    .strip_dirs().sort_stats("tottime").print_stats(40)

    def figures(path: str) -> dict:
        out = {}
        for key in ("challenge_us", "register_us", "flush_us", "total_us"):
            values = [r[key] for r in rounds[path]]
            out[key] = {"best": round(min(values), 1),
                        "median": round(statistics.median(values), 1)}
        return out

    result = {"benchmark": "SIP core REGISTER path, in process (us of CPU per registration)",
              "handsets": args.handsets, "sources": args.sources, "rounds": args.rounds,
              "python": platform.python_version(),
              "uptime_before": uptime,
              **{path: figures(path) for path in args.paths},
              "uptime_after": subprocess.run(["uptime"], capture_output=True,
                                             text=True).stdout.strip()}
    if args.profile is not None:
        result["profile"] = str(args.profile.with_suffix(".txt"))
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
