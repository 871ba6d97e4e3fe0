"""Driving trunk drivers against the simulators: fast driver settings and an event log."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib

from drivers.trunk import HealthChanged, TrunkEvent, TrunkState

from .usb import UsbBus

FAST_LTE = dict(health_interval_s=0.5, call_poll_s=0.3, command_timeout_s=1.0,
                ping_timeout_s=0.5, late_grace_s=0.5, sync_timeout_s=0.5, port_wait_s=10.0,
                reset_wait_s=6.0, answer_wait_s=5.0, step_timeout_s=20.0, down_retry_s=5.0,
                sim_busy_wait_s=5.0, pcm_retry_s=3.0, no_audio_after_s=1.0,
                silent_after_s=1.5, settle_s=0.6, reopen_backoff=(0.1, 0.2, 0.4),
                settle_interval_s=0.3, poll_timeout_s=1.0)
"""Driver settings for the fast simulator timing (SimTiming.fast: a reboot takes 1 s)."""


def lte_settings(sim, bus: UsbBus, *, fast: bool = True, **overrides):
    """Driver settings for ``sim`` on ``bus``: FAST_LTE (or, not ``fast``, the driver's own
    defaults, for real-life timings) with ``overrides``."""
    from drivers.lte.trunk import LteSettings

    values = dict(name=f"lte-{sim.vendor.value}", usb_id=sim.usb_id,
                  usb_serial=sim.identity.serial, sysfs=bus.sysfs, dev=bus.dev,
                  **(FAST_LTE if fast else {}))
    values.update(overrides)
    return LteSettings(**values)


@contextlib.asynccontextmanager
async def lte_in_service(directory: pathlib.Path, profile, timing, *, fast: bool = True,
                         ready_within_s: float = 10.0, **overrides):
    """A simulated LTE modem (``profile``, ``timing``) on a USB bus under ``directory`` and
    its trunk (``lte_settings`` with ``fast`` and ``overrides``), once READY: yields
    (sim, trunk, event log)."""
    from drivers.lte.trunk import LteTrunk

    from .lte import LteModemSim

    bus = UsbBus(directory)
    sim = LteModemSim(bus, profile=profile, timing=timing)
    async with sim, LteTrunk(lte_settings(sim, bus, fast=fast, **overrides)) as trunk:
        log = EventLog(trunk)
        await log.wait_state(TrunkState.READY, within_s=ready_within_s)
        yield sim, trunk, log


class EventLog:
    """Collects a trunk's events and lets a test wait for one."""

    def __init__(self, trunk) -> None:
        self.events: list[TrunkEvent] = []
        self._changed = asyncio.Event()
        self.remove = trunk.add_listener(self._on_event)
        self.trunk = trunk

    def _on_event(self, event: TrunkEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, predicate, within_s: float = 10.0):
        async with asyncio.timeout(within_s):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    async def wait_event(self, kind, within_s: float = 10.0, **match):
        def predicate(event):
            return isinstance(event, kind) and all(
                getattr(event, k) == v for k, v in match.items())
        try:
            return await self.wait_for(predicate, within_s)
        except TimeoutError:
            raise AssertionError(f"no {kind.__name__} {match} within {within_s} s; saw "
                                 f"{[type(e).__name__ for e in self.events]} "
                                 f"health={self.trunk.health()}") from None

    async def wait_state(self, *states: TrunkState, within_s: float = 10.0) -> None:
        if self.trunk.health().state in states:
            return
        try:
            await self.wait_for(lambda e: isinstance(e, HealthChanged)
                                and e.health.state in states and
                                self.trunk.health().state in states, within_s)
        except TimeoutError:
            raise AssertionError(f"trunk not {[s.value for s in states]} within {within_s} s: "
                                 f"{self.trunk.health()}") from None

    def clear(self) -> None:
        self.events.clear()


class MediaThread:
    """Plays the media engine's part from its own thread (as pjsua2 will): puts one uplink
    frame every 20 ms into the call's queue and takes everything from the downlink queue. Like
    the gateway's media threads it runs SCHED_RR where permitted (``gateway.realtime_priority``'s
    default), so a busy test host does not stall it into gaps the driver is then blamed for."""

    def __init__(self, call, *, source=None, prefill: int = 2) -> None:
        import threading

        from jbcbench.audio import ToneGenerator

        self.call = call
        self.source = source if source is not None else ToneGenerator(1000.0, 8000)
        self.prefill = prefill
        self.received = bytearray()
        self.frames_put = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"media-{call.id}",
                                        daemon=True)
        self._lock = threading.Lock()

    def start(self) -> MediaThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._drain()

    @property
    def heard(self) -> bytes:
        self._drain()
        return bytes(self.received)

    def _drain(self) -> None:
        with self._lock:
            while len(self.call.downlink):  # one consumer: a non-empty queue stays so
                self.received += self.call.downlink.get()

    def _next(self) -> bytes:
        return self.source.frame()

    def _run(self) -> None:
        from appliance.gateway import scheduling
        from appliance.gateway.config import GatewayConfig

        raised = scheduling.raise_this_thread(GatewayConfig().realtime_priority, "bench media")
        try:
            self._pace()
        finally:
            scheduling.restore(raised)

    def _pace(self) -> None:
        import time

        for _ in range(self.prefill):
            self.call.uplink.put(self._next())
            self.frames_put += 1
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            n += 1
            delay = start + n * 0.02 - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            self.call.uplink.put(self._next())
            self.frames_put += 1
            self._drain()


async def until(predicate, within_s: float = 5.0, poll_s: float = 0.05) -> None:
    """Wait until ``predicate()`` holds (it reads state owned by others: polling is honest)."""
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await asyncio.sleep(poll_s)


FAST_V253 = dict(ringback_goes_away_s=0.3, ringback_never_came_s=0.6, no_answer_s=2,
                 cid_wait_s=0.6, ring_gap_s=0.8, health_interval_s=0.5, line_retry_s=0.5,
                 command_timeout_s=1.0, ping_timeout_s=0.5, late_grace_s=0.5,
                 sync_timeout_s=0.5, port_wait_s=10.0, reset_wait_s=6.0, answer_wait_s=5.0,
                 down_retry_s=5.0, no_audio_after_s=1.0, silent_after_s=1.5,
                 reopen_backoff=(0.1, 0.2, 0.4), busy_after_answer_s=1.0)


def v253_settings(sim, bus: UsbBus, **overrides):
    from drivers.v253.trunk import VoiceModemSettings

    values = dict(name=f"pots-{sim.identity.serial}", usb_id=sim.usb_id,
                  usb_serial=sim.identity.serial, interface=0, sysfs=bus.sysfs, dev=bus.dev,
                  **FAST_V253)
    values.update(overrides)
    return VoiceModemSettings(**values)
