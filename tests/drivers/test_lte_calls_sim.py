"""The LTE driver against the simulated Quectel EG25 and SIMCom SIM7600."""

from __future__ import annotations

import pytest

from drivers.lte.trunk import LteTrunk
from drivers.trunk import (
    CallAlerting,
    CallAnswered,
    CallEnded,
    EndCause,
    TrunkState,
)
from jbcbench.modems.farend import FarEnd
from jbcbench.modems.harness import EventLog, lte_settings
from jbcbench.modems.lte import QUECTEL_EG25, SIMCOM_SIM7600, LteModemSim
from jbcbench.modems.timing import SimTiming

pytestmark = pytest.mark.integration

PROFILES = [pytest.param(QUECTEL_EG25, id="eg25"), pytest.param(SIMCOM_SIM7600, id="sim7600")]


@pytest.mark.parametrize("profile", PROFILES)
async def test_outgoing_call_answered_then_far_end_hangs_up(bus, profile):
    async with LteModemSim(bus, profile=profile, timing=SimTiming.fast()) as sim:
        sim.far_end = FarEnd(answer_after_rings=1, hangup_after_s=0.5)
        async with LteTrunk(lte_settings(sim, bus)) as trunk:
            log = EventLog(trunk)
            await log.wait_state(TrunkState.READY)
            call = await trunk.dial("+15557654321")
            await log.wait_event(CallAlerting, call=call)
            await log.wait_event(CallAnswered, call=call)
            ended = await log.wait_event(CallEnded, call=call)
            assert ended.cause is EndCause.NORMAL
