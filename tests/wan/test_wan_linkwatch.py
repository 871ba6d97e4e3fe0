"""The netlink link watch in a test namespace: carrier, routes, addresses, device loss, and
resync after the kernel drops events (ENOBUFS)."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from appliance.wan.linkwatch import LinkWatch
from appliance.wan.observations import LinkStatus
from jbcbench.topology import Topology, can_build_namespaces

pytestmark = [pytest.mark.integration, pytest.mark.netns,
              pytest.mark.skipif(not can_build_namespaces()[0],
                                 reason=can_build_namespaces()[1])]


@pytest.fixture
def topo():
    with Topology("jbclw") as topology:
        app, peer = topology.namespace("app"), topology.namespace("peer")
        topology.link(app, "wan0", peer, "up0", a_address="10.90.0.2/24",
                      b_address="10.90.0.1/24")
        app.ip("route", "add", "default", "via", "10.90.0.1")
        yield topology


class Recorder:
    def __init__(self) -> None:
        self.statuses: list[tuple[float, LinkStatus]] = []
        self.changed = asyncio.Event()

    def __call__(self, status: LinkStatus) -> None:
        self.statuses.append((time.monotonic(), status))
        self.changed.set()

    async def until(self, predicate, timeout_s: float = 2.0) -> float:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.statuses and predicate(self.statuses[-1][1]):
                return self.statuses[-1][0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                last = self.statuses[-1][1] if self.statuses else None
                raise AssertionError(f"last status: {last}")
            self.changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self.changed.wait()
            except TimeoutError:
                pass


async def run_command(*argv: str) -> float:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(*argv)
    assert await process.wait() == 0
    return started


async def test_carrier_routes_addresses_and_device_loss_are_seen(topo):
    app, peer = topo.namespaces["app"], topo.namespaces["peer"]
    recorder = Recorder()
    watch = LinkWatch("wan0", recorder, netns=app.name)
    task = asyncio.create_task(watch.run())
    try:
        await recorder.until(lambda s: s.problem is None)
        first = recorder.statuses[-1][1]
        assert first.addresses == ("10.90.0.2",) and first.default_route and first.carrier

        cut = await run_command("ip", "-n", peer.name, "link", "set", "up0", "down")
        seen = await recorder.until(lambda s: s.problem == "carrier lost on wan0")
        assert seen - cut < 1.0, "carrier loss is seen within a second"
        await run_command("ip", "-n", peer.name, "link", "set", "up0", "up")
        await recorder.until(lambda s: s.problem is None)

        await run_command("ip", "-n", app.name, "route", "del", "default")
        await recorder.until(lambda s: s.problem == "default route via wan0 lost")
        await run_command("ip", "-n", app.name, "route", "add", "default", "via", "10.90.0.1",
                          "metric", "50")
        await recorder.until(lambda s: s.problem is None)

        await run_command("ip", "-n", app.name, "addr", "flush", "dev", "wan0")
        await recorder.until(lambda s: s.problem == "wan0 has no IP address")

        await run_command("ip", "-n", app.name, "link", "del", "wan0")
        await recorder.until(lambda s: s.problem == "wan0 is gone (no such interface)")
        assert watch.resyncs == 0
    finally:
        task.cancel()


async def test_lost_events_are_recovered_by_a_fresh_dump(topo):
    app = topo.namespaces["app"]
    app.ip("link", "add", "noise0", "type", "veth", "peer", "name", "noise1")
    app.ip("link", "set", "noise0", "up")
    recorder = Recorder()
    # A tiny receive buffer, so that a burst of events while the loop is busy overflows it.
    watch = LinkWatch("wan0", recorder, netns=app.name, rcvbuf=4096)
    task = asyncio.create_task(watch.run())
    try:
        await recorder.until(lambda s: s.problem is None)
        commands = "".join(f"address add 10.91.{i // 250}.{i % 250 + 1}/32 dev noise0\n"
                           for i in range(1500))
        commands += "route del default\n"
        # The loop is deliberately blocked while the kernel queues the burst: the burst, and
        # the route removal hidden in it, overflow the socket buffer.
        subprocess.run(["ip", "-n", app.name, "-batch", "-"],  # noqa: ASYNC221 - on purpose
                       input=commands, text=True, check=True)
        time.sleep(0.3)  # noqa: ASYNC251 - blocking on purpose
        await recorder.until(lambda s: s.problem == "default route via wan0 lost", 5.0)
        assert watch.resyncs >= 1, "ENOBUFS was reported and handled by dumping again"
    finally:
        task.cancel()
