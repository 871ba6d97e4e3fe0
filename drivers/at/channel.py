"""The asyncio shell around :class:`~drivers.at.core.AtCore`: one serial port, one timer.

``await channel.command("AT+CSQ")`` returns the :class:`AtResponse` (raising
:class:`AtCommandError` for an error result unless ``check=False``); URCs go to the handler
given at construction, synchronously, on the loop thread, in the order they arrived. After
``keep_open()`` the channel opens the port as soon as ``locate`` finds it and again whenever
it is lost (with backoff, asking ``locate`` for the current device path each time, because
re-enumerated modems come back under new names), calling ``on_opened(path)`` after each
open; when the port vanishes (USB reset or unplug) every pending command fails with
:class:`AtPortClosed` and ``on_lost(reason)`` is called. Plain callbacks: the driver's
supervisor decides what to do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from drivers.logcontext import TrunkLog
from drivers.serialport import PortLost, SerialLink

from .core import (
    AtCommand,
    AtCore,
    AtResponse,
    CommandFailed,
    CommandFinished,
    RawConsumer,
    RawModeEnded,
    RawStopTimedOut,
    Resynced,
    StaleResponse,
    Urc,
)
from .results import AtCommandError, AtError, AtPortClosed, FinalResult

log = logging.getLogger(__name__)

DEFAULT_BACKOFF = (0.5, 1.0, 2.0, 3.0, 5.0)

Locator = Callable[[], "str | None"]
"""Returns the port's current device path, or None while it is absent."""


class AtChannel:
    def __init__(self, locate: Locator | str, *, name: str = "modem",
                 on_urc: Callable[[str], None] | None = None,
                 on_lost: Callable[[str], None] | None = None,
                 on_opened: Callable[[str], None] | None = None,
                 core: AtCore | None = None, baudrate: int = 115200, rtscts: bool = False,
                 backoff: Sequence[float] = DEFAULT_BACKOFF) -> None:
        self.name = name
        self._locate: Locator = (lambda: locate) if isinstance(locate, str) else locate
        self.core = core or AtCore()
        self.on_urc = on_urc or (lambda line: None)
        self.on_lost = on_lost or (lambda reason: None)
        self.on_opened = on_opened
        self.baudrate = baudrate
        self.rtscts = rtscts
        self.backoff = tuple(backoff)
        self.link: SerialLink | None = None
        self.log = TrunkLog(log, name)
        self._futures: dict[AtCommand, asyncio.Future[AtResponse]] = {}
        self._raw_end: asyncio.Future[FinalResult | None] | None = None
        self._raw_stop_timeout: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reopen_task: asyncio.Task | None = None
        self._keeping = False
        self._closing = False
        self.reopen_count = 0
        self.stale_responses = 0
        self.last_answer_at: float | None = None
        """Loop time the modem last answered one of our commands, late answers included
        (liveness is judged by answers, never by URCs or echoes)."""
        self.last_stop_index: int | None = None
        """Which of the stop codes given to the last stop_raw() ended the stream."""
        self.on_raw_ended: Callable[[bool, FinalResult | None], None] | None = None
        self.after_input: Callable[[], None] | None = None
        """Called after each chunk of input was processed (raw consumers drain here)."""

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.link is not None and not self.link.closed

    @property
    def path(self) -> str | None:
        return self.link.path if self.link else None

    async def open(self) -> None:
        """Open the port now; raises AtPortClosed if it is not there."""
        if self.is_open:
            return
        path = self._locate()
        if path is None:
            raise AtPortClosed(f"{self.name}: the AT port is not present")
        try:
            await self._open_path(path)
        except PortLost as error:
            raise AtPortClosed(str(error)) from None

    def keep_open(self) -> None:
        """Open the port as soon as it is found, and again whenever it is lost, until
        :meth:`close`; ``on_opened`` says each time it worked."""
        self._keeping = True
        if not self.is_open:
            self._start_reopen(immediately=True)

    async def close(self) -> None:
        self._closing = True
        if self._reopen_task is not None:
            self._reopen_task.cancel()
            await asyncio.gather(self._reopen_task, return_exceptions=True)
            self._reopen_task = None
        if self.link is not None:
            self.link.close()
            self.link = None
        self.core.reset("channel closed")
        self._service()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def drop(self, reason: str) -> None:
        """Close the port as if it had vanished (a hung modem about to be reset): pending
        commands fail, and the channel reopens it once ``locate`` finds it again."""
        if self.link is not None:
            self.link.close()
        self._on_link_lost(reason)

    async def _open_path(self, path: str) -> None:
        link = await SerialLink.open(path, on_data=self._on_data, on_lost=self._on_link_lost,
                                     baudrate=self.baudrate, rtscts=self.rtscts)
        if self._closing:
            link.close()
            raise AtPortClosed("channel closed")
        self.link = link
        self.core.reset("port reopened")
        self._service()
        self.log.info("opened %s", path)
        if self.on_opened is not None:
            try:
                self.on_opened(path)
            except Exception:
                self.log.exception("on_opened handler failed")

    # -- commands --------------------------------------------------------------------------

    async def command(self, text: str, *, timeout_s: float = 5.0,
                      expect: tuple[str, ...] | None = None, call_control: bool | None = None,
                      check: bool = True, raw: RawConsumer | None = None) -> AtResponse:
        if not self.is_open:
            raise AtPortClosed(f"{self.name}: the AT port is not open")
        loop = asyncio.get_running_loop()
        command = AtCommand(text=text, timeout=timeout_s, expect=expect,
                            call_control=call_control, raw=raw)
        future: asyncio.Future[AtResponse] = loop.create_future()
        self._futures[command] = future
        self.core.submit(command, loop.time())
        self._service()
        try:
            response = await future
        except asyncio.CancelledError:
            self.core.withdraw(command)
            self._futures.pop(command, None)
            raise
        if check and not response.ok:
            raise AtCommandError(text, response.result, response.lines)
        return response

    # -- raw mode (voice modem audio streams) ----------------------------------------------

    def write_raw(self, data: bytes) -> None:
        if self.link is None:
            raise AtPortClosed(f"{self.name}: the AT port is not open")
        self.core.write_raw(data)
        self._service()

    def send_cr(self) -> None:
        """Send a lone CR. It aborts a command in progress (V.250 modems abort a dial when
        any character arrives; the command ends with its final result as usual), and it ends
        any stray bytes the modem took for the start of a command line (audio that was still
        on its way when the modem left a stream), so the next command starts clean."""
        if self.link is not None and not self.core.in_raw:
            self.log.debug("> CR")
            self.link.write(b"\r")

    @property
    def in_raw(self) -> bool:
        return self.core.in_raw

    @property
    def write_backlog(self) -> int:
        return self.link.buffered if self.link else 0

    async def stop_raw(self, stop_codes: Sequence[bytes], *, timeout_s: float = 1.0
                       ) -> FinalResult | None:
        """End a raw stream by sending each stop code in turn until the modem ends it (some
        modems want one DLE before the code, some three). Returns the final result."""
        loop = asyncio.get_running_loop()
        if not self.core.in_raw:
            return None
        ended = self._raw_end = self._raw_end or loop.create_future()
        for index, code in enumerate(stop_codes):
            self.last_stop_index = index
            timed_out = self._raw_stop_timeout = loop.create_future()
            self.core.stop_raw(code, timeout_s, loop.time())
            self._service()
            await asyncio.wait({ended, timed_out}, return_when=asyncio.FIRST_COMPLETED)
            if ended.done():
                return ended.result()
            self.log.info("stream did not stop on %r, trying the next code", code)
        raise AtError(f"{self.name}: the modem did not leave raw mode")

    # -- plumbing --------------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        if not self.core.in_raw:
            self.log.debug("< %r", data)
        self.core.feed(data, asyncio.get_running_loop().time())
        self._service()
        if self.after_input is not None:
            self.after_input()

    def _on_timer(self) -> None:
        deadline = self._timer.when() if self._timer is not None else None
        self._timer = None
        now = asyncio.get_running_loop().time()
        # the loop may call us a hair before the deadline (its clock resolution): the core
        # must see the deadline reached, or it re-arms the same timer and spins
        self.core.handle_timer(max(deadline, now) if deadline is not None else now)
        self._service()

    def _service(self) -> None:
        data = self.core.take_data()
        if data and self.link is not None:
            if not self.core.in_raw:
                self.log.debug("> %r", data)
            self.link.write(data)
        for event in self.core.take_events():
            self._dispatch(event)
        deadline = self.core.get_timer()
        if self._timer is not None and (deadline is None or self._timer.when() != deadline):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _dispatch(self, event) -> None:
        if isinstance(event, Urc):
            try:
                self.on_urc(event.line)
            except Exception:
                self.log.exception("URC handler failed on %r", event.line)
        elif isinstance(event, CommandFinished):
            self.last_answer_at = asyncio.get_running_loop().time()
            future = self._futures.pop(event.command, None)
            if future is not None and not future.done():
                future.set_result(event.response)
        elif isinstance(event, CommandFailed):
            future = self._futures.pop(event.command, None)
            if future is not None and not future.done():
                future.set_exception(event.error)
        elif isinstance(event, StaleResponse):
            self.last_answer_at = asyncio.get_running_loop().time()
            self.stale_responses += 1
            self.log.warning("late answer to %s dropped: %s %s",
                             event.command or "an earlier command", list(event.lines),
                             event.result.line if event.result else "")
        elif isinstance(event, Resynced):
            self.log.info("command/response stream resynchronised")
        elif isinstance(event, RawModeEnded):
            if self._raw_end is not None and not self._raw_end.done():
                self._raw_end.set_result(event.result)
            self._raw_end = None
            if self.on_raw_ended is not None:
                self.on_raw_ended(event.by_dte, event.result)
        elif (isinstance(event, RawStopTimedOut) and self._raw_stop_timeout is not None
              and not self._raw_stop_timeout.done()):
            self._raw_stop_timeout.set_result(None)

    def _on_link_lost(self, reason: str) -> None:
        self.link = None
        self.core.reset(f"{self.name}: port lost ({reason})")
        self._service()
        if self._closing:
            return
        try:
            self.on_lost(reason)
        except Exception:
            self.log.exception("on_lost handler failed")
        if self._keeping:
            self._start_reopen()

    def _start_reopen(self, *, immediately: bool = False) -> None:
        if self._closing:
            return
        if self._reopen_task is None or self._reopen_task.done():
            self._reopen_task = asyncio.get_running_loop().create_task(
                self._reopen(immediately), name=f"{self.name}-reopen")

    async def _reopen(self, immediately: bool) -> None:
        attempt = 0
        while not self._closing:
            delay = 0.0 if immediately and attempt == 0 else self.backoff[
                min(attempt, len(self.backoff) - 1)]
            await asyncio.sleep(delay)
            attempt += 1
            if self.is_open:
                return
            path = self._locate()
            if path is None:
                continue
            try:
                await self._open_path(path)
            except (PortLost, AtPortClosed) as error:
                self.log.debug("open attempt %d failed: %s", attempt, error)
                continue
            if not immediately or attempt > 1:
                self.reopen_count += 1
            return
