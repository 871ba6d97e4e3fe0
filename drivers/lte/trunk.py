"""The LTE trunk: a Quectel EG25/EC25 or SIMCom SIM7600 voice module as an outside line.

One supervisor task owns the modem's life: find and open the AT port, initialise the module
(the vendor is detected from ``AT+CGMI``/``AT+CGMM``), poll health, poll ``AT+CLCC`` while calls
exist, and recover when the modem stops answering or vanishes:

1. touch the second AT port (a SIM7000-class port wakes up that way, quirk 8) and ping again;
2. ``AT+CFUN=1,1`` (full reset; the module leaves USB and comes back ~10 s later);
3. if the port does not go away, reset the USB device through sysfs (``authorized``);
4. wait for the ports to reappear - found by USB identity, never by ttyUSB index - and
   initialise again.

Liveness is judged by command replies only; URCs prove nothing (quirk 4). Calls are tracked
by :class:`~drivers.lte.calls.CallTracker`; audio runs through :class:`~drivers.pcm.PcmAudio`
on the vendor's PCM port while a call is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pathlib
import re

from drivers.at.channel import AtChannel
from drivers.at.core import AtCore
from drivers.at.results import (
    AtCommandError,
    AtError,
    AtPortClosed,
    AtTimeout,
    AtUnresponsive,
    ResultKind,
)
from drivers.attrunk import AtTrunkBase
from drivers.pcm import PcmAudio
from drivers.serialport import PortLost, SerialLink
from drivers.trunk import (
    CallAnswered,
    CallDirection,
    CallEnded,
    CallState,
    DtmfReceived,
    EndCause,
    HealthChanged,
    TrunkBusy,
    TrunkCall,
    TrunkError,
    TrunkHealth,
    TrunkState,
)
from drivers.usbports import UsbPortId, find_tty, identify_port, reset_usb_device

from . import parse
from .calls import CallTracker, ResultCode
from .vendors import COMMON_INIT, KNOWN_USB, QUECTEL, SIMCOM, Vendor, VendorProfile, detect

log = logging.getLogger(__name__)

EMERGENCY_WITH_SIM = ("112", "911")
EMERGENCY_WITHOUT_SIM = ("112", "911", "000", "08", "110", "999", "118", "119")
DIAL_CHARS = re.compile(r"^\+?[0-9*#]{1,40}$")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LteSettings:
    name: str
    at_port: str | None = None
    """A fixed AT port path (or /dev/serial/by-id link). Its USB identity is read from sysfs
    at start so that it can be found again after a reset."""
    audio_port: str | None = None
    usb_id: str | None = None
    """vendor:product; with it, ports are found by USB identity alone."""
    usb_serial: str | None = None
    at_interface: int | None = None
    aux_interface: int | None = None
    audio_interface: int | None = None
    sysfs: pathlib.Path = pathlib.Path("/sys")
    dev: pathlib.Path = pathlib.Path("/dev")
    pin: str | None = None
    emergency_numbers: tuple[str, ...] = EMERGENCY_WITH_SIM
    emergency_numbers_without_sim: tuple[str, ...] = EMERGENCY_WITHOUT_SIM
    health_interval_s: float = 5.0
    settle_interval_s: float = 1.0
    """Health poll interval for the first ``settle_for_s`` after (re)initialisation, while
    the SIM wakes up and the modem registers."""
    settle_for_s: float = 20.0
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
    boot_wait_s: float = 45.0
    """How long a reset modem may take to come back before the trunk reads DOWN."""
    vanish_wait_s: float = 3.0
    pcm_retry_s: float = 12.0
    """SIMCom: keep retrying AT+CPCMREG=1 this long after the call connects (reference 1.8)."""
    no_audio_after_s: float = 3.0
    reset_after_audio_failure: bool = True
    reopen_backoff: tuple[float, ...] = (0.5, 1.0)
    """Waits between attempts to find and reopen a vanished port (a sysfs scan each)."""


class _Recover(Exception):  # control flow inside the supervisor
    def __init__(self, reason: str, *, port_hung: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.port_hung = port_hung


class _PortGone(Exception):
    pass


class _Reinit(Exception):
    pass


class LteTrunk(AtTrunkBase):
    kind = "lte"

    def __init__(self, settings: LteSettings) -> None:
        super().__init__(settings.name, command_timeout_s=settings.command_timeout_s,
                         sysfs=settings.sysfs, dev=settings.dev, logger=log)
        self.settings = settings
        self.tracker = CallTracker(settings.name)
        self.profile: VendorProfile | None = None
        self.model: str | None = None
        self.firmware: str | None = None
        self.imei: str | None = None
        self._health = TrunkHealth(state=TrunkState.STARTING, reason="starting")
        self._supervisor: asyncio.Task | None = None
        self._rebooted = False
        self._audio: PcmAudio | None = None
        self._audio_call: TrunkCall | None = None
        self._tracker_timer: asyncio.TimerHandle | None = None
        self._identity_at: UsbPortId | None = None
        self._identity_audio: UsbPortId | None = None
        self._identity_aux: UsbPortId | None = None
        self._pin_refused: str | None = None
        self._sim = None
        self._reg_cs: parse.Registration | None = None
        self._reg_ps: parse.Registration | None = None
        self._operator: str | None = None
        self._rssi: int | None = None
        self._ims: bool | None = None
        self._audio_failed: str | None = None
        self._cops_act: int | None = None
        self._running = False
        self.recoveries = 0
        self._failed_starts = 0
        self.last_audio_stats: dict | None = None
        self._closing = False
        self._resolve_identities()  # a bad usb_id or interface is a config error: say so now

    # -- Trunk protocol --------------------------------------------------------------------

    async def __aenter__(self) -> LteTrunk:
        self._channel = AtChannel(
            self._locate_at, name=self.name, on_urc=self._on_urc, on_lost=self._on_port_lost,
            on_reopened=self._on_port_reopened,
            core=AtCore(late_grace=self.settings.late_grace_s,
                        sync_timeout=self.settings.sync_timeout_s),
            backoff=self.settings.reopen_backoff)
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"lte-{self.name}")
        return self

    async def __aexit__(self, *exc) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await self._cancel_tasks()
        self._stop_audio()
        if self._channel is not None and self._channel.is_open and self.tracker.live():
            with contextlib.suppress(AtError):
                await self._channel.command("AT+CHUP", timeout_s=2.0, check=False)
        self.tracker.fail_all("trunk stopped")
        self._flush_tracker()
        if self._channel is not None:
            await self._channel.close()
        if self._tracker_timer is not None:
            self._tracker_timer.cancel()

    def health(self) -> TrunkHealth:
        return self._health

    def calls(self) -> list[TrunkCall]:
        return self.tracker.calls()

    async def dial(self, number: str, *, emergency: bool = False) -> TrunkCall:
        number = number.strip()
        if not DIAL_CHARS.match(number):
            raise TrunkError(f"{number!r} is not a number this modem can dial",
                             EndCause.REJECTED)
        no_sim = self._sim != "ready"
        listed = (self.settings.emergency_numbers_without_sim if no_sim
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
        self.tracker.poll_wanted = True  # drivers follow ATD with AT+CLCC (reference 1.5)
        self._after_tracker()
        return call

    async def answer(self, call: TrunkCall) -> None:
        if call.state is not CallState.RINGING or call.direction is not CallDirection.INCOMING:
            raise TrunkError(f"call {call.id} is {call.state.value}, not ringing")
        try:
            response = await self._command("ATA", timeout_s=self.settings.answer_timeout_s,
                                           check=False)
        except AtError as error:
            self.tracker.poll_wanted = True
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
            self.log.warning("%s: %s failed (%s); ending the call anyway and checking the "
                             "modem's call list", self.name, text, error)
        self.tracker.end(call, EndCause.LOCAL_HANGUP)
        self.tracker.poll_wanted = True  # catch zombies (quirk 19)
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
            "reopens": channel.reopen_count if channel else 0,
            "late_answers_dropped": channel.stale_responses if channel else 0,
            "recoveries": self.recoveries,
            "last_call_audio": self.last_audio_stats,
        }

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
                raise ValueError(f"{self.name}: unknown modem {s.usb_id}; give at_interface")
            self._identity_at = UsbPortId.parse(s.usb_id, at, s.usb_serial)
        elif s.at_port:
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

    def _locate_at(self) -> str | None:
        return self._locate(self._identity_at, self.settings.at_port)

    def _locate_audio(self) -> str | None:
        return self._locate(self._identity_audio, self.settings.audio_port)

    def _on_port_lost(self, reason: str) -> None:
        self._port_lost = True
        self._running = False
        self._stop_audio()
        self.tracker.fail_all(f"the modem's AT port vanished ({reason})")
        self._after_tracker()
        self._set_health(state=TrunkState.RECOVERING,
                         reason=f"modem left USB ({reason}); waiting for it to come back")
        self._wake.set()

    def _on_port_reopened(self) -> None:
        self._wake.set()

    # -- supervision -----------------------------------------------------------------------

    async def _supervise(self) -> None:
        channel = self._channel
        first = True
        while True:
            try:
                if not channel.is_open:
                    await self._wait_for_port(first)
                first = False
                self._port_lost = False
                self._rebooted = False
                self._running = False
                await self._initialise()
                self._failed_starts = 0
                await self._monitor()
            except (_PortGone, AtPortClosed):
                continue
            except (AtTimeout, AtUnresponsive) as error:
                await self._recover_with_backoff(f"the modem stopped answering ({error})")
            except AtCommandError as error:
                self._set_health(state=TrunkState.DOWN, reason=f"initialisation failed: {error}")
                await self._wait_quietly(30.0)
            except _Reinit:
                self.log.warning("%s: the modem restarted by itself; initialising again",
                                 self.name)
                self.tracker.fail_all("the modem restarted")
                self._after_tracker()
                continue
            except _Recover as recover:
                await self._recover_with_backoff(recover.reason, port_hung=recover.port_hung)
            except _NoVoice as error:
                self._set_health(state=TrunkState.DOWN, reason=str(error))
                await self._wait_quietly(300.0)
            except _Unusable as error:
                self._set_health(state=TrunkState.DOWN, reason=str(error))
                await self._wait_quietly(30.0)

    async def _recover_with_backoff(self, reason: str, *, port_hung: bool = True) -> None:
        self._failed_starts += 1
        if self._failed_starts > 3:
            self._set_health(state=TrunkState.DOWN,
                             reason=f"{reason}; {self._failed_starts - 1} resets did not help "
                             "(check power and USB); retrying in a minute")
            await self._wait_quietly(60.0)
        await self._recover(reason, port_hung=port_hung)

    async def _wait_for_port(self, first: bool) -> None:
        channel = self._channel
        where = str(self._identity_at) if self._identity_at else self.settings.at_port
        if not first or self._health.state is not TrunkState.RECOVERING:
            self._set_health(state=TrunkState.STARTING if first else TrunkState.RECOVERING,
                             reason=f"waiting for the AT port ({where})")
        await channel.ensure_open()
        try:
            async with asyncio.timeout(self.settings.boot_wait_s):
                await channel.wait_open()
            return
        except TimeoutError:
            self._set_health(state=TrunkState.DOWN,
                             reason=f"AT port not found ({where}); is the modem plugged in "
                             "and powered?")
        await channel.wait_open()

    async def _initialise(self) -> None:
        state = TrunkState.RECOVERING if self.recoveries else TrunkState.STARTING
        self._set_health(state=state, reason="initialising the modem")
        await self._wait_for_answers()
        for text in ("ATE0", "ATV1", "AT+CMEE=2"):
            with contextlib.suppress(AtCommandError):
                await self._command(text)
        manufacturer = (await self._command("AT+CGMI")).lines
        model = (await self._command("AT+CGMM")).lines
        firmware = (await self._command("AT+CGMR", check=False)).lines
        self.model = model[0] if model else None
        self.firmware = firmware[0].removeprefix("Revision:").removeprefix("+CGMR:").strip() \
            if firmware else None
        self.profile = detect(manufacturer[0] if manufacturer else "", self.model or "")
        if self.profile is None:
            raise _Unusable(f"unsupported modem {manufacturer} {model}; expected a Quectel "
                            "EG25/EC25 or SIMCom SIM7600")
        with contextlib.suppress(AtCommandError):
            imei = (await self._command("AT+CGSN")).lines
            self.imei = imei[0] if imei else None
        try:
            await self._command(self.profile.voice_probe)
        except AtCommandError:
            raise _NoVoice(f"the modem firmware has no USB voice support "
                           f"({self.profile.voice_probe} answered ERROR)") from None
        await self._check_sim()
        for text, required in (*COMMON_INIT, *self.profile.init):
            try:
                await self._command(text)
            except AtCommandError as error:
                if required:
                    raise _Unusable(f"initialisation failed: {error}") from None
                self.log.info("%s: optional %s refused: %s", self.name, text, error)
        self._running = True
        await self._poll_health()
        self.log.info("%s: %s %s (%s) ready: %s", self.name, self.profile.vendor.value,
                      self.model, self.firmware, self._health.reason or self._health.state)

    async def _wait_for_answers(self) -> None:
        """Ping until the modem answers (it may still be booting after a reset)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.boot_wait_s
        while True:
            try:
                await self._command("AT", timeout_s=self.settings.ping_timeout_s)
                return
            except (AtTimeout, AtUnresponsive, AtCommandError) as error:
                if loop.time() > deadline:
                    raise _Recover(f"the modem does not answer AT ({error})") from None
                await asyncio.sleep(0.5)

    async def _check_sim(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15.0
        while True:
            state = await self._read_sim()
            if state != "busy" or loop.time() > deadline:
                break
            await asyncio.sleep(0.5)  # +CME ERROR: 14 right after boot (quirk 15)
        if state == "pin-required":
            await self._enter_pin()

    async def _read_sim(self) -> str:
        try:
            response = await self._command("AT+CPIN?", timeout_s=self.settings.poll_timeout_s)
        except AtCommandError as error:
            state = {10: "missing", 13: "failure", 14: "busy", 15: "wrong"}.get(
                error.cme, "error")
        else:
            value = (response.line_with("+CPIN:") or "").upper()
            state = {"READY": "ready", "SIM PIN": "pin-required",
                     "SIM PUK": "puk-required"}.get(value, value.lower() or "unknown")
        self._sim = state
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
            self.log.error("%s: not entering the SIM PIN: only %d attempt(s) left before the "
                           "PUK lock; enter it by hand", self.name, retries)
            return
        try:
            await self._command(f'AT+CPIN="{pin}"')
        except AtCommandError as error:
            self._pin_refused = pin
            self.log.error("%s: the SIM refused the configured PIN (%s); not trying it again",
                           self.name, error.result.describe())
            return
        for _ in range(20):
            await asyncio.sleep(0.25)
            if await self._read_sim() != "pin-required":
                break

    async def _poll_health(self) -> None:
        profile = self.profile
        sim = await self._read_sim()
        if sim == "pin-required" and self.settings.pin and self._pin_refused != self.settings.pin:
            await self._enter_pin()
        poll = self.settings.poll_timeout_s
        creg = await self._command("AT+CREG?", check=False, timeout_s=poll)
        payload = creg.line_with("+CREG:")
        self._reg_cs = parse.parse_registration(payload) if payload else None
        cereg = await self._command("AT+CEREG?", check=False, timeout_s=poll)
        payload = cereg.line_with("+CEREG:")
        self._reg_ps = parse.parse_registration(payload) if payload else None
        cops = await self._command("AT+COPS?", check=False, timeout_s=poll)
        payload = cops.line_with("+COPS:")
        operator, act = parse.parse_cops(payload) if payload else (None, None)
        self._operator = operator
        self._cops_act = act
        csq = await self._command("AT+CSQ", check=False, timeout_s=poll)
        payload = csq.line_with("+CSQ:")
        self._rssi = parse.parse_csq(payload) if payload else None
        ims = await self._command(profile.ims_query, check=False, timeout_s=poll)
        payload = ims.line_with(profile.ims_prefix)
        if payload is None:
            self._ims = None
        elif profile.vendor is Vendor.QUECTEL:
            self._ims = parse.parse_quectel_ims(payload)
        else:
            self._ims = parse.parse_cireg(payload)
        self._refresh_health()

    def _refresh_health(self, **extra) -> None:
        cs, ps = self._reg_cs, self._reg_ps
        registered = (cs and cs.registered) or (ps and ps.registered)
        reg = cs if cs and cs.registered else ps if ps and ps.registered else (cs or ps)
        act = reg.act if reg and reg.act is not None else self._cops_act
        dbm = parse.signal_dbm(self._rssi)
        ims = None if self._ims is None else ("ready" if self._ims else "not-ready")
        sim = self._sim
        state, reason = TrunkState.READY, ""
        no_service = None
        if sim == "missing":
            state, reason = TrunkState.LIMITED, "no SIM card (or inserted the wrong way round): " \
                "emergency calls only"
        elif sim in ("pin-required", "puk-required"):
            hint = ("set 'pin' for this trunk" if not self.settings.pin else
                    "the configured PIN was not accepted; enter it by hand")
            state, reason = TrunkState.LIMITED, f"SIM is locked ({sim}): {hint}; emergency only"
        elif sim != "ready":
            state, reason = TrunkState.LIMITED, f"SIM not usable ({sim}): emergency calls only"
        elif not registered:
            name = reg.name if reg else "unknown"
            state, reason = TrunkState.LIMITED, f"not registered to a network ({name}): " \
                "emergency calls only"
        elif not (cs and cs.registered) and self._ims is False:
            state, reason = TrunkState.LIMITED, "VoLTE (IMS) not ready and no 2G/3G " \
                "registration: voice calls would fail"
            no_service = "VoLTE (IMS) not ready"
        self.tracker.no_service_reason = no_service
        if not self._running:
            # between a failure and the end of initialisation, URCs may update figures but
            # only the supervisor decides the state
            state, reason = self._health.state, self._health.reason
        self._set_health(
            state=state, reason=reason, model=self.model, firmware=self.firmware, sim=sim,
            registration=reg.name if reg else None, operator=self._operator,
            access_technology=parse.ACCESS_TECHNOLOGIES.get(act) if act is not None else None,
            signal_dbm=dbm, signal_bars=parse.signal_bars(dbm), ims=ims, **extra)

    def _set_health(self, **changes) -> None:
        changes.setdefault("active_calls", sum(1 for c in self.tracker.live()
                                               if c.state is not CallState.ENDED))
        changes.setdefault("audio", self._audio_failed)
        health = dataclasses.replace(self._health, **changes)
        if health != self._health:
            self._health = health
            self._emit(HealthChanged(trunk=self.name, health=health))

    async def _monitor(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        failures = 0
        settled_at = loop.time() + s.settle_for_s
        next_health = loop.time() + s.settle_interval_s
        next_poll = loop.time()
        while True:
            now = loop.time()
            calls_up = bool(self.tracker.live())
            wait = next_health - now
            if calls_up or self.tracker.poll_wanted:
                wait = min(wait, next_poll - now)
            self._wake.clear()
            if wait > 0 and not self.tracker.poll_wanted and not self.tracker.release:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            if self._port_lost:
                raise _PortGone()
            if self._rebooted:
                raise _Reinit()
            now = loop.time()
            try:
                if self.tracker.release:
                    await self._release_strays()
                if self.tracker.poll_wanted or (self.tracker.live() and now >= next_poll):
                    await self._poll_calls()
                    next_poll = loop.time() + s.call_poll_s
                if now >= next_health:
                    interval = s.health_interval_s if now > settled_at else min(
                        s.settle_interval_s, s.health_interval_s)
                    next_health = now + interval
                    await self._poll_health()
                failures = 0
            except (AtTimeout, AtUnresponsive) as error:
                failures += 1
                self.log.warning("%s: modem not answering (%s), %d in a row", self.name, error,
                                 failures)
                if failures >= 2:
                    raise _Recover(f"the modem stopped answering commands ({error})") from None
                next_health = loop.time()
            if self._audio_failed and not self.tracker.live() and s.reset_after_audio_failure:
                raise _Recover(f"the last call's audio failed ({self._audio_failed})",
                               port_hung=False)

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
        while self.tracker.release:
            idx = self.tracker.release.pop(0)
            self.log.warning("%s: releasing modem call %d (waiting call or zombie)", self.name,
                             idx)
            command = f"AT+QHUP=17,{idx}" if self.profile is QUECTEL else f"AT+CHLD=1{idx}"
            with contextlib.suppress(AtCommandError):
                await self._command(command)

    async def _recover(self, reason: str, *, port_hung: bool = True) -> None:
        """Get the modem answering again; ``port_hung`` False means the AT port is fine and
        the modem itself needs a reset (its audio path failed)."""
        s = self.settings
        self._running = False
        self.recoveries += 1
        self._stop_audio()
        self._audio_failed = None
        self.tracker.fail_all(f"modem recovery: {reason}")
        self._after_tracker()
        self._set_health(state=TrunkState.RECOVERING, reason=f"resetting the modem: {reason}")
        self.log.warning("%s: recovering: %s", self.name, reason)
        channel = self._channel
        if not channel.is_open:
            return
        if port_hung and await self._touch_aux_port():
            return
        try:
            await self._command("AT+CFUN=1,1", timeout_s=2.0)
        except AtError:
            pass  # too hung to take it: straight to a USB reset
        else:
            if await self._port_vanishes(s.vanish_wait_s):
                return
        tty = find_tty(self._identity_at, sysfs=s.sysfs, dev=s.dev) if self._identity_at else None
        if tty is not None:
            try:
                reset_usb_device(tty)
            except OSError as error:
                self.log.error("%s: cannot reset the USB device (%s); check that jbcd may "
                               "write %s", self.name, error, tty.usb_device / "authorized")
        if not await self._port_vanishes(s.vanish_wait_s):
            channel.drop("forced reopen after a failed reset")

    async def _touch_aux_port(self) -> bool:
        """Write AT to the module's other AT port, then ping the main one again."""
        path = self._locate(self._identity_aux, None)
        if path is None:
            return False
        try:
            link = await SerialLink.open(path, on_data=lambda data: None,
                                         on_lost=lambda reason: None)
        except PortLost:
            return False
        try:
            link.write(b"AT\r")
            await asyncio.sleep(0.2)
        finally:
            link.close()
        try:
            await self._command("AT", timeout_s=self.settings.ping_timeout_s)
        except AtError:
            return False
        self.log.info("%s: the AT port answers again after touching %s", self.name, path)
        return True

    async def _port_vanishes(self, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            if self._port_lost or not self._channel.is_open:
                return True
            await asyncio.sleep(0.1)
        return False

    # -- URCs ------------------------------------------------------------------------------

    def _on_urc(self, line: str) -> None:
        now = asyncio.get_running_loop().time()
        tracker = self.tracker
        if line == "RING" or line.startswith("+CRING:"):
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
        elif line.startswith('+QIND: "csq"'):
            self._rssi = parse.parse_csq(line[13:])
            self._refresh_health()
        elif line.startswith("+CSQ:") or line.startswith("+AUTOCSQ:"):
            self._rssi = parse.parse_csq(line.split(":", 1)[1])
            self._refresh_health()
        elif line.startswith("+CREG:"):
            self._reg_cs = parse.registration_urc(line[6:])
            self._refresh_health()
        elif line.startswith("+CEREG:"):
            self._reg_ps = parse.registration_urc(line[7:])
            self._refresh_health()
        elif line.startswith("+CPIN:"):
            self._wake.set()
        elif line == "RDY":
            if self._health.state in (TrunkState.READY, TrunkState.LIMITED):
                self._rebooted = True
                self._wake.set()
        elif line.startswith(("+CCWA:",)):
            tracker.poll_wanted = True
        elif line.startswith(("+CMTI:", "+CMT:")):
            self.log.info("%s: SMS arrived (%s); SMS is not handled by the trunk", self.name,
                          line)
        else:
            self.log.debug("%s: ignoring %r", self.name, line)
        self._after_tracker()

    def _dtmf(self, digit: str) -> None:
        active = [c for c in self.tracker.live() if c.state is CallState.ACTIVE]
        if active and digit:
            self._emit(DtmfReceived(call=active[0], digit=digit))

    # -- tracker plumbing ------------------------------------------------------------------

    def _after_tracker(self) -> None:
        self._flush_tracker()
        if self.tracker.poll_wanted or self.tracker.release:
            self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = self.tracker.get_timer()
        if self._tracker_timer is not None:
            self._tracker_timer.cancel()
            self._tracker_timer = None
        if deadline is not None:
            self._tracker_timer = loop.call_at(deadline, self._on_tracker_timer)

    def _on_tracker_timer(self) -> None:
        self._tracker_timer = None
        self.tracker.handle_timer(asyncio.get_running_loop().time())
        self._after_tracker()

    def _flush_tracker(self) -> None:
        events = self.tracker.events()
        for event in events:
            if isinstance(event, CallAnswered):
                self._start_audio(event.call)
            elif isinstance(event, CallEnded):
                self._stop_audio(event.call)
        if events:
            self._set_health()
        for event in events:
            self._emit(event)

    # -- audio -----------------------------------------------------------------------------

    def _start_audio(self, call: TrunkCall) -> None:
        if self._audio_call is call:
            return
        self._audio_call = call
        self._audio_failed = None
        self._spawn(self._run_audio(call))

    async def _run_audio(self, call: TrunkCall) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        if self.profile is SIMCOM:
            deadline = loop.time() + s.pcm_retry_s
            while call.state is CallState.ACTIVE:
                try:
                    await self._command("AT+CPCMREG=1")
                    break
                except AtCommandError:
                    if loop.time() > deadline:
                        self.log.error("%s: AT+CPCMREG=1 refused for %.0f s: no audio",
                                       self.name, s.pcm_retry_s)
                        self._audio_failed = "no-downlink"
                        self._set_health()
                        return
                    await asyncio.sleep(0.3)  # refused until the call is really connected
                except AtError:
                    return
        path = self._locate_audio()
        if path is None or call.state is not CallState.ACTIVE:
            if path is None:
                self.log.error("%s: audio port not found", self.name)
                self._audio_failed = "port-lost"
                self._set_health()
            return
        audio = PcmAudio(call, name=self.name, strip_nmea=self.profile is QUECTEL,
                         no_audio_after_s=s.no_audio_after_s)
        try:
            await audio.open(path)
        except PortLost as error:
            self.log.error("%s: cannot open the audio port: %s", self.name, error)
            self._audio_failed = "port-lost"
            self._set_health()
            return
        if call.state is not CallState.ACTIVE:
            audio.close()
            return
        self._audio = audio
        while True:
            await asyncio.sleep(0.5)
            if call.state is not CallState.ACTIVE or self._audio is not audio:
                return
            problem = audio.problem()
            if problem != self._audio_failed:
                if problem:
                    self.log.warning("%s: audio problem on call %s: %s", self.name, call.id,
                                     problem)
                self._audio_failed = problem
                self._set_health()

    def _stop_audio(self, call: TrunkCall | None = None) -> None:
        audio = self._audio
        if audio is not None and (call is None or audio.call is call):
            audio.close()
            self.last_audio_stats = audio.stats.to_json()
            self._audio = None
            if (self.profile is SIMCOM and not self._closing and self._channel is not None
                    and self._channel.is_open):
                self._spawn(self._quietly("AT+CPCMREG=0"))

    async def _quietly(self, text: str) -> None:
        with contextlib.suppress(AtError):
            await self._command(text)


class _NoVoice(Exception):
    pass


class _Unusable(Exception):
    pass


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
