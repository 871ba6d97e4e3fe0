"""The AT command channel as a pure state machine: bytes and ``now`` in, events and bytes out.

No I/O, no clock, no threads (see STYLE.md "Protocol cores are pure"). The asyncio shell in
``channel.py`` feeds it what the serial port delivered, writes what :meth:`AtCore.data_to_send`
returns, re-arms one timer at :meth:`AtCore.get_timer`, and turns the events into results.

What it handles, because real modems do all of it (reference section 1.11):

* one command in flight; further commands wait in a queue;
* final results, intermediate lines, and URCs that arrive in the middle of a response
  (``^RSSI`` before ``+CSQ``): a line is a response line when it carries the prefix of the
  command in flight, a URC when it looks like one, and a response line otherwise;
* the modem's echo of the command (``ATZ`` turns echo back on);
* per-command timeouts, and no off-by-one after a late response: a command that timed out
  keeps its slot for a grace period so that its late answer is recognised and dropped; if
  the answer is later still, the next command is preceded by an echo-delimited resync
  (``ATE1``, ``AT`` whose echo marks the point after which every line is new, ``ATE0``);
* raw mode after ``CONNECT`` (voice modems' audio streams): bytes go to a raw consumer,
  which says where the stream ended; what follows is framed into lines again.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import re
from typing import Protocol

from .results import AtError, AtPortClosed, AtTimeout, AtUnresponsive, FinalResult, parse_final

CR = 0x0D
LF = 0x0A

DEFAULT_URC_PREFIXES: tuple[str, ...] = (
    # 3GPP TS 27.007 / 27.005 unsolicited results
    "RING", "+CRING:", "+CLIP:", "+CCWA:", "+CREG:", "+CEREG:", "+CGREG:", "+CLCC:", "+CMTI:",
    "+CMT:", "+CDS:", "+CBM:", "+CUSD:", "+CIEV:", "+CSSI:", "+CSSU:", "+CPIN:", "+CFUN:",
    "+CTZV:", "+CTZE:", "+CIREGU:", "+CSQ:",
    # Quectel
    "RDY", "+QIND:", "+QUSIM:", "+QTONEDET:", "POWERED DOWN", "+QGPSURC:",
    # SIMCom
    "VOICE CALL:", "MISSED_CALL:", "+RXDTMF:", "+DTMF:", "PB DONE", "SMS DONE", "+CPSI:",
    "+NITZ:", "+AUTOCSQ:",
    # Huawei-style, also seen on other firmware
    "^DSCI:", "^RSSI:", "^HCSQ:", "^BOOT:", "^MODE:", "^SRVST:", "^SIMST:", "^ORIG:", "^CONF:",
    "^CONN:", "^CEND:",
    # NMEA sentences that leak onto AT ports
    "$GP", "$GN", "$GL", "$GA", "$GB",
)

_PREFIX_RE = re.compile(r"^([+^$#%*][A-Z0-9_]+)")


class RawConsumer(Protocol):
    """Takes the bytes of a raw stream; returns None while the stream goes on, or the number
    of bytes of ``data`` that belonged to the stream once its end marker has been seen."""

    def feed(self, data: bytes) -> int | None: ...


@dataclasses.dataclass(slots=True, kw_only=True, eq=False)
class AtCommand:
    """One command line to send (without ``AT`` prefix rules: ``text`` is sent as written)."""

    text: str
    timeout: float = 5.0
    expect: tuple[str, ...] | None = None
    """Prefixes of this command's information lines; derived from ``text`` when None."""
    call_control: bool | None = None
    """Whether NO CARRIER/BUSY/NO ANSWER/NO DIALTONE end this command; derived when None."""
    raw: RawConsumer | None = None
    """Enter raw mode after CONNECT and feed the stream to this consumer."""
    internal: bool = dataclasses.field(default=False, repr=False)

    def __post_init__(self) -> None:
        segments = _segments(self.text)
        if self.expect is None:
            prefixes = []
            for segment in segments:
                match = _PREFIX_RE.match(segment)
                if match:
                    prefixes.append(match.group(1) + ":")
            self.expect = tuple(prefixes)
        if self.call_control is None:
            self.call_control = any(_is_call_control(segment) for segment in segments)


def _segments(text: str) -> list[str]:
    upper = text.strip().upper()
    if upper.startswith("AT"):
        upper = upper[2:]
    return [segment.strip() for segment in upper.split(";") if segment.strip()]


_CALL_CONTROL = ("+CHUP", "+QHUP", "+VTX", "+VRX", "+VTR", "+VLS", "+CHLD")


def _is_call_control(segment: str) -> bool:
    if segment[:1] in ("D", "A", "H", "O"):
        return segment[:1] != "A" or segment in ("A", "A/")
    return segment.startswith(_CALL_CONTROL)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AtResponse:
    command: str
    lines: tuple[str, ...]
    result: FinalResult

    @property
    def ok(self) -> bool:
        return self.result.success

    def line_with(self, prefix: str) -> str | None:
        """The payload of the first information line starting with ``prefix`` (e.g. '+CSQ:')."""
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        return None


# Events ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Urc:
    line: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CommandFinished:
    """A final result arrived (successful or not: look at ``response.result``)."""

    command: AtCommand
    response: AtResponse


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CommandFailed:
    """No result: the command timed out, the modem is unresponsive, or the port closed."""

    command: AtCommand
    error: AtError
    lines: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StaleResponse:
    """The late answer to a command that had already timed out, recognised and dropped."""

    command: str | None
    lines: tuple[str, ...]
    result: FinalResult | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Resynced:
    """The echo-delimited resync completed: every line from now on answers what we send."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RawModeEnded:
    by_dte: bool
    """True when we asked the modem to stop the stream; False when it stopped by itself."""
    result: FinalResult | None
    """The final result after the stream (normally OK), None if none came."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RawStopTimedOut:
    """We asked the modem to stop its raw stream and it did not (another DLE dialect?)."""


AtEvent = (Urc | CommandFinished | CommandFailed | StaleResponse | Resynced | RawModeEnded
           | RawStopTimedOut)


class Phase(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"              # a command is in flight
    STALE = "stale"            # the command in flight timed out; its answer may still come
    RAW = "raw"                # after CONNECT: bytes go to the raw consumer
    RAW_STOPPING = "raw-stopping"  # we sent a stop code; still raw until the consumer sees the end
    RAW_FINAL = "raw-final"    # the stream ended; waiting for its final result


class _SyncStep(enum.Enum):
    ECHO_ON = "ATE1"
    PROBE = "AT"
    ECHO_OFF = "ATE0"


class AtCore:
    def __init__(self, *, urc_prefixes: tuple[str, ...] = DEFAULT_URC_PREFIXES,
                 late_grace: float = 2.0, sync_timeout: float = 2.0,
                 max_line: int = 4096) -> None:
        self.urc_prefixes = urc_prefixes
        self.late_grace = late_grace
        self.sync_timeout = sync_timeout
        self.max_line = max_line
        self.phase = Phase.IDLE
        self.synced = True
        self._queue: collections.deque[AtCommand] = collections.deque()
        self._current: AtCommand | None = None
        self._lines: list[str] = []
        self._stale_lines: list[str] = []
        self._deadline: float | None = None
        self._echo_seen = False
        self._sync_step: _SyncStep | None = None
        self._raw: RawConsumer | None = None
        self._raw_by_dte = False
        self._line = bytearray()
        self._skip_lf = False
        self._out = bytearray()
        self._events: list[AtEvent] = []

    # -- inputs ----------------------------------------------------------------------------

    def submit(self, command: AtCommand, now: float) -> None:
        self._queue.append(command)
        self._pump(now)

    def withdraw(self, command: AtCommand) -> bool:
        """Forget a command that has not been sent yet; False if it is already in flight."""
        try:
            self._queue.remove(command)
        except ValueError:
            return False
        return True

    def feed(self, data: bytes, now: float) -> None:
        view = memoryview(data)
        index = 0
        while index < len(view):
            if self.phase in (Phase.RAW, Phase.RAW_STOPPING):
                if self._skip_lf:
                    self._skip_lf = False
                    if view[index] == LF:
                        index += 1
                        continue
                rest = bytes(view[index:])
                used = self._raw.feed(rest)
                if used is None:
                    break
                index += used
                self._raw_ended(now)
                continue
            byte = view[index]
            index += 1
            if self._skip_lf:
                self._skip_lf = False
                if byte == LF:
                    continue
            if byte in (CR, LF):
                if self._line:
                    line = self._line.decode("latin-1").strip()
                    self._line.clear()
                    if line:
                        self._on_line(line, now, terminated_by_cr=byte == CR)
                continue
            self._line.append(byte)
            if len(self._line) >= self.max_line:
                line = self._line.decode("latin-1").strip()
                self._line.clear()
                self._on_line(line, now, terminated_by_cr=False)
        self._pump(now)

    def handle_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if self.phase is Phase.BUSY:
            command, lines = self._current, tuple(self._lines)
            self._enter_stale(now)
            if command.internal:
                self._sync_failed()
            else:
                self._events.append(CommandFailed(
                    command=command, lines=lines,
                    error=AtTimeout(f"{command.text}: no answer within {command.timeout:g} s")))
        elif self.phase is Phase.STALE:
            # The answer never came: from now on we cannot tell an old answer from a new one.
            self._finish_stale(synced=False)
        elif self.phase is Phase.RAW_STOPPING:
            self.phase = Phase.RAW
            self._events.append(RawStopTimedOut())
        elif self.phase is Phase.RAW_FINAL:
            self._events.append(RawModeEnded(by_dte=self._raw_by_dte, result=None))
            self.phase = Phase.IDLE
            self.synced = False
        self._pump(now)

    def stop_raw(self, stop: bytes, timeout: float, now: float) -> None:
        """Send ``stop`` (a DLE code) and wait up to ``timeout`` for the stream to end."""
        if self.phase not in (Phase.RAW, Phase.RAW_STOPPING):
            raise AtError(f"not in raw mode ({self.phase.value})")
        self.phase = Phase.RAW_STOPPING
        self._raw_by_dte = True
        self._deadline = now + timeout
        self._out += stop

    def write_raw(self, data: bytes) -> None:
        if self.phase not in (Phase.RAW, Phase.RAW_STOPPING):
            raise AtError(f"not in raw mode ({self.phase.value})")
        self._out += data

    def reset(self, reason: str) -> None:
        """The port closed (or is being reopened): fail everything in flight and queued."""
        error = AtPortClosed(reason)
        if self._current is not None and self.phase is Phase.BUSY and not self._current.internal:
            self._events.append(CommandFailed(command=self._current, error=error,
                                              lines=tuple(self._lines)))
        for command in self._queue:
            if not command.internal:
                self._events.append(CommandFailed(command=command, error=error))
        if self.phase in (Phase.RAW, Phase.RAW_STOPPING, Phase.RAW_FINAL):
            self._events.append(RawModeEnded(by_dte=self._raw_by_dte, result=None))
        self._queue.clear()
        self._current = None
        self._lines = []
        self._deadline = None
        self._sync_step = None
        self._raw = None
        self._line.clear()
        self._skip_lf = False
        self._out.clear()
        self.phase = Phase.IDLE
        self.synced = True  # a freshly opened port has nothing old in it

    # -- outputs ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def events(self) -> list[AtEvent]:
        events, self._events = self._events, []
        return events

    def get_timer(self) -> float | None:
        return self._deadline

    @property
    def in_raw(self) -> bool:
        return self.phase in (Phase.RAW, Phase.RAW_STOPPING)

    # -- internals -------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        if self.phase is not Phase.IDLE or not self._queue:
            return
        if not self.synced and self._sync_step is None:
            self._start_sync()
        command = self._queue.popleft()
        self._current = command
        self._lines = []
        self._echo_seen = False
        self._deadline = now + command.timeout
        self.phase = Phase.BUSY
        self._out += command.text.encode("latin-1") + b"\r"

    def _start_sync(self) -> None:
        steps = [_SyncStep.ECHO_ON, _SyncStep.PROBE, _SyncStep.ECHO_OFF]
        for step in reversed(steps):
            self._queue.appendleft(AtCommand(text=step.value, timeout=self.sync_timeout,
                                             internal=True, call_control=False))
        self._sync_step = _SyncStep.ECHO_ON

    def _is_urc(self, line: str) -> bool:
        return line.startswith(self.urc_prefixes)

    def _on_line(self, line: str, now: float, *, terminated_by_cr: bool) -> None:
        phase = self.phase
        if phase is Phase.BUSY:
            self._on_busy_line(line, now, terminated_by_cr=terminated_by_cr)
        elif phase is Phase.STALE:
            self._on_stale_line(line)
        elif phase is Phase.RAW_FINAL:
            final = parse_final(line)
            if final is not None:
                self._events.append(RawModeEnded(by_dte=self._raw_by_dte, result=final))
                self.phase = Phase.IDLE
                self._deadline = None
            elif self._is_urc(line):
                self._events.append(Urc(line=line))
            # anything else is left-over stream garbage (quirk 12): dropped
        else:  # IDLE
            final = parse_final(line)
            if final is not None and not final.kind.call_progress:
                # A final result nobody waits for: a very late answer. Resync before the next
                # command rather than risk taking the next command's answer for this one.
                self.synced = False
                self._events.append(StaleResponse(command=None, lines=(), result=final))
            else:
                self._events.append(Urc(line=line))

    def _on_busy_line(self, line: str, now: float, *, terminated_by_cr: bool) -> None:
        command = self._current
        if line.upper() == command.text.strip().upper():
            self._echo_seen = True
            return
        probing = command.internal and command.text == _SyncStep.PROBE.value
        final = parse_final(line)
        if final is not None and (not final.kind.call_progress or command.call_control):
            if probing and not self._echo_seen:
                return  # an old answer, from before our probe
            self._complete(command, final, now, terminated_by_cr=terminated_by_cr)
            return
        if command.expect and line.startswith(command.expect):
            self._lines.append(line)
        elif self._is_urc(line) or final is not None:
            self._events.append(Urc(line=line))
        elif not (probing and not self._echo_seen):
            self._lines.append(line)

    def _complete(self, command: AtCommand, final: FinalResult, now: float, *,
                  terminated_by_cr: bool) -> None:
        lines = tuple(self._lines)
        self._current = None
        self._lines = []
        self._deadline = None
        self.phase = Phase.IDLE
        if command.internal:
            self._sync_advance(command)
            return
        self._events.append(CommandFinished(
            command=command, response=AtResponse(command=command.text, lines=lines, result=final)))
        if command.raw is not None and final.kind.value == "CONNECT":
            self.phase = Phase.RAW
            self._raw = command.raw
            self._raw_by_dte = False
            self._skip_lf = terminated_by_cr

    def _sync_advance(self, command: AtCommand) -> None:
        step = _SyncStep(command.text)
        if step is _SyncStep.ECHO_OFF:
            self._sync_step = None
            self.synced = True
            self._events.append(Resynced())
        elif step is _SyncStep.PROBE:
            self._sync_step = _SyncStep.ECHO_OFF
        else:
            self._sync_step = _SyncStep.PROBE

    def _sync_failed(self) -> None:
        self._sync_step = None
        self.synced = False
        while self._queue:
            command = self._queue.popleft()
            if not command.internal:
                self._events.append(CommandFailed(command=command, error=AtUnresponsive(
                    f"{command.text}: the modem does not answer commands")))

    def _enter_stale(self, now: float) -> None:
        self.phase = Phase.STALE
        self._deadline = now + self.late_grace
        self._stale_lines = []

    def _on_stale_line(self, line: str) -> None:
        command = self._current
        if command is not None and line.upper() == command.text.strip().upper():
            return
        final = parse_final(line)
        if final is not None and (not final.kind.call_progress
                                  or (command is not None and command.call_control)):
            self._events.append(StaleResponse(
                command=command.text if command else None, lines=tuple(self._stale_lines),
                result=final))
            self._finish_stale(synced=True)
        elif self._is_urc(line) or final is not None:
            self._events.append(Urc(line=line))
        else:
            self._stale_lines.append(line)

    def _finish_stale(self, *, synced: bool) -> None:
        self.phase = Phase.IDLE
        self._deadline = None
        self._current = None
        self._lines = []
        self.synced = synced

    def _raw_ended(self, now: float) -> None:
        self._raw = None
        self.phase = Phase.RAW_FINAL
        self._deadline = now + self.late_grace
