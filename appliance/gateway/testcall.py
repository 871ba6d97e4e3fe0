"""The technician's test call ('jbc test-call') as a pure call core.
"""

from __future__ import annotations

from typing import Any

from appliance.directory.model import Directory
from drivers.trunk import CallAlerting, CallAnswered, CallEnded, DtmfReceived, EndCause

from . import policy
from .callcore import (
    Action,
    Begin,
    CallCore,
    Dial,
    DialFailed,
    Dialled,
    EarlyAudio,
    HangupTrunk,
    Listen,
    Listened,
    Phase,
    Preempted,
    RecordAnswered,
    SelectTrunks,
    Shutdown,
    SlotFreed,
    StartRecord,
    Timeout,
    TrunkAudioProblem,
    TrunksSelected,
    rows,
)
from .config import GatewayConfig
from .policy import CallKind


class TestCallCore(CallCore):
    """'jbc test-call': dial, wait for the answer, send a tone while listening, hang up.

    ``routing -Begin-> selecting -TrunksSelected-> dialing -Dialled-> dialled
    -CallAnswered-> listening -Listened-> ended``; DialFailed tries the next trunk (unless one
    was named); a Timeout, CallEnded, Preempted or Shutdown before the answer end it."""

    kind = CallKind.TEST
    __test__ = False  # not a pytest class
    TABLE = {
        (Phase.ROUTING, Begin): "_begin",
        (Phase.SELECTING, TrunksSelected): "_selected",
        (Phase.DIALING, Dialled): "_dialled",
        (Phase.DIALING, DialFailed): "_dial_failed",
        (Phase.DIALLED, CallAnswered): "_answered",
        (Phase.DIALLED, Timeout): "_not_answered",
        (Phase.DIALLED, CallEnded): "_trunk_ended",
        (Phase.DIALLED, Preempted): "_preempted",
        **rows((Phase.DIALLED,), [CallAlerting, EarlyAudio, DtmfReceived, TrunkAudioProblem],
               "_noted"),
        (Phase.LISTENING, Listened): "_listened",
        **rows((Phase.ROUTING, Phase.SELECTING, Phase.DIALING, Phase.DIALLED), [Shutdown],
               "_stopping"),
    }

    def __init__(self, key: str, config: GatewayConfig, *, number: str, only: str | None,
                 actor: str, directory: Directory) -> None:
        super().__init__(key, config)
        self.number = number
        self.only = only
        self.directory = directory
        self.from_party = f"test-call ({actor})"
        self.to_party = number
        self.candidates: list[str] = []
        self.dial_started_at: float | None = None
        self.report: dict[str, Any] = {"number": number, "trunk": None, "connected": False,
                                       "audio_heard": False}

    def _begin(self, event: Begin, now: float) -> tuple[Phase, list[Action]]:
        if self.directory.is_emergency(self.number):
            self.report["error"] = "refusing to place a test call to an emergency number"
            return self._end("rejected", self.report["error"], [])
        return Phase.SELECTING, [SelectTrunks(emergency=False, only=self.only)]

    def _selected(self, event: TrunksSelected, now: float) -> tuple[Phase, list[Action]]:
        selection = event.selection
        if selection.outcome is not policy.SelectionOutcome.CHOSEN:
            self.report["error"] = selection.reason
            return self._end("failed", f"no trunk: {selection.reason}", [])
        self.candidates = list(selection.candidates)
        self.dial_started_at = now
        return self._dial_next()

    def _dial_next(self) -> tuple[Phase, list[Action]]:
        if not self.candidates:
            return Phase.ENDED, []
        name = self.candidates.pop(0)
        self.report["trunk"] = name
        return Phase.DIALING, [Dial(name, self.number, False)]

    def _dial_failed(self, event: DialFailed, now: float) -> tuple[Phase, list[Action]]:
        if event.gone:
            return self._dial_next()
        self.report["error"] = event.message
        self.result = policy.record_result(event.cause, answered=False, caller_gave_up=False)
        self.cause = f"dial failed: {event.message}"
        if event.cause in (EndCause.FAILED, EndCause.NO_SERVICE) and not self.only:
            return self._dial_next()
        return Phase.ENDED, []

    def _dialled(self, event: Dialled, now: float) -> tuple[Phase, list[Action]]:
        self.trunk, self.trunk_call = event.trunk, event.call
        self.result = self.cause = ""
        self.report.pop("error", None)
        self.deadline = now + self.config.test_call_timeout_s
        return Phase.DIALLED, [StartRecord()]

    def _not_answered(self, event: Timeout, now: float) -> tuple[Phase, list[Action]]:
        self.report["error"] = "not answered in time"
        return self._end("no-answer", "not answered in time", [])

    def _answered(self, event: CallAnswered, now: float) -> tuple[Phase, list[Action]]:
        self.answered, self.answered_at, self.deadline = True, now, None
        self.report["connected"] = True
        self.report["setup_s"] = round(now - (self.dial_started_at or now), 2)
        self.result = "answered"
        return Phase.LISTENING, [RecordAnswered(), Listen(self.config.test_call_listen_s)]

    def _trunk_ended(self, event: CallEnded, now: float) -> tuple[Phase, list[Action]]:
        self.report["error"] = f"call ended: {event.cause.value}"
        return self._end(policy.record_result(event.cause, answered=False,
                                              caller_gave_up=False), event.cause.value, [])

    def _preempted(self, event: Preempted, now: float) -> tuple[Phase, list[Action]]:
        self.report["error"] = f"pre-empted by emergency call {event.by}"
        return self._end("failed", self.report["error"], [HangupTrunk(), SlotFreed()])

    def _listened(self, event: Listened, now: float) -> tuple[Phase, list[Action]]:
        level = event.level_dbfs
        self.report["audio_level_dbfs"] = level
        self.report["audio_heard"] = level is not None and level > -50.0
        return self._end("answered", "test call completed", [])
