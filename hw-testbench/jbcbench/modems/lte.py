"""Simulated LTE voice modules: Quectel EG25 and SIMCom SIM7600 (reference section 1).

Both speak 3GPP TS 27.007 plus their vendor's voice extensions, on an AT port (interface 2),
a second AT-capable port (interface 3) and a PCM audio port (Quectel: the NMEA port,
interface 1, after ``AT+QPCMV=1,0``; SIMCom: interface 4, after ``AT+CPCMREG=1``, which is
refused until the call is connected). Calls go to a scriptable :class:`FarEnd`; audio is
exchanged in 320-byte frames every 20 ms while a call is up.

Faults (``sim.faults``) cover reference section 4: URCs inside responses, late responses,
an AT port that stops answering while URCs go on (and one that comes back when another port
is touched), unknown lines, URCs routed to another port, call-end URCs that never come, RING
without CLIP, duplicate RINGs, a far end that hangs up during answer, slow ATA, downlink-only
audio, silence both ways, NMEA in the PCM stream, acoustic echo, SMS during a call. Lifecycle
events are methods: :meth:`reboot` (CFUN=1,1), :meth:`unplug`/:meth:`plug`, and a USB reset
through the sysfs ``authorized`` file.
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import enum
import logging
import time

from jbcbench.audio import FRAME_BYTES

from .atparse import Cmd, split_line
from .base import SimulatedModem
from .farend import SILENCE, FarEnd
from .usb import UsbIdentity

log = logging.getLogger(__name__)

EMERGENCY = ("112", "911")
EMERGENCY_NO_SIM = ("112", "911", "000", "08", "110", "999", "118", "119")


class Vendor(enum.StrEnum):
    QUECTEL = "quectel"
    SIMCOM = "simcom"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LteProfile:
    vendor: Vendor
    manufacturer: str
    model: str
    revision: str
    identity: UsbIdentity
    interfaces: dict[str, int]


QUECTEL_EG25 = LteProfile(
    vendor=Vendor.QUECTEL, manufacturer="Quectel", model="EG25", revision="EG25GGBR07A08M2G",
    identity=UsbIdentity(vendor=0x2C7C, product=0x0125, serial="jbcbench-eg25",
                         manufacturer="Quectel", product_name="EG25-G"),
    interfaces={"dm": 0, "audio": 1, "at": 2, "aux": 3},
)
SIMCOM_SIM7600 = LteProfile(
    vendor=Vendor.SIMCOM, manufacturer="SIMCOM INCORPORATED", model="SIMCOM_SIM7600G-H",
    revision="LE20B04SIM7600G22",
    identity=UsbIdentity(vendor=0x1E0E, product=0x9001, serial="jbcbench-sim7600",
                         manufacturer="SimTech, Incorporated",
                         product_name="SimTech, Incorporated"),
    interfaces={"dm": 0, "nmea": 1, "at": 2, "aux": 3, "audio": 4},
)


@dataclasses.dataclass(slots=True, kw_only=True)
class LteFaults:
    urc_in_response: bool = False
    """Put ^RSSI / +QIND csq lines in the middle of multi-line responses (quirk 1)."""
    late: dict[str, float] = dataclasses.field(default_factory=dict)
    """Command prefix -> extra seconds before its answer (quirk 3); used once each. Later
    answers wait behind it, as on a modem that works through commands in order."""
    late_out_of_order: dict[str, float] = dataclasses.field(default_factory=dict)
    """Command prefix -> seconds before its answer, while later commands are answered at
    once (the SIM7600 whose AT+COPS? came 3 s late, finding 3); used once each."""
    late_every: int = 0
    """Every n-th command's answer comes ``late_every_s`` late, out of order (0: never)."""
    late_every_s: float = 3.0
    answer_delay_s: float | None = None
    """ATA takes this long (quirk 2: 2-5 s)."""
    at_silent: bool = False
    """The AT port stops answering commands (no echo, no result); URCs go on (quirk 4)."""
    silent_until_aux_touched: bool = False
    """As at_silent, but anything written to the other AT port brings it back (quirk 8)."""
    aux_silent: bool = False
    """The other AT port does not answer either (then only a USB reset helps)."""
    wedged: bool = False
    """The AT parser works (AT, ATE, AT+CFUN=1,1 and unknown commands are answered) but every
    SIM and network query hangs, as when the modem's protocol stack is stuck; a restart
    clears it (an assumption modelled on quirk 5, where one command left the port hung)."""
    unknown_lines: bool = False
    """Periodic ^RSSI and NMEA sentences on the AT port."""
    urc_port: str | None = None
    """'aux': URCs (RING...) come out on the other AT port until AT+QURCCFG moves them."""
    no_end_urc: bool = False
    """Calls end without NO CARRIER / ccinfo -1 / CLCC 6 / VOICE CALL: END (quirk 13)."""
    ring_without_clip: bool = False
    duplicate_ring: bool = False
    hangup_during_answer: bool = False
    """The caller hangs up while ATA is being processed."""
    downlink_only: bool = False
    """The modem stops taking uplink audio after a few KB (SIM7600 bulk OUT stall)."""
    silent_audio: bool = False
    """Silence both ways although the call is up (frames of zeros still flow)."""
    no_pcm: bool = False
    """The PCM port stays dead: no frames at all towards the host (quirk 11, SIM7600E-H)."""
    nmea_in_pcm: bool = False
    """GPS NMEA sentences interleaved in the PCM stream (quirk 10 on Quectel, whose PCM port
    is the NMEA port; seen on a SIM7600 too, finding 8)."""
    acoustic_echo: float = 0.0
    """Mix this share of our uplink back into the downlink (no echo cancellation)."""
    audio_jitter_s: float | None = None
    """Extra random delay per audio frame (defaults to the timing's jitter)."""
    no_voice_firmware: bool = False
    """AT+QPCMV / AT+CPCMREG answer ERROR (quirk 16)."""
    persist_after_reboot: bool = False
    """Keep the AT-port faults after a reset (by default a reset clears a hung port)."""
    reject_after_registering_s: float = 0.0
    """After each (re)registration, non-emergency calls are released at once this long
    (quirk 6: the first call after a replug fails for 2-4 s; finding 8)."""

    def hang(self, cured_by: str) -> None:
        """Hang the AT port so that ``cured_by`` is the first rung of the LTE recovery
        ladder that cures it: 'touch-aux' (wakes when the other port is written),
        'reset-by-aux' (silent; the other port restarts it), 'reset-by-at' (the stack is
        wedged and the other port silent: only the main port's AT+CFUN=1,1 restarts it),
        anything else (both ports silent: only a USB reset)."""
        if cured_by == "touch-aux":
            self.silent_until_aux_touched = True
        elif cured_by == "reset-by-aux":
            self.at_silent = True
        elif cured_by == "reset-by-at":
            self.wedged = self.aux_silent = True
        else:
            self.at_silent = self.aux_silent = True


@dataclasses.dataclass(slots=True, kw_only=True)
class SimCall:
    idx: int
    direction: int  # 0 MO, 1 MT
    stat: int  # 27.007: 0 active, 1 held, 2 dialing, 3 alerting, 4 incoming, 5 waiting
    number: str
    far: FarEnd
    presentation: int = 0  # CLIP validity: 0 allowed, 1 withheld, 2 unavailable
    began: float | None = None
    active_at: float | None = None
    task: asyncio.Task | None = None

    @property
    def number_type(self) -> int:
        return 145 if self.number.startswith("+") else 129


class LteModemSim(SimulatedModem):
    def __init__(self, bus, *, profile: LteProfile = QUECTEL_EG25, timing=None, seed=None,
                 sim_state: str = "ready", pin: str = "1234", operator: str = "JBC Mobile",
                 own_number: str = "+15550100") -> None:
        self.profile = profile
        self.identity = profile.identity
        self.interfaces = dict(profile.interfaces)
        super().__init__(bus, timing=timing, seed=seed)
        self.vendor = profile.vendor
        self.faults = LteFaults()
        self.far_end = FarEnd()
        self.far_ends: dict[str, FarEnd] = {}
        self.sim_state = sim_state  # ready | missing | pin | puk | busy
        self.pin = pin
        self.pin_retries = 3
        self.puk_retries = 10
        self.registration = 1  # +CREG/+CEREG stat
        self.cs_registered = True
        self.ims_available = True
        self.ims_cfg = 1
        self.rssi = 20
        self.operator = operator
        self.own_number = own_number
        self.calls: dict[int, SimCall] = {}
        self.dtmf_sent: list[str] = []
        self.commands_seen: list[str] = []
        self.audio_frames_out = 0
        self.audio_bytes_in = 0
        self.uplink_stalled = False
        self.last_release_cause: int | None = None
        """What AT+CEER reports: the release cause of the last call (None before any)."""
        self._replies = 0
        self._aux_line = bytearray()
        self._audio_task: asyncio.Task | None = None
        self.arrivals: list[tuple[float, int]] | None = None
        """Set to a list to log (time, bytes) of every uplink audio read (the benchmark)."""
        self._boot_time = time.monotonic()
        self._reset_settings()

    # -- state that a reset clears ---------------------------------------------------------

    def _reset_settings(self) -> None:
        self.echo = True
        self.cmee = 0
        self.creg_n = 0
        self.cereg_n = 0
        self.clip = False
        self.crc = False
        self.ccwa = False
        self.ccinfo = False
        self.clcc_urc = False
        self.tonedet = False
        self.ddet = False
        self.csq_urc = False
        self.qpcmv: tuple[int, int] | None = None
        self.cpcmreg = False
        self.cfun = 1
        self.gps_outport = "usbnmea"
        self.urc_port = "usbat"

    def power_on(self, *, booted: bool) -> None:
        self._reset_settings()
        if not self.faults.persist_after_reboot and not booted:
            self.faults.at_silent = False
            self.faults.silent_until_aux_touched = False
            self.faults.aux_silent = False
            self.faults.wedged = False
        now = time.monotonic()
        if booted:
            self._boot_time = now - 60.0
        else:
            self._boot_time = now
            self.spawn(self._boot_urcs())
        if self.faults.urc_port == "aux":
            self.urc_port = "usbmodem"
        self.spawn(self._background())

    def power_off(self) -> None:
        for call in list(self.calls.values()):
            if call.task is not None:
                call.task.cancel()
        self.calls.clear()

    async def _boot_urcs(self) -> None:
        await asyncio.sleep(0.05)
        self.urc("RDY")
        if self.vendor is Vendor.QUECTEL:
            self.urc("+CFUN: 1")
            if self.sim_state != "missing":
                self.urc("+CPIN: SIM PIN" if self.sim_state == "pin" else "+CPIN: READY")
                self.urc("+QUSIM: 1")
                self.urc("+QIND: SMS DONE")
                self.urc("+QIND: PB DONE")
        elif self.sim_state != "missing":
            self.urc("+CPIN: SIM PIN" if self.sim_state == "pin" else "+CPIN: READY")
            self.urc("SMS DONE")
            self.urc("PB DONE")

    async def _background(self) -> None:
        """Unknown lines the real modules emit now and then."""
        n = 0
        while True:
            await asyncio.sleep(0.5)
            n += 1
            if self.faults.unknown_lines:
                self.urc(f"^RSSI:{self.rssi}")
                self.urc("$GPGSV,1,1,00*79")
            if (self.faults.at_silent or self.faults.silent_until_aux_touched) and n % 2 == 0:
                self.urc(f'+QIND: "csq",{self.rssi},99' if self.vendor is Vendor.QUECTEL
                         else f"+CSQ: {self.rssi},99")

    def urc_role(self) -> str:
        return "aux" if self.urc_port == "usbmodem" else "at"

    # -- timing helpers --------------------------------------------------------------------

    @property
    def booting(self) -> float:
        return time.monotonic() - self._boot_time

    def _sim_effective(self) -> str:
        if self.sim_state == "ready" and self.booting < self.timing.sim_busy_s:
            return "busy"
        return self.sim_state

    def _reg_effective(self) -> int:
        if self._sim_effective() != "ready" or self.cfun != 1:
            return 0
        if self.booting < self.timing.sim_busy_s + self.timing.search_s:
            return 2
        return self.registration

    @property
    def registered_at(self) -> float | None:
        """When the modem registered after its last boot (None while it is not)."""
        if self._reg_effective() not in (1, 5):
            return None
        return self._boot_time + self.timing.sim_busy_s + self.timing.search_s

    # -- AT input --------------------------------------------------------------------------

    def at_accepts_input(self) -> bool:
        return not (self.faults.at_silent or self.faults.silent_until_aux_touched)

    def on_port_data(self, role: str, data: bytes) -> None:
        if role == "audio":
            self._on_uplink(data)
        elif role == "aux":
            if self.faults.silent_until_aux_touched:
                log.info("sim: aux port touched, AT port answers again")
                self.faults.silent_until_aux_touched = False
            if not self.faults.aux_silent:
                self._aux_input(data)

    def _aux_input(self, data: bytes) -> None:
        """The second AT port takes commands too (SIM7600 ttyUSB3, Quectel ttyUSB3)."""
        self._send("aux", data)  # echo, on by default on every port
        for byte in data:
            if byte == 0x0D:
                text = self._aux_line.decode("latin-1").strip()
                self._aux_line.clear()
                if text[:2].upper() == "AT":
                    self._reply_role = "aux"
                    try:
                        self.handle_line(text)
                    finally:
                        self._reply_role = "at"
            elif byte != 0x0A:
                self._aux_line.append(byte)

    def handle_line(self, line: str) -> None:
        commands = split_line(line)
        if commands is None:
            return
        self.commands_seen.append(line.strip())
        if self.faults.wedged and any(c.name in WEDGED for c in commands):
            return  # hangs: no answer, ever
        delay = self.timing.command_s
        for prefix, extra in list(self.faults.late.items()):
            if line.strip().upper().startswith(prefix.upper()):
                delay += extra
                del self.faults.late[prefix]
        out_of_order = None
        for prefix, extra in list(self.faults.late_out_of_order.items()):
            if line.strip().upper().startswith(prefix.upper()):
                out_of_order = extra
                del self.faults.late_out_of_order[prefix]
        self._replies += 1
        if self.faults.late_every and self._replies % self.faults.late_every == 0:
            out_of_order = self.faults.late_every_s
        lines: list[str] = []
        for command in commands:
            try:
                result = self.execute(command)
            except _Deferred:
                if lines:
                    self.reply(lines, None, delay=delay)
                return
            except _Fail as failure:
                self.reply(lines, failure.text(self.cmee), delay=delay)
                return
            if result:
                lines.extend(result)
        if self.faults.urc_in_response and lines:
            middle = len(lines) // 2
            lines[middle:middle] = [f"^RSSI:{self.rssi}", '^HCSQ:"LTE",49,46,151,24']
        if out_of_order is not None:
            self.reply_out_of_order(lines, "OK", after=out_of_order)
            return
        self.reply(lines, "OK", delay=delay)

    # -- the command set -------------------------------------------------------------------

    def execute(self, c: Cmd) -> list[str] | None:
        name, op = c.name, c.op
        quectel = self.vendor is Vendor.QUECTEL
        if name in ("E", "V", "Q", "X", "&D", "&C", "&W", "&F", "L", "M"):
            if name == "E":
                self.echo = c.args != "0"
            return None
        if name == "Z":
            self._reset_settings()
            return None
        if name == "I":
            return [self.profile.manufacturer, self.profile.model,
                    f"Revision: {self.profile.revision}"]
        if name == "D":
            return self._dial(c.args)
        if name == "A":
            return self._answer()
        if name == "H":
            return self._hangup_all()
        if name in ("+CGMI", "+GMI"):
            return [self.profile.manufacturer]
        if name in ("+CGMM", "+GMM"):
            return [self.profile.model]
        if name in ("+CGMR", "+GMR"):
            return [f"Revision: {self.profile.revision}" if quectel else
                    f"+CGMR: {self.profile.revision}"]
        if name in ("+CGSN", "+GSN"):
            return ["867698041234567"]
        if name == "+CIMI":
            self._need_sim()
            return ["310260123456789"]
        if name == "+QCCID" and quectel:
            self._need_sim()
            return ["+QCCID: 8901260123456789012F"]
        if name == "+CICCID" and not quectel:
            self._need_sim()
            return ["+ICCID: 8901260123456789012"]
        if name == "+CMEE":
            if op == "=":
                self.cmee = int(c.args or 0)
            elif op == "?":
                return [f"+CMEE: {self.cmee}"]
            return None
        if name == "+CPIN":
            return self._cpin(c)
        if name == "+QPINC" and quectel:
            return [f'+QPINC: "SC",{self.pin_retries},{self.puk_retries}']
        if name == "+SPIC" and not quectel:
            return [f"+SPIC: {self.pin_retries},{self.puk_retries},3,10"]
        if name == "+CFUN":
            return self._cfun(c)
        if name in ("+CREG", "+CEREG", "+CGREG"):
            return self._creg(c)
        if name == "+COPS":
            if op == "?":
                if self._reg_effective() in (1, 5):
                    return [f'+COPS: 0,0,"{self.operator}",7']
                return ["+COPS: 0"]
            return None
        if name == "+CSQ":
            return [f"+CSQ: {self.rssi},99"]
        if name == "+CEER":
            return [self._ceer_line()]
        if name == "+CNUM":
            self._need_sim()
            return [f'+CNUM: "","{self.own_number}",145']
        if name == "+CLCC":
            if op == "=":
                self.clcc_urc = c.args.strip() == "1"
                return None
            if op == "?":
                return [f"+CLCC: {int(self.clcc_urc)}"]
            return [self._clcc_line(call) for call in sorted(self.calls.values(),
                                                             key=lambda k: k.idx)]
        if name == "+CLIP":
            if op == "=":
                self.clip = c.args.strip().startswith("1")
            return None
        if name == "+CRC":
            self.crc = c.args.strip() == "1"
            return None
        if name == "+CCWA":
            if op == "=":
                self.ccwa = c.params()[:1] == ["1"]
            return None
        if name == "+CHUP":
            return self._hangup_all()
        if name == "+QHUP" and quectel:
            params = c.params()
            if len(params) > 1 and params[1]:
                return self._release(int(params[1]))
            return self._hangup_all()
        if name == "+CHLD":
            return self._chld(c.args.strip())
        if name == "+VTS":
            return self._vts(c.args)
        if name in ("+VTD", "+CSCS", "+CMGF", "+CPMS", "+CNMI", "+CSMS", "+CGSMS", "+COLP",
                    "+CSSN", "+CDIP", "+CNAP", "+CLTS", "+CNSMOD", "+CVHU", "+CLVL", "+CMUT"):
            return None
        if name == "+CIREG":
            return [f"+CIREG: 0,{int(self._ims_registered())}"] if op == "?" else None
        if quectel:
            return self._quectel(c)
        return self._simcom(c)

    def _quectel(self, c: Cmd) -> list[str] | None:
        name, op = c.name, c.op
        params = c.params()
        if name == "+QINDCFG":
            if len(params) >= 2:
                on = params[1] == "1"
                if params[0] == "ccinfo":
                    self.ccinfo = on
                elif params[0] == "csq":
                    self.csq_urc = on
            return None
        if name == "+QTONEDET":
            self.tonedet = c.args.strip() == "1"
            return None
        if name == "+QPCMV":
            if self.faults.no_voice_firmware:
                raise _Fail("ERROR")
            if op == "?":
                return ["+QPCMV: 0" if self.qpcmv is None else f"+QPCMV: 1,{self.qpcmv[1]}"]
            if op == "=":
                if params[0] == "0":
                    self.qpcmv = None
                else:
                    self.qpcmv = (1, int(params[1]) if len(params) > 1 else 0)
            return None
        if name == "+QCFG":
            if params and params[0].lower() == "ims":
                if len(params) >= 2:
                    self.ims_cfg = int(params[1])
                    return None
                return [f'+QCFG: "ims",{self.ims_cfg},{int(self._ims_registered())}']
            return None
        if name == "+QURCCFG":
            if len(params) >= 2 and params[0].lower() == "urcport":
                self.urc_port = params[1].lower()
                return None
            return [f'+QURCCFG: "urcport","{self.urc_port}"']
        if name == "+QGPSCFG":
            if len(params) >= 2 and params[0].lower() == "outport":
                self.gps_outport = params[1].lower()
            return None
        if name == "+QNWINFO":
            if self._reg_effective() in (1, 5):
                return ['+QNWINFO: "FDD LTE","310260","LTE BAND 2",900']
            return ['+QNWINFO: No Service']
        if name in ("+QSCLK", "+QURCCFG", "+QDAI", "+QEEC", "+QAUDMOD", "+QSIDET"):
            return None
        raise _Fail("ERROR")

    def _simcom(self, c: Cmd) -> list[str] | None:
        name, op = c.name, c.op
        if name == "+CPCMREG":
            if self.faults.no_voice_firmware:
                raise _Fail("ERROR")
            if op == "?":
                return [f"+CPCMREG: {int(self.cpcmreg)}"]
            if c.args.strip().startswith("1"):
                active = [call for call in self.calls.values() if call.stat == 0]
                if not active or time.monotonic() - active[0].active_at < self.timing.pcm_ready_s:
                    raise _Fail("ERROR")
                self.cpcmreg = True
                self._start_audio()
            else:
                self.cpcmreg = False
            return None
        if name == "+CPCMFRM":
            return None
        if name == "+DDET":
            self.ddet = c.args.strip().startswith("1")
            return None
        if name == "+AUTOCSQ":
            self.csq_urc = c.args.strip().startswith("1")
            return None
        if name in ("+EXUNSOL", "+CNMP", "+CECM", "+CECH", "+CECWB", "+CNSDP"):
            return None
        if name == "+CPSI":
            if self._reg_effective() in (1, 5):
                return ["+CPSI: LTE,Online,310-260,0x1A2B,30001,120,EUTRAN-BAND2,900,5,5,"
                        "-94,-1029,-730,17"]
            return ["+CPSI: NO SERVICE,Online"]
        raise _Fail("ERROR")

    # -- SIM, registration -----------------------------------------------------------------

    def _need_sim(self) -> None:
        state = self._sim_effective()
        if state == "missing":
            raise _Fail(cme=10)
        if state == "busy":
            raise _Fail(cme=14)
        if state == "pin":
            raise _Fail(cme=11)
        if state == "puk":
            raise _Fail(cme=12)

    def _cpin(self, c: Cmd) -> list[str] | None:
        state = self._sim_effective()
        if c.op == "?":
            if state == "missing":
                raise _Fail(cme=10)
            if state == "busy":
                raise _Fail(cme=14)
            return [{"ready": "+CPIN: READY", "pin": "+CPIN: SIM PIN",
                     "puk": "+CPIN: SIM PUK"}[state]]
        if c.op == "=":
            if state != "pin":
                raise _Fail(cme=3)
            if c.params()[0] == self.pin:
                self.sim_state = "ready"
                self.pin_retries = 3
                self.urc("+CPIN: READY", delay=self.timing.command_s * 2)
                return None
            self.pin_retries -= 1
            if self.pin_retries <= 0:
                self.sim_state = "puk"
            raise _Fail(cme=16)
        return None

    def _cfun(self, c: Cmd) -> list[str] | None:
        if c.op == "?":
            return [f"+CFUN: {self.cfun}"]
        params = c.params()
        if c.op == "=" and params:
            if len(params) > 1 and params[1] == "1":
                self.reboot()
                return None
            self.cfun = int(params[0])
        return None

    def _ims_registered(self) -> bool:
        return (self.ims_available and self.ims_cfg != 2 and self._reg_effective() in (1, 5)
                and self.cfun == 1)

    def _creg(self, c: Cmd) -> list[str] | None:
        attr = {"+CREG": "creg_n", "+CEREG": "cereg_n", "+CGREG": "creg_n"}[c.name]
        if c.op == "=":
            setattr(self, attr, int(c.args or 0))
            return None
        if c.op != "?":
            return None
        n = getattr(self, attr)
        stat = self._reg_effective()
        if c.name == "+CREG" and not self.cs_registered and stat in (1, 5):
            stat = 0
        head = f"{c.name}: {n},{stat}"
        if n >= 2 and stat in (1, 5):
            area = '"1A2B","01C2D3E4",7'
            return [f"{head},{area}"]
        return [head]

    # -- calls -----------------------------------------------------------------------------

    def _ceer_line(self) -> str:
        """The vendors' AT+CEER dialects (an assumption: see drivers/lte/ceer.py)."""
        cause = self.last_release_cause
        if self.vendor is Vendor.QUECTEL:
            if cause is None:
                return '+CEER: "No report available"'
            return f'+CEER: "CC setup error",{cause},"{CAUSE_TEXT.get(cause, "Unknown")}"'
        return f"+CEER: {CAUSE_TEXT.get(cause, 'No Cause') if cause else 'No Cause'}"

    def _free_idx(self) -> int:
        idx = 1
        while idx in self.calls:
            idx += 1
        return idx

    def _clcc_line(self, call: SimCall, stat: int | None = None) -> str:
        stat = call.stat if stat is None else stat
        number = call.number if call.presentation == 0 else ""
        return (f'+CLCC: {call.idx},{call.direction},{stat},0,0,"{number}",'
                f"{call.number_type if number else 128}")

    def _ccinfo_line(self, call: SimCall, stat: int) -> str:
        return (f'+QIND: "ccinfo",{call.idx},{call.direction},{stat},0,0,"{call.number}",'
                f"{call.number_type}")

    def _report(self, call: SimCall, stat: int, *, delay: float = 0.0) -> None:
        """Call-state URCs in the vendor's dialect."""
        if self.vendor is Vendor.QUECTEL:
            if self.ccinfo:
                self.urc(self._ccinfo_line(call, stat), delay=delay)
        elif self.clcc_urc:
            self.urc(self._clcc_line(call, stat), delay=delay)

    def _dial(self, dial: str) -> list[str] | None:
        number = dial.rstrip(";").strip()
        if number.upper().startswith(("T", "P")):
            number = number[1:]
        if not dial.endswith(";"):
            raise _Fail("NO CARRIER")  # data calls are not simulated
        emergency = number in (EMERGENCY_NO_SIM if self.sim_state != "ready" else EMERGENCY)
        if self.cfun != 1:
            raise _Fail(cme=3)
        if not emergency:
            state = self._sim_effective()
            if state == "missing":
                raise _Fail(cme=10)
            if state in ("pin", "puk", "busy"):
                raise _Fail(cme={"pin": 11, "puk": 12, "busy": 14}[state])
            if self._reg_effective() not in (1, 5):
                raise _Fail(cme=30)
        if any(call.stat in (0, 2, 3) for call in self.calls.values()):
            raise _Fail(cme=3)
        far = self.far_ends.get(number, self.far_end)
        call = SimCall(idx=self._free_idx(), direction=0, stat=2, number=number, far=far)
        self.calls[call.idx] = call
        self._report(call, 2, delay=self.timing.command_s * 2)
        call.task = self.spawn(self._outgoing(call, emergency))
        return None

    async def _outgoing(self, call: SimCall, emergency: bool) -> None:
        t = self.timing
        ims_broken = (not emergency and not self.cs_registered and not self._ims_registered())
        settling = (not emergency and self.registered_at is not None and time.monotonic()
                    - self.registered_at < self.faults.reject_after_registering_s)
        if ims_broken or settling:
            await asyncio.sleep(t.reject_s)
            self._end(call, "NO CARRIER", cause=63 if ims_broken else 41)
            return
        if call.far.reject:
            await self._network_reject(call)
            return
        await asyncio.sleep(t.dial_to_alerting_s)
        if call.far.busy:
            self._end(call, "BUSY", cause=17)
            return
        call.stat = 3
        self._report(call, 3)
        if call.far.answer_after_rings is None:
            await asyncio.sleep(t.no_answer_s)
            self._end(call, "NO ANSWER", cause=19)
            return
        await asyncio.sleep(t.ring_period_s * call.far.answer_after_rings)
        self._connect(call)
        if call.far.hangup_after_s is not None:
            await asyncio.sleep(call.far.hangup_after_s)
            self._end(call, "NO CARRIER")

    async def _network_reject(self, call: SimCall) -> None:
        """The network refuses the number. The vendors report it differently (finding 8):
        the Quectel releases the call before alerting with NO CARRIER; the SIMCom shows it
        alerting and then ends it with only VOICE CALL: END, no result code. An assumption
        where the reference is silent; AT+CEER gives the cause on both."""
        await asyncio.sleep(self.timing.reject_s)
        if self.vendor is Vendor.SIMCOM:
            call.stat = 3
            self._report(call, 3)
            await asyncio.sleep(self.timing.reject_s)
            call.began = time.monotonic()  # VOICE CALL: END carries a duration
            self._end(call, None, cause=call.far.reject_cause)
            return
        self._end(call, "NO CARRIER", cause=call.far.reject_cause)

    def _connect(self, call: SimCall) -> None:
        call.stat = 0
        call.active_at = time.monotonic()
        call.began = call.active_at
        if self.vendor is Vendor.SIMCOM:
            self.urc("VOICE CALL: BEGIN")
        self._report(call, 0)
        self._start_audio()

    def _end(self, call: SimCall, result: str | None, *, local: bool = False,
             cause: int | None = None) -> None:
        """The call is over; tell the host the vendor's way (unless the fault hides it)."""
        if self.calls.get(call.idx) is not call:
            return
        del self.calls[call.idx]
        self.last_release_cause = cause if cause is not None else 16
        current = asyncio.current_task()
        if call.task is not None and call.task is not current:
            call.task.cancel()
        if not any(c.stat == 0 for c in self.calls.values()):
            self.cpcmreg = False
        if self.faults.no_end_urc and not local:
            return
        lines = []
        if self.vendor is Vendor.QUECTEL:
            if self.ccinfo:
                lines.append(self._ccinfo_line(call, -1))
        else:
            if self.clcc_urc:
                lines.append(self._clcc_line(call, 6))
            if call.began is not None:
                lines.append(f"VOICE CALL: END: {int(time.monotonic() - call.began):06d}")
            elif result == "MISSED":
                lines.append(f"MISSED_CALL: {time.strftime('%I:%M%p')} {call.number}")
        if result and result != "MISSED" and not local:
            lines.append(result)
        elif result == "MISSED" and self.vendor is Vendor.QUECTEL:
            lines.append("NO CARRIER")
        if self.timing.jitter_s and len(lines) > 1 and self.rng.random() < 0.5:
            lines.reverse()  # "this and the next line can come in either order"
        for line in lines:
            self.urc(line, delay=self.timing.command_s * 2 if local else 0.0)

    def _answer(self) -> list[str] | None:
        ringing = [call for call in self.calls.values() if call.stat == 4]
        if not ringing:
            raise _Fail("NO CARRIER")
        call = ringing[0]
        delay = self.faults.answer_delay_s or self.timing.answer_s
        self.spawn(self._do_answer(call, delay))
        raise _Deferred()

    async def _do_answer(self, call: SimCall, delay: float) -> None:
        if self.faults.hangup_during_answer:
            await asyncio.sleep(delay / 2)
            self._end(call, None)
            self.reply([], "NO CARRIER", delay=0.0)
            return
        await asyncio.sleep(delay)
        if self.calls.get(call.idx) is not call:
            self.reply([], "NO CARRIER", delay=0.0)
            return
        if call.task is not None:
            call.task.cancel()
        if self.vendor is Vendor.SIMCOM:
            call.stat = 0
            call.active_at = call.began = time.monotonic()
            self.urc("VOICE CALL: BEGIN")
            self.reply([], "OK", delay=0.0)
            self._report(call, 0)
            self._start_audio()
        else:
            self.reply([], "OK", delay=0.0)
            self._connect(call)
        if call.far.hangup_after_s is not None:
            call.task = self.spawn(self._hangup_later(call, call.far.hangup_after_s))

    async def _hangup_later(self, call: SimCall, after: float) -> None:
        await asyncio.sleep(after)
        self._end(call, "NO CARRIER")

    def _hangup_all(self) -> list[str] | None:
        for call in list(self.calls.values()):
            self._end(call, None, local=True)
        return None

    def _release(self, idx: int) -> list[str] | None:
        call = self.calls.get(idx)
        if call is None:
            raise _Fail(cme=3)
        self._end(call, None, local=True)
        return None

    def _chld(self, arg: str) -> list[str] | None:
        if arg == "0":
            for call in [c for c in self.calls.values() if c.stat in (4, 5)]:
                self._end(call, None, local=True)
            return None
        if arg.startswith("1") and len(arg) > 1:
            return self._release(int(arg[1:]))
        if arg == "1":
            for call in [c for c in self.calls.values() if c.stat == 0]:
                self._end(call, None, local=True)
            return None
        raise _Fail(cme=3)

    def _vts(self, args: str) -> list[str] | None:
        digits = args.replace('"', "").split(",")[0].strip()
        if not any(call.stat == 0 for call in self.calls.values()):
            raise _Fail(cme=3)
        for digit in digits:
            self.dtmf_sent.append(digit)
            for call in self.calls.values():
                if call.stat == 0:
                    call.far.dtmf_heard.append(digit)
        return None

    # -- what the bench does to the modem --------------------------------------------------

    def ring_in(self, number: str = "+15551234567", *, presentation: int = 0,
                far: FarEnd | None = None, give_up_after_s: float | None = None) -> SimCall:
        """An incoming call from ``number`` (presentation 1 = withheld, 2 = unavailable)."""
        far = far or self.far_end
        busy = any(call.stat in (0, 2, 3) for call in self.calls.values())
        call = SimCall(idx=self._free_idx(), direction=1, stat=5 if busy else 4,
                       number=number if presentation == 0 else "", far=far,
                       presentation=presentation)
        self.calls[call.idx] = call
        call.task = self.spawn(self._ringing(call, give_up_after_s))
        return call

    async def _ringing(self, call: SimCall, give_up_after_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        give_up = None if give_up_after_s is None else loop.time() + give_up_after_s
        if call.stat == 5:
            if self.ccwa:
                self.urc(f'+CCWA: "{call.number}",{call.number_type},1')
            self._report(call, 5)
        first = True
        while True:
            if call.stat == 4:
                self.urc("+CRING: VOICE" if self.crc else "RING")
                if self.faults.duplicate_ring:
                    self.urc("RING")
                if self.clip and not self.faults.ring_without_clip:
                    if call.presentation == 0:
                        self.urc(f'+CLIP: "{call.number}",{call.number_type},,,,0')
                    else:
                        self.urc(f'+CLIP: "",128,,,,{call.presentation}')
                if first:
                    self._report(call, 4)
                    first = False
            wait = self.timing.ring_period_s
            if give_up is not None:
                wait = min(wait, max(give_up - loop.time(), 0.0))
            await asyncio.sleep(wait)
            if give_up is not None and loop.time() >= give_up - 1e-3:
                self._end(call, "MISSED")
                return

    def remote_hangup(self, idx: int | None = None) -> None:
        for call in list(self.calls.values()):
            if idx is None or call.idx == idx:
                if call.stat in (4, 5):
                    self._end(call, "MISSED")
                else:
                    self._end(call, "NO CARRIER")

    def far_end_dtmf(self, digits: str) -> None:
        for digit in digits:
            if self.vendor is Vendor.QUECTEL:
                if self.tonedet:
                    self.urc(f"+QTONEDET: {ord(digit)}")
            elif self.ddet:
                self.urc(f"+RXDTMF: {digit}")

    def stray_ring(self) -> None:
        """A RING with no call behind it (line noise, a call that died at once): no CLIP,
        no call-state report, and AT+CLCC lists nothing (finding 8)."""
        self.urc("RING")

    def sms_arrives(self) -> None:
        self.urc('+CMTI: "SM",3')

    def set_signal(self, rssi: int) -> None:
        self.rssi = rssi
        if self.csq_urc:
            self.urc(f'+QIND: "csq",{rssi},99' if self.vendor is Vendor.QUECTEL
                     else f"+CSQ: {rssi},99")

    def set_registration(self, stat: int) -> None:
        self.registration = stat
        if self.creg_n:
            self.urc(f"+CREG: {stat}")
        if self.cereg_n:
            self.urc(f"+CEREG: {stat}")

    # -- audio -----------------------------------------------------------------------------

    def _audio_enabled(self) -> bool:
        if "audio" not in self.ports:
            return False
        if self.vendor is Vendor.QUECTEL:
            return self.qpcmv is not None and self.qpcmv[1] == 0
        return self.cpcmreg

    def _start_audio(self) -> None:
        if self._audio_task is None or self._audio_task.done():
            self._audio_task = self.spawn(self._audio_pump())

    async def _audio_pump(self) -> None:
        loop = asyncio.get_running_loop()
        period = FRAME_BYTES / 16000.0
        start = loop.time()
        n = 0
        self._echo_buffer = bytearray()
        jitter = (self.faults.audio_jitter_s if self.faults.audio_jitter_s is not None
                  else self.timing.jitter_s)
        while any(call.stat == 0 for call in self.calls.values()):
            n += 1
            target = start + n * period + (self.rng.uniform(0, jitter) if jitter else 0.0)
            await asyncio.sleep(max(0.0, target - loop.time()))
            if not self._audio_enabled() or self.faults.no_pcm:
                continue
            call = next((c for c in self.calls.values() if c.stat == 0), None)
            if call is None:
                break
            frame = call.far.audio.next_frame()
            if self.faults.silent_audio:
                frame = SILENCE
            elif self.faults.acoustic_echo and len(self._echo_buffer) >= FRAME_BYTES:
                frame = _mix(frame, bytes(self._echo_buffer[:FRAME_BYTES]),
                             self.faults.acoustic_echo)
                del self._echo_buffer[:FRAME_BYTES]
            port = self.ports["audio"]
            if self.faults.nmea_in_pcm and n % 50 == 0:
                # a GPS fix report lands between two frames, mid-sample alignment intact
                port.write(b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
                           b"\r\n")
            port.write(frame)
            self.audio_frames_out += 1

    def _on_uplink(self, data: bytes) -> None:
        self.audio_bytes_in += len(data)
        if self.arrivals is not None:
            self.arrivals.append((time.monotonic(), len(data)))
        call = next((c for c in self.calls.values() if c.stat == 0), None)
        if call is None or not self._audio_enabled():
            return
        if self.faults.downlink_only and self.audio_bytes_in > 4096:
            self.uplink_stalled = True
            self.ports["audio"].pause_reading()
            return
        if self.faults.silent_audio:
            return
        call.far.audio.hear(data)
        if self.faults.acoustic_echo:
            self._echo_buffer += data
            if len(self._echo_buffer) > 16 * FRAME_BYTES:
                del self._echo_buffer[:-16 * FRAME_BYTES]


def _mix(a: bytes, b: bytes, share: float) -> bytes:
    x, y = array.array("h", a), array.array("h", b)
    for i in range(len(x)):
        x[i] = max(-32768, min(32767, int(x[i] + share * y[i])))
    return x.tobytes()


class _Deferred(Exception):
    """The command answers later, on its own."""


class _Fail(Exception):
    def __init__(self, plain: str | None = None, *, cme: int | None = None) -> None:
        super().__init__(plain or f"cme {cme}")
        self.plain = plain
        self.cme = cme

    def text(self, cmee: int) -> str:
        if self.cme is None:
            return self.plain
        if cmee == 0:
            return "ERROR"
        if cmee == 1:
            return f"+CME ERROR: {self.cme}"
        return f"+CME ERROR: {CME_TEXT.get(self.cme, 'unknown')}"


WEDGED = {"+CPIN", "+CREG", "+CEREG", "+CGREG", "+COPS", "+CSQ", "+CLCC", "+CIREG", "+QCFG",
          "+CIMI", "+QCCID", "+CICCID", "D", "A"}
"""What a wedged modem never answers (its SIM and network queries, and calls)."""

CAUSE_TEXT = {1: "Unassigned (unallocated) number", 16: "Normal call clearing",
              17: "User busy", 18: "No user responding", 19: "User alerting, no answer",
              21: "Call rejected", 34: "No circuit/channel available",
              41: "Temporary failure", 63: "Service or option not available, unspecified"}

CME_TEXT = {3: "operation not allowed", 4: "operation not supported", 10: "SIM not inserted",
            11: "SIM PIN required", 12: "SIM PUK required", 14: "SIM busy",
            16: "incorrect password", 30: "no network service"}
