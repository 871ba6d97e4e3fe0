"""The WAN monitor subsystem in-process on loopback: events on the bus, the journal, the
headline, technician commands, and the state surviving a restart."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time

import pytest

from appliance.config import ApplianceConfig, LoadedConfig
from appliance.control.commands import CommandContext, CommandError, Peer, Role
from appliance.lifecycle import Appliance
from appliance.runtime import HealthLevel
from appliance.wan.config import WanConfig, WanTargetConfig
from appliance.wan.events import WanState, WanStateChanged
from appliance.wan.service import UNCONFIGURED, WanMonitor
from jbcbench.cloud_edge import DnsResponder, SipEdge, loopback_socket

ADMIN = Peer(pid=1, uid=0, gid=0, user="alice", role=Role.ADMIN)
NAME = "sip.lo.cloud.test"


@contextlib.asynccontextmanager
async def running(tmp_path, wan: WanConfig):
    """The daemon's own lifecycle (supervision, stop deadlines, journal) with the monitor only."""
    config = dataclasses.replace(ApplianceConfig(), wan=wan, daemon=dataclasses.replace(
        ApplianceConfig().daemon, state_dir=tmp_path / "state", runtime_dir=tmp_path / "run"))
    events: list[WanStateChanged] = []

    def build(runtime):
        runtime.bus.subscribe(WanStateChanged, events.append)
        return [WanMonitor(runtime)]

    loaded = LoadedConfig(config=config, source="test", digest="0" * 64)
    async with Appliance(loaded, build=build, serve_control=False) as app:
        yield app.by_name("wan"), app.runtime, events


async def wait_for_state(monitor: WanMonitor, state: WanState, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while monitor.state is not state:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {monitor.state} ({monitor.cause}), wanted {state}")
        await asyncio.sleep(0.02)
    return time.monotonic()


async def test_without_an_interface_or_targets_it_says_it_is_not_configured(tmp_path):
    async with running(tmp_path, WanConfig()) as (monitor, runtime, events):
        assert runtime.headline.state == UNCONFIGURED and runtime.headline.needs_attention
        assert "wan.interface and wan.targets" in runtime.headline.cause
        health = monitor.health()
        assert health.level is HealthLevel.WARNING and "not configured" in health.summary
        report = monitor.report()
        assert report["configured"] is False and report["state"] == UNCONFIGURED
        assert monitor.state is WanState.STARTING, "no verdict is invented"
        context = CommandContext(peer=ADMIN, args={})
        with pytest.raises(CommandError) as refused:
            await runtime.commands.get("failover.force").handler(context)
        assert refused.value.code == "not_configured"
        # Nothing was started that could ever reach a verdict: no decision core, no link
        # watch, no probe task, no timer (it is armed at the core's deadline only).
        assert monitor.core is None and monitor.linkwatch is None
        running_tasks = {task.get_name() for task in asyncio.all_tasks()}
        assert not {name for name in running_tasks
                    if name.startswith("wan:") or name == "linkwatch"}, running_tasks
        assert events == [] and monitor.state is WanState.STARTING


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="probes bind to a device: needs CAP_NET_RAW")
async def test_monitor_decides_publishes_journals_and_resumes_after_a_restart(tmp_path):
    edge = SipEdge(name="lo")
    sip_sock = loopback_socket(socket.SOCK_DGRAM)
    await edge.serve_udp(sip_sock)
    responder = DnsResponder({NAME: ["127.0.0.1"]})
    dns_sock = loopback_socket(socket.SOCK_DGRAM)
    await responder.serve(dns_sock)
    wan = WanConfig(
        interface="lo", require_default_route=False, resolvers=("127.0.0.1",),
        dns_port=dns_sock.getsockname()[1], hold_down_s=1.0, interval_s=0.25,
        round_timeout_s=0.5, retry_interval_s=0.1, targets=(
            WanTargetConfig(name="lo-sip", role="cloud", region="lo", kind="sip-options",
                            server_name=NAME, port=sip_sock.getsockname()[1]),
            WanTargetConfig(name="anchor", role="anchor", kind="icmp", address="127.0.0.2"),
        ))
    try:
        async with running(tmp_path, wan) as (monitor, runtime, events):
            await wait_for_state(monitor, WanState.ONLINE, 5.0)
            assert runtime.headline.state == "online" and not runtime.headline.needs_attention
            assert runtime.headline.owner == "wan"
            assert monitor.health().level is HealthLevel.OK
            report = monitor.report()
            assert report["dns_cache"] == {NAME: ["127.0.0.1"]}, "resolved through our resolver"
            targets = {t["name"]: t for t in report["targets"]}
            assert targets["lo-sip"]["last"].startswith("ok") and \
                "SIP 200 OK" in targets["lo-sip"]["last"]
            assert targets["dns:127.0.0.1"]["last_outcome"] == "ok"

            edge.status = 503  # the only region: the cloud cannot serve
            await wait_for_state(monitor, WanState.OUTAGE, 5.0)
            last = events[-1]
            assert (last.previous, last.state) == (WanState.ONLINE, WanState.OUTAGE)
            assert last.cause.startswith("cloud degraded: lo answer 503")
            entry = runtime.journal.query(subsystem="wan")[-1]
            assert entry.kind == "transition" and entry.details["state"] == "outage"
            assert entry.details["evidence"]["rounds"], "the evidence names the failed probes"
            assert runtime.headline.state == "outage" and runtime.headline.needs_attention

            force = runtime.commands.get("failover.force")
            assert force.role is Role.ADMIN
            result = await force.handler(CommandContext(peer=ADMIN, args={"reason": "drill"}))
            assert result["state"] == "forced" and result["forced_by"] == ADMIN.describe()
            assert events[-1].cause == "failover forced by alice: drill"
            assert runtime.journal.query(subsystem="wan")[-1].actor == ADMIN.describe()
            with pytest.raises(CommandError) as again:
                await force.handler(CommandContext(peer=ADMIN, args={}))
            assert again.value.code == "already_forced"
        # the daemon stops here, in forced failover
        edge.status = None
        async with running(tmp_path, wan) as (monitor, runtime, events):
            assert monitor.state is WanState.FORCED, "a forced failover survives a restart"
            assert runtime.journal.query(subsystem="wan")[-1].kind == "resumed"
            release = runtime.commands.get("failover.release")
            loop = asyncio.get_running_loop()
            deadline = time.monotonic() + 3.0
            while not monitor.core.cloud_confirmed_up(loop.time()):  # fresh probes say so
                assert time.monotonic() < deadline, monitor.report()
                await asyncio.sleep(0.02)
            await release.handler(CommandContext(peer=ADMIN, args={}))
            assert monitor.state is WanState.RECOVERING
            await wait_for_state(monitor, WanState.ONLINE, 3.0)
            edge.silent = True
            await wait_for_state(monitor, WanState.OUTAGE, 5.0)
            assert events[-1].cause.startswith("cloud down: no cloud region answers")
        edge.silent = False
        async with running(tmp_path, wan) as (monitor, runtime, events):
            assert monitor.state is WanState.OUTAGE, "an outage survives a restart"
            assert "resumed after a restart during an outage" in monitor.cause
            await wait_for_state(monitor, WanState.RECOVERING, 3.0)
            await wait_for_state(monitor, WanState.ONLINE, 3.0)
            assert [e.state for e in events] == [WanState.RECOVERING, WanState.ONLINE]
    finally:
        await edge.close()
        await responder.close()
