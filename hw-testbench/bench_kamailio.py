"""Benchmark: jbcd's registrar side by side with Kamailio's, in one run on one machine.

Every registrar gets the same registration storm (jbcbench/regstorm.py): N handsets spread
over 254 loopback source addresses do REGISTER -> 401 -> REGISTER with digest (MD5,
qop=auth) -> 200 over UDP, at most C exchanges in flight (like SIPp's -l), retransmitting on
Timer E. jbcd runs with its default [sip] settings (UDP only, outage assumed). Kamailio 5.6
runs hw-testbench/kamailio/registrar.cfg (two UDP workers, loopback only) in two profiles:

* ``duties``: Kamailio does what jbcd does for each REGISTER, with its own modules: flood
  limit, sanity checks, retransmissions absorbed, HA1 held in memory (loaded from SQLite),
  nonce-count replay protection, To user checked, bindings written behind to SQLite (WAL).
  This is the fair comparison; the goal is measured against it.
* ``memory``: Kamailio at its leanest (bindings in memory only, no replay check, no flood
  limit, passwords computed from the user name): what earlier runs compared against.

Each round starts every registrar afresh, waits until its start-up work is done (its CPU
idle), and storms them one after the other, rotating the order, so all see the same load;
the figures are the medians over the rounds. A registrar that writes behind is timed until
every binding is on disk (``durable_s``) and its CPU is read then, so its writes are charged
to it. CPU is the scheduler's account in /proc (ns):
jbcd's process, Kamailio's main process and its workers (``cpu_s``); the 10 ms-tick figure
from /proc/PID/stat is kept as ``cpu_ticks_s``. ``runqueue_wait_s`` is how long the same
processes waited, runnable, for a CPU during the storm (schedstat's second field): on a busy
machine it is the part of the wall time that belongs to other work (jbcd is one process, so
its wall time is about ``cpu_s + runqueue_wait_s``; Kamailio's workers run side by side).

Both databases live in ``--state-dir``, /dev/shm by default. jbcd's SQLite runs WAL with
synchronous=NORMAL (no sync per commit); Kamailio 5.6's db_sqlite can set the journal mode
(WAL here) but not ``synchronous``, so on a disk it would sync once per binding
(synchronous=FULL), a stronger promise than jbcd's that costs it about 0.25 CPU-s per 2000
bindings in kernel time on this machine. On tmpfs a sync costs nothing, so both pay for the
SQLite work of their own write strategy and neither for the disk.

Goal (issue 16): jbcd <= 1.2x Kamailio's wall time and <= 1.5x its CPU (fair profile).

    python hw-testbench/bench_kamailio.py [--sizes 2000 10000] [--concurrency 200]
        [--sources 254] [--rounds 3] [--kamailio duties memory] [--profile out/jbcd-storm]

--profile runs one more jbcd storm (the largest size) under cProfile and writes
PATH.prof and PATH.txt (the top functions by own time). Kamailio is installed from Debian
when missing (as root), with its own service kept from starting: it only ever runs here, on
loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import platform
import pstats
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from jbcbench import regstorm, sipua
from jbcbench.daemon import DaemonProcess
from jbcbench.sipdaemon import sip_daemon, sip_ports

HERE = pathlib.Path(__file__).resolve().parent
CONFIG = HERE / "kamailio" / "registrar.cfg"
KAMAILIO_SQL = pathlib.Path("/usr/share/kamailio/db_sqlite")
GOAL_WALL, GOAL_CPU = 1.2, 1.5
PROFILES = ("duties", "memory")
FAIR = "duties"


def install_kamailio() -> None:
    """apt-get install kamailio and its SQLite driver, without letting the package start
    (or enable) its system-wide service, which would listen on every interface."""
    policy = pathlib.Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")  # invoke-rc.d: starting is forbidden
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q",
                        "--no-install-recommends", "kamailio", "kamailio-sqlite-modules"],
                       check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                       stdout=sys.stderr)
    finally:
        if created:
            policy.unlink()
    if shutil.which("systemctl"):
        subprocess.run(["systemctl", "disable", "--now", "kamailio"], capture_output=True)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bindings_on_disk(path: pathlib.Path, table: str) -> int:
    """Rows in a registrar's binding table, read as another process would (0 while the
    file is not there or busy)."""
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                timeout=0.05)) as connection:
            return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return 0


def kamailio_database(path: pathlib.Path, site: dict, realm: str = "jbc") -> None:
    """Kamailio's SQLite database for the duties profile: its own schema (usrloc's
    location table, htable's table) from the Debian package, in WAL mode like jbcd's, and
    every device's HA1 for ``realm`` (htable loads them into memory at start, as jbcd holds
    the directory's HA1 in memory)."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        for name in ("standard", "usrloc", "htable"):
            connection.executescript((KAMAILIO_SQL / f"{name}-create.sql").read_text())
        connection.executemany(
            "INSERT INTO htable (key_name, key_type, value_type, key_value, expires) "
            "VALUES (?, 0, 0, ?, 0)",
            [(device["username"], hashlib.md5(
                f"{device['username']}:{realm}:{device['password']}".encode()).hexdigest())
             for device in site["devices"]])
        connection.commit()


class Kamailio:
    """Kamailio in the foreground (-DD), its workers forked, logging to a file; ``profile``
    is "duties" (JBC_DUTIES: jbcd's duties, bindings written behind to ``self.database``)
    or "memory"."""

    def __init__(self, workdir: pathlib.Path, profile: str, site: dict) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.profile = profile
        self.port = free_udp_port()
        self.database = workdir / "kamailio.sqlite3"
        defines: list[str] = []
        if profile == "duties":
            kamailio_database(self.database, site)
            defines = ["-A", "JBC_DUTIES"]
        self.config = workdir / "registrar.cfg"
        self.config.write_text(CONFIG.read_text().replace("@PORT@", str(self.port))
                               .replace("@DB@", str(self.database)))
        self.log = open(workdir / "kamailio.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["kamailio", "-DD", "-E", *defines, "-f", str(self.config), "-m", "1024",
             "-M", "16", "-Y", str(workdir), "-P", str(workdir / "kamailio.pid"),
             "-w", str(workdir)],
            stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def durable(self):
        """Bindings on disk, for the storm to wait for (None: the profile keeps none)."""
        if self.profile != "duties":
            return None
        return lambda: bindings_on_disk(self.database, "location")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(0.2)
            probe = sipua.request("OPTIONS", "sip:127.0.0.1", local=sock.getsockname(),
                                  to="<sip:127.0.0.1>", from_="<sip:bench@127.0.0.1>;tag=b",
                                  call_id="ready", cseq=1)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"kamailio exited: {self.read_log()}")
                sock.sendto(probe, ("127.0.0.1", self.port))
                with contextlib.suppress(TimeoutError):
                    sock.recv(65535)
                    return
        raise RuntimeError(f"kamailio did not answer: {self.read_log()}")

    def read_log(self) -> str:
        return (self.workdir / "kamailio.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class ProfiledDaemon(DaemonProcess):
    """jbcd under cProfile; the profile is written when it stops."""

    def __init__(self, *args, profile: pathlib.Path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.profile = profile

    def command(self) -> list[str]:
        command = super().command()
        assert command[1:3] == ["-m", "appliance.daemon"], command
        return [command[0], "-m", "cProfile", "-o", str(self.profile), *command[1:]]


def jbcd_storm(workdir: pathlib.Path, args, size: int, *,
               profile: pathlib.Path | None = None) -> dict:
    site = regstorm.site_of(size)
    daemon = sip_daemon(workdir, site, transports=["udp"])
    if profile is not None:
        daemon = ProfiledDaemon(daemon.workdir, None, profile=profile)
        daemon.config_path.write_text((workdir / "appliance.toml").read_text())
        daemon.builtin_defaults = False
    daemon.start()
    try:
        port = sip_ports(daemon)["udp"]
        settle(daemon.proc.pid, regstorm.run_seconds)
        database = daemon.state_dir / "jbc.sqlite3"
        return run_storm(("127.0.0.1", port), size, daemon.proc.pid, args,
                         cpu=regstorm.cpu_seconds, run=regstorm.run_seconds,
                         wait=regstorm.wait_seconds,
                         durable=lambda: bindings_on_disk(database, "sip_bindings"))
    finally:
        daemon.stop()


def kamailio_storm(workdir: pathlib.Path, args, size: int, profile: str) -> dict:
    kamailio = Kamailio(workdir, profile, regstorm.site_of(size))
    try:
        settle(kamailio.proc.pid, regstorm.tree_run_seconds)
        return run_storm(("127.0.0.1", kamailio.port), size, kamailio.proc.pid, args,
                         cpu=regstorm.tree_cpu_seconds, run=regstorm.tree_run_seconds,
                         wait=regstorm.tree_wait_seconds,
                         durable=kamailio.durable())
    finally:
        kamailio.stop()


SCHEDULERS = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO",
              os.SCHED_RR: "SCHED_RR", os.SCHED_BATCH: "SCHED_BATCH", os.SCHED_IDLE: "SCHED_IDLE"}


def settle(pid: int, run, *, quiet_s: float = 0.005, every_s: float = 0.1,
           timeout_s: float = 30.0) -> float:
    """Wait until the registrar has finished its start-up work (loading 10,000 devices goes
    on after its socket is open): until it used less than ``quiet_s`` of CPU in ``every_s``.
    Otherwise start-up work that spills into the storm would be charged to it, the more so
    the busier the machine. Seconds waited."""
    started = time.monotonic()
    last = run(pid)
    while time.monotonic() - started < timeout_s:
        time.sleep(every_s)
        now = run(pid)
        if now - last < quiet_s:
            break
        last = now
    return time.monotonic() - started


def run_storm(server, size: int, pid: int, args, *, cpu, run, wait, durable) -> dict:
    waited = wait(pid)
    result = regstorm.storm(server, size, pid, concurrency=args.concurrency, cpu=cpu,
                            run=run, durable=durable,
                            address_of=lambda i: regstorm.spread_address(i, args.sources),
                            timeout_s=120.0)
    result["runqueue_wait_s"] = round(wait(pid) - waited, 4)
    # Both must compete for the CPU on equal terms (jbcd raises its loop to SCHED_RR only
    # while the gateway carries call audio, which a registration storm never starts).
    result["scheduling"] = SCHEDULERS.get(os.sched_getscheduler(pid), "other")
    result["uptime"] = uptime()
    return result


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def summary(rounds: list[dict]) -> dict:
    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in rounds), 4)

    durable = [r["durable_s"] for r in rounds if r["durable_s"] is not None]
    return {"wall_s": median("wall_s"), "cpu_s": median("appliance_run_s"),
            "cpu_s_per_1000": median("appliance_run_s_per_1000"),
            "cpu_ticks_s": median("appliance_cpu_s"),
            "runqueue_wait_s": median("runqueue_wait_s"),
            "durable_s": round(statistics.median(durable), 3) if durable else None,
            "registered": min(r["registered"] for r in rounds),
            "retransmissions": max(r["retransmissions"] for r in rounds),
            "rounds": [{k: r[k] for k in ("wall_s", "appliance_run_s", "appliance_cpu_s",
                                          "durable_s", "runqueue_wait_s", "scheduling",
                                          "registered", "retransmissions",
                                          "latency_p50_ms", "latency_p99_ms", "uptime")}
                       for r in rounds]}


def compare(jbcd: dict, kamailio: dict, size: int) -> dict:
    wall_ratio = round(jbcd["wall_s"] / kamailio["wall_s"], 2)
    cpu_ratio = round(jbcd["cpu_s"] / kamailio["cpu_s"], 2) if kamailio["cpu_s"] else None
    return {"wall_ratio": wall_ratio, "cpu_ratio": cpu_ratio,
            "goal": f"wall <= {GOAL_WALL}x, cpu <= {GOAL_CPU}x",
            "goal_met": wall_ratio <= GOAL_WALL and cpu_ratio is not None
            and cpu_ratio <= GOAL_CPU and jbcd["registered"] == size}


def write_profile(profile: pathlib.Path, text_path: pathlib.Path, top: int = 30) -> None:
    with text_path.open("w") as out:
        stats = pstats.Stats(str(profile), stream=out)
        stats.strip_dirs().sort_stats("tottime").print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--sources", type=int, default=254)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kamailio", nargs="+", choices=PROFILES, default=list(PROFILES),
                        help="Kamailio profiles to run (duties: the fair comparison)")
    parser.add_argument("--state-dir", type=pathlib.Path,
                        default=pathlib.Path("/dev/shm") if os.path.isdir("/dev/shm") else None,
                        help="where both registrars keep their databases (default /dev/shm: "
                        "a sync costs neither of them anything, see the module docstring)")
    parser.add_argument("--profile", type=pathlib.Path,
                        help="also profile one jbcd storm (largest size) into PATH.prof/.txt")
    args = parser.parse_args()
    if shutil.which("kamailio") is None or not (KAMAILIO_SQL / "usrloc-create.sql").exists():
        if os.geteuid() != 0:
            print("bench_kamailio: needs Kamailio: run as root, or apt-get install kamailio "
                  "kamailio-sqlite-modules", file=sys.stderr)
            return 2
        install_kamailio()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.sizes) + 512
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    results: dict = {"benchmark": "jbcd vs Kamailio registration storm",
                     "concurrency": args.concurrency, "sources": args.sources,
                     "rounds": args.rounds,
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "kernel": platform.release(),
                                 "kamailio": subprocess.run(
                                     ["kamailio", "-v"], capture_output=True,
                                     text=True).stdout.splitlines()[0]},
                     "uptime_before": uptime()}
    results["state_dir"] = str(args.state_dir) if args.state_dir else tempfile.gettempdir()
    with tempfile.TemporaryDirectory(prefix="jbc-bench-kamailio-", dir=args.state_dir) as tmp:
        root = pathlib.Path(tmp)
        contenders = ["jbcd", *(f"kamailio-{p}" for p in args.kamailio)]
        for size in args.sizes:
            rounds: dict[str, list[dict]] = {name: [] for name in contenders}
            for index in range(args.rounds):
                shift = index % len(contenders)
                for name in contenders[shift:] + contenders[:shift]:
                    where = root / f"{name}-{size}-{index}"
                    if name == "jbcd":
                        rounds[name].append(jbcd_storm(where, args, size))
                    else:
                        rounds[name].append(kamailio_storm(where, args, size,
                                                           name.split("-", 1)[1]))
            figures = {name: summary(r) for name, r in rounds.items()}
            storm = {"jbcd": figures["jbcd"]}
            for profile in args.kamailio:
                storm[f"kamailio_{profile}"] = figures[f"kamailio-{profile}"]
                storm[f"vs_{profile}"] = compare(figures["jbcd"], figures[f"kamailio-{profile}"],
                                                 size)
            if FAIR in args.kamailio:
                storm["goal_met"] = storm[f"vs_{FAIR}"]["goal_met"]
            results[f"storm_{size}"] = storm
        if args.profile is not None:
            args.profile.parent.mkdir(parents=True, exist_ok=True)
            prof = args.profile.with_suffix(".prof")
            jbcd_storm(root / "profiled", args, max(args.sizes), profile=prof)
            write_profile(prof, args.profile.with_suffix(".txt"))
            results["profile"] = str(args.profile.with_suffix(".txt"))
    results["uptime_after"] = uptime()
    results["goals_met"] = all(v.get("goal_met", False) for k, v in results.items()
                               if k.startswith("storm_"))
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
