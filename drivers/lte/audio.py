"""The LTE trunk's call audio: switched on the vendor's way, watched, switched off.

Quectel carries PCM on its NMEA port once ``AT+QPCMV=1,0`` is set (done at init); SIMCom
needs ``AT+CPCMREG=1`` once the call is connected, which it refuses for a moment (retried
for ``pcm_retry_s``, reference 1.8), and ``AT+CPCMREG=0`` after. While the call is up the
audio port's health is checked every half second (:meth:`drivers.pcm.PcmAudio.problem`):
what it finds is shown in the trunk's health (``audio``), and put on the call's downlink
queue for the gateway to tell the caller. After a call whose audio failed visibly, the
monitor asks the supervisor for a modem reset (``audio-failed``); a downlink that was merely
silent only counts when it never carried a sound in the whole call.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from drivers.at.results import AtCommandError, AtError
from drivers.pcm import PcmAudio
from drivers.serialport import PortLost
from drivers.trunk import CallState, TrunkCall

from .vendors import SIMCOM

if TYPE_CHECKING:
    from .trunk import LteTrunk

RESET_AFTER = ("no-downlink", "uplink-stalled", "port-lost")


class LteCallAudio:
    def __init__(self, trunk: LteTrunk) -> None:
        self._trunk = trunk
        self._pcm: PcmAudio | None = None
        self._call: TrunkCall | None = None
        self.failure: str | None = None
        """The current or last call's visible audio failure (None when fine)."""
        self.reset_wanted = False
        self.last_stats: dict | None = None

    @property
    def pcm(self) -> PcmAudio | None:
        return self._pcm

    def start(self, call: TrunkCall) -> None:
        if self._call is call:
            return
        self._call = call
        self.failure = None
        self.reset_wanted = False
        self._trunk._spawn(self._run(call))

    def stop(self, call: TrunkCall | None = None) -> None:
        """The call (any call when None) ended or is being failed: close its audio."""
        pcm = self._pcm
        if call is not None and self._call is not call and (pcm is None or pcm.call is not call):
            return
        ended, self._call, self._pcm = self._call, None, None
        never_sounded = True
        trunk = self._trunk
        if pcm is not None:
            pcm.close()
            pcm.call.downlink.problem = None
            self.last_stats = pcm.stats.to_json()
            never_sounded = pcm.never_sounded
            if (trunk.profile is SIMCOM and not trunk._closing and trunk._channel is not None
                    and trunk._channel.is_open):
                trunk._spawn(self._quietly("AT+CPCMREG=0"))
        if ended is not None:
            ended.downlink.problem = None
            if self.failure in RESET_AFTER or (self.failure == "silent-downlink"
                                               and never_sounded):
                self.reset_wanted = True

    def take_failure(self) -> str | None:
        """The failure that wants a reset; the reset is asked for once."""
        self.reset_wanted = False
        return self.failure

    def clear_failure(self) -> None:
        self.failure = None
        self.reset_wanted = False

    async def _run(self, call: TrunkCall) -> None:
        trunk = self._trunk
        s = trunk.settings
        log = trunk.log.for_call(call.id)
        if trunk.profile is SIMCOM and not await self._switch_on_simcom(call):
            return
        path = trunk.locate_audio()
        if path is None or call.state is not CallState.ACTIVE:
            if path is None:
                log.error("audio port not found")
                self._fail("port-lost")
            return
        pcm = PcmAudio(call, name=trunk.name, no_audio_after_s=s.no_audio_after_s,
                       silent_after_s=s.silent_after_s)
        try:
            await pcm.open(path)
        except PortLost as error:
            log.error("cannot open the audio port: %s", error)
            self._fail("port-lost")
            return
        if call.state is not CallState.ACTIVE or self._call is not call:
            pcm.close()
            return
        self._pcm = pcm
        while True:
            await asyncio.sleep(0.5)
            if call.state is not CallState.ACTIVE or self._pcm is not pcm:
                return
            problem = pcm.problem()
            if problem != self.failure:
                if problem:
                    log.warning("audio problem: %s", problem)
                self.failure = problem
                trunk._refresh_health()

    async def _switch_on_simcom(self, call: TrunkCall) -> bool:
        trunk = self._trunk
        loop = asyncio.get_running_loop()
        deadline = loop.time() + trunk.settings.pcm_retry_s
        while call.state is CallState.ACTIVE:
            try:
                await trunk._command("AT+CPCMREG=1")
                return True
            except AtCommandError:
                if loop.time() > deadline:
                    trunk.log.for_call(call.id).error(
                        "AT+CPCMREG=1 refused for %.0f s: no audio", trunk.settings.pcm_retry_s)
                    self._fail("no-downlink")
                    return False
                await asyncio.sleep(0.3)  # refused until the call is really connected
            except AtError:
                return False
        return False

    def _fail(self, problem: str) -> None:
        self.failure = problem
        if self._call is not None:
            self._call.downlink.problem = problem
        self._trunk._refresh_health()

    async def _quietly(self, text: str) -> None:
        with contextlib.suppress(AtError):
            await self._trunk._command(text)
