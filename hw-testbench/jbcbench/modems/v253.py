"""A simulated V.253 voice modem on a USB CDC-ACM port, with the phone line behind it.

Three dialects (reference section 2): a USR 5637 (``ATI0`` 5601, one DLE before stop codes,
``+VSM`` ids 128-133 including 16-bit linear), a Conexant controller modem such as the Zoom
3095 (``ATI0`` 56000, only unsigned 8-bit PCM and ADPCM, needs three DLEs to stop a stream,
loses ``+VCID`` on ATZ, Conexant DTMF shielding ``DLE / DLE 5 DLE ~``), and a generic V.253
modem with G.711 laws at mgetty's ids.

The line: outgoing calls ring a scriptable :class:`FarEnd` (ringback, answer after N rings,
busy, never answer, no ringback at all, hang up after T); the modem decides "answered" the
way real ones do, from ``+VRA``/``+VRN`` (ringback went away, or never came), so a far end
that never answers still yields VCON. Incoming calls ring with caller ID in the variants of
reference 2.3. Audio runs in the duplex state (``AT+VTR``) with DLE shielding both ways.

Faults: ATZ turns echo on (always, as real modems do), the caller ID setting lost, caller-ID
variants and none at all, 0x10 bytes in audio (they occur naturally; more can be forced),
DLE pairs split across writes, extension pickup, busy or dial tone (or nothing) after the far
end hangs up, the modem leaving voice mode by itself (+VIT), no dial tone, a hung AT port
(cleared by a USB reset), a line that carries only digital silence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from drivers.v253.codecs import Codec, VoiceFormat, classify
from jbcbench.audio import FRAME_BYTES

from .atparse import Cmd, split_line
from .base import SimulatedModem
from .farend import SILENCE, FarEnd
from .usb import UsbIdentity

log = logging.getLogger(__name__)

DLE, ETX = 0x10, 0x03
STOP_CODES = {ord("^"), ord("!"), ETX}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class V253Profile:
    name: str
    identity: UsbIdentity
    product_code: str
    firmware: str
    vsm: tuple[tuple[int, str, int, tuple[int, ...]], ...]
    """(id, name, bits, rates) as AT+VSM=? lists them."""
    stop_dles: int
    loses_vcid_on_reset: bool
    dtmf_shielding: bool
    vcid_read_format: str
    """How AT+VCID? answers: '+VCID: {}' or bare '{}' (quirk 2)."""


USR_5637 = V253Profile(
    name="USR 5637", product_code="5601", firmware="USRobotics 56K FAX USB V1.2.23",
    identity=UsbIdentity(vendor=0x0BAF, product=0x0303, serial="jbcbench-usr5637",
                         manufacturer="U.S.Robotics", product_name="USB Modem"),
    vsm=((128, "8-BIT LINEAR", 8, (7200, 8000, 11025)), (129, "ADPCM", 4, (7200, 8000, 11025)),
         (130, "UNSIGNED PCM", 8, (7200, 8000, 11025)), (131, "ULAW", 8, (8000,)),
         (132, "ALAW", 8, (8000,)), (133, "LINEAR 16", 16, (8000, 11025))),
    stop_dles=1, loses_vcid_on_reset=False, dtmf_shielding=False,
    vcid_read_format="+VCID: {}",
)
ZOOM_3095 = V253Profile(
    name="Zoom 3095 (Conexant)", product_code="56000", firmware="CX93001-EIS_V0.2013-V92",
    identity=UsbIdentity(vendor=0x0803, product=0x3095, serial="jbcbench-zoom3095",
                         manufacturer="Conexant", product_name="USB Modem"),
    vsm=((1, "UNSIGNED PCM", 8, (8000,)), (129, "IMA ADPCM", 4, (8000,)),
         (130, "UNSIGNED PCM", 8, (8000,)), (140, "2-BIT ADPCM", 2, (8000,)),
         (141, "4-BIT ADPCM", 4, (8000,))),
    stop_dles=3, loses_vcid_on_reset=True, dtmf_shielding=True, vcid_read_format="{}",
)
GENERIC_V253 = V253Profile(
    name="generic V.253", product_code="V253", firmware="bench generic",
    identity=UsbIdentity(vendor=0x1234, product=0x5678, serial="jbcbench-v253",
                         manufacturer="Bench", product_name="Voice Modem"),
    vsm=((0, "ITU UNSIGNED PCM", 8, (8000,)), (1, "8-BIT PCM", 8, (8000,)),
         (4, "G.711U", 8, (8000,)), (5, "G.711A", 8, (8000,))),
    stop_dles=1, loses_vcid_on_reset=False, dtmf_shielding=False,
    vcid_read_format="{}",
)


@dataclasses.dataclass(slots=True, kw_only=True)
class V253Faults:
    split_dle: bool = False
    """Write each DLE as the last byte of one write and its code as the first of the next."""
    extra_dle_bytes: bool = False
    """Force a 0x10 sample into every frame sent to the host (shielded as DLE DLE)."""
    hangup_signal: str = "busy"
    """What the modem hears after the far end hangs up: 'busy', 'dial-tone', 'loop-break'
    or 'none' (then only silence)."""
    vit_drop_after_s: float | None = None
    """Leave voice duplex by itself this long into a stream (+VIT inactivity, quirk 11)."""
    no_dial_tone: bool = False
    at_silent: bool = False
    """The modem stops answering commands (no echo, no result); a USB reset clears it."""
    silent_line: bool = False
    """The line carries digital silence both ways although the call is up (finding 6)."""
    caller_id: str = "spaced"
    """'spaced' (DATE = 1015), 'compact' (DATE=0801), 'no-name', 'private', 'out-of-area',
    'mesg' (an unknown MDMF record too), 'partial' (NMBR only) or 'none'."""


@dataclasses.dataclass(slots=True)
class _Line:
    """The call on the line, as the modem sees it."""

    far: FarEnd
    number: str
    incoming: bool
    connected: bool = False
    far_gone: bool = False
    ringing_task: asyncio.Task | None = None


class V253ModemSim(SimulatedModem):
    acm = True

    def __init__(self, bus, *, profile: V253Profile = USR_5637, timing=None, seed=None) -> None:
        self.profile = profile
        self.identity = profile.identity
        self.interfaces = {"at": 0}
        super().__init__(bus, timing=timing, seed=seed)
        self.faults = V253Faults()
        self.far_end = FarEnd(answer_after_rings=1)
        self.far_ends: dict[str, FarEnd] = {}
        self.line: _Line | None = None
        self.dtmf_heard: list[str] = []
        self.streams = 0
        self.stop_attempts_ignored = 0
        self.dle_pairs_sent = 0
        self._dial_task: asyncio.Task | None = None
        self.arrivals: list[tuple[float, int]] | None = None
        """Set to a list to log (time, 16-bit audio bytes) of uplink audio (the benchmark)."""
        self._reset_state(power=True)

    # -- state -----------------------------------------------------------------------------

    def _reset_state(self, *, power: bool) -> None:
        self.echo = True  # ATZ and power-on both turn echo on (quirk 5)
        self.fclass = 0
        self.off_hook = False
        self.vsm_id = self.profile.vsm[0][0]
        self.vra, self.vrn, self.s7 = 70, 100, 50
        if power or self.profile.loses_vcid_on_reset:
            self.vcid = 0
        self.mode = "command"
        self._tx = bytearray()
        self._dle_run = 0
        self._held: bytearray | None = None

    def power_on(self, *, booted: bool) -> None:
        self._reset_state(power=True)
        if not booted:
            self.faults.at_silent = False

    def power_off(self) -> None:
        self._drop_line()

    def at_accepts_input(self) -> bool:
        return not self.faults.at_silent

    def _on_at_data(self, data: bytes) -> None:
        if self.mode == "duplex":
            self._duplex_input(data)
        elif self.mode == "dialing":
            self._abort_dial()
        else:
            super()._on_at_data(data)

    # -- commands --------------------------------------------------------------------------

    def handle_line(self, line: str) -> None:
        commands = split_line(line)
        if commands is None:
            return
        lines: list[str] = []
        for command in commands:
            try:
                result = self.execute(command)
            except _Final as final:
                self.reply(lines, final.text)
                return
            except _Deferred:
                return
            if result:
                lines.extend(result)
        self.reply(lines, "OK")

    def execute(self, c: Cmd) -> list[str] | None:
        name, op, p = c.name, c.op, self.profile
        if name == "Z":
            self._drop_line()
            self._reset_state(power=False)
            return None
        if name == "E":
            self.echo = c.args != "0"
            return None
        if name in ("V", "Q", "X", "L", "M", "&W", "&F", "&D", "&C", "&K"):
            return None
        if name == "&V":
            return ["ACTIVE PROFILE:", f"E{int(self.echo)} V1 X4", "STORED PROFILE 0:", "E1 V1"]
        if name == "I":
            return [p.product_code] if c.args in ("", "0") else [p.firmware]
        if name.startswith("S"):
            if name == "S7" and op == "=":
                self.s7 = int(c.args or 0)
            elif op == "?":
                return [f"{self.s7:03d}" if name == "S7" else "000"]
            return None
        if name == "H":
            self._hang_up()
            return None
        if name == "A":
            if self.line is not None and self.line.incoming and not self.line.connected:
                self._answer_line()
                raise _Final("VCON")
            raise _Final("NO CARRIER")
        if name == "D":
            return self._dial(c.args)
        if name == "+FCLASS":
            if op == "=?":
                return ["0,1,1.0,2,8"]
            if op == "?":
                return [str(self.fclass)]
            if c.args.strip() not in ("0", "1", "1.0", "2", "8"):
                raise _Final("ERROR")
            self.fclass = 8 if c.args.strip() == "8" else 0
            return None
        if name in ("+VCID", "#CID"):
            if op == "?":
                return [p.vcid_read_format.format(self.vcid)]
            if op == "=?":
                return ["(0-2)"]
            self.vcid = int(c.args or 0)
            return None
        if name in ("-SCID", "-STE", "+VNH", "+VSD", "+VDR", "+IFC", "+VGT", "+VGR", "+VIT"):
            return None
        if name in ("+VRA", "+VRN"):
            if op == "=":
                setattr(self, name[1:].lower(), int(c.args or 0))
            return None
        self._need_voice()
        if name == "+VSM":
            if op == "=?":
                return [f'{i},"{n}",{b},0,({",".join(map(str, r))}),(0),(0)'
                        for i, n, b, r in p.vsm]
            if op == "?":
                return [f"{self.vsm_id},8000,0,0"]
            params = c.params()
            ident = int(params[0])
            rate = int(params[1]) if len(params) > 1 and params[1] else 8000
            formats = {i: (n, b, r) for i, n, b, r in p.vsm}
            if ident not in formats or rate not in formats[ident][2]:
                raise _Final("ERROR")
            self.vsm_id = ident
            return None
        if name == "+VLS":
            value = c.args.strip()
            if op != "=":
                return [str(int(self.off_hook))] if op == "?" else None
            if value == "0":
                self._hang_up()
            else:
                if self.line is not None and self.line.incoming and not self.line.connected:
                    self._answer_line()
                self.off_hook = True
            return None
        if name == "+VTR":
            if not self.off_hook:
                raise _Final("ERROR")
            self._start_duplex()
            raise _Deferred()
        if name == "+VTS":
            for char in c.args.replace("[", "").replace("]", "").split(","):
                char = char.strip()
                if len(char) == 1 and char in "0123456789*#ABCD":
                    self.dtmf_heard.append(char)
            return None
        raise _Final("ERROR")

    def _need_voice(self) -> None:
        if self.fclass != 8:
            raise _Final("ERROR")

    # -- the line --------------------------------------------------------------------------

    def _dial(self, args: str) -> list[str] | None:
        number = args.strip().rstrip(";")
        if number[:1].upper() in ("T", "P"):
            number = number[1:]
        self.off_hook = True
        if self.faults.no_dial_tone:
            self.off_hook = False
            raise _Final("NO DIALTONE")
        if not number:
            return None  # ATDT; : dial tone is there, back to command mode (off-hook)
        far = self.far_ends.get(number, self.far_end)
        self.line = _Line(far=far, number=number, incoming=False)
        self.mode = "dialing"
        self._dial_task = self.spawn(self._call_progress(self.line))
        raise _Deferred()

    async def _call_progress(self, line: _Line) -> None:
        """What the modem hears after dialling, and what it concludes (reference 2.5)."""
        t = self.timing
        far = line.far
        await asyncio.sleep(t.dial_to_alerting_s)
        if far.busy:
            self._dial_result("BUSY")
            return
        if far.reject:
            self._dial_result("NO CARRIER")
            return
        vra, vrn = self.vra / 10.0, self.vrn / 10.0
        if not far.ringback:
            # No ringback at all: answered at once, or never - the modem cannot tell.
            await asyncio.sleep(vrn)
            line.connected = far.answer_after_rings is not None
            self._dial_result("VCON")
            if line.connected:
                self._far_end_timers(line)
            return
        if far.answer_after_rings is None:
            await asyncio.sleep(float(self.s7))
            self._dial_result("NO ANSWER")
            return
        await asyncio.sleep(t.ring_period_s * far.answer_after_rings)
        line.connected = True  # ringback stops now; the modem waits +VRA to believe it
        self._far_end_timers(line)
        await asyncio.sleep(vra)
        self._dial_result("VCON")

    def _dial_result(self, result: str) -> None:
        self.mode = "command"
        if result != "VCON":
            self.off_hook = False
            self.line = None
        self.reply([], result, delay=0.0)

    def _abort_dial(self) -> None:
        task = self._dial_task
        if task is not None:
            task.cancel()
        self.line = None
        self.off_hook = False
        self._dial_result("NO CARRIER")

    def _far_end_timers(self, line: _Line) -> None:
        if line.far.hangup_after_s is not None:
            self.spawn(self._far_hangs_up_later(line, line.far.hangup_after_s))

    async def _far_hangs_up_later(self, line: _Line, after: float) -> None:
        await asyncio.sleep(after)
        self.far_hangs_up(line)

    def far_hangs_up(self, line: _Line | None = None) -> None:
        line = line or self.line
        if line is not None and line is self.line:
            line.far_gone = True

    def _answer_line(self) -> None:
        line = self.line
        if line.ringing_task is not None:
            line.ringing_task.cancel()
        line.connected = True
        self.off_hook = True
        self._far_end_timers(line)

    def _hang_up(self) -> None:
        """On-hook. A call still ringing in keeps ringing; anything else on the line ends."""
        self.off_hook = False
        self.mode = "command"
        line = self.line
        if line is None or (line.incoming and not line.connected):
            return
        if line.ringing_task is not None:
            line.ringing_task.cancel()
        self.line = None

    _drop_line = _hang_up

    def ring_in(self, number: str = "5551234567", *, name: str | None = "JBC BENCH",
                far: FarEnd | None = None, give_up_after_s: float | None = None) -> None:
        """An incoming call; caller ID per ``faults.caller_id`` (if +VCID is on)."""
        line = _Line(far=far or FarEnd(), number=number, incoming=True)
        self.line = line
        line.ringing_task = self.spawn(self._ring(line, name, give_up_after_s))

    async def _ring(self, line: _Line, name: str | None, give_up_after_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        period = self.timing.ring_period_s
        end = None if give_up_after_s is None else loop.time() + give_up_after_s
        first = True
        while end is None or loop.time() < end:
            self.urc("RING")
            if first and self.vcid and self.faults.caller_id != "none":
                await asyncio.sleep(period * 0.4)
                for cid_line in self._cid_lines(line.number, name):
                    self.urc(cid_line)
                await asyncio.sleep(period * 0.6)
            else:
                await asyncio.sleep(period)
            first = False
        if self.line is line and not line.connected:
            self.line = None

    def _cid_lines(self, number: str, name: str | None) -> list[str]:
        style = self.faults.caller_id
        stamp = time.strftime("%m%d"), time.strftime("%H%M")
        sep = "=" if style == "compact" else " = "
        lines = [f"DATE{sep}{stamp[0]}", f"TIME{sep}{stamp[1]}"]
        if style == "private":
            lines.append(f"NMBR{sep}P")
        elif style == "out-of-area":
            lines.append(f"NMBR{sep}O")
        else:
            lines.append(f"NMBR{sep}{number}")
        if style in ("spaced", "compact", "mesg") and name:
            lines.append(f"NAME{sep}{name}")
        if style == "mesg":
            lines.append(f"MESG{sep}060342313232")
        if style == "partial":
            lines = [f"NMBR{sep}{number}"]
        return lines

    def lose_caller_id_setting(self) -> None:
        self.vcid = 0

    # -- duplex voice stream ---------------------------------------------------------------

    def _codec(self) -> Codec:
        for ident, name, bits, rates in self.profile.vsm:
            if ident == self.vsm_id:
                return Codec(VoiceFormat(id=ident, name=name, kind=classify(name, bits),
                                         rates=rates))
        raise AssertionError("selected +VSM id not in the profile")

    def _start_duplex(self) -> None:
        self.streams += 1
        self.mode = "duplex"
        self._tx.clear()
        self._dle_run = 0
        self.codec = self._codec()
        self.reply([], "CONNECT", delay=self.timing.command_s)
        self._stream_task = self.spawn(self._stream_out())

    async def _stream_out(self) -> None:
        loop = asyncio.get_running_loop()
        await self.at_flushed()  # the stream starts after CONNECT has gone out
        start = loop.time()
        n = 0
        last_signal = 0.0
        began = loop.time()
        port = self.ports["at"]
        samples = FRAME_BYTES // 2
        while self.mode == "duplex":
            n += 1
            jitter = self.rng.uniform(0, self.timing.jitter_s) if self.timing.jitter_s else 0.0
            await asyncio.sleep(max(0.0, start + n * 0.02 + jitter - loop.time()))
            if self.mode != "duplex":
                return
            line = self.line
            live = line is not None and line.connected and not line.far_gone
            frame = line.far.audio.next_frame() if live else SILENCE
            if self.faults.silent_line:
                frame = SILENCE
            data = self.codec.encode(frame)
            if self.faults.extra_dle_bytes:
                data = data[:samples // 2] + b"\x10" + data[samples // 2 + 1:]
            shielded = data.replace(b"\x10", b"\x10\x10")
            self.dle_pairs_sent += data.count(0x10)
            if line is not None and line.far_gone and loop.time() - last_signal > 0.5:
                last_signal = loop.time()
                code = {"busy": b"b", "dial-tone": b"d", "loop-break": b"l"}.get(
                    self.faults.hangup_signal)
                if code:
                    shielded += b"\x10" + code
            vit = self.faults.vit_drop_after_s
            if vit is not None and loop.time() - began > vit:
                self._end_duplex(port, shielded)
                return
            self._send_stream(port, shielded)

    def _send_stream(self, port, data: bytes) -> None:
        """Write stream bytes in order; with ``split_dle``, a DLE ends one write and the
        byte after it starts the next, a few ms later (what a 1 KB read loop trips on)."""
        if self._held is not None:
            self._held += data  # a split write is pending: nothing may overtake it
            return
        if self.faults.split_dle and b"\x10" in data:
            cut = data.index(b"\x10") + 1
            port.write(data[:cut])
            self._held = bytearray(data[cut:])
            asyncio.get_running_loop().call_later(0.003, self._release_held, port)
            return
        port.write(data)

    def _release_held(self, port) -> None:
        held, self._held = self._held, None
        if held:
            port.write(bytes(held))

    def _end_duplex(self, port, tail: bytes = b"") -> None:
        self.mode = "command"
        if self._held is not None:
            self._release_held(port)
        port.write(tail + b"\x10\x03")
        self.reply([], "OK", delay=0.0)

    def send_dtmf_to_host(self, digits: str) -> None:
        """The far end presses keys: DTMF reports in the stream (Conexant shields them)."""
        port = self.ports.get("at")
        if port is None or self.mode != "duplex":
            return
        for digit in digits:
            code = digit.encode()
            if self.profile.dtmf_shielding:
                self._send_stream(port, b"\x10/\x10" + code + b"\x10" + code + b"\x10~")
            else:
                self._send_stream(port, b"\x10" + code)

    def extension_offhook(self) -> None:
        port = self.ports.get("at")
        if port is not None and self.mode == "duplex":
            self._send_stream(port, b"\x10H")

    def _duplex_input(self, data: bytes) -> None:
        """Host to modem: shielded audio and stop codes, in this modem's DLE dialect."""
        audio = self._tx
        needed = self.profile.stop_dles
        for byte in data:
            if byte == DLE:
                self._dle_run += 1
                continue
            run, self._dle_run = self._dle_run, 0
            audio += b"\x10" * (run // 2)
            if run % 2 == 0:
                audio.append(byte)
                continue
            if byte in STOP_CODES:
                if run >= needed:
                    self._hear(audio)
                    self._end_duplex(self.ports["at"])
                    return
                self.stop_attempts_ignored += 1
            # other DTE codes (volume, CAN) are accepted and ignored
        self._hear(audio)

    def _hear(self, audio: bytearray) -> None:
        width = self.codec.format.bytes_per_sample
        usable = len(audio) - len(audio) % width
        if not usable:
            return
        chunk = bytes(audio[:usable])
        del audio[:usable]
        if self.arrivals is not None:
            self.arrivals.append((time.monotonic(), usable // width * 2))
        line = self.line
        if line is not None and line.connected and not line.far_gone \
                and not self.faults.silent_line:
            line.far.audio.hear(self.codec.decode(chunk))


class _Final(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _Deferred(Exception):
    pass
