"""The LTE trunk: a Quectel EG25/EC25 or SIMCom SIM7600 voice module as an outside line.

Its life is the :class:`~drivers.supervisor.ModemSupervisor`'s table; this module supplies
what is LTE about it:

* the init steps: does it answer; echo off and verbose errors; who made it (``AT+CGMI``/
  ``AT+CGMM``, which picks the vendor profile); has its firmware USB voice; the SIM (busy
  after boot, PIN); the vendor's setup commands. A step whose command times out tries it
  once more, so a modem that answers some commands late still initialises (finding 3);
* the health poll (SIM, registration both domains, operator, signal, IMS) and the verdict
  of :mod:`drivers.lte.health`;
* the monitor: health every ``health_interval_s`` (faster while settling), ``AT+CLCC``
  while calls exist;
* the recovery ladder: wake the AT port through the other AT port (quirk 8); restart the
  module with ``AT+CFUN=1,1`` on the other AT port, then on the main one (the main one is
  usually the hung one, quirk 4); reset its USB device (through the privileged helper under
  the shipped unit, :mod:`drivers.usbreset`). Ports are found again by USB identity, never
  by ttyUSB index.

Liveness is judged by command replies only; URCs prove nothing (quirk 4). Calls are tracked
by :class:`~drivers.lte.calls.CallTracker`; audio by :mod:`drivers.lte.audio`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pathlib
import re

from drivers.at.channel import AtChannel
from drivers.at.core import AtCore, AtResponse
from drivers.at.results import (
    AtCommandError,
    AtError,
    AtTimeout,
    AtUnresponsive,
    ResultKind,
)
from drivers.attrunk import AtTrunkBase, InitStep, Outcome
from drivers.errors import DriverConfigError
from drivers.supervisor import IN_SERVICE, Input, Rung, SupervisorSettings, SupervisorState
from drivers.trunk import (
    CallAlerting,
    CallAnswered,
    CallDirection,
    CallEnded,
    CallState,
    DtmfReceived,
    EndCause,
    TrunkBusy,
    TrunkCall,
    TrunkError,
    TrunkHealth,
    TrunkState,
)
from drivers.usbports import UsbPortId, identify_port

from . import ceer, parse
from .audio import LteCallAudio
from .calls import CallTracker, ResultCode
from .health import LteStatus, voice_verdict
from .vendors import COMMON_INIT, KNOWN_USB, QUECTEL, Vendor, VendorProfile, detect

log = logging.getLogger(__name__)

_UNANSWERED = "\x00unanswered"
"""What a health query that got no answer yields (its last value stands)."""

EMERGENCY_WITH_SIM = ("112", "911")
EMERGENCY_WITHOUT_SIM = ("112", "911", "000", "08", "110", "999", "118", "119")
DIAL_CHARS = re.compile(r"^\+?[0-9*#]{1,40}$")
LADDER = (Rung.TOUCH_AUX, Rung.RESET_BY_AUX, Rung.RESET_BY_AT, Rung.RESET_BY_USB)
"""Cheapest first. AT+CFUN=1,1 goes through the other AT port before the main one: the main
one is usually the hung one (quirk 4), and the other takes it just as well when it is not."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LteSettings:
    name: str
    at_port: str | None = None
    """A fixed AT port path (or /dev/serial/by-id link). Its USB identity is read from sysfs
    when it is found (at start, or later when the modem appears) so that it can be found
    again after a reset."""
    audio_port: str | None = None
    usb_id: str | None = None
    """vendor:product; with it, ports are found by USB identity alone."""
    usb_serial: str | None = None
    at_interface: int | None = None
    aux_interface: int | None = None
    audio_interface: int | None = None
    sysfs: pathlib.Path = pathlib.Path("/sys")
    dev: pathlib.Path = pathlib.Path("/dev")
    usb_reset_requests: pathlib.Path | None = None
    """Where to ask the privileged helper for a USB reset (jbcd's runtime dir/modem-reset);
    None: only a direct write to ``authorized`` is tried."""
    usb_reset_direct: bool = True
    """Try writing the USB device's ``authorized`` attribute ourselves first (that fails
    under the shipped unit, whose /sys is read-only, and the helper is asked)."""
    pin: str | None = None
    emergency_numbers: tuple[str, ...] = EMERGENCY_WITH_SIM
    emergency_numbers_without_sim: tuple[str, ...] = EMERGENCY_WITHOUT_SIM
    health_interval_s: float = 5.0
    settle_interval_s: float = 1.0
    """Health poll interval for the first ``settle_for_s`` in service, while the SIM wakes up
    and the modem registers."""
    settle_for_s: float = 20.0
    settle_s: float = 4.0
    """After registering, the trunk is nobody's first choice this long (quirk 6: the first
    call after a replug fails for 2-4 s)."""
    poll_timeout_s: float = 2.0
    """Timeout of the health and call-list queries (a healthy modem answers in ms)."""
    call_poll_s: float = 2.0
    """AT+CLCC while any call exists (ModemManager uses 2 s, oFono 0.5 s)."""
    command_timeout_s: float = 5.0
    ping_timeout_s: float = 1.0
    dial_timeout_s: float = 10.0
    answer_timeout_s: float = 10.0
    hangup_timeout_s: float = 10.0
    late_grace_s: float = 1.0
    sync_timeout_s: float = 1.0
    answer_wait_s: float = 20.0
    """Init step 'answers': ping this long for the first reply (a module just plugged in
    or reset is still booting)."""
    sim_busy_wait_s: float = 15.0
    """Init step 'SIM': +CME ERROR: 14 (SIM busy) is normal this long after boot."""
    port_wait_s: float = 45.0
    step_timeout_s: float = 60.0
    reset_wait_s: float = 45.0
    poll_failures_before_reset: int = 2
    down_retry_s: float = 60.0
    unusable_retry_s: float = 600.0
    pcm_retry_s: float = 12.0
    """SIMCom: keep retrying AT+CPCMREG=1 this long after the call connects (reference 1.8)."""
    no_audio_after_s: float = 3.0
    silent_after_s: float = 5.0
    """A downlink of nothing but digital silence this long is reported ('silent-downlink')."""
    reset_after_audio_failure: bool = True
    reopen_backoff: tuple[float, ...] = (0.5, 1.0)
    """Waits between attempts to find and reopen a vanished port (a sysfs scan each)."""

    def supervision(self) -> SupervisorSettings:
        return SupervisorSettings.of(self, LADDER)


class LteTrunk(AtTrunkBase):
    kind = "lte"

    def __init__(self, settings: LteSettings) -> None:
        super().__init__(settings.name, command_timeout_s=settings.command_timeout_s,
                         sysfs=settings.sysfs, dev=settings.dev,
                         supervision=settings.supervision(),
                         usb_reset_requests=settings.usb_reset_requests,
                         usb_reset_direct=settings.usb_reset_direct, logger=log)
        self.settings = settings
        self.tracker = CallTracker(settings.name)
        self.profile: VendorProfile | None = None
        self.model: str | None = None
        self.firmware: str | None = None
        self.imei: str | None = None
        self.status = LteStatus()
        self.audio = LteCallAudio(self)
        self._identity_at: UsbPortId | None = None
        self._identity_audio: UsbPortId | None = None
        self._identity_aux: UsbPortId | None = None
        self._pin_refused: str | None = None
        self._tracker_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._alerted: set[int] = set()
        self._aux_silent_since: float | None = None
        """When the other AT port last failed to answer (a dead port is not tried twice in a
        row: the next rung goes on at once)."""
        self._closing = False
        self._resolve_identities()  # a bad usb_id or interface is a config error: say so now

    # -- Trunk protocol --------------------------------------------------------------------

    async def __aenter__(self) -> LteTrunk:
        s = self.settings
        self._channel = AtChannel(
            self._locate_at, name=self.name, on_urc=self._on_urc, on_lost=self._on_lost,
            on_opened=self._on_opened, backoff=s.reopen_backoff,
            core=AtCore(late_grace=s.late_grace_s, sync_timeout=s.sync_timeout_s))
        self._start_supervision()
        return self

    async def __aexit__(self, *exc) -> None:
        self._closing = True
        await self._stop_supervision()
        self.audio.stop()
        if self._channel is not None and self._channel.is_open and self.tracker.live():
            with contextlib.suppress(AtError):
                await self._channel.command("AT+CHUP", timeout_s=2.0, check=False)
        self.tracker.fail_all("trunk stopped")
        self._flush_tracker()
        if self._channel is not None:
            await self._channel.close()
        if self._tracker_timer is not None:
            self._tracker_timer.cancel()

    def calls(self) -> list[TrunkCall]:
        return self.tracker.calls()

    async def dial(self, number: str, *, emergency: bool = False) -> TrunkCall:
        number = number.strip()
        if not DIAL_CHARS.match(number):
            raise TrunkError(f"{number!r} is not a number this modem can dial",
                             EndCause.REJECTED)
        listed = (self.settings.emergency_numbers_without_sim if self.status.sim != "ready"
                  else self.settings.emergency_numbers)
        emergency = emergency or number in listed
        health = self._health
        if emergency:
            if not health.can_place_emergency_calls:
                raise TrunkError(f"{self.name}: {health.reason or health.state.value}",
                                 EndCause.NO_SERVICE if health.state is TrunkState.DOWN
                                 else EndCause.FAILED)
        elif not health.can_place_calls:
            cause = EndCause.NO_SERVICE if health.state is TrunkState.LIMITED else EndCause.FAILED
            raise TrunkError(f"{self.name}: {health.reason or health.state.value}", cause)
        if any(c.state is not CallState.ENDED for c in self.tracker.live()):
            raise TrunkBusy()
        loop = asyncio.get_running_loop()
        call = self.tracker.dial_started(number, emergency=emergency, now=loop.time())
        try:
            # LTE modules answer a voice ATD with OK at once and report progress as URCs, so
            # a NO CARRIER arriving now is the previous call's, not this dial's result.
            await self._command(f"ATD{number};", timeout_s=self.settings.dial_timeout_s,
                                call_control=False)
        except AtCommandError as error:
            self.tracker.dial_failed(call)
            raise TrunkError(f"{self.name}: the modem refused to dial: {error.result.describe()}",
                             _dial_error_cause(error)) from None
        except AtError as error:
            self.tracker.dial_failed(call)
            self._wake.set()
            raise TrunkError(f"{self.name}: dialling failed: {error}") from None
        self.tracker.want_poll()  # drivers follow ATD with AT+CLCC (reference 1.5)
        self._after_tracker()
        return call

    async def answer(self, call: TrunkCall) -> None:
        if call.state is not CallState.RINGING or call.direction is not CallDirection.INCOMING:
            raise TrunkError(f"call {call.id} is {call.state.value}, not ringing")
        try:
            response = await self._command("ATA", timeout_s=self.settings.answer_timeout_s,
                                           check=False)
        except AtError as error:
            self.tracker.want_poll()
            self._wake.set()
            raise TrunkError(f"{self.name}: answering failed: {error}") from None
        if response.result.kind is ResultKind.OK:
            self.tracker.answered(call)
            self._after_tracker()
            return
        self.tracker.end(call, EndCause.MISSED,
                         f"the caller hung up while we answered ({response.result.line})")
        self._after_tracker()
        raise TrunkError(f"{self.name}: could not answer: {response.result.line}", EndCause.MISSED)

    async def hangup(self, call: TrunkCall) -> None:
        if call.state is CallState.ENDED:
            return
        self.tracker.hangup_requested(call)
        idx = self.tracker.idx_of(call)
        if self.profile is QUECTEL and idx is not None:
            # 16 normal clearing; 17 user busy when we turn a ringing call down
            cause = 17 if call.state is CallState.RINGING else 16
            text = f"AT+QHUP={cause},{idx}"
        else:
            text = "AT+CHUP"
        try:
            await self._command(text, timeout_s=self.settings.hangup_timeout_s)
        except AtError as error:
            self.log.for_call(call.id).warning("%s failed (%s); ending the call anyway and "
                                               "checking the modem's call list", text, error)
        self.tracker.end(call, EndCause.LOCAL_HANGUP)
        self.tracker.want_poll()  # catch zombies (quirk 19)
        self._after_tracker()

    async def send_dtmf(self, call: TrunkCall, digits: str) -> None:
        if call.state is not CallState.ACTIVE:
            raise TrunkError(f"call {call.id} is {call.state.value}; DTMF needs an answered call")
        for digit in digits.upper():
            if digit not in "0123456789*#ABCD":
                raise TrunkError(f"{digit!r} is not a DTMF digit", EndCause.REJECTED)
        for digit in digits.upper():
            try:
                await self._command(f"AT+VTS={digit}")
            except AtError as error:
                raise TrunkError(f"{self.name}: sending DTMF {digit} failed: {error}") from None

    # -- extras for the appliance (jbc trunks / jbc modem ... at) --------------------------

    def details(self) -> dict:
        channel = self._channel
        return {
            "vendor": self.profile.vendor.value if self.profile else None,
            "imei": self.imei,
            "at_port": channel.path if channel else None,
            "usb": str(self._identity_at) if self._identity_at else None,
            "supervisor": self.supervisor_state.value,
            "reopens": channel.reopen_count if channel else 0,
            "late_answers_dropped": channel.stale_responses if channel else 0,
            "recoveries": self.recoveries,
            "recovery_log": list(self.recovery_log)[-8:],
            "last_call_audio": self.audio.last_stats,
        }

    @property
    def recoveries(self) -> int:
        return self._supervisor.recoveries

    # -- ports and identity ----------------------------------------------------------------

    def _resolve_identities(self) -> None:
        s = self.settings
        defaults: dict[str, int] = {}
        if s.usb_id:
            vendor_product = UsbPortId.parse(s.usb_id, 0)
            known = KNOWN_USB.get((vendor_product.vendor, vendor_product.product))
            defaults = dict(known.default_usb) if known else {}
            at = s.at_interface if s.at_interface is not None else defaults.get("at")
            if at is None:
                raise DriverConfigError(f"{self.name}: unknown modem {s.usb_id}; give "
                                        "at_interface")
            self._identity_at = UsbPortId.parse(s.usb_id, at, s.usb_serial)
        elif s.at_port:
            # the modem may be absent now (unplugged, or resetting): then this runs again
            # when its port appears
            self._identity_at = identify_port(s.at_port, sysfs=s.sysfs)
            if self._identity_at is not None:
                known = KNOWN_USB.get((self._identity_at.vendor, self._identity_at.product))
                defaults = dict(known.default_usb) if known else {}
        base = self._identity_at
        if base is None:
            return
        audio = s.audio_interface if s.audio_interface is not None else defaults.get("audio")
        if s.audio_port:
            self._identity_audio = identify_port(s.audio_port, sysfs=s.sysfs)
        elif audio is not None:
            self._identity_audio = dataclasses.replace(base, interface=audio)
        aux = s.aux_interface if s.aux_interface is not None else defaults.get("aux")
        if aux is not None:
            self._identity_aux = dataclasses.replace(base, interface=aux)

    def _usb_identity(self) -> UsbPortId | None:
        return self._identity_at

    def _locate_at(self) -> str | None:
        return self._locate(self._identity_at, self.settings.at_port)

    def locate_audio(self) -> str | None:
        return self._locate(self._identity_audio, self.settings.audio_port)

    def _on_opened(self, path: str) -> None:
        if self._identity_at is None or (self.settings.audio_port
                                         and self._identity_audio is None):
            self._resolve_identities()
        super()._on_opened(path)

    def _on_lost(self, reason: str) -> None:
        self.audio.stop()
        super()._on_lost(reason)

    # -- supervision hooks -------------------------------------------------------------------

    def _init_steps(self) -> tuple[InitStep, ...]:
        return (("answers", self._step_answers), ("basics", self._step_basics),
                ("identify", self._step_identify), ("voice support", self._step_voice),
                ("SIM", self._step_sim), ("setup", self._step_setup))

    def _after_input(self, previous: SupervisorState, given: Input, detail: str) -> None:
        super()._after_input(previous, given, detail)
        if self.supervisor_state is not previous and self.supervisor_state not in IN_SERVICE:
            self.status = LteStatus()  # nothing the modem said before may outlive this
            self.audio.clear_failure()

    def _fail_calls(self, reason: str) -> None:
        self.audio.stop()
        self.tracker.fail_all(f"modem recovery: {reason}")
        self._after_tracker()

    async def _step_basics(self) -> Outcome:
        for text in ("ATE0", "ATV1", "AT+CMEE=2"):
            with contextlib.suppress(AtCommandError):
                await self._init_command(text)
        return Outcome(Input.STEP_OK)

    async def _step_identify(self) -> Outcome:
        manufacturer = (await self._init_command("AT+CGMI")).lines
        model = (await self._init_command("AT+CGMM")).lines
        firmware = (await self._init_command("AT+CGMR", check=False)).lines
        self.model = model[0] if model else None
        self.firmware = firmware[0].removeprefix("Revision:").removeprefix("+CGMR:").strip() \
            if firmware else None
        self.profile = detect(manufacturer[0] if manufacturer else "", self.model or "")
        if self.profile is None:
            return Outcome(Input.UNUSABLE, f"unsupported modem {manufacturer} {model}; "
                           "expected a Quectel EG25/EC25 or SIMCom SIM7600")
        with contextlib.suppress(AtCommandError):
            imei = (await self._init_command("AT+CGSN")).lines
            self.imei = imei[0] if imei else None
        return Outcome(Input.STEP_OK)

    async def _step_voice(self) -> Outcome:
        try:
            await self._init_command(self.profile.voice_probe)
        except AtCommandError:
            return Outcome(Input.UNUSABLE, "the modem firmware has no USB voice support "
                           f"({self.profile.voice_probe} answered ERROR)")
        return Outcome(Input.STEP_OK)

    async def _step_sim(self) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.sim_busy_wait_s
        while True:
            state = await self._read_sim(attempts=3)
            if state != "busy" or loop.time() > deadline:
                break
            await asyncio.sleep(0.5)  # +CME ERROR: 14 right after boot (quirk 15)
        if state == "pin-required":
            await self._enter_pin()
        return Outcome(Input.STEP_OK)

    async def _step_setup(self) -> Outcome:
        for text, required in (*COMMON_INIT, *self.profile.init):
            try:
                await self._init_command(text)
            except AtCommandError as error:
                if required:
                    return Outcome(Input.STEP_FAILED, f"initialisation failed: {error}")
                self.log.info("optional %s refused: %s", text, error)
        self.log.info("%s %s (%s) initialised", self.profile.vendor.value, self.model,
                      self.firmware)
        return Outcome(Input.STEP_OK)

    async def _init_command(self, text: str, *, check: bool = True) -> AtResponse:
        """An init command, tried again (twice) if it timed out: a modem that answers now
        and then late must still initialise (with every 4th reply 3 s late it never did)."""
        for _attempt in range(2):
            try:
                return await self._command(text, check=check)
            except AtTimeout as error:
                self.log.info("%s timed out (%s); trying it again", text, error)
        return await self._command(text, check=check)

    async def _read_sim(self, *, attempts: int = 1) -> str:
        try:
            for attempt in range(attempts):
                try:
                    response = await self._command("AT+CPIN?",
                                                   timeout_s=self.settings.poll_timeout_s)
                    break
                except AtTimeout:
                    if attempt == attempts - 1:
                        raise
        except AtCommandError as error:
            state = {10: "missing", 13: "failure", 14: "busy", 15: "wrong"}.get(
                error.cme, "error")
        else:
            value = (response.line_with("+CPIN:") or "").upper()
            state = {"READY": "ready", "SIM PIN": "pin-required",
                     "SIM PUK": "puk-required"}.get(value, value.lower() or "unknown")
        self.status.sim = state
        return state

    async def _enter_pin(self) -> None:
        pin = self.settings.pin
        if not pin or self._pin_refused == pin:
            return
        retries = None
        with contextlib.suppress(AtCommandError):
            response = await self._command(self.profile.pin_retries_query)
            payload = response.line_with(self.profile.pin_retries_prefix)
            retries = parse.parse_pin_retries(payload) if payload else None
        if retries is not None and retries < 2:
            self._pin_refused = pin
            self.log.error("not entering the SIM PIN: only %d attempt(s) left before the "
                           "PUK lock; enter it by hand", retries)
            return
        try:
            await self._command(f'AT+CPIN="{pin}"')
        except AtCommandError as error:
            self._pin_refused = pin
            self.log.error("the SIM refused the configured PIN (%s); not trying it again",
                           error.result.describe())
            return
        for _ in range(20):
            await asyncio.sleep(0.25)
            if await self._read_sim() != "pin-required":
                break

    async def _poll(self) -> Outcome:
        """One health poll: what the SIM, the network and IMS say, and the verdict."""
        try:
            await self._poll_health()
        except (AtTimeout, AtUnresponsive) as error:
            return Outcome(Input.POLL_TIMEOUT, f"the modem stopped answering ({error})")
        verdict = self._verdict()
        if verdict.limited:
            return Outcome(Input.LIMITED, verdict.reason)
        return Outcome(Input.HEALTHY)

    async def _poll_health(self) -> None:
        """Ask the modem for its SIM, registration (both domains), operator, signal and IMS
        state. A query that gets no answer keeps its last value: one late reply is a slow
        modem, not a hung one. Only a poll in which nothing answered raises AtTimeout."""
        status = self.status
        answered = 0
        missed_in_row = 0
        round_began = asyncio.get_running_loop().time()

        async def query(text: str, prefix: str) -> str | None:
            nonlocal answered, missed_in_row
            if missed_in_row >= 2:
                return _UNANSWERED  # the round is over: not one more try
            try:
                response = await self._command(text, check=False,
                                               timeout_s=self.settings.poll_timeout_s)
            except AtUnresponsive as error:
                self.log.info("%s unanswered (%s); ending this round", text, error)
                missed_in_row = 2
                return _UNANSWERED
            except AtTimeout as error:
                missed_in_row += 1
                self.log.info("%s unanswered this round (%s)", text, error)
                return _UNANSWERED
            answered += 1
            missed_in_row = 0
            return response.line_with(prefix)

        try:
            sim = await self._read_sim()
            answered += 1
        except (AtTimeout, AtUnresponsive) as error:
            self.log.info("AT+CPIN? unanswered this round (%s)", error)
            missed_in_row = 2 if isinstance(error, AtUnresponsive) else 1
            sim = status.sim
        if sim == "pin-required" and self.settings.pin and self._pin_refused != self.settings.pin:
            await self._enter_pin()
        payload = await query("AT+CREG?", "+CREG:")
        if payload is not _UNANSWERED:
            status.cs = parse.parse_registration(payload) if payload else None
        payload = await query("AT+CEREG?", "+CEREG:")
        if payload is not _UNANSWERED:
            status.ps = parse.parse_registration(payload) if payload else None
        payload = await query("AT+COPS?", "+COPS:")
        if payload is not _UNANSWERED:
            status.operator, status.cops_act = parse.parse_cops(payload) if payload else (
                None, None)
        payload = await query("AT+CSQ", "+CSQ:")
        if payload is not _UNANSWERED:
            status.rssi = parse.parse_csq(payload) if payload else None
        profile = self.profile
        payload = await query(profile.ims_query, profile.ims_prefix)
        if payload is None:
            status.ims = None
        elif payload is not _UNANSWERED:
            status.ims = (parse.parse_quectel_ims(payload) if profile.vendor is Vendor.QUECTEL
                          else parse.parse_cireg(payload))
        if not answered:
            heard = self._channel.last_answer_at
            if heard is None or heard < round_began:
                raise AtTimeout("no health query was answered")
            self.log.info("no health query answered in time this round, but the modem "
                          "answered late: slow, not hung")
        self._refresh_health()

    def _verdict(self):
        loop = asyncio.get_running_loop()
        self.status.note_time(loop.time())
        return voice_verdict(self.status, now=loop.time(), settle_s=self.settings.settle_s,
                             pin_configured=bool(self.settings.pin))

    async def _monitor(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        next_health = loop.time() + min(s.settle_interval_s, s.health_interval_s)
        next_calls = loop.time()
        while True:
            now = loop.time()
            calls_up = bool(self.tracker.live())
            wait = next_health - now
            if calls_up or self.tracker.poll_wanted:
                wait = min(wait, next_calls - now)
            self._wake.clear()
            if wait > 0 and not self.tracker.poll_wanted and not self.tracker.releases_pending:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            now = loop.time()
            try:
                if self.tracker.releases_pending:
                    await self._release_strays()
                if self.tracker.poll_wanted or (self.tracker.live() and now >= next_calls):
                    await self._poll_calls()
                    next_calls = loop.time() + s.call_poll_s
                if now >= next_health:
                    since = self.in_service_since or now
                    settling = now - since < s.settle_for_s or self._health.state is not \
                        TrunkState.READY
                    next_health = now + (min(s.settle_interval_s, s.health_interval_s)
                                         if settling else s.health_interval_s)
                    outcome = await self._poll()
                    self._feed(outcome.input, outcome.detail)
            except (AtTimeout, AtUnresponsive) as error:
                next_health = loop.time() + s.ping_timeout_s
                self._feed(Input.POLL_TIMEOUT, f"the modem stopped answering ({error})")
            if self.audio.reset_wanted and not self.tracker.live():
                failure = self.audio.take_failure()
                if s.reset_after_audio_failure:
                    self._feed(Input.AUDIO_FAILED, f"the last call's audio failed ({failure})")
            if not self._supervisor.in_service:
                return  # a verdict ended the service: not one more command from here

    async def _poll_calls(self) -> None:
        taken_at = asyncio.get_running_loop().time()
        response = await self._command("AT+CLCC", check=False,
                                       timeout_s=self.settings.poll_timeout_s)
        if not response.ok:
            return
        reports = [r for r in (parse.parse_clcc(line[6:]) for line in response.lines
                               if line.startswith("+CLCC:")) if r is not None]
        self.tracker.snapshot(reports, taken_at)
        self._after_tracker()

    async def _release_strays(self) -> None:
        for idx in self.tracker.take_releases():
            self.log.warning("releasing modem call %d (waiting call or zombie)", idx)
            command = f"AT+QHUP=17,{idx}" if self.profile is QUECTEL else f"AT+CHLD=1{idx}"
            with contextlib.suppress(AtCommandError):
                await self._command(command)

    # -- the recovery ladder's LTE rungs ------------------------------------------------------

    async def _rung(self, rung: Rung) -> Outcome | None:
        if rung is Rung.TOUCH_AUX:
            return await self._touch_aux()
        if rung is Rung.RESET_BY_AT:
            try:
                await self._command("AT+CFUN=1,1", timeout_s=self.settings.ping_timeout_s * 2)
            except AtError as error:
                return Outcome(Input.RUNG_FAILED, f"AT+CFUN=1,1 not taken ({error})")
            return Outcome(Input.RESETTING, "AT+CFUN=1,1 taken")
        if rung is Rung.RESET_BY_AUX:
            return await self._on_aux("AT+CFUN=1,1", resetting=True)
        return await super()._rung(rung)

    async def _touch_aux(self) -> Outcome:
        """Write AT to the module's other AT port, then ping the main one (quirk 8). When the
        main port answers AT already, its modem is what hangs, not the port: touching helps
        nothing and the ladder goes straight on to a restart."""
        try:
            await self._command("AT", timeout_s=self.settings.ping_timeout_s)
        except AtError:
            pass
        else:
            return Outcome(Input.RUNG_FAILED, "the AT port answers AT but the modem does "
                           "not answer its queries: it needs a restart")
        touched = await self._on_aux("AT", resetting=False)
        if touched.input is Input.RUNG_FAILED and "no other AT port" in touched.detail:
            return touched
        try:
            await self._command("AT", timeout_s=self.settings.ping_timeout_s)
        except AtError as error:
            return Outcome(Input.RUNG_FAILED, f"the AT port still does not answer ({error})")
        return Outcome(Input.ANSWERS, "the AT port answers again after touching the other one")

    async def _on_aux(self, text: str, *, resetting: bool) -> Outcome:
        path = self._locate(self._identity_aux, None)
        if path is None:
            return Outcome(Input.RUNG_FAILED, "the modem has no other AT port (or it is gone)")
        loop = asyncio.get_running_loop()
        if self._aux_silent_since is not None and loop.time() - self._aux_silent_since < 30.0:
            return Outcome(Input.RUNG_FAILED, f"{path} did not answer a moment ago either")
        aux = AtChannel(path, name=f"{self.name}-aux",
                        core=AtCore(late_grace=0.2, sync_timeout=0.5))
        try:
            await aux.open()
            response = await aux.command(text, timeout_s=self.settings.ping_timeout_s,
                                         check=False)
        except AtError as error:
            self._aux_silent_since = loop.time()
            return Outcome(Input.RUNG_FAILED, f"{text} on {path}: {error}")
        finally:
            await aux.close()
        self._aux_silent_since = None
        if resetting:
            if response.ok:
                return Outcome(Input.RESETTING, f"{text} taken on {path}")
            return Outcome(Input.RUNG_FAILED, f"{text} on {path}: {response.result.line}")
        return Outcome(Input.ANSWERS, f"{path} answered {response.result.line}")

    # -- health ----------------------------------------------------------------------------

    def _refresh_health(self) -> None:
        where = str(self._identity_at) if self._identity_at else self.settings.at_port
        lifecycle = self._lifecycle_health(where or "no port configured")
        verdict = self._verdict()
        self.tracker.no_service_reason = verdict.no_service
        if lifecycle is not None:
            state, reason = lifecycle
        elif verdict.limited:
            state, reason = TrunkState.LIMITED, verdict.reason
        else:
            state, reason = TrunkState.READY, ""
        status = self.status
        act = status.access_technology
        dbm = parse.signal_dbm(status.rssi)
        self._set_health(TrunkHealth(
            state=state, reason=reason, model=self.model, firmware=self.firmware,
            sim=status.sim,
            registration=status.registration.name if status.registration else None,
            operator=status.operator,
            access_technology=parse.ACCESS_TECHNOLOGIES.get(act) if act is not None else None,
            signal_dbm=dbm, signal_bars=parse.signal_bars(dbm) if status.rssi is not None
            else None, ims=None if status.ims is None else ("ready" if status.ims
                                                            else "not-ready"),
            audio=self.audio.failure,
            active_calls=sum(1 for c in self.tracker.live() if c.state is not CallState.ENDED)))

    # -- URCs ------------------------------------------------------------------------------

    def _on_urc(self, line: str) -> None:
        now = asyncio.get_running_loop().time()
        tracker = self.tracker
        status = self.status
        in_service = self._supervisor.in_service
        if line == "RDY":
            self._feed(Input.REBOOTED, "the modem restarted by itself (RDY)")
            return
        if line == "RING" or line.startswith("+CRING:"):
            if in_service:
                tracker.ring(now)
        elif line.startswith("+CLIP:"):
            tracker.clip(parse.parse_clip(line[6:]), now)
        elif line.startswith('+QIND: "ccinfo"') or line.startswith("+QIND: ccinfo"):
            report = parse.parse_ccinfo(line[7:])
            if report is not None:
                tracker.report(report, now)
        elif line.startswith("+CLCC:"):
            report = parse.parse_clcc(line[6:])
            if report is not None:
                tracker.report(report, now)
        elif line in ("NO CARRIER", "BUSY", "NO ANSWER"):
            tracker.result_code(ResultCode(line), now)
        elif line.startswith("VOICE CALL: END"):
            tracker.result_code(ResultCode.VOICE_END, now)
        elif line.startswith("MISSED_CALL:"):
            tracker.result_code(ResultCode.MISSED, now)
        elif line.startswith("+QTONEDET:"):
            with contextlib.suppress(ValueError):
                self._dtmf(chr(int(line[10:].strip())))
        elif line.startswith(("+RXDTMF:", "+DTMF:")):
            self._dtmf(line.split(":", 1)[1].strip()[:1])
        elif line.startswith(('+QIND: "csq"', "+CSQ:", "+AUTOCSQ:", "+CREG:", "+CEREG:")):
            if in_service:  # figures from a modem out of service would outlive it
                self._status_urc(line, status)
                self._refresh_health()
        elif line.startswith("+CPIN:"):
            self._wake.set()
        elif line.startswith("+CCWA:"):
            tracker.want_poll()
        elif line.startswith(("+CMTI:", "+CMT:")):
            self.log.info("SMS arrived (%s); SMS is not handled by the trunk", line)
        else:
            self.log.debug("ignoring %r", line)
        self._after_tracker()

    @staticmethod
    def _status_urc(line: str, status: LteStatus) -> None:
        if line.startswith('+QIND: "csq"'):
            status.rssi = parse.parse_csq(line[13:])
        elif line.startswith(("+CSQ:", "+AUTOCSQ:")):
            status.rssi = parse.parse_csq(line.split(":", 1)[1])
        elif line.startswith("+CREG:"):
            status.cs = parse.registration_urc(line[6:])
        else:
            status.ps = parse.registration_urc(line[7:])

    def _dtmf(self, digit: str) -> None:
        active = [c for c in self.tracker.live() if c.state is CallState.ACTIVE]
        if active and digit:
            self._emit(DtmfReceived(call=active[0], digit=digit))

    # -- tracker plumbing ------------------------------------------------------------------

    def _after_tracker(self) -> None:
        self._flush_tracker()
        if self.tracker.poll_wanted or self.tracker.releases_pending:
            self._wake.set()
        deadline = self.tracker.get_timer()
        if self._tracker_timer is not None:
            if deadline is not None and self._tracker_timer.when() == deadline:
                return
            self._tracker_timer.cancel()
            self._tracker_timer = None
        if deadline is not None:
            self._tracker_timer = asyncio.get_running_loop().call_at(deadline,
                                                                     self._on_tracker_timer)

    def _on_tracker_timer(self) -> None:
        deadline = self._tracker_timer.when() if self._tracker_timer else None
        self._tracker_timer = None
        now = asyncio.get_running_loop().time()
        self.tracker.handle_timer(max(deadline, now) if deadline is not None else now)
        self._after_tracker()

    def _flush_tracker(self) -> None:
        events = self.tracker.take_events()
        for event in events:
            if isinstance(event, CallAnswered):
                self.audio.start(event.call)
            elif isinstance(event, CallAlerting):
                self._alerted.add(event.call.id)
            elif isinstance(event, CallEnded):
                self.audio.stop(event.call)
        if events:
            self._refresh_health()
        for event in events:
            if isinstance(event, CallEnded) and self._explainable(event):
                self._spawn(self._explain_and_emit(event))
            else:
                if isinstance(event, CallEnded):
                    self._alerted.discard(event.call.id)
                self._emit(event)

    def _explainable(self, event: CallEnded) -> bool:
        """An outgoing call the network ended before it was answered: AT+CEER says why."""
        return (event.call.direction is CallDirection.OUTGOING and not self._closing
                and event.cause in (EndCause.REJECTED, EndCause.NO_SERVICE, EndCause.BUSY,
                                    EndCause.NO_ANSWER)
                and self._channel is not None and self._channel.is_open)

    async def _explain_and_emit(self, event: CallEnded) -> None:
        alerted = event.call.id in self._alerted
        self._alerted.discard(event.call.id)
        try:
            try:
                response = await self._command("AT+CEER", check=False,
                                               timeout_s=self.settings.poll_timeout_s)
            except AtError:
                return
            payload = response.line_with("+CEER:") if response.ok else None
            code = ceer.parse_ceer(payload) if payload else None
            if code is None:
                return
            mapped = ceer.cause_for(code, alerted=alerted)
            if mapped is None or (code in (16, 31) and event.cause in (EndCause.BUSY,
                                                                        EndCause.NO_ANSWER)):
                mapped = event.cause
            detail = f"network: {ceer.describe(code)}"
            event.call.end_cause = mapped
            event = dataclasses.replace(event, cause=mapped, detail=detail,
                                        network_cause=code)
        finally:
            self._emit(event)


def _dial_error_cause(error: AtCommandError) -> EndCause:
    result = error.result
    if result.kind is ResultKind.BUSY:
        return EndCause.BUSY
    if result.kind is ResultKind.NO_ANSWER:
        return EndCause.NO_ANSWER
    if result.kind is ResultKind.CME_ERROR and result.code in (10, 11, 12, 13, 14, 15, 30, 31,
                                                               32):
        return EndCause.NO_SERVICE
    if result.kind is ResultKind.NO_CARRIER:
        return EndCause.REJECTED
    return EndCause.FAILED

