"""The chaos scenario: one outage with calls up, and during it everything else that can go
wrong with the appliance itself (issue 14). On a running :class:`~jbcbench.sitelab.SiteLab`
whose state dir is a small filesystem of its own:

1. the WAN is cut (silent blackhole); every phone registers at the appliance; a local call
   is placed and **kept up through everything that follows** (its audio is checked after
   each fault);
2. **the state dir fills up**: jbcd goes on from memory; a new call is placed; space returns
   and jbcd writes everything out;
3. **the journal is corrupted**: jbcd is SIGKILLed, leaf pages of its event journal are
   overwritten on disk, jbcd is started again (as systemd would) and must keep the damaged
   file aside, salvage the rest and serve on;
4. **the control socket is flooded** (a user without a role keeps 40 connections opening, root
   sends hostile requests in a loop) while root's status is timed and a call is placed;
5. **the SIP port is flooded** from the LAN (malformed datagrams, unauthenticated and 60 kB
   REGISTERs from 32 ports) while a call is placed;
6. the WAN comes back with the cloud slow to take uploads: **jbcd is SIGKILLed mid-upload**
   and started again;
7. a new config bundle is published: **jbcd is SIGKILLed mid-bundle-apply** (the moment it
   creates the sealed file it then renames into place) and started again;
8. the held call is hung up; every call the bench placed must be at the cloud exactly once.

After each fault the bench records what survived: jbcd serving (and how long it did not),
phones registered at the appliance, the held call's audio both ways, a new call, root's
status latency. Goal: all of it, with 0 records lost and 0 duplicated.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

from appliance.control import protocol
from appliance.store.database import DATABASE_FILE
from appliance.store.sealed import SealingKey
from appliance.sync.bundle import load_public_key
from appliance.sync.bundle_store import BundleStore

from .diskfaults import FileWatch, SmallFilesystem, corrupt_table
from .localusers import ConnectionFlood
from .outage import CallResult, OutageScenario
from .sitelab import SiteLab, site_directory
from .timeline import PhoneBoard, StepFailed, Timeline

STATUS_GOAL_MS = 100.0
SERVING_GOAL_S = 5.0
"""From a SIGKILL to the control socket answering again (the bench restarts jbcd at once, as
systemd's Restart=on-failure does after RestartSec)."""
EXTRA_EXTENSIONS = 3000
"""Later versions of the site's directory carry this many more extensions (a real apply)."""
APPLY_ATTEMPTS = 8


@dataclasses.dataclass(slots=True)
class FaultOutcome:
    fault: str
    how: str
    at: float
    survived: dict[str, Any] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"fault": self.fault, "how": self.how, "at": round(self.at, 3),
                "survived": self.survived, "problems": self.problems, "ok": self.ok}


class ChaosScenario:
    def __init__(self, lab: SiteLab, timeline: Timeline, board: PhoneBoard,
                 disk: SmallFilesystem) -> None:
        self.lab = lab
        self.timeline = timeline
        self.board = board
        self.disk = disk
        self.calls = OutageScenario(lab, timeline, board=board, settle_s=1.0)
        self.extensions = lab.settings.extensions
        self.placed: list[CallResult] = []
        self.outcomes: list[FaultOutcome] = []
        self.held: CallResult | None = None
        self.kills: list[dict[str, Any]] = []

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.calls.journal.start()
        try:
            self._outage_with_a_call_up()
            for fault in (self._full_disk, self._corrupt_journal, self._control_flood,
                          self._sip_flood, self._kill_mid_upload, self._kill_mid_apply):
                self._run_fault(fault)
            return self._finish()
        finally:
            self.calls.journal.stop()

    def _run_fault(self, fault) -> None:
        try:
            outcome = fault()
        except (StepFailed, TimeoutError, OSError) as error:
            outcome = FaultOutcome(fault=fault.__name__.strip("_").replace("_", " "),
                                   how="the bench could not finish this step", at=time.time(),
                                   problems=[f"{type(error).__name__}: {error}"])
        self.outcomes.append(outcome)
        verdict = "survived" if outcome.ok else "NOT survived: " + "; ".join(outcome.problems)
        self.timeline.add("bench", f"{outcome.fault}: {verdict}", bold=True)

    def _outage_with_a_call_up(self) -> None:
        lab, timeline = self.lab, self.timeline
        self.calls._steady()
        self.cut_at = time.time()
        timeline.add("bench", f"WAN cut: {lab.site.cut('blackhole')}", bold=True)
        if self.calls.journal.transition("outage", self.cut_at, 30) is None:
            raise StepFailed("the WAN monitor never declared the outage")
        everyone = self.board.wait(lambda: all(
            self.board.registered_at(ext, "backup", self.cut_at) is not None
            for ext in self.extensions), 90)
        if not everyone:
            raise StepFailed("not every phone registered at the appliance")
        lab.wait_for(lambda: lab.locally_registered() >= set(self.extensions), 10,
                     "the appliance's registrar to list every phone")
        held = self.calls.local_call(self.extensions[0], self.extensions[1], kind="held",
                                     hang_up=False)
        self.placed.append(held)
        if not held.ok:
            raise StepFailed(f"the call to hold through the chaos failed: {held.problem}")
        self.held = held
        timeline.add("bench", f"outage under way, every phone at the appliance, call "
                     f"{held.caller} <-> {held.callee} up", bold=True)

    # -- the faults --------------------------------------------------------------------------

    def _full_disk(self) -> FaultOutcome:
        taken = self.disk.fill()
        outcome = FaultOutcome(fault="state dir full", at=time.time(), how=(
            f"every free byte of the state dir's filesystem taken ({taken} bytes)"))
        self.timeline.add("bench", outcome.how)
        self._probe_call(outcome)  # a call writes a record: storage meets the full disk
        storage = self._storage()
        outcome.survived["storage_while_full"] = storage["summary"]
        if "running from memory" not in storage["summary"]:
            outcome.problems.append(f"storage did not report the full disk: {storage}")
        self._check_service(outcome)
        self.disk.free()
        freed = time.time()
        try:
            self.lab.wait_for(lambda: self._storage()["level"] == "ok", 15,
                              "storage back on disk after space returned")
            outcome.survived["written_out_after_s"] = round(time.time() - freed, 2)
        except TimeoutError as error:
            outcome.problems.append(str(error))
        return outcome

    def _corrupt_journal(self) -> FaultOutcome:
        outcome = FaultOutcome(fault="journal corrupted", how="", at=time.time())
        database = self.lab.daemon.state_dir / DATABASE_FILE

        def damage() -> None:
            with contextlib.closing(sqlite3.connect(database)) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the journal's pages on disk
            pages = corrupt_table(database, "events", pages=1)
            outcome.how = (f"jbcd SIGKILLed, leaf pages {pages} of the event journal "
                           "overwritten with random bytes, jbcd started again")
            self.timeline.add("bench", outcome.how)

        self._kill_and_restart(outcome, "journal corrupted", while_down=damage)
        recreated = [e for e in self.lab.daemon.call("events", {"subsystem": "storage"})
                     ["events"] if e["kind"] == "database-recreated"]
        if recreated:
            outcome.survived["storage"] = recreated[-1]["reason"]
            outcome.survived["rows_salvaged"] = recreated[-1]["details"].get("salvaged")
        else:
            outcome.problems.append("jbcd did not report the corrupt database")
        self._check_service(outcome)
        self._probe_call(outcome)
        return outcome

    def _control_flood(self) -> FaultOutcome:
        outcome = FaultOutcome(fault="control socket flood", how=(
            "a user without a role keeps 40 connections opening; root sends oversized, "
            "5000-deep and garbage requests in a loop"), at=time.time())
        self.timeline.add("bench", outcome.how)
        path = self.lab.daemon.socket_path
        stop = threading.Event()
        hostile = [b'{"command": "status", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
                   b"\xff\xfe garbage\n", b'{"command": "status", "args": {"n": NaN}}\n']

        def hostile_root() -> None:
            while not stop.is_set():
                for line in hostile:
                    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
                        sock.settimeout(5)
                        sock.connect(str(path))
                        sock.sendall(line)
                        sock.recv(65536)

        flood = ConnectionFlood(path, connections=40).start()
        sender = threading.Thread(target=hostile_root, daemon=True)
        sender.start()
        try:
            times = [self._status_ms() for _ in range(30)]
            self._probe_call(outcome)
            self._check_service(outcome)
        finally:
            stop.set()
            sender.join(10)
            flood.stop()
        outcome.survived["root_status_ms"] = {"p50": round(sorted(times)[len(times) // 2], 2),
                                              "max": round(max(times), 2)}
        if max(times) > STATUS_GOAL_MS:
            outcome.problems.append(f"root's status took {max(times):.0f} ms (goal "
                                    f"{STATUS_GOAL_MS:g})")
        if "Traceback" in self.lab.daemon.log():
            outcome.problems.append("a traceback reached jbcd's log")
        return outcome

    def _sip_flood(self) -> FaultOutcome:
        site = self.lab.site
        target = f"{site.appliance_lan}:{site.sip_port}"
        outcome = FaultOutcome(fault="SIP port flood", how=(
            f"malformed datagrams, unauthenticated and 60 kB REGISTERs from 32 ports at "
            f"{target}, 3000/s for 8 s, from the LAN"), at=time.time())
        self.timeline.add("bench", outcome.how)
        command = [*site.handset_prefix(), sys.executable, "-m", "jbcbench.sipflood",
                   "--target", target, "--seconds", "8", "--rate", "3000",
                   "--users", ",".join(self.extensions)]
        flood = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                 env=_bench_env())
        try:
            self._probe_call(outcome)
            self._check_service(outcome)
        finally:
            sent, _ = flood.communicate(timeout=60)
        with contextlib.suppress(ValueError, IndexError):
            outcome.survived["flood"] = json.loads(sent.strip().splitlines()[-1])
        outcome.survived["jbcd_rss_mb"] = _rss_mb(self.lab.daemon.proc.pid)
        return outcome

    def _kill_mid_upload(self) -> FaultOutcome:
        lab = self.lab
        cloud = lab.site.cloud_api
        outcome = FaultOutcome(fault="SIGKILL mid-upload", how="", at=time.time())
        cloud.faults.slow_operations = frozenset({"uploadCallRecords"})
        cloud.faults.slow_s = 3.0
        restored = time.time()
        self.timeline.add("bench", f"WAN restored: {lab.site.restore('blackhole')}; the cloud "
                          "takes 3 s to answer uploads", bold=True)
        self.restored_at = restored
        try:
            lab.wait_for(lambda: cloud.in_flight.get("uploadCallRecords", 0) > 0, 60,
                         "the outage's call records on their way to the cloud")
            outcome.how = ("WAN back, the outage's call records being uploaded: jbcd SIGKILLed "
                           "while the cloud holds the request, started again")
            self._kill_and_restart(outcome, "mid-upload")
        finally:
            cloud.faults.slow_s = 0.0
        self._check_service(outcome, local=False)
        return outcome

    def _kill_mid_apply(self) -> FaultOutcome:
        """The window between creating the sealed file and renaming it is a few milliseconds,
        and the kill is delivered when the bench's watcher gets the CPU: each attempt
        publishes the next version and kills on the file's creation, up to APPLY_ATTEMPTS
        times, until a kill lands inside the window. Every attempt must leave a complete
        bundle, old or new."""
        lab = self.lab
        outcome = FaultOutcome(fault="SIGKILL mid-bundle-apply", at=time.time(), how=(
            f"bundles of {EXTRA_EXTENSIONS} more extensions published one after another; "
            "jbcd SIGKILLed the moment it creates the sealed file it renames into place, "
            "started again, until a kill lands before the rename"))
        self.timeline.add("bench", outcome.how)
        attempts = []
        for version in range(2, 2 + APPLY_ATTEMPTS):
            lab.site.cloud_api.publish(self._site_version(version))
            pid = lab.daemon.proc.pid
            watch = FileWatch(lab.daemon.state_dir / "bundles", "incoming.new",
                              lambda pid=pid: _kill(pid))
            try:
                with socket.socket(socket.AF_UNIX) as control:  # 'jbc sync now', no waiting
                    control.connect(str(lab.daemon.socket_path))
                    control.sendall(protocol.request_message("sync.now"))
                    if not watch.fired.wait(60):
                        raise StepFailed(f"bundle v{version} was never written")
            finally:
                watch.close()
            attempt: dict[str, Any] = {"published": version}
            self._kill_and_restart(outcome, f"mid-apply of v{version}", already_killed=True,
                                   while_down=lambda a=attempt, v=version:
                                   self._stored_bundle(a, v, outcome))
            attempts.append(attempt)
            try:
                lab.wait_for(lambda v=version: lab.daemon.call("sync.status").get(
                    "directory_version") == v, 60, f"bundle v{version} applied after the restart")
            except TimeoutError as error:
                outcome.problems.append(str(error))
                break
            if attempt["killed_before_the_rename"]:
                break
        outcome.survived["attempts"] = attempts
        outcome.survived["a_kill_landed_before_the_rename"] = any(
            a["killed_before_the_rename"] for a in attempts)
        self._check_service(outcome, local=False)
        return outcome

    # -- the end -----------------------------------------------------------------------------

    def _finish(self) -> dict[str, Any]:
        held = self.held
        if held is not None:
            ok, levels = self.calls._hear_each_other(held.caller, held.callee)
            held.levels.update({f"at_end_{k}": v for k, v in levels.items()})
            if not ok:
                held.problem = f"the held call lost its audio: {levels}"
            self.calls.hang_up(held.caller, held, other=held.callee)
        dropped = list(self.board.dropped)
        records = self._records()
        survived_all = all(o.ok for o in self.outcomes) and len(self.outcomes) == 6
        ok = (survived_all and not dropped and held is not None and held.ok
              and records["lost"] == 0 and records["duplicated"] == 0)
        return {"ok": ok, "faults": [o.to_json() for o in self.outcomes],
                "held_call": held.to_json() if held else None, "calls_dropped": dropped,
                "calls_placed": [c.to_json() for c in self.placed], "records": records,
                "jbcd_kills": self.kills}

    def _records(self) -> dict[str, Any]:
        """Every call the bench placed during the chaos must be at the cloud exactly once."""
        lab = self.lab
        cloud = lab.site.cloud_api
        self._flush_records()

        def assigned() -> dict[int, list[str]]:
            """Each record at the cloud goes to the bench call it belongs to: same caller and
            callee, the nearest start (several calls between the same phones are apart by
            the seconds each call lasts)."""
            with cloud.lock:
                stored = list(cloud.call_records.values())
            calls: dict[int, list[str]] = {index: [] for index in range(len(self.placed))}
            for record in stored:
                candidates = [(abs((record.get("started_at") or 0) - call.attempted_at), index)
                              for index, call in enumerate(self.placed)
                              if record.get("from") == call.caller
                              and record.get("to") == call.callee]
                if candidates and min(candidates)[0] < 5.0:
                    calls[min(candidates)[1]].append(record["id"])
            return calls

        with contextlib.suppress(TimeoutError):
            lab.wait_for(lambda: all(assigned().values()), 60,
                         "every call's record at the cloud")
        by_call = assigned()
        found = {f"{c.kind} {c.caller}->{c.callee} @{c.attempted_at:.1f}": by_call[index]
                 for index, c in enumerate(self.placed)}
        with cloud.lock:
            received_twice = sum(1 for n in cloud.received_ids.values() if n > 1)
            received = dict(collections.Counter(cloud.received_ids.values()))
        return {"calls": len(self.placed),
                "at_cloud_once": sum(1 for ids in found.values() if len(ids) == 1),
                "lost": sum(1 for ids in found.values() if not ids),
                "duplicated": sum(1 for ids in found.values() if len(ids) > 1),
                "upload_retries_recognised_by_id": received_twice,
                "killed_upload_reached_the_cloud": received_twice > 0,
                "ids_by_times_received": received, "by_call": found}

    # -- helpers -----------------------------------------------------------------------------

    def _probe_call(self, outcome: FaultOutcome) -> None:
        free = [e for e in self.extensions if e not in (self.held.caller, self.held.callee)]
        call = self.calls.local_call(free[0], free[1], kind="probe")
        self.placed.append(call)
        outcome.survived["new_call"] = call.ok
        if not call.ok:
            outcome.problems.append(f"a new call failed: {call.problem}")

    def _check_service(self, outcome: FaultOutcome, *, local: bool = True) -> None:
        lab = self.lab
        outcome.survived["status_ms"] = round(self._status_ms(), 2)
        if local:
            registered = lab.locally_registered() & set(self.extensions)
            outcome.survived["phones_at_appliance"] = len(registered)
            if len(registered) < len(self.extensions):
                outcome.problems.append(f"only {len(registered)} of {len(self.extensions)} "
                                        "phones registered at the appliance")
        ok, levels = self.calls._hear_each_other(self.held.caller, self.held.callee)
        outcome.survived["held_call_audio"] = ok
        if not ok:
            outcome.problems.append(f"the held call has no audio both ways: {levels}")

    def _kill_and_restart(self, outcome: FaultOutcome, why: str, *, while_down=None,
                          already_killed: bool = False) -> None:
        daemon = self.lab.daemon
        if not already_killed:  # no flush first: the proxy writes a call's record at once
            daemon.signal(signal.SIGKILL)
        killed = time.time()
        daemon.proc.wait(10)
        daemon.stop()  # reaps it and closes its log
        if while_down is not None:
            while_down()
        daemon.start(timeout_s=30)
        daemon.call("status")  # answered, not only accepting: every subsystem is up
        gap = time.time() - killed
        self.kills.append({"why": why, "at": round(killed, 3), "serving_again_s": round(gap, 2)})
        outcome.survived["serving_again_s"] = round(gap, 2)
        self.timeline.add("bench", f"jbcd SIGKILLed ({why}), serving again {gap:.2f} s later")
        if gap > SERVING_GOAL_S:
            outcome.problems.append(f"jbcd took {gap:.1f} s to serve again (goal "
                                    f"{SERVING_GOAL_S:g} s)")

    def _stored_bundle(self, attempt: dict[str, Any], version: int,
                       outcome: FaultOutcome) -> None:
        """What a restart will find: the bundle on disk, complete, old or new, never a mix."""
        state_dir = self.lab.daemon.state_dir
        keys = self.lab.site.keys
        store = BundleStore(state_dir, SealingKey.load_or_create(state_dir),
                            load_public_key(keys.signing_public_key_b64))
        attempt["half_written_files"] = sorted(p.name for p in store.path.glob("*.new"))
        try:
            stored = store.load_applied()
        except Exception as error:  # whatever it is, it is the finding
            outcome.problems.append(f"the stored bundle cannot be read after the kill: {error}")
            return
        found = None if stored is None else stored[0].version
        attempt["bundle_on_disk_after_kill"] = found
        attempt["killed_before_the_rename"] = found == version - 1
        if found not in (version - 1, version):
            outcome.problems.append(f"after killing the apply of v{version} the stored "
                                    f"bundle is v{found}")

    def _flush_records(self) -> None:
        """Before the final count: every record written (records of calls that changed are
        written at once anyway; this also writes what else waits behind)."""
        with contextlib.suppress(Exception):
            self.lab.daemon.call("sip.calls", {"recent": 1})

    def _storage(self) -> dict[str, Any]:
        return next(s for s in self.lab.daemon.call("status")["subsystems"]
                    if s["name"] == "storage")

    def _status_ms(self) -> float:
        started = time.perf_counter()
        self.lab.daemon.call("status")
        return (time.perf_counter() - started) * 1000

    def _site_version(self, version: int) -> dict[str, Any]:
        lab = self.lab
        extra = [str(20000 + i) for i in range(EXTRA_EXTENSIONS)]
        passwords = {**lab.passwords, **{n: f"pw-{n}-v{version}" for n in extra}}
        directory = site_directory([*lab.settings.extensions, *extra], passwords)
        directory["version"] = version
        directory["ring_groups"][0]["members"] = list(lab.settings.extensions[:2])
        return directory


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _rss_mb(pid: int) -> float | None:
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return None if line is None else round(int(line.split()[1]) / 1024, 1)


def _bench_env() -> dict[str, str]:
    bench = pathlib.Path(__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": f"{bench.parent}:{bench}"}
