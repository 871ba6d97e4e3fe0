"""Subsystems start in dependency order, stop in reverse within a deadline, and a crashing
background task is contained and journalled."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from appliance import daemon as daemon_module
from appliance.config import builtin_defaults
from appliance.daemon import ConfigSource, Daemon
from appliance.journal import EventJournal
from appliance.runtime import Health, HealthLevel
from appliance.store.database import Database


class RecordingSubsystem:
    """A minimal subsystem that records its lifecycle; ``hang_on_stop`` never finishes stopping."""

    def __init__(self, name: str, log: list[str], *, hang_on_stop: bool = False,
                 fail_on_start: bool = False) -> None:
        self.name = name
        self.log = log
        self.hang_on_stop = hang_on_stop
        self.fail_on_start = fail_on_start

    async def __aenter__(self):
        if self.fail_on_start:
            raise RuntimeError(f"{self.name} cannot open its port")
        self.log.append(f"start {self.name}")
        return self

    async def __aexit__(self, *exc):
        self.log.append(f"stopping {self.name}")
        if self.hang_on_stop:
            await asyncio.sleep(3600)
        self.log.append(f"stopped {self.name}")

    def health(self) -> Health:
        return Health(level=HealthLevel.OK, summary="fine")

    async def reconfigure(self, config) -> None:
        self.log.append(f"reconfigure {self.name}")


async def run_daemon(tmp_path: pathlib.Path, monkeypatch, subsystems_factory,
                     stop_timeout_s: float = 0.5) -> tuple[int, Daemon]:
    source = ConfigSource(path=None, state_dir=tmp_path / "state", runtime_dir=tmp_path / "run")
    loaded = source.load()
    config = loaded.config
    import dataclasses

    config = dataclasses.replace(config, daemon=dataclasses.replace(
        config.daemon, stop_timeout_s=stop_timeout_s))
    loaded = dataclasses.replace(loaded, config=config)
    monkeypatch.setattr(daemon_module, "build_subsystems", subsystems_factory)
    instance = Daemon(source, loaded)

    async def stop_soon():
        while instance.runtime is None or instance.runtime.headline.state != "running":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        instance.stop_requested.set()

    stopper = asyncio.create_task(stop_soon())
    code = await asyncio.wait_for(instance.run(), 10)
    stopper.cancel()
    return code, instance


@pytest.mark.integration
async def test_subsystems_start_in_order_and_stop_in_reverse(tmp_path, monkeypatch):
    log: list[str] = []
    code, _ = await run_daemon(tmp_path, monkeypatch, lambda runtime: [
        RecordingSubsystem("wan", log), RecordingSubsystem("sip", log)])
    assert code == 0
    assert log == ["start wan", "start sip", "stopping sip", "stopped sip", "stopping wan",
                   "stopped wan"]


@pytest.mark.integration
async def test_a_subsystem_that_will_not_stop_is_abandoned_after_the_deadline(
        tmp_path, monkeypatch):
    log: list[str] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    code, _ = await run_daemon(tmp_path, monkeypatch, lambda runtime: [
        RecordingSubsystem("wan", log), RecordingSubsystem("stuck", log, hang_on_stop=True)],
        stop_timeout_s=0.5)
    assert code == 0
    assert log == ["start wan", "start stuck", "stopping stuck", "stopping wan", "stopped wan"]
    assert loop.time() - started < 3


@pytest.mark.integration
async def test_a_subsystem_that_cannot_start_neither_stops_the_others_nor_the_daemon(
        tmp_path, monkeypatch):
    log: list[str] = []
    code, _ = await run_daemon(tmp_path, monkeypatch, lambda runtime: [
        RecordingSubsystem("wan", log), RecordingSubsystem("sip", log, fail_on_start=True),
        RecordingSubsystem("sync", log)])
    assert code == 0  # it ran, and stopped cleanly when told
    assert log == ["start wan", "start sync", "stopping sync", "stopped sync", "stopping wan",
                   "stopped wan"]  # the one that never started is not stopped
    database = Database.open_in(tmp_path / "state")
    failed = [e for e in EventJournal(database).query(subsystem="sip") if e.kind == "start-failed"]
    database.close()
    assert failed[0].reason.startswith("RuntimeError: sip cannot open its port; trying again")


@pytest.mark.integration
async def test_a_crashing_background_task_is_journalled_and_contained(tmp_path, monkeypatch):
    log: list[str] = []

    class Crasher(RecordingSubsystem):
        def __init__(self, runtime):
            super().__init__("crasher", log)
            self.runtime = runtime

        async def __aenter__(self):
            async def boom():
                raise ValueError("modem said something odd")
            self.runtime.spawn(boom(), name="poller", subsystem="crasher")
            await asyncio.sleep(0.05)
            return await super().__aenter__()

    code, _ = await run_daemon(tmp_path, monkeypatch, lambda runtime: [Crasher(runtime)])
    assert code == 0
    database = Database.open_in(tmp_path / "state")
    crashes = EventJournal(database).query(subsystem="crasher")
    database.close()
    assert [(e.kind, e.reason) for e in crashes] == [
        ("task-crashed", "poller: ValueError: modem said something odd")]


def test_builtin_defaults_are_used_when_no_file_is_given():
    assert ConfigSource(path=None).load().source == builtin_defaults().source


@pytest.mark.parametrize("flag", ["state_dir", "runtime_dir"])
def test_directory_overrides_apply_on_every_load(tmp_path, flag):
    path = tmp_path / "appliance.toml"
    path.write_text('site_name = "x"\n')
    source = ConfigSource(path=path, **{flag: tmp_path / "elsewhere"})
    assert getattr(source.load().config.daemon, flag) == tmp_path / "elsewhere"
