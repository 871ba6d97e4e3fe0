"""A subsystem that cannot start degrades that subsystem only: the others start and run, its
failure is journalled with the reason and shown in 'jbc status', and its start is tried again
with the supervision backoff (at once after a config reload) until it comes up."""

from __future__ import annotations

import asyncio
import dataclasses

from appliance.config import builtin_defaults
from appliance.lifecycle import Appliance
from appliance.runtime import Health, HealthLevel
from appliance.supervision import StartFailed


def loaded_config(tmp_path, *, restart_min_s=0.01, restart_max_s=0.04, site_name="site"):
    loaded = builtin_defaults()
    config = dataclasses.replace(loaded.config, site_name=site_name, daemon=dataclasses.replace(
        loaded.config.daemon, state_dir=tmp_path / "state", runtime_dir=tmp_path / "run",
        restart_min_s=restart_min_s, restart_max_s=restart_max_s))
    return dataclasses.replace(loaded, config=config)


class Part:
    """A subsystem that logs its lifecycle; it cannot start while ``refusal`` says why."""

    def __init__(self, name: str, log: list[str], refusal=lambda: None) -> None:
        self.name = name
        self.log = log
        self.refusal = refusal
        self.attempts = 0
        self.up = asyncio.Event()

    async def __aenter__(self):
        self.attempts += 1
        why = self.refusal()
        if why is not None:
            raise StartFailed(why)
        self.log.append(f"start {self.name}")
        self.up.set()
        return self

    async def __aexit__(self, *exc):
        self.log.append(f"stop {self.name}")

    def health(self) -> Health:
        return Health(level=HealthLevel.OK, summary="fine")

    async def reconfigure(self, config) -> None:
        self.log.append(f"reconfigure {self.name}")


def row(status: dict, name: str) -> dict:
    return next(s for s in status["subsystems"] if s["name"] == name)


PORT_TAKEN = "udp 127.0.0.1:5060 is in use by another program (see 'ss -lnp sport = :5060')"


async def test_a_subsystem_that_cannot_start_is_shown_failed_and_starts_once_the_cause_clears(
        tmp_path):
    log: list[str] = []
    blocked = [PORT_TAKEN]
    parts = {}

    def build(runtime):
        parts["sip"] = Part("sip", log, refusal=lambda: blocked[0])
        parts["gateway"] = Part("gateway", log)
        return [parts["sip"], parts["gateway"]]

    loaded = loaded_config(tmp_path, restart_min_s=0.05, restart_max_s=0.2)
    async with Appliance(loaded, build=build, serve_control=False) as app:
        # entered = ready: everything else is up while sip is being retried
        assert (app.started("sip"), app.started("gateway")) == (False, True)
        status = await app.call("status")
        sip = row(status, "sip")
        assert sip["level"] == "failed" and sip["summary"].startswith(f"not started: {PORT_TAKEN}")
        assert "trying again in" in sip["summary"]
        assert sip["tasks"][0]["name"] == "start" and sip["tasks"][0]["last_error"] == PORT_TAKEN
        assert row(status, "gateway")["level"] == "ok"
        assert status["needs_attention"] and app.status_line() == "running; attention: sip"
        [failed] = app.events("start-failed", subsystem="sip")
        assert failed.reason.startswith(f"{PORT_TAKEN}; trying again in")
        assert app.events("started", subsystem="daemon")[-1].details["not_started"] == ["sip"]

        await asyncio.sleep(0.3)  # a few more attempts, same reason: not journalled again
        assert parts["sip"].attempts >= 3
        assert len(app.events("start-failed", subsystem="sip")) == 1
        blocked[0] = None
        await asyncio.wait_for(parts["sip"].up.wait(), 10)
        assert app.started("sip")
        [recovered] = app.events("start-recovered", subsystem="sip")
        assert recovered.reason.startswith(f"started at attempt {parts['sip'].attempts} ")
        status = await app.call("status")
        assert row(status, "sip")["level"] == "ok" and not status["needs_attention"]
    # stopped in reverse build order, whenever each one started
    assert log == ["start gateway", "start sip", "stop gateway", "stop sip"]


async def test_each_new_reason_is_journalled_and_the_retries_back_off(tmp_path):
    log: list[str] = []
    reasons = iter(["disk not mounted", "disk not mounted", "disk not mounted",
                    "key unreadable", "key unreadable"])
    part = Part("store", log, refusal=lambda: next(reasons, None))
    async with Appliance(loaded_config(tmp_path), build=lambda runtime: [part],
                         serve_control=False) as app:
        await asyncio.wait_for(part.up.wait(), 10)
        failed = app.events("start-failed", subsystem="store")
        assert [(e.details["attempt"], e.reason.partition(";")[0]) for e in failed] == [
            (1, "disk not mounted"), (4, "key unreadable")]
        assert [e.details["retry_in_s"] for e in failed] == [0.01, 0.04]  # doubling, capped
        assert part.attempts == 6
        tasks = app.supervisor.report("store")["tasks"]
        assert tasks[0] | {"last_crash_at": None} == {
            "name": "start", "state": "finished", "restartable": True, "runs": 6, "crashes": 5,
            "last_error": "key unreadable", "last_crash_at": None, "restart_in_s": None}


async def test_a_reload_tries_a_failed_start_at_once_with_the_new_config(tmp_path):
    log: list[str] = []
    parts = {}

    def build(runtime):
        def refusal():
            if runtime.config.site_name != "fixed":
                return "metrics.port 9464 is taken (change metrics.port)"
            return None
        parts["metrics"] = Part("metrics", log, refusal=refusal)
        parts["wan"] = Part("wan", log)
        return [parts["wan"], parts["metrics"]]

    loaded = loaded_config(tmp_path, restart_min_s=60, restart_max_s=60)  # no retry by itself
    async with Appliance(loaded, build=build, serve_control=False) as app:
        assert not app.started("metrics")
        await app.reconfigure(loaded_config(tmp_path, site_name="fixed", restart_min_s=60,
                                            restart_max_s=60))
        await asyncio.wait_for(parts["metrics"].up.wait(), 10)
        assert parts["metrics"].attempts == 2
    assert log == ["start wan", "reconfigure wan", "start metrics", "stop metrics", "stop wan"]


async def test_stopping_gives_up_a_start_being_retried_and_stops_the_rest(tmp_path):
    log: list[str] = []
    hanging = asyncio.Event()

    class Hangs(Part):
        async def __aenter__(self):
            self.attempts += 1
            if self.attempts == 1:
                raise OSError(98, "Address already in use")
            hanging.set()
            await asyncio.Event().wait()  # never starts: a start that hangs

    part = Hangs("sip", log)
    async with Appliance(loaded_config(tmp_path), build=lambda runtime: [Part("wan", log), part],
                         serve_control=False) as app:
        await asyncio.wait_for(hanging.wait(), 10)
        assert row(await app.call("status"), "sip")["summary"] == (
            "not started: [Errno 98] Address already in use (trying again now, attempt 2)")
    assert log == ["start wan", "stop wan"]
    assert app.supervisor.report("sip")["tasks"][0]["state"] == "stopped"
