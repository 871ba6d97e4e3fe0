"""Supervision: a crash in one subsystem's task is contained, journalled (or logged when the
journal cannot write), restarted with backoff and shown in 'jbc status'; it never takes down
the appliance or the other subsystems."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from appliance.config import builtin_defaults
from appliance.journal import EventJournal
from appliance.lifecycle import Appliance
from appliance.runtime import Health, HealthLevel, SubsystemChanged, SubsystemFailed
from appliance.store.database import Database
from appliance.supervision import Backoff, Supervisor


def loaded_config(tmp_path, **daemon):
    loaded = builtin_defaults()
    config = loaded.config
    config = dataclasses.replace(config, daemon=dataclasses.replace(
        config.daemon, state_dir=tmp_path / "state", runtime_dir=tmp_path / "run",
        **{"restart_min_s": 0.01, "restart_max_s": 0.04, **daemon}))
    return dataclasses.replace(loaded, config=config)


class Flaky:
    """A subsystem whose loop crashes ``crashes`` times, then runs until stopped."""

    def __init__(self, runtime, name: str, crashes: int) -> None:
        self.runtime = runtime
        self.name = name
        self.crashes_left = crashes
        self.runs = 0
        self.running = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def _loop(self) -> None:
        self.runs += 1
        if self.crashes_left:
            self.crashes_left -= 1
            raise RuntimeError(f"{self.name} lost its modem (run {self.runs})")
        self.running.set()
        await asyncio.Event().wait()

    async def __aenter__(self):
        self.task = self.runtime.supervise(self._loop, name="poller", subsystem=self.name)
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def health(self) -> Health:
        return Health(level=HealthLevel.OK, summary="polling")

    async def reconfigure(self, config) -> None:
        pass


async def test_a_crashing_loop_is_restarted_journalled_and_shown_while_the_others_run(tmp_path):
    built = {}

    def build(runtime):
        built["bad"] = Flaky(runtime, "bad", crashes=3)
        built["good"] = Flaky(runtime, "good", crashes=0)
        return [built["bad"], built["good"]]

    async with Appliance(loaded_config(tmp_path), build=build, serve_control=False) as app:
        await asyncio.wait_for(built["bad"].running.wait(), 10)
        assert built["bad"].runs == 4
        assert built["good"].runs == 1 and built["good"].running.is_set()
        crashes = app.events("task-crashed", subsystem="bad")
        assert [e.details["crashes"] for e in crashes] == [1, 2, 3]
        assert crashes[0].reason.startswith("poller: RuntimeError: bad lost its modem (run 1)")
        delays = [e.details["restart_in_s"] for e in crashes]
        assert delays == [0.01, 0.02, 0.04]  # doubling, capped at restart_max_s
        status = await app.call("status")
        bad = next(s for s in status["subsystems"] if s["name"] == "bad")
        assert bad["level"] == "warning" and "task poller crashed 3 times" in bad["summary"]
        assert bad["tasks"] == [{"name": "poller", "state": "running", "restartable": True,
                                 "runs": 4, "crashes": 3, "restart_in_s": None,
                                 "last_error": "RuntimeError: bad lost its modem (run 3)",
                                 "last_crash_at": bad["tasks"][0]["last_crash_at"]}]
        good = next(s for s in status["subsystems"] if s["name"] == "good")
        assert good["level"] == "ok" and good["tasks"][0]["crashes"] == 0
        assert status["needs_attention"]


async def test_a_crash_is_logged_when_the_journal_cannot_write(tmp_path, caplog):
    database = Database.open_in(tmp_path)
    journal = EventJournal(database)
    database.close()  # every write now fails, as on a broken disk
    supervisor = Supervisor(journal=journal.record, backoff=Backoff(min_s=0.01, max_s=0.01))
    done = asyncio.Event()
    runs = []

    async def work():
        runs.append(1)
        if len(runs) < 3:
            raise OSError(28, "No space left on device")
        done.set()

    caplog.set_level(logging.ERROR)
    async with asyncio.TaskGroup() as tasks:
        supervisor.supervise(lambda c, n: tasks.create_task(c, name=n), work, name="flusher",
                             subsystem="store")
        await asyncio.wait_for(done.wait(), 10)
    assert len(runs) == 3
    record = supervisor.tasks_of("store")[0]
    assert (record.state, record.crashes) == ("finished", 2)
    logged = [r.getMessage() for r in caplog.records]
    assert any("the journal cannot write" in line and "store task-crashed: flusher: OSError"
               in line and "No space left on device" in line for line in logged), logged


async def test_one_shot_jobs_are_contained_and_their_journal_entries_rate_limited(tmp_path):
    database = Database.open_in(tmp_path)
    journal = EventJournal(database)
    supervisor = Supervisor(journal=journal.record)

    async def connect(n):
        raise ConnectionError(f"peer {n} vanished")

    async with asyncio.TaskGroup() as tasks:
        for n in range(50):
            supervisor.spawn(lambda c, name: tasks.create_task(c, name=name), connect(n),
                             name=f"connect {n}", subsystem="sip")
    entries = journal.query(subsystem="sip")
    database.close()
    assert len(entries) == 1 and entries[0].reason == "connect 0: ConnectionError: peer 0 vanished"
    assert supervisor.report("sip")["job_crashes"] == 50
    assert "50 times a job crashed" in supervisor.attention("sip")


async def test_stopping_cancels_a_loop_waiting_out_its_backoff(tmp_path):
    supervisor = Supervisor(backoff=Backoff(min_s=3600, max_s=3600))
    crashed = asyncio.Event()

    async def work():
        crashed.set()
        raise ValueError("boom")

    async with asyncio.TaskGroup() as tasks:
        task = supervisor.supervise(lambda c, n: tasks.create_task(c, name=n), work,
                                    name="loop", subsystem="x")
        await crashed.wait()
        assert supervisor.tasks_of("x")[0].state == "restarting"
        task.cancel()
    assert supervisor.tasks_of("x")[0].state == "stopped"


@pytest.mark.parametrize(("crashes", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0),
                                                (100, 60.0)])
def test_backoff_doubles_up_to_its_ceiling(crashes, delay):
    assert Backoff(min_s=1.0, max_s=60.0).delay(crashes) == delay


async def test_an_exception_escaping_a_loop_callback_counts_as_its_subsystems_crash(tmp_path):
    """A callback of a subsystem's code run by the loop (the way shells fire their cores'
    timers) that raises is journalled and shown against that subsystem; the loop goes on.
    Here the sip package's URI parser is handed garbage from a scheduled callback."""
    from appliance.sip.uri import parse_uri

    async with Appliance(loaded_config(tmp_path), serve_control=False,
                         build=lambda runtime: [Flaky(runtime, "sip", crashes=0)]) as app:
        await app.by_name("sip").running.wait()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.call_soon(parse_uri, "not a uri at all")
        loop.call_soon(done.set)  # runs after the failing callback and its handler
        await done.wait()
        [crash] = app.events("task-crashed", subsystem="sip")
        assert crash.reason.startswith("callback parse_uri: UriError")
        status = await app.call("status")
        sip = next(row for row in status["subsystems"] if row["name"] == "sip")
        assert sip["level"] == "warning" and "a job crashed" in sip["summary"]
        assert sip["job_crashes"] == 1


class ThreadBacked:
    """A subsystem whose work runs on a thread that can die under it (as the gateway's pjsua
    thread can): it says so on the bus and waits to be stopped and started again."""

    name = "worker"

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.starts = 0
        self.stops = 0
        self.up = asyncio.Event()

    async def __aenter__(self):
        self.starts += 1
        self.up.set()
        return self

    async def __aexit__(self, *exc):
        self.stops += 1
        self.up.clear()

    def thread_died(self, why: str) -> None:
        self.runtime.bus.publish(SubsystemFailed(name=self.name, reason=why))

    def health(self) -> Health:
        return Health(level=HealthLevel.OK, summary="working")

    async def reconfigure(self, config) -> None:
        pass


async def test_a_subsystem_that_dies_while_running_is_stopped_journalled_and_started_again(
        tmp_path):
    built = {}

    def build(runtime):
        built["worker"] = worker = ThreadBacked(runtime)
        built["good"] = Flaky(runtime, "good", crashes=0)
        return [worker, built["good"]]

    async with Appliance(loaded_config(tmp_path, restart_min_s=0.05, restart_max_s=1.0),
                         build=build, serve_control=False) as app:
        worker, changes, back_up = built["worker"], [], asyncio.Event()
        app.runtime.bus.subscribe(SubsystemChanged, changes.append)
        app.runtime.bus.subscribe(SubsystemChanged, lambda c: c.up and back_up.set())
        for crash in range(1, 4):  # each soon after the last restart: a crash loop
            back_up.clear()
            worker.thread_died(f"its thread died (crash {crash})")
            assert not app.started("worker") and changes[-1].up is False
            assert changes[-1].reason == f"its thread died (crash {crash})"
            await asyncio.wait_for(back_up.wait(), 10)
            assert app.started("worker")
            assert (worker.starts, worker.stops) == (crash + 1, crash)
        crashed = app.events("crashed", subsystem="worker")
        assert [e.reason.split(";")[0] for e in crashed] == [
            f"its thread died (crash {n})" for n in (1, 2, 3)]
        assert [e.details["retry_in_s"] for e in crashed] == [0.05, 0.1, 0.2]
        assert len(app.events("start-recovered", subsystem="worker")) == 3
        assert [c.up for c in changes] == [False, False, True] * 3
        status = await app.call("status")
        row = next(s for s in status["subsystems"] if s["name"] == "worker")
        assert row["level"] == "warning" and "crashed" in row["summary"]
        assert "its thread died (crash 3)" in row["summary"]
        assert built["good"].runs == 1, "the others ran on untouched"
        worker.thread_died("dies while the appliance stops")
    assert worker.stops == 4 and not worker.up.is_set(), "stopped once, not started again"
