"""The AT command channel as a pure state machine: bytes and ``now`` in, events and bytes out.

No I/O, no clock, no threads (see STYLE.md "Protocol cores are pure"). The asyncio shell in
``channel.py`` feeds it what the serial port delivered, writes what :meth:`AtCore.take_data`
returns, re-arms its one timer whenever :meth:`AtCore.get_timer` changes, and turns the events
(:meth:`AtCore.take_events`) into results.

What it handles, because real modems do all of it (reference section 1.11):

* one command in flight; further commands wait in a queue;
* final results, intermediate lines, and URCs that arrive in the middle of a response
  (``^RSSI`` before ``+CSQ``): a line is a response line when it carries the prefix of the
  command in flight, a URC when it looks like one, and a response line otherwise;
* the modem's echo of the command (``ATZ`` turns echo back on);
* per-command timeouts, and no off-by-one after a late response (quirk 3, and the SIM7600
  whose ``AT+COPS?`` answered 3 s late): a command that timed out keeps its slot for a grace
  period so that its late answer is recognised and dropped; if the answer is later still,
  the next command is preceded by a resync that no late line can fool: echo on, then a
  *marker* command carrying a number never used before (``AT+JBCSYNC=17``, which modems
  refuse with ERROR) whose echo is the point after which every line is new, then echo off.
  A marker that gets no echo in time is sent again (after another ``ATE1``) with a new
  number, so the late echo of an earlier one cannot be taken for it;
* answers matched by content where the echo is missing (echo is off in normal operation):
  a 3GPP read query (``AT+CPIN?``, ``AT+CREG?``...) always answers with its own prefix, so
  an ``OK`` without that line, or a line with another command's prefix, belongs to an
  earlier command and is dropped rather than taken for this command's answer;
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
    answer: str | None = None
    """A prefix a successful answer must carry (``+CPIN:``); derived for 3GPP read queries.
    An OK without it is not this command's answer."""
    internal: bool = dataclasses.field(default=False, repr=False)

    def __post_init__(self) -> None:
        segments = _segments(self.text)
        if self.answer is None and len(segments) == 1:
            self.answer = _answer_prefix(segments[0])
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


PREFIXED_EXECUTIONS = ("+CSQ", "+CEER")
"""3GPP execution commands whose successful answer always carries their prefix."""


def _answer_prefix(segment: str) -> str | None:
    match = _PREFIX_RE.match(segment)
    if match is None or not match.group(1).startswith("+C"):
        return None
    name, rest = match.group(1), segment[len(match.group(1)):]
    if rest == "?" or (rest == "" and name in PREFIXED_EXECUTIONS):
        return name + ":"
    return None


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
    ECHO_ON = "echo-on"
    MARK = "mark"
    ECHO_OFF = "echo-off"


SYNC_MARKER = "AT+JBCSYNC="
"""The resync marker: an unknown command (answered ERROR) whose echo carries a fresh number."""


class AtCore:
    def __init__(self, *, urc_prefixes: tuple[str, ...] = DEFAULT_URC_PREFIXES,
                 late_grace: float = 2.0, sync_timeout: float = 2.0, sync_attempts: int = 3,
                 max_line: int = 4096) -> None:
        self.urc_prefixes = urc_prefixes
        self.late_grace = late_grace
        self.sync_timeout = sync_timeout
        self.sync_attempts = sync_attempts
        self.max_line = max_line
        self._phase = Phase.IDLE
        self._synced = True
        self._marker_number = 0
        self._marker_tries = 0
        self._sync_heard = False
        """A line other than a URC arrived since the resync began: the modem is talking."""
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
            if self._phase in (Phase.RAW, Phase.RAW_STOPPING):
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
        if self._phase is Phase.BUSY and self._current.internal:
            self._sync_step_timed_out(self._current)
        elif self._phase is Phase.BUSY:
            command, lines = self._current, tuple(self._lines)
            self._enter_stale(now)
            self._events.append(CommandFailed(
                command=command, lines=lines,
                error=AtTimeout(f"{command.text}: no answer within {command.timeout:g} s")))
        elif self._phase is Phase.STALE:
            # The answer never came: from now on we cannot tell an old answer from a new one.
            self._finish_stale(synced=False)
        elif self._phase is Phase.RAW_STOPPING:
            self._phase = Phase.RAW
            self._events.append(RawStopTimedOut())
        elif self._phase is Phase.RAW_FINAL:
            self._events.append(RawModeEnded(by_dte=self._raw_by_dte, result=None))
            self._phase = Phase.IDLE
            self._synced = False
        self._pump(now)

    def stop_raw(self, stop: bytes, timeout: float, now: float) -> None:
        """Send ``stop`` (a DLE code) and wait up to ``timeout`` for the stream to end."""
        if self._phase not in (Phase.RAW, Phase.RAW_STOPPING):
            raise AtError(f"not in raw mode ({self._phase.value})")
        self._phase = Phase.RAW_STOPPING
        self._raw_by_dte = True
        self._deadline = now + timeout
        self._out += stop

    def write_raw(self, data: bytes) -> None:
        if self._phase not in (Phase.RAW, Phase.RAW_STOPPING):
            raise AtError(f"not in raw mode ({self._phase.value})")
        self._out += data

    def reset(self, reason: str) -> None:
        """The port closed (or is being reopened): fail everything in flight and queued."""
        error = AtPortClosed(reason)
        if self._current is not None and self._phase is Phase.BUSY and not self._current.internal:
            self._events.append(CommandFailed(command=self._current, error=error,
                                              lines=tuple(self._lines)))
        for command in self._queue:
            if not command.internal:
                self._events.append(CommandFailed(command=command, error=error))
        if self._phase in (Phase.RAW, Phase.RAW_STOPPING, Phase.RAW_FINAL):
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
        self._phase = Phase.IDLE
        self._synced = True  # a freshly opened port has nothing old in it

    # -- outputs ---------------------------------------------------------------------------

    def take_data(self) -> bytes:
        """The bytes to write to the port now (taken: the next call returns only newer)."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def take_events(self) -> list[AtEvent]:
        events, self._events = self._events, []
        return events

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def synced(self) -> bool:
        """False when an answer may still be on its way: the next command resyncs first."""
        return self._synced

    def get_timer(self) -> float | None:
        return self._deadline

    @property
    def in_raw(self) -> bool:
        return self._phase in (Phase.RAW, Phase.RAW_STOPPING)

    # -- internals -------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        if self._phase is not Phase.IDLE or not self._queue:
            return
        if not self._synced and self._sync_step is None:
            self._start_sync()
        command = self._queue.popleft()
        self._current = command
        self._lines = []
        self._echo_seen = False
        self._deadline = now + command.timeout
        self._phase = Phase.BUSY
        self._out += command.text.encode("latin-1") + b"\r"

    def _start_sync(self) -> None:
        self._marker_tries = 0
        self._sync_heard = False
        steps = [self._sync_command("ATE1"), self._new_marker(), self._sync_command("ATE0")]
        for command in reversed(steps):
            self._queue.appendleft(command)
        self._sync_step = _SyncStep.ECHO_ON

    def _sync_command(self, text: str) -> AtCommand:
        return AtCommand(text=text, timeout=self.sync_timeout, internal=True,
                         call_control=False, expect=(), answer="")

    def _new_marker(self) -> AtCommand:
        self._marker_number += 1
        self._marker_tries += 1
        return self._sync_command(f"{SYNC_MARKER}{self._marker_number}")

    def _is_urc(self, line: str) -> bool:
        return line.startswith(self.urc_prefixes)

    def _on_line(self, line: str, now: float, *, terminated_by_cr: bool) -> None:
        phase = self._phase
        if phase is Phase.BUSY:
            self._on_busy_line(line, now, terminated_by_cr=terminated_by_cr)
        elif phase is Phase.STALE:
            self._on_stale_line(line)
        elif phase is Phase.RAW_FINAL:
            final = parse_final(line)
            if final is not None:
                self._events.append(RawModeEnded(by_dte=self._raw_by_dte, result=final))
                self._phase = Phase.IDLE
                self._deadline = None
            elif self._is_urc(line):
                self._events.append(Urc(line=line))
            # anything else is left-over stream garbage (quirk 12): dropped
        else:  # IDLE
            final = parse_final(line)
            if final is not None and not final.kind.call_progress:
                # A final result nobody waits for: a very late answer. Resync before the next
                # command rather than risk taking the next command's answer for this one.
                self._synced = False
                self._events.append(StaleResponse(command=None, lines=(), result=final))
            else:
                self._events.append(Urc(line=line))

    def _on_busy_line(self, line: str, now: float, *, terminated_by_cr: bool) -> None:
        command = self._current
        if command.internal and not self._is_urc(line):
            self._sync_heard = True
        if line.upper() == command.text.strip().upper():
            self._echo_seen = True
            return
        marking = command.internal and command.text.startswith(SYNC_MARKER)
        if marking and not self._echo_seen:
            if self._is_urc(line) and parse_final(line) is None:
                self._events.append(Urc(line=line))
            return  # older than our marker: whatever it is, it answers something else
        final = parse_final(line)
        if final is not None and (not final.kind.call_progress or command.call_control):
            if final.success and command.answer and not any(
                    known.startswith(command.answer) for known in self._lines):
                # A query that always answers with its prefix got a bare OK: the tail of an
                # earlier command's late answer. Not ours; ours is still to come.
                self._events.append(StaleResponse(command=None, lines=(), result=final))
                return
            self._complete(command, final, now, terminated_by_cr=terminated_by_cr)
            return
        if command.expect and line.startswith(command.expect):
            self._lines.append(line)
        elif self._is_urc(line) or final is not None:
            self._events.append(Urc(line=line))
        elif command.answer and _PREFIX_RE.match(line):
            # another command's information line (AT+CREG? seeing +CPIN: READY): stale
            self._events.append(StaleResponse(command=None, lines=(line,), result=None))
        elif not command.internal:
            self._lines.append(line)

    def _complete(self, command: AtCommand, final: FinalResult, now: float, *,
                  terminated_by_cr: bool) -> None:
        lines = tuple(self._lines)
        self._current = None
        self._lines = []
        self._deadline = None
        self._phase = Phase.IDLE
        if command.internal:
            self._sync_advance(command)
            return
        self._events.append(CommandFinished(
            command=command, response=AtResponse(command=command.text, lines=lines, result=final)))
        if command.raw is not None and final.kind.value == "CONNECT":
            self._phase = Phase.RAW
            self._raw = command.raw
            self._raw_by_dte = False
            self._skip_lf = terminated_by_cr

    def _sync_advance(self, command: AtCommand) -> None:
        if command.text == "ATE0":
            self._sync_step = None
            self._synced = True
            self._events.append(Resynced())
        elif command.text.startswith(SYNC_MARKER):
            self._sync_step = _SyncStep.ECHO_OFF
        else:
            self._sync_step = _SyncStep.MARK

    def _sync_step_timed_out(self, command: AtCommand) -> None:
        """A resync command got no answer in time. When nothing but URCs came since the
        resync began, the port is hung (quirk 4): give up at once. Otherwise the modem is
        slow: echo on/off go on (the marker decides); a marker is sent again with a new number
        (a late echo of this one can never match it), and after ``sync_attempts`` markers
        we give up: the modem does not answer commands."""
        self._current = None
        self._lines = []
        self._phase = Phase.IDLE
        if not self._sync_heard:
            self._sync_failed()
        elif not command.text.startswith(SYNC_MARKER):
            self._sync_advance(command)
        elif self._marker_tries < self.sync_attempts:
            # echo on again first: the first ATE1 may have been lost on a port that was
            # not listening then, and without echo no marker can ever be seen
            self._queue.appendleft(self._new_marker())
            self._queue.appendleft(self._sync_command("ATE1"))
            self._sync_step = _SyncStep.ECHO_ON
        else:
            self._sync_failed()

    def _sync_failed(self) -> None:
        self._sync_step = None
        self._synced = False
        while self._queue:
            command = self._queue.popleft()
            if not command.internal:
                self._events.append(CommandFailed(command=command, error=AtUnresponsive(
                    f"{command.text}: the modem does not answer commands")))

    def _enter_stale(self, now: float) -> None:
        self._phase = Phase.STALE
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
        self._phase = Phase.IDLE
        self._deadline = None
        self._current = None
        self._lines = []
        self._synced = synced

    def _raw_ended(self, now: float) -> None:
        self._raw = None
        self._phase = Phase.RAW_FINAL
        self._deadline = now + self.late_grace
