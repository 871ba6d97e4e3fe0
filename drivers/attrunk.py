"""What the LTE and voice-modem trunks share: listeners, tasks, the AT channel, the technician
passthrough, finding a port by USB identity, and the asyncio shell of the modem supervisor.

The supervisor (:mod:`drivers.supervisor`) decides; this shell does. It feeds the core what
happened (the port opened or vanished, an init step or a rung finished, a poll's verdict),
runs the actions it asks for, one *activity* at a time (an init step, the first health
poll, a recovery rung, or the monitor that polls health and calls while in service), and
keeps one timer on the core's deadline: cancelled and re-armed whenever the deadline moves,
and fired with ``now = max(deadline, loop.time())``. A driver supplies its init steps, its
health poll, its monitor loop, its rungs and how it fails its calls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import pathlib
import time
from collections.abc import Awaitable, Callable

from drivers.at.channel import AtChannel
from drivers.at.core import AtResponse, RawConsumer
from drivers.at.passthrough import check_passthrough
from drivers.at.results import AtCommandError, AtPortClosed, AtTimeout, AtUnresponsive
from drivers.errors import DriverError
from drivers.logcontext import TrunkLog
from drivers.supervisor import (
    IN_SERVICE,
    Action,
    ActionKind,
    Input,
    InvalidInput,
    ModemSupervisor,
    Rung,
    SupervisorSettings,
    SupervisorState,
)
from drivers.trunk import HealthChanged, TrunkEvent, TrunkHealth, TrunkListener, TrunkState
from drivers.usbports import UsbPortId, find_tty
from drivers.usbreset import UsbReset, UsbResetUnavailable

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What an init step, a poll or a rung found: the supervisor input, and why in words."""

    input: Input
    detail: str = ""


InitStep = tuple[str, Callable[[], Awaitable[Outcome]]]
"""An init step: its name (shown while it runs) and the coroutine that does it."""

RUNG_WORDS = {
    Rung.REOPEN: "reopening the AT port",
    Rung.TOUCH_AUX: "waking the AT port through the modem's other AT port",
    Rung.RESET_BY_AT: "restarting the modem (AT+CFUN=1,1)",
    Rung.RESET_BY_AUX: "restarting the modem through its other AT port",
    Rung.RESET_BY_USB: "resetting the modem's USB connection",
}


class AtTrunkBase:
    kind: str
    max_calls = 1

    def __init__(self, name: str, *, command_timeout_s: float, sysfs: pathlib.Path,
                 dev: pathlib.Path, supervision: SupervisorSettings,
                 usb_reset_requests: pathlib.Path | None = None,
                 usb_reset_direct: bool = True, logger: logging.Logger = log) -> None:
        self.name = name
        self.log = TrunkLog(logger, name)
        self._command_timeout_s = command_timeout_s
        self._sysfs = sysfs
        self._dev = dev
        self._listeners: list[TrunkListener] = []
        self._tasks: set[asyncio.Task] = set()
        self._channel: AtChannel | None = None
        self._usb_reset = UsbReset(sysfs=sysfs, requests=usb_reset_requests,
                                   direct=usb_reset_direct)
        self._health = TrunkHealth(state=TrunkState.STARTING, reason="starting")
        self._supervisor = ModemSupervisor(supervision, steps=len(self._init_steps()))
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._activity: asyncio.Task | None = None
        self._activity_name = ""
        self._step_name = ""
        self._generation = 0
        self._inputs: collections.deque[tuple[Input | None, str, float | None]] = \
            collections.deque()
        self._feeding = False
        self._ever_in_service = False
        self.in_service_since: float | None = None
        """Loop time the modem last entered service (ready or limited), None out of it."""
        self.may_be_booting = True
        """Whether the modem may still be booting when its port opens (at start, after a
        reset, after it left USB), so the first init step gives it ``answer_wait_s`` to
        answer; False after we only reopened the port ourselves."""
        self._reopening = False
        self.recovery_log: collections.deque[dict] = collections.deque(maxlen=20)
        """The latest recovery actions and transitions, newest last, for 'jbc trunks'."""

    # -- for the driver to implement ---------------------------------------------------------

    def _init_steps(self) -> tuple[InitStep, ...]:
        raise NotImplementedError

    async def _poll(self) -> Outcome:
        """One health poll: HEALTHY, LIMITED (with the reason) or POLL_TIMEOUT."""
        raise NotImplementedError

    async def _monitor(self) -> None:
        """Poll health (and calls) until cancelled, feeding each verdict."""
        raise NotImplementedError

    def _fail_calls(self, reason: str) -> None:
        raise NotImplementedError

    def _refresh_health(self) -> None:
        raise NotImplementedError

    async def _rung(self, rung: Rung) -> Outcome | None:
        """Apply a rung this base does not know (the driver's own); None: no input, the
        port's loss or return says what happened."""
        return Outcome(Input.RUNG_FAILED, f"{rung} is not available on this modem")

    # -- listeners and tasks -----------------------------------------------------------------

    def add_listener(self, listener: TrunkListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def health(self) -> TrunkHealth:
        return self._health

    def _emit(self, event: TrunkEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self.log.exception("trunk listener failed on %s", type(event).__name__)

    def _set_health(self, health: TrunkHealth) -> None:
        if health != self._health:
            self._health = health
            self._emit(HealthChanged(trunk=self.name, health=health))

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- AT commands -------------------------------------------------------------------------

    async def _command(self, text: str, *, timeout_s: float | None = None, check: bool = True,
                       call_control: bool | None = None,
                       raw: RawConsumer | None = None) -> AtResponse:
        channel = self._channel
        if channel is None or not channel.is_open:
            raise AtPortClosed(f"{self.name}: the modem is not connected")
        return await channel.command(text, timeout_s=timeout_s or self._command_timeout_s,
                                     check=check, call_control=call_control, raw=raw)

    async def at_passthrough(self, command: str, *, timeout_s: float = 10.0) -> list[str]:
        """A technician's one command (see :mod:`drivers.at.passthrough` for what is
        refused and why); every line of the answer, final result last."""
        text = check_passthrough(command)
        response = await self._command(text, timeout_s=timeout_s, check=False)
        return [*response.lines, response.result.line]

    # -- ports -------------------------------------------------------------------------------

    def _locate(self, identity: UsbPortId | None, fixed: str | None) -> str | None:
        """The port's device path now: by USB identity first, else the configured path."""
        if identity is not None:
            tty = find_tty(identity, sysfs=self._sysfs, dev=self._dev)
            if tty is not None:
                return str(tty.device)
        if fixed and pathlib.Path(fixed).exists():
            return fixed
        return None

    def _on_opened(self, path: str) -> None:
        self._feed(Input.PORT_APPEARED, f"opened {path}")

    def _on_lost(self, reason: str) -> None:
        self.may_be_booting = not self._reopening
        self._reopening = False
        self._feed(Input.PORT_LOST, f"the AT port vanished ({reason})")

    # -- the supervisor's shell ----------------------------------------------------------------

    @property
    def supervisor_state(self) -> SupervisorState:
        return self._supervisor.state

    def _start_supervision(self) -> None:
        self._supervisor.start(asyncio.get_running_loop().time())
        self._execute(self._supervisor.take_actions())
        self._refresh_health()
        self._arm_timer()

    async def _stop_supervision(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._generation += 1
        self._stop_activity()
        await self._cancel_tasks()

    def _feed(self, given: Input | None, detail: str = "", timer_at: float | None = None
              ) -> None:
        """Give the core an input (or, with ``given`` None, the time ``timer_at``), run what
        it asks, and re-arm the timer. Inputs that arrive while one is being handled (a
        rung that drops the port calls back into here) wait their turn."""
        self._inputs.append((given, detail, timer_at))
        if self._feeding:
            return
        self._feeding = True
        loop = asyncio.get_running_loop()
        try:
            while self._inputs:
                given, detail, timer_at = self._inputs.popleft()
                previous = self._supervisor.state
                try:
                    if given is None:
                        self._supervisor.handle_timer(timer_at)
                    else:
                        self._supervisor.handle(given, loop.time(), detail)
                except InvalidInput:
                    self.log.exception("supervisor input dropped (a driver bug)")
                    continue
                self._after_input(previous, given or Input.TIMER, detail)
                self._execute(self._supervisor.take_actions())
                self._refresh_health()
        finally:
            self._feeding = False
        self._arm_timer()

    def _after_input(self, previous: SupervisorState, given: Input, detail: str) -> None:
        state = self._supervisor.state
        loop = asyncio.get_running_loop()
        if state is previous:
            return
        if state in IN_SERVICE and previous not in IN_SERVICE:
            self.in_service_since = loop.time()
            self._ever_in_service = True
        elif state not in IN_SERVICE:
            self.in_service_since = None
        entry = {"at": round(time.time(), 3), "from": previous.value, "to": state.value,
                 "input": given.value}
        if detail:
            entry["detail"] = detail
        self.recovery_log.append(entry)
        level = logging.INFO if state in (*IN_SERVICE, SupervisorState.INITIALISING) \
            else logging.WARNING
        self.log.log(level, "%s -> %s on %s%s", previous, state, given,
                     f" ({detail})" if detail else "")

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            kind = action.kind
            if kind is ActionKind.OPEN:
                self._channel.keep_open()
            elif kind is ActionKind.STOP:
                self._stop_activity()
            elif kind is ActionKind.FAIL_CALLS:
                self._fail_calls(action.reason)
            elif kind is ActionKind.INIT_STEP:
                name, step = self._init_steps()[action.step]
                self._step_name = name
                self._start_activity(f"init step {name!r}", step, Input.STEP_FAILED)
            elif kind is ActionKind.POLL:
                self._step_name = "first health poll"
                self._start_activity("first health poll", self._poll, Input.POLL_TIMEOUT)
            elif kind is ActionKind.MONITOR:
                self._start_activity("monitor", self._monitored, Input.POLL_TIMEOUT)
            else:  # RESET, RESET_MODEM
                self.recovery_log.append({"at": round(time.time(), 3), "rung": action.rung.value,
                                          "why": action.reason})
                self.log.warning("%s: %s", RUNG_WORDS[action.rung], action.reason)
                self._start_activity(f"rung {action.rung}", lambda r=action.rung: self._apply(r),
                                     Input.RUNG_FAILED)

    def _start_activity(self, name: str, work: Callable[[], Awaitable[Outcome | None]],
                        failure: Input) -> None:
        self._stop_activity()
        self._generation += 1
        generation = self._generation
        self._activity_name = name

        async def run() -> None:
            try:
                outcome = await work()
            except asyncio.CancelledError:
                raise
            except AtPortClosed:
                return  # the port's loss is an input of its own
            except DriverError as error:
                outcome = Outcome(failure, str(error))
            except Exception as error:
                self.log.exception("%s failed", name)
                outcome = Outcome(failure, f"{name} failed ({error!r})")
            if outcome is not None and generation == self._generation:
                self._activity = None
                if outcome.input is Input.RESETTING:
                    self.may_be_booting = True
                self._feed(outcome.input, outcome.detail)

        self._activity = self._spawn(run())

    def _stop_activity(self) -> None:
        activity, self._activity = self._activity, None
        if activity is not None and not activity.done():
            activity.cancel()

    async def _monitored(self) -> None:
        await self._monitor()

    def _arm_timer(self) -> None:
        deadline = self._supervisor.get_timer()
        if deadline == self._timer_deadline and (deadline is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        deadline = self._timer_deadline
        self._timer = None
        self._timer_deadline = None
        now = asyncio.get_running_loop().time()
        self._feed(None, "", max(deadline, now) if deadline is not None else now)

    # -- rungs every AT modem has ----------------------------------------------------------

    async def _apply(self, rung: Rung) -> Outcome | None:
        if rung is Rung.REOPEN:
            self._reopening = True
            self._channel.drop("reopening the AT port")
            return None  # the port's loss and return are the inputs
        if rung is Rung.RESET_BY_USB:
            return self._reset_usb()
        return await self._rung(rung)

    def _usb_identity(self) -> UsbPortId | None:
        """The AT port's USB identity, for the USB reset (None when unknown)."""
        return None

    async def _step_answers(self) -> Outcome:
        """Init step 'answers': ping until the modem answers. A modem that may be booting
        gets ``answer_wait_s``; one whose port we merely reopened, three pings."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        wait = settings.answer_wait_s if self.may_be_booting else settings.ping_timeout_s * 3
        deadline = loop.time() + wait
        while True:
            try:
                await self._command("AT", timeout_s=settings.ping_timeout_s)
                self.may_be_booting = False
                return Outcome(Input.STEP_OK)
            except (AtTimeout, AtUnresponsive, AtCommandError) as error:
                if loop.time() > deadline:
                    return Outcome(Input.STEP_FAILED, f"the modem does not answer AT ({error})")
                await asyncio.sleep(0.5)

    def _reset_usb(self) -> Outcome:
        identity = self._usb_identity()
        if identity is None:
            return Outcome(Input.RUNG_FAILED, "the modem's USB identity is unknown (not a USB "
                           "device?): it cannot be reset through USB")
        tty = find_tty(identity, sysfs=self._sysfs, dev=self._dev)
        if tty is None:
            return Outcome(Input.RUNG_FAILED, f"{identity} is not on USB: nothing to reset")
        try:
            how = self._usb_reset.reset(tty)
        except UsbResetUnavailable as error:
            return Outcome(Input.RUNG_FAILED, str(error))
        return Outcome(Input.RESETTING, "USB reset " + (
            "done" if how == "direct" else "asked of jbc-modem-reset.service"))

    # -- health ------------------------------------------------------------------------------

    def _lifecycle_health(self, where: str) -> tuple[TrunkState, str] | None:
        """The public state and reason while the modem is not in service (None when it is:
        then the driver's own verdict decides)."""
        sup = self._supervisor
        state = sup.state
        if state is SupervisorState.STARTING:
            return TrunkState.STARTING, f"waiting for the AT port ({where})"
        if state is SupervisorState.INITIALISING:
            public = TrunkState.RECOVERING if self._ever_in_service else TrunkState.STARTING
            return public, f"initialising the modem ({self._step_name})"
        if state is SupervisorState.RECOVERING:
            doing = RUNG_WORDS.get(sup.rung) if sup.rung else None
            if self._activity is None or not self._activity_name.startswith("rung"):
                doing = "waiting for the modem to come back"
            return TrunkState.RECOVERING, f"{doing}: {sup.reason}" if doing else sup.reason
        if state is SupervisorState.DOWN:
            reason = sup.reason
            if not sup.port_open:
                reason = f"{reason}: is the modem plugged in and powered? ({where})"
            return TrunkState.DOWN, reason
        return None
