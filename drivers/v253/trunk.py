"""The analog trunk: a POTS line behind an ITU-T V.253 voice modem (USR 5637, Conexant/Zoom).

What the modem can do is discovered, never assumed: ``AT+FCLASS=?`` must offer voice (8),
``AT+VSM=?`` lists the sample formats by id (ids differ between modems, reference 2.7), and
the number of DLEs needed to stop a stream is learnt the first time (one, else three).

Calls use the voice duplex state (``AT+VTR``): audio both ways, DLE-shielded, with the
modem's in-band events (DTMF, busy tone, dial tone...) in the received stream. DTMF is sent
in band, as tones mixed into the uplink, so the duplex stream never has to stop.

An analog line has **no answer supervision**: after ``ATDT`` the modem reports VCON when the
ringback stops (``+VRA``) or never came (``+VRN``) - a guess. Calls placed on this trunk carry
``answer_supervised=False``; a busy tone soon after that "answer" turns the call into BUSY,
and a far-end hang-up is only heard as busy or dial tone (or a loop current break) in the
stream, since voice mode gives no NO CARRIER (quirk 9).

Its life is the :class:`~drivers.supervisor.ModemSupervisor`'s table, like the LTE trunk's:
init steps (does it answer; reset to its profile; voice mode and a sample format; caller
ID; the line's timings), a health poll (still answering, still in voice mode, caller ID
still on, dial tone when it was missing), and a recovery ladder of its own: reopen the port,
then reset its USB device. A line without dial tone is the trunk's 'limited' verdict, shown
as DOWN: without dial tone not even an emergency call can leave.
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
    AtTimeout,
    AtUnresponsive,
    FinalResult,
    ResultKind,
)
from drivers.attrunk import AtTrunkBase, InitStep, Outcome
from drivers.deadair import DeadAir
from drivers.pacing import FramePacer
from drivers.supervisor import Input, Rung, SupervisorSettings
from drivers.trunk import (
    FRAME_BYTES,
    SILENCE_FRAME,
    CallAnswered,
    CallDirection,
    CallEnded,
    CallState,
    DtmfReceived,
    EndCause,
    IncomingCall,
    TrunkBusy,
    TrunkCall,
    TrunkError,
    TrunkHealth,
    TrunkState,
)
from drivers.usbports import UsbPortId, identify_port

from .callerid import CID_FIELDS, CallerIdRecord, parse_cid_line
from .codecs import Codec, choose_format, parse_vsm_capabilities
from .dle import DleDecoder, DleEvent, DtmfShielding, shield, stop_codes
from .tones import dtmf_frames

log = logging.getLogger(__name__)

URC_PREFIXES = ("RING", "+CRING", *CID_FIELDS, "CALLER", "NO CARRIER")
DIAL_CHARS = re.compile(r"^[0-9*#,]{1,40}$")
LADDER = (Rung.REOPEN, Rung.RESET_BY_USB)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VoiceModemSettings:
    name: str
    at_port: str | None = None
    usb_id: str | None = None
    usb_serial: str | None = None
    interface: int = 0
    sysfs: pathlib.Path = pathlib.Path("/sys")
    dev: pathlib.Path = pathlib.Path("/dev")
    usb_reset_requests: pathlib.Path | None = None
    """Where to ask the privileged helper for a USB reset (see drivers/usbreset.py)."""
    usb_reset_direct: bool = True
    """Try writing the USB device's ``authorized`` attribute ourselves first."""
    baudrate: int = 115200
    """Above 80 000 bps is needed for 8-bit 8 kHz audio on a real UART (reference 2.1)."""
    ringback_goes_away_s: float = 7.0
    """+VRA: VCON this long after the ringback stops (mgetty's default)."""
    ringback_never_came_s: float = 10.0
    """+VRN: VCON when no ringback came within this time."""
    no_answer_s: int = 45
    """S7: NO ANSWER when ringback goes on this long."""
    busy_after_answer_s: float = 5.0
    """A busy tone this soon after the presumed answer means the line was busy all along."""
    cid_wait_s: float = 4.0
    """Announce an incoming call without caller ID this long after the first RING."""
    ring_gap_s: float = 8.0
    """No RING for this long: the caller gave up."""
    health_interval_s: float = 5.0
    line_retry_s: float = 20.0
    """While the line has no dial tone, check it this often."""
    command_timeout_s: float = 3.0
    ping_timeout_s: float = 1.0
    late_grace_s: float = 1.5
    sync_timeout_s: float = 1.5
    stop_dles: tuple[int, ...] = (1, 3)
    """DLEs before a stream stop code, tried in order until the modem stops."""
    answer_wait_s: float = 20.0
    port_wait_s: float = 30.0
    step_timeout_s: float = 60.0
    reset_wait_s: float = 30.0
    poll_failures_before_reset: int = 2
    down_retry_s: float = 60.0
    unusable_retry_s: float = 600.0
    no_audio_after_s: float = 3.0
    silent_after_s: float = 5.0
    """A call whose line audio stays digital silence this long is reported."""
    reopen_backoff: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)

    def supervision(self) -> SupervisorSettings:
        return SupervisorSettings.of(self, LADDER)


class VoiceModemTrunk(AtTrunkBase):
    kind = "voice-modem"

    def __init__(self, settings: VoiceModemSettings) -> None:
        super().__init__(settings.name, command_timeout_s=settings.command_timeout_s,
                         sysfs=settings.sysfs, dev=settings.dev,
                         supervision=settings.supervision(),
                         usb_reset_requests=settings.usb_reset_requests,
                         usb_reset_direct=settings.usb_reset_direct, logger=log)
        self.settings = settings
        self._identity: UsbPortId | None = None
        self.codec: Codec | None = None
        self.product: str | None = None
        self._stop_dles = settings.stop_dles
        self._call: TrunkCall | None = None
        self._answered_at: float | None = None
        self._dial_task: asyncio.Task | None = None
        self._hangup_lock = asyncio.Lock()
        self._decoder: DleDecoder | None = None
        self._dtmf_in = DtmfShielding()
        self._dtmf_out: list[bytes] = []
        self._dtmf_done: asyncio.Event | None = None
        self._rx = bytearray()
        self._pacer: FramePacer | None = None
        self._dead_air: DeadAir | None = None
        self._last_rx: float | None = None
        self._stream_started = 0.0
        self.audio_failure: str | None = None
        self._cid: CallerIdRecord | None = None
        self._ring_timer: asyncio.TimerHandle | None = None
        self._announce_timer: asyncio.TimerHandle | None = None
        self._ignore_rings_until = 0.0
        self._line = "unknown"
        self._next_line_check = 0.0
        self._wake = asyncio.Event()
        self.stats = {"underruns": 0, "modem_underruns": 0, "modem_overruns": 0,
                      "dle_pairs": 0, "frames_out": 0, "frames_in": 0,
                      "extension_offhook": 0, "stopped_with_dles": None}
        if settings.usb_id:  # a bad usb_id is a config error: say so now
            self._identity = UsbPortId.parse(settings.usb_id, settings.interface,
                                             settings.usb_serial)
        elif settings.at_port:
            self._identity = identify_port(settings.at_port, sysfs=settings.sysfs)

    # -- Trunk protocol --------------------------------------------------------------------

    async def __aenter__(self) -> VoiceModemTrunk:
        s = self.settings
        self._channel = AtChannel(
            self._locate_port, name=self.name, on_urc=self._on_urc, on_lost=self._on_lost,
            on_opened=self._on_opened, baudrate=s.baudrate, backoff=s.reopen_backoff,
            core=AtCore(urc_prefixes=URC_PREFIXES, late_grace=s.late_grace_s,
                        sync_timeout=s.sync_timeout_s))
        self._channel.on_raw_ended = self._on_stream_ended
        self._channel.after_input = self._drain_stream
        self._start_supervision()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stop_supervision()
        if self._call is not None:
            with contextlib.suppress(AtError, TimeoutError):
                async with asyncio.timeout(3.0):
                    await self._release_line()
            self._end(EndCause.FAILED, "trunk stopped")
        await self._cancel_tasks()
        if self._channel is not None:
            await self._channel.close()
        self._cancel_ring_timers()

    def calls(self) -> list[TrunkCall]:
        call = self._call
        if call is None or (call.direction is CallDirection.INCOMING and call.caller is None):
            return []
        return [call]

    async def dial(self, number: str, *, emergency: bool = False) -> TrunkCall:
        number = re.sub(r"[\s\-().]", "", number).removeprefix("+")
        if not DIAL_CHARS.match(number):
            raise TrunkError(f"{number!r} cannot be dialled on an analog line",
                             EndCause.REJECTED)
        health = self._health
        if not health.can_place_calls:
            cause = EndCause.NO_SERVICE if self._line == "no-dial-tone" else EndCause.FAILED
            raise TrunkError(f"{self.name}: {health.reason or health.state.value}", cause)
        if self._call is not None:
            raise TrunkBusy()
        call = TrunkCall(trunk=self.name, direction=CallDirection.OUTGOING, number=number,
                         emergency=emergency, answer_supervised=False)
        self._call = call
        try:
            await self._command("AT+VLS=1")  # off-hook on the line (reference 2.5)
        except AtError as error:
            self._call = None
            raise TrunkError(f"{self.name}: the modem would not go off-hook: {error}") from None
        self._dial_task = self._spawn(self._dial(call, number))
        self._refresh_health()
        return call

    async def answer(self, call: TrunkCall) -> None:
        if call is not self._call or call.state is not CallState.RINGING:
            raise TrunkError(f"call {call.id} is {call.state.value}, not ringing")
        self._cancel_ring_timers()
        if call.caller is None:
            self._announce()
        try:
            await self._command("AT+VLS=1")  # off-hook: the line is answered
        except AtError as error:
            self._end(EndCause.FAILED, f"answering failed: {error}")
            raise TrunkError(f"{self.name}: answering failed: {error}") from None
        call.state = CallState.ACTIVE
        self._answered_at = asyncio.get_running_loop().time()
        self._emit(CallAnswered(call=call))
        try:
            await self._start_stream(call)
        except AtError as error:
            await self._hangup_after_failure(f"could not start the audio stream: {error}")
            raise TrunkError(f"{self.name}: no audio stream: {error}") from None

    async def hangup(self, call: TrunkCall) -> None:
        if call is not self._call or call.state is CallState.ENDED:
            return
        async with self._hangup_lock:
            if call.state is CallState.RINGING:
                # An analog line cannot refuse a call; let it ring out unanswered.
                self._ignore_rings_until = (asyncio.get_running_loop().time()
                                            + self.settings.ring_gap_s)
                self._end(EndCause.LOCAL_HANGUP)
                return
            call.end_cause = EndCause.LOCAL_HANGUP
            if self._dial_task is not None and not self._dial_task.done():
                self._channel.send_cr()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._dial_task
            with contextlib.suppress(AtError):
                await self._release_line()
            self._end(EndCause.LOCAL_HANGUP)

    async def send_dtmf(self, call: TrunkCall, digits: str) -> None:
        if call is not self._call or call.state is not CallState.ACTIVE:
            raise TrunkError(f"call {call.id} is not answered; DTMF needs an answered call")
        frames: list[bytes] = []
        for digit in digits.upper():
            try:
                frames += dtmf_frames(digit)
            except ValueError:
                raise TrunkError(f"{digit!r} is not a DTMF digit", EndCause.REJECTED) from None
        done = asyncio.Event()
        self._dtmf_out += frames
        self._dtmf_done = done
        async with asyncio.timeout(len(frames) * 0.02 + 2.0):
            await done.wait()

    # -- extras for the appliance ----------------------------------------------------------

    def details(self) -> dict:
        channel = self._channel
        return {
            "product": self.product,
            "codec": (f"{self.codec.format.id} {self.codec.format.name}" if self.codec
                      else None),
            "at_port": channel.path if channel else None,
            "usb": str(self._identity) if self._identity else None,
            "supervisor": self.supervisor_state.value,
            "reopens": channel.reopen_count if channel else 0,
            "late_answers_dropped": channel.stale_responses if channel else 0,
            "recoveries": self.recoveries,
            "recovery_log": list(self.recovery_log)[-8:],
            "audio": dict(self.stats),
        }

    @property
    def recoveries(self) -> int:
        return self._supervisor.recoveries

    # -- supervision hooks -------------------------------------------------------------------

    def _locate_port(self) -> str | None:
        return self._locate(self._identity, self.settings.at_port)

    def _usb_identity(self) -> UsbPortId | None:
        return self._identity

    def _on_opened(self, path: str) -> None:
        if self._identity is None and self.settings.at_port:
            self._identity = identify_port(self.settings.at_port, sysfs=self.settings.sysfs)
        super()._on_opened(path)

    def _on_lost(self, reason: str) -> None:
        self._stop_pacer()
        super()._on_lost(reason)

    def _fail_calls(self, reason: str) -> None:
        self._stop_pacer()
        if self._call is not None:
            self._end(EndCause.FAILED, reason)

    def _init_steps(self) -> tuple[InitStep, ...]:
        return (("answers", self._step_answers), ("reset", self._step_reset),
                ("voice mode", self._step_voice), ("caller ID", self._step_caller_id),
                ("line timings", self._step_timings))

    async def _step_reset(self) -> Outcome:
        await self._command("ATZ", timeout_s=5.0)  # turns echo back on (quirk 5): tolerated
        await self._command("ATE0")
        await self._command("ATV1")
        product = await self._command("ATI0", check=False)
        self.product = product.lines[0] if product.lines else None
        return Outcome(Input.STEP_OK)

    async def _step_voice(self) -> Outcome:
        classes = await self._command("AT+FCLASS=?", check=False)
        offered = ",".join(classes.lines)
        if not classes.ok or not re.search(r"(^|[^0-9.])8([^0-9]|$)", offered):
            return Outcome(Input.UNUSABLE, "this modem offers no voice mode (AT+FCLASS=? gave "
                           f"{offered!r})")
        await self._command("AT+FCLASS=8")
        capabilities = await self._command("AT+VSM=?", check=False)
        fmt = choose_format(parse_vsm_capabilities(capabilities.lines))
        if fmt is None:
            return Outcome(Input.UNUSABLE, "no usable voice sample format in AT+VSM=? "
                           f"({'; '.join(capabilities.lines) or capabilities.result.line})")
        self.codec = Codec(fmt)
        return Outcome(Input.STEP_OK)

    async def _step_caller_id(self) -> Outcome:
        await self._enable_caller_id()
        return Outcome(Input.STEP_OK)

    async def _step_timings(self) -> Outcome:
        s = self.settings
        vra = round(s.ringback_goes_away_s * 10)
        vrn = round(s.ringback_never_came_s * 10)
        for text in (f"AT+VRA={vra}", f"AT+VRN={vrn}", f"ATS7={s.no_answer_s}", "ATX4"):
            with contextlib.suppress(AtCommandError):
                await self._command(text)
        fmt = self.codec.format
        self.log.info("voice modem %s initialised, audio as %s (id %d)", self.product,
                      fmt.name, fmt.id)
        return Outcome(Input.STEP_OK)

    async def _enable_caller_id(self) -> None:
        try:
            await self._command("AT+VCID=1")
        except AtCommandError:
            with contextlib.suppress(AtCommandError):
                await self._command("AT#CID=1")

    async def _caller_id_enabled(self) -> bool | None:
        response = await self._command("AT+VCID?", check=False)
        if not response.ok:
            return None
        for line in response.lines:
            value = line.split(":", 1)[-1].strip()
            if value.isdigit():
                return value != "0"
        return None

    async def _poll(self) -> Outcome:
        """Still answering, still in voice mode, caller ID still on; dial tone when it was
        missing (checked every ``line_retry_s``)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        try:
            await self._command("AT", timeout_s=s.ping_timeout_s)
            fclass = await self._command("AT+FCLASS?", check=False)
            if fclass.ok and fclass.lines and fclass.lines[0].split(":")[-1].strip() != "8":
                return Outcome(Input.REBOOTED, "the modem left voice mode (ATZ or a reset?)")
            if await self._caller_id_enabled() is False:
                self.log.warning("the modem lost its caller ID setting (quirk 2); enabling "
                                 "it again")
                await self._enable_caller_id()
            if self._line == "no-dial-tone" and loop.time() >= self._next_line_check:
                self._next_line_check = loop.time() + s.line_retry_s
                await self._check_line()
        except (AtTimeout, AtUnresponsive) as error:
            return Outcome(Input.POLL_TIMEOUT, f"the modem stopped answering ({error})")
        if self._line == "no-dial-tone":
            return Outcome(Input.LIMITED, self._line_reason())
        return Outcome(Input.HEALTHY)

    async def _monitor(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        next_health = loop.time() + s.health_interval_s
        while True:
            self._wake.clear()
            deadline = next_health
            if self._line == "no-dial-tone":
                deadline = min(deadline, self._next_line_check)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._wake.wait()
            if self._call is not None:
                next_health = loop.time() + s.health_interval_s  # the line is busy with it
                continue
            next_health = loop.time() + s.health_interval_s
            outcome = await self._poll()
            if outcome.input is Input.POLL_TIMEOUT:
                next_health = loop.time() + s.ping_timeout_s
            self._feed(outcome.input, outcome.detail)
            if not self._supervisor.in_service:
                return  # a verdict ended the service: not one more command from here

    async def _check_line(self) -> None:
        """Take the line off-hook for a moment and listen for dial tone (ATX4 + ATDT;)."""
        if self._call is not None:
            return
        response = await self._command("ATDT;", timeout_s=10.0, call_control=True, check=False)
        with contextlib.suppress(AtCommandError):
            await self._command("ATH0")
        if response.result.kind is ResultKind.NO_DIALTONE:
            self._set_line("no-dial-tone")
        elif response.ok:
            self._set_line("dial-tone")

    def _set_line(self, line: str) -> None:
        if line == "no-dial-tone" and self._line != line:
            self._next_line_check = asyncio.get_running_loop().time() + \
                self.settings.line_retry_s
        self._line = line
        self._refresh_health()

    def _line_reason(self) -> str:
        if self._line == "no-dial-tone":
            return "no dial tone: is the phone line plugged into the modem's LINE socket?"
        return ""

    def _refresh_health(self) -> None:
        where = str(self._identity) if self._identity else self.settings.at_port
        lifecycle = self._lifecycle_health(where or "no port configured")
        if lifecycle is not None:
            state, reason = lifecycle
        elif self._line == "no-dial-tone":
            state, reason = TrunkState.DOWN, self._line_reason()
        else:
            state, reason = TrunkState.READY, ""
        self._set_health(TrunkHealth(
            state=state, reason=reason, model=self.product, line=self._line,
            audio=self.audio_failure,
            active_calls=1 if self._call is not None and self._call.state is not
            CallState.RINGING else 0))

    # -- outgoing --------------------------------------------------------------------------

    async def _dial(self, call: TrunkCall, number: str) -> None:
        s = self.settings
        limit = s.ringback_never_came_s + s.no_answer_s + s.ringback_goes_away_s + 30.0
        try:
            response = await self._command(f"ATDT{number}", timeout_s=limit,
                                           call_control=True, check=False)
        except AtError as error:
            if call.state is not CallState.ENDED:
                await self._hangup_after_failure(f"dialling failed: {error}")
            return
        if call.end_cause is EndCause.LOCAL_HANGUP:
            return  # we aborted the dial; hangup() finishes the job
        result = response.result
        if result.kind in (ResultKind.VCON, ResultKind.OK):
            self._set_line("dial-tone")
            call.state = CallState.ACTIVE
            self._answered_at = asyncio.get_running_loop().time()
            self._emit(CallAnswered(call=call))
            self._refresh_health()
            try:
                await self._start_stream(call)
            except AtError as error:
                await self._hangup_after_failure(f"could not start the audio stream: {error}")
            return
        cause, detail = _dial_failure(result)
        if result.kind is ResultKind.NO_DIALTONE:
            self._set_line("no-dial-tone")
        elif result.kind in (ResultKind.BUSY, ResultKind.NO_ANSWER):
            self._set_line("dial-tone")
        with contextlib.suppress(AtError):
            await self._command("ATH0")
        self._end(cause, detail)

    async def _hangup_after_failure(self, detail: str) -> None:
        self.log.warning("%s", detail)
        with contextlib.suppress(AtError):
            await self._release_line()
        self._end(EndCause.FAILED, detail)

    # -- the duplex audio stream -----------------------------------------------------------

    async def _start_stream(self, call: TrunkCall) -> None:
        if self.audio_failure is not None:
            self.audio_failure = None  # the last call's trouble; this one starts afresh
            self._refresh_health()
        fmt = self.codec.format
        await self._command(f"AT+VSM={fmt.id},8000")
        self._decoder = DleDecoder()
        self._dtmf_in = DtmfShielding()
        self._rx.clear()
        await self._command("AT+VTR", raw=self._decoder, timeout_s=5.0)
        if call.state is not CallState.ACTIVE or not self._channel.in_raw:
            return
        now = asyncio.get_running_loop().time()
        self._dead_air = DeadAir(after_s=self.settings.silent_after_s, started=now)
        self._last_rx = None
        self._stream_started = now
        self._pacer = FramePacer(self._tick)
        self._pacer.start()

    def _tick(self) -> None:
        call = self._call
        channel = self._channel
        if call is None or channel is None or not channel.in_raw:
            return
        frame = call.uplink.get()
        if self._dtmf_out:
            frame = self._dtmf_out.pop(0)  # in-band DTMF replaces the voice for its length
            if not self._dtmf_out and self._dtmf_done is not None:
                self._dtmf_done.set()
        if frame is None:
            frame = SILENCE_FRAME
            self.stats["underruns"] += 1
        elif len(frame) != FRAME_BYTES:
            frame = (frame + SILENCE_FRAME)[:FRAME_BYTES]
        if channel.write_backlog > 3 * FRAME_BYTES:
            return  # the modem is not taking audio; do not build a backlog
        channel.write_raw(shield(self.codec.encode(frame)))
        self.stats["frames_out"] += 1
        if self.stats["frames_out"] % 25 == 0:
            self._check_audio(call)

    def _check_audio(self, call: TrunkCall) -> None:
        """Every half second of a call: is the line's audio coming, and is it ever more than
        digital silence (finding 6)? Shown in the trunk's health and told to the gateway."""
        now = asyncio.get_running_loop().time()
        since = self._last_rx if self._last_rx is not None else self._stream_started
        problem = None
        if now - since > self.settings.no_audio_after_s:
            problem = "no-downlink"
        elif self._dead_air is not None and self._dead_air.dead(now):
            problem = "silent-downlink"
        call.downlink.problem = problem
        if problem != self.audio_failure:
            if problem:
                self.log.for_call(call.id).warning("audio problem: %s", problem)
            self.audio_failure = problem
            self._refresh_health()

    def _drain_stream(self) -> None:
        decoder = self._decoder
        call = self._call
        if decoder is None:
            return
        audio = decoder.take_audio()
        events = decoder.take_events()
        self.stats["dle_pairs"] = decoder.dle_pairs
        if call is not None and call.state is CallState.ACTIVE and audio:
            now = asyncio.get_running_loop().time()
            self._last_rx = now
            self._rx += self.codec.decode(audio)
            while len(self._rx) >= FRAME_BYTES:
                frame = bytes(self._rx[:FRAME_BYTES])
                del self._rx[:FRAME_BYTES]
                call.downlink.put(frame)
                if self._dead_air is not None:
                    self._dead_air.frame(frame, now)
                self.stats["frames_in"] += 1
        for event in events:
            self._stream_event(event)

    def _stream_event(self, event: DleEvent) -> None:
        call = self._call
        digit = self._dtmf_in.event(event)
        if digit is not None:
            if call is not None and call.state is CallState.ACTIVE:
                self._emit(DtmfReceived(call=call, digit=digit))
            return
        name = event.name
        if name in ("busy", "dial-tone", "loop-break") and call is not None \
                and call.state is CallState.ACTIVE:
            loop = asyncio.get_running_loop()
            early = (call.direction is CallDirection.OUTGOING and self._answered_at is not None
                     and loop.time() - self._answered_at < self.settings.busy_after_answer_s)
            if name == "busy" and early:
                cause, detail = EndCause.BUSY, "busy tone right after the presumed answer"
            else:
                cause = EndCause.NORMAL
                detail = {"busy": "the far end hung up (busy tone)",
                          "dial-tone": "the far end hung up (dial tone)",
                          "loop-break": "the line dropped (loop current break)"}[name]
            self._spawn(self._far_end_gone(call, cause, detail))
        elif name == "underrun":
            self.stats["modem_underruns"] += 1
        elif name == "overrun":
            self.stats["modem_overruns"] += 1
        elif name == "handset-off-hook":
            self.stats["extension_offhook"] += 1
            self.log.info("an extension phone on the line went off-hook")
        elif name not in ("dtmf-start", "dtmf-end", "ring", "ringback", "quiet", "silence",
                          "voice", "timing-mark"):
            self.log.debug("stream event %s (%r)", name, event.code)

    async def _far_end_gone(self, call: TrunkCall, cause: EndCause, detail: str) -> None:
        async with self._hangup_lock:
            if call is not self._call or call.state is CallState.ENDED:
                return
            call.end_cause = cause
            with contextlib.suppress(AtError):
                await self._release_line()
            self._end(cause, detail)

    def _on_stream_ended(self, by_dte: bool, result: FinalResult | None) -> None:
        self._stop_pacer()
        if by_dte:
            return
        # audio we sent before we noticed is now command-mode junk at the modem (quirk 12)
        self._channel.send_cr()
        call = self._call
        if call is not None and call.state is CallState.ACTIVE and call.end_cause is None:
            # The modem left voice duplex by itself (+VIT inactivity, quirk 11): the call is
            # lost as far as we can tell; put the line back on hook.
            call.end_cause = EndCause.FAILED
            self._spawn(self._far_end_gone(call, EndCause.FAILED,
                                           "the modem left voice mode during the call"))

    async def _release_line(self) -> None:
        """Stop the stream (learning how many DLEs this modem needs), then go on-hook."""
        self._stop_pacer()
        channel = self._channel
        if channel is not None and channel.in_raw:
            await channel.stop_raw(stop_codes(b"^", self._stop_dles), timeout_s=0.8)
            worked = self._stop_dles[channel.last_stop_index]
            if worked != self._stop_dles[0]:
                self.log.info("this modem needs %d DLEs to stop a stream (quirk 1)", worked)
                # try what worked first from now on
                self._stop_dles = (worked, *(n for n in self._stop_dles if n != worked))
            self.stats["stopped_with_dles"] = worked
        await self._command("ATH0")

    def _stop_pacer(self) -> None:
        if self._pacer is not None:
            self._pacer.stop()
            self._pacer = None
        if self._dtmf_done is not None:
            self._dtmf_done.set()
        self._dtmf_out.clear()

    def _end(self, cause: EndCause, detail: str = "") -> None:
        call = self._call
        if call is None:
            return
        self._call = None
        self._decoder = None
        self._dead_air = None
        call.downlink.problem = None
        self._cancel_ring_timers()
        self._stop_pacer()
        announced = not (call.direction is CallDirection.INCOMING and call.caller is None)
        call.state = CallState.ENDED
        call.end_cause = cause
        if announced:
            self._emit(CallEnded(call=call, cause=cause, detail=detail))
        self._refresh_health()

    # -- incoming --------------------------------------------------------------------------

    def _on_urc(self, line: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if line == "RING" or line.startswith("+CRING"):
            if now < self._ignore_rings_until:
                self._ignore_rings_until = now + self.settings.ring_gap_s
                return
            call = self._call
            if call is None:
                call = TrunkCall(trunk=self.name, direction=CallDirection.INCOMING, number=None,
                                 state=CallState.RINGING)
                self._call = call
                self._cid = CallerIdRecord()
                self._announce_timer = loop.call_later(self.settings.cid_wait_s, self._announce)
            elif call.state is CallState.RINGING and call.caller is None:
                self._announce()  # the second ring: whatever caller ID came, it came
            if call.state is CallState.RINGING:
                if self._ring_timer is not None:
                    self._ring_timer.cancel()
                self._ring_timer = loop.call_later(self.settings.ring_gap_s, self._rings_stopped)
            return
        field = parse_cid_line(line)
        if field is not None and self._cid is not None and self._call is not None \
                and self._call.state is CallState.RINGING:
            self._cid.add(*field)
            if self._call.caller is None:
                if self._cid.complete:
                    self._announce()
                elif self._cid.has_number:
                    if self._announce_timer is not None:
                        self._announce_timer.cancel()
                    self._announce_timer = loop.call_later(0.3, self._announce)
            return
        self.log.debug("ignoring %r", line)

    def _announce(self) -> None:
        call = self._call
        if self._announce_timer is not None:
            self._announce_timer.cancel()
            self._announce_timer = None
        if call is None or call.caller is not None or call.state is not CallState.RINGING:
            return
        record = self._cid or CallerIdRecord()
        call.caller = record.caller()
        call.number = call.caller.number
        self._emit(IncomingCall(call=call))

    def _rings_stopped(self) -> None:
        self._ring_timer = None
        call = self._call
        if call is not None and call.state is CallState.RINGING:
            self._end(EndCause.MISSED, "the caller gave up (rings stopped)")

    def _cancel_ring_timers(self) -> None:
        for timer in (self._ring_timer, self._announce_timer):
            if timer is not None:
                timer.cancel()
        self._ring_timer = self._announce_timer = None


def _dial_failure(result: FinalResult) -> tuple[EndCause, str]:
    kind = result.kind
    if kind is ResultKind.BUSY:
        return EndCause.BUSY, "busy"
    if kind is ResultKind.NO_ANSWER:
        return EndCause.NO_ANSWER, "no answer"
    if kind is ResultKind.NO_DIALTONE:
        return EndCause.NO_SERVICE, "no dial tone on the line"
    if kind is ResultKind.NO_CARRIER:
        return EndCause.REJECTED, "NO CARRIER"
    return EndCause.FAILED, result.describe()
