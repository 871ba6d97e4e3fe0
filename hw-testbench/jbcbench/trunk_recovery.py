"""How fast each trunk fault of issue 13 is recovered, on the simulators with real-life timings.

Every scenario runs a driver with its *default* settings against a simulated modem with
``SimTiming()`` (a restart takes 10 s, a command 20 ms), injects one fault, ends it, and
measures from the fault's end to the trunk being READY again. A hung modem's fault only ends
when the ladder restarts it: there ``seconds`` runs from the rung that cured it, and
``from_start_s`` from the moment it hung (detection, at the default 5 s health interval,
and the rungs that did not help, included). The goal, per issue 13: within 30 s of the
fault's end; and the trunk must never take anything else down (each scenario has its own
modem).

Scenarios run concurrently (each on its own simulated USB bus): the whole set takes about
a minute. :func:`measure_all` returns one JSON-able dict: per scenario the seconds, the goal,
whether it was met, and what happened (rungs tried, states seen).
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Awaitable, Callable

from drivers.lte.trunk import LteTrunk
from drivers.trunk import CallAnswered, CallEnded, HealthChanged, TrunkState
from drivers.v253.trunk import VoiceModemSettings, VoiceModemTrunk

from .modems.farend import AudioFarEnd, FarEnd
from .modems.harness import EventLog, MediaThread, lte_in_service, lte_settings, until
from .modems.lte import QUECTEL_EG25, SIMCOM_SIM7600, LteModemSim
from .modems.timing import SimTiming
from .modems.usb import UsbBus
from .modems.v253 import USR_5637, V253ModemSim

GOAL_S = 30.0


def lte(sim: LteModemSim, bus: UsbBus, **changes) -> LteTrunk:
    """A trunk with the driver's default settings (but ``changes``) for ``sim``."""
    return LteTrunk(lte_settings(sim, bus, fast=False, **changes))


def in_service(root: pathlib.Path, profile, **changes):
    """``profile`` on real-life timings and its trunk on default settings, once READY."""
    return lte_in_service(root, profile, SimTiming(), fast=False, ready_within_s=60.0,
                          **changes)


def rungs(trunk) -> list[str]:
    return [entry["rung"] for entry in trunk.recovery_log if "rung" in entry]


def last_rung_at(trunk) -> float:
    """Wall time the last rung was applied (the recovery log's clock)."""
    return [entry["at"] for entry in trunk.recovery_log if "rung" in entry][-1]


def states(log: EventLog) -> list[str]:
    seen: list[str] = []
    for event in log.of(HealthChanged):
        if not seen or seen[-1] != event.health.state.value:
            seen.append(event.health.state.value)
    return seen


async def absent_at_start(root: pathlib.Path) -> dict:
    """Finding 1: the modem is not there when the trunk starts; it is plugged in later."""
    bus = UsbBus(root)
    sim = LteModemSim(bus, profile=QUECTEL_EG25, timing=SimTiming())
    async with lte(sim, bus) as trunk:
        log = EventLog(trunk)
        await asyncio.sleep(3.0)
        absent = trunk.health()
        started = time.monotonic()
        sim.plug()  # powered up now: it boots (RDY, SIM busy, searching...)
        try:
            await log.wait_state(TrunkState.READY, within_s=60.0)
            seconds = time.monotonic() - started
        finally:
            await sim.__aexit__(None, None, None)
    return {"seconds": seconds, "from": "modem plugged in", "while_absent": absent.state.value,
            "reason_while_absent": absent.reason}


async def late_replies(root: pathlib.Path, vendor) -> dict:
    """Finding 3: AT+COPS? answered 3 s late out of order, then every 4th reply 3 s late for
    20 s: the trunk should not leave READY at all."""
    async with in_service(root, vendor) as (sim, trunk, log):
        log.clear()
        sim.faults.late_out_of_order["AT+COPS?"] = 3.0
        await asyncio.sleep(12.0)
        sim.faults.late_every, sim.faults.late_every_s = 4, 3.0
        await asyncio.sleep(20.0)
        sim.faults.late_every = 0
        ended = time.monotonic()
        await log.wait_state(TrunkState.READY, within_s=60.0)
        return {"seconds": time.monotonic() - ended, "from": "fault ends",
                "states_during_fault": states(log),
                "late_answers_dropped": trunk.details()["late_answers_dropped"]}


async def volte_not_ready(root: pathlib.Path) -> dict:
    """Finding 4: IMS unregistered on an LTE attach (limited), then registered again."""
    async with in_service(root, QUECTEL_EG25) as (sim, trunk, log):
        sim.ims_available = False
        await log.wait_state(TrunkState.LIMITED, within_s=30.0)
        during = trunk.health().reason
        sim.ims_available = True
        ended = time.monotonic()
        await log.wait_state(TrunkState.READY, within_s=60.0)
        return {"seconds": time.monotonic() - ended, "from": "IMS registers",
                "state_during_fault": "limited", "reason_during_fault": during}


async def hung_port(root: pathlib.Path, case: str) -> dict:
    """Finding 5: a hung AT port, with faults that leave one rung able to cure it. Only a
    reset ends this fault, so the time runs from its start."""
    async with in_service(root, QUECTEL_EG25) as (sim, trunk, log):
        sim.faults.hang(cured_by=case)
        started = time.monotonic()
        await log.wait_state(TrunkState.RECOVERING, within_s=60.0)
        detected = time.monotonic() - started
        await log.wait_state(TrunkState.READY, within_s=120.0)
        return {"seconds": time.time() - last_rung_at(trunk),
                "from": "the rung that cured it", "from_start_s": time.monotonic() - started,
                "detected_s": detected, "rungs": rungs(trunk)}


async def silent_downlink(root: pathlib.Path) -> dict:
    """Finding 6: a call whose downlink carries only digital silence; reported during the
    call, and the modem is reset after it."""
    async with in_service(root, SIMCOM_SIM7600) as (sim, trunk, log):
        sim.faults.silent_audio = True
        sim.far_end = FarEnd(answer_after_rings=1, audio=AudioFarEnd.tone_source())
        call = await trunk.dial("5557654321")
        await log.wait_event(CallAnswered, call=call, within_s=30.0)
        media = MediaThread(call).start()
        answered = time.monotonic()
        await until(lambda: trunk.health().audio == "silent-downlink", within_s=30.0)
        detected = time.monotonic() - answered
        await trunk.hangup(call)
        media.stop()
        sim.faults.silent_audio = False
        ended = time.monotonic()
        await log.wait_state(TrunkState.RECOVERING, within_s=30.0)
        await log.wait_state(TrunkState.READY, within_s=60.0)
        return {"seconds": time.monotonic() - ended, "from": "the call ends",
                "detected_s": detected, "rungs": rungs(trunk)}


async def first_call_after_restart(root: pathlib.Path) -> dict:
    """Finding 8: after a restart, calls are rejected for 4 s after registering; the first
    call placed once the trunk is READY must go through."""
    bus = UsbBus(root)
    sim = LteModemSim(bus, profile=QUECTEL_EG25, timing=SimTiming())
    sim.faults.reject_after_registering_s = 4.0
    async with sim, lte(sim, bus) as trunk:
        log = EventLog(trunk)
        await log.wait_state(TrunkState.READY, within_s=60.0)
        sim.reboot()
        started = time.monotonic()
        await log.wait_state(TrunkState.RECOVERING, within_s=30.0)
        await log.wait_state(TrunkState.READY, within_s=60.0)
        seconds = time.monotonic() - started
        sim.far_end = FarEnd(answer_after_rings=1)
        call = await trunk.dial("5557654321")
        outcome = await log.wait_for(lambda e: isinstance(e, CallAnswered | CallEnded)
                                     and e.call is call, within_s=30.0)
        if isinstance(outcome, CallAnswered):
            await trunk.hangup(call)
        return {"seconds": seconds, "from": "the modem restarts (AT+CFUN=1,1)",
                "first_call": "answered" if isinstance(outcome, CallAnswered) else
                f"ended: {outcome.cause.value}"}


async def usb_brown_out(root: pathlib.Path) -> dict:
    """The modem drops off USB for 5 s (brown-out, quirk 9) and comes back."""
    async with in_service(root, SIMCOM_SIM7600) as (sim, trunk, log):
        sim.unplug()
        await log.wait_state(TrunkState.RECOVERING, within_s=10.0)
        gone = trunk.health()
        await asyncio.sleep(5.0)
        sim.plug()
        ended = time.monotonic()
        await log.wait_state(TrunkState.READY, within_s=60.0)
        return {"seconds": time.monotonic() - ended, "from": "the modem is back on USB",
                "sim_shown_while_gone": gone.sim, "signal_shown_while_gone": gone.signal_dbm}


async def voice_modem_hung(root: pathlib.Path) -> dict:
    """Finding 5 on the analog trunk: the voice modem stops answering; reopen, then USB."""
    bus = UsbBus(root)
    sim = V253ModemSim(bus, profile=USR_5637, timing=SimTiming())
    settings = VoiceModemSettings(name="pots", usb_id=sim.usb_id,
                                  usb_serial=sim.identity.serial, sysfs=bus.sysfs, dev=bus.dev)
    async with sim, VoiceModemTrunk(settings) as trunk:
        log = EventLog(trunk)
        await log.wait_state(TrunkState.READY, within_s=60.0)
        sim.faults.at_silent = True
        started = time.monotonic()
        await log.wait_state(TrunkState.RECOVERING, within_s=60.0)
        detected = time.monotonic() - started
        await log.wait_state(TrunkState.READY, within_s=120.0)
        return {"seconds": time.time() - last_rung_at(trunk),
                "from": "the rung that cured it", "from_start_s": time.monotonic() - started,
                "detected_s": detected, "rungs": rungs(trunk)}


SCENARIOS: dict[str, Callable[[pathlib.Path], Awaitable[dict]]] = {
    "absent_device_at_start": absent_at_start,
    "late_replies_eg25": lambda root: late_replies(root, QUECTEL_EG25),
    "late_replies_sim7600": lambda root: late_replies(root, SIMCOM_SIM7600),
    "volte_not_ready": volte_not_ready,
    "hung_port_touch_aux": lambda root: hung_port(root, "touch-aux"),
    "hung_port_reset_by_aux": lambda root: hung_port(root, "reset-by-aux"),
    "hung_port_reset_by_at": lambda root: hung_port(root, "reset-by-at"),
    "hung_port_reset_by_usb": lambda root: hung_port(root, "reset-by-usb"),
    "silent_downlink": silent_downlink,
    "first_call_after_restart": first_call_after_restart,
    "usb_brown_out": usb_brown_out,
    "voice_modem_hung": voice_modem_hung,
}


async def measure_all(root: pathlib.Path, only: list[str] | None = None) -> dict:
    names = only or list(SCENARIOS)

    async def one(name: str) -> dict:
        try:
            result = await SCENARIOS[name](root / name)
        except Exception as error:  # a failed scenario is a figure too
            return {"error": f"{type(error).__name__}: {error}", "met": False}
        result["seconds"] = round(result["seconds"], 2)
        for key in ("detected_s", "from_start_s"):
            if key in result:
                result[key] = round(result[key], 2)
        result["goal_s"] = GOAL_S
        result["met"] = result["seconds"] <= GOAL_S and result.get(
            "first_call", "answered") == "answered"
        return result

    results = await asyncio.gather(*(one(name) for name in names))
    out = dict(zip(names, results, strict=True))
    out["all_met"] = all(r.get("met") for r in results)
    return out
