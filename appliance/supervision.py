"""Supervision: a crash in one subsystem's task is contained, journalled, restarted with
backoff and shown in 'jbc status'; it never ends the process or touches the other subsystems.

Subsystems start their background work through the :class:`~appliance.runtime.Runtime`::

    runtime.supervise(self._run, name="cloud-link", subsystem="sync")   # long-lived loop
    runtime.spawn(self._connect(key), name="connect", subsystem="sip")  # one-shot job

``supervise`` takes a *factory* (a callable returning a fresh coroutine) because a crashed
loop is started again: after 1 s, then 2, 4, ... up to ``max_s``; a run that lasted
``healthy_after_s`` without crashing resets the delay. ``spawn`` runs a coroutine once; a crash
is contained and counted the same way but not restarted (a one-shot job is retried, if at all,
by whoever started it). Cancellation is never a crash: stopping a subsystem cancels its tasks.

A subsystem that cannot *start* gets the same policy (:meth:`Supervisor.retry_start`, used by
the Appliance): its start is journalled (``start-failed``, again only when the reason changes
or every ``START_JOURNAL_REPEAT_S``), shown as failed in 'jbc status' and tried again with the
same backoff until it starts (``start-recovered``); a config reload tries at once. A running
subsystem that died under itself (:class:`~appliance.runtime.SubsystemFailed`) is stopped by
the Appliance and started again the same way (:meth:`Supervisor.restart_crashed`, journalled
``crashed``); crashes soon after each restart back off as a crash loop.

Every crash is written to the event journal (``task-crashed``). The journal itself may be what
fails (a full or broken disk): then the crash is logged instead, and the supervisor carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

RECENT_CRASH_S = 300.0
"""A crash this recent still makes its subsystem need attention in 'jbc status'."""
START_TASK = "start"
"""The supervised task that starts again a subsystem whose start failed."""
START_JOURNAL_REPEAT_S = 600.0
"""A start that keeps failing for the same reason is journalled again this often (every
attempt is logged)."""
ONE_SHOT_JOURNAL_INTERVAL_S = 10.0
"""One-shot jobs can be many (one per SIP connection): at most one journal entry per subsystem
per this many seconds; the others are counted in the next entry."""


class StartFailed(Exception):
    """A subsystem cannot start. Raised by its ``__aenter__`` after it released whatever it
    took, with a message that says what is wrong and what to do; the Appliance shows it and
    starts the subsystem again with backoff (``__aenter__`` is called again)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Restart delays: ``min_s`` doubling up to ``max_s``; reset by a run of ``healthy_after_s``."""

    min_s: float = 1.0
    max_s: float = 60.0
    healthy_after_s: float = 60.0

    def delay(self, consecutive_crashes: int) -> float:
        """The wait before restart number ``consecutive_crashes`` (1 for the first crash)."""
        return min(self.max_s, self.min_s * 2.0 ** min(max(consecutive_crashes - 1, 0), 30))


@dataclasses.dataclass(slots=True, kw_only=True)
class TaskRecord:
    """What the supervisor knows about one supervised task, for 'jbc status'."""

    subsystem: str
    name: str
    restartable: bool
    state: str = "running"
    """running, restarting (waiting out the backoff), finished (returned) or stopped."""
    runs: int = 0
    crashes: int = 0
    consecutive_crashes: int = 0
    last_error: str | None = None
    last_crash_at: float | None = None
    restart_at: float | None = None
    wake: asyncio.Event | None = dataclasses.field(default=None, repr=False)
    """Set to cut the wait before the next restart short (a start retried after a reload)."""
    journalled: tuple[str, float] | None = None
    """The last failed start journalled: (reason, when)."""
    crashed_running: bool = False
    """A start task that restarts a subsystem which crashed while running (not at start)."""
    finished_at: float | None = None

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name, "state": self.state, "restartable": self.restartable,
            "runs": self.runs, "crashes": self.crashes, "last_error": self.last_error,
            "last_crash_at": self.last_crash_at,
            "restart_in_s": None if self.restart_at is None else max(0.0, self.restart_at - now),
        }

    def needs_attention(self, now: float) -> bool:
        if self.name == START_TASK:  # a start that succeeded in the end is history...
            return self.state in ("restarting", "starting") or (  # ...a crash is news a while
                self.crashed_running and self.last_crash_at is not None
                and now - self.last_crash_at < RECENT_CRASH_S)
        return self.state == "restarting" or (
            self.last_crash_at is not None and now - self.last_crash_at < RECENT_CRASH_S)


@dataclasses.dataclass(slots=True, kw_only=True)
class _OneShotCrashes:
    count: int = 0
    unjournalled: int = 0
    last_error: str | None = None
    last_crash_at: float | None = None
    journalled_at: float = float("-inf")


Journal = Callable[[str, str, str, dict[str, Any]], object]
"""``journal(subsystem, kind, reason, details)``: EventJournal.record without keywords."""


class Supervisor:
    """Runs subsystems' tasks so that a crash stays where it happened."""

    def __init__(self, *, journal: Journal | None = None, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.records: dict[tuple[str, str], TaskRecord] = {}
        self._one_shots: dict[str, _OneShotCrashes] = {}
        self._running: set[asyncio.Task] = set()

    # -- starting tasks ----------------------------------------------------------------------

    def supervise(self, create_task: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task],
                  factory: Callable[[], Coroutine[Any, Any, Any]], *, name: str,
                  subsystem: str) -> asyncio.Task:
        """Run ``factory()`` now and again after each crash, with backoff. Cancelling the
        returned task stops it for good (that is how a subsystem stops its work)."""
        record = TaskRecord(subsystem=subsystem, name=name, restartable=True)
        self.records[(subsystem, name)] = record
        return self._track(create_task(self._keep_running(record, factory),
                                       f"{subsystem}:{name}"))

    def spawn(self, create_task: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task],
              coroutine: Coroutine[Any, Any, Any], *, name: str, subsystem: str) -> asyncio.Task:
        """Run ``coroutine`` once; a crash is contained, counted and journalled."""
        return self._track(create_task(self._run_once(coroutine, name=name,
                                                      subsystem=subsystem),
                                       f"{subsystem}:{name}"))

    def retry_start(self, create_task: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task],
                    start: Callable[[], Coroutine[Any, Any, Any]], *, subsystem: str,
                    error: Exception,
                    on_failure: Callable[[TaskRecord], None] | None = None) -> asyncio.Task:
        """``subsystem`` could not start (``error``): journal and show that now, then call
        ``start()`` again with backoff until it returns. Cancelling the task gives up.
        ``on_failure(record)`` is told of every failed attempt, this one included."""
        record = TaskRecord(subsystem=subsystem, name=START_TASK, restartable=True, runs=1)
        self.records[(subsystem, START_TASK)] = record
        self._start_failed(record, error, on_failure)
        return self._track(create_task(self._keep_starting(record, start, on_failure),
                                       f"{subsystem}:{START_TASK}"))

    def restart_crashed(self, create_task: Callable[[Coroutine[Any, Any, Any], str],
                                                    asyncio.Task],
                        start: Callable[[], Coroutine[Any, Any, Any]], *, subsystem: str,
                        reason: str,
                        on_failure: Callable[[TaskRecord], None] | None = None) -> asyncio.Task:
        """``subsystem`` was running and died (``reason``; the caller has stopped it): journal
        that (``crashed``) and show it, then call ``start()`` with backoff until it runs again,
        like :meth:`retry_start`. A crash within ``healthy_after_s`` of the last restart
        counts as the next of a crash loop, so the waits grow."""
        now = self.clock()
        previous = self.records.get((subsystem, START_TASK))
        record = TaskRecord(subsystem=subsystem, name=START_TASK, restartable=True, runs=0,
                            crashed_running=True)
        if previous is not None and previous.finished_at is not None and (
                now - previous.finished_at < self.backoff.healthy_after_s):
            record.consecutive_crashes = previous.consecutive_crashes
        self.records[(subsystem, START_TASK)] = record
        self._start_failed(record, StartFailed(reason), on_failure, kind="crashed")
        return self._track(create_task(self._keep_starting(record, start, on_failure),
                                       f"{subsystem}:{START_TASK}"))

    def retry_now(self, subsystem: str) -> bool:
        """Cut short the wait before ``subsystem``'s next start attempt (the config changed)."""
        record = self.records.get((subsystem, START_TASK))
        if record is None or record.state != "restarting" or record.wake is None:
            return False
        record.wake.set()
        return True

    def cancel_all(self) -> None:
        """Cancel every task still running (the last step of stopping the appliance)."""
        for task in list(self._running):
            task.cancel()

    def _track(self, task: asyncio.Task) -> asyncio.Task:
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    # -- what status shows -------------------------------------------------------------------

    def tasks_of(self, subsystem: str) -> list[TaskRecord]:
        return [r for (owner, _), r in self.records.items() if owner == subsystem]

    def report(self, subsystem: str) -> dict[str, Any]:
        """The subsystem's tasks and contained crashes, JSON-able, for 'jbc status'."""
        now = self.clock()
        report: dict[str, Any] = {"tasks": [r.to_json(now) for r in self.tasks_of(subsystem)]}
        one_shots = self._one_shots.get(subsystem)
        if one_shots is not None:
            report["job_crashes"] = one_shots.count
            report["job_last_error"] = one_shots.last_error
        return report

    def attention(self, subsystem: str) -> str | None:
        """A short sentence when a task of ``subsystem`` crashed lately, else None."""
        now = self.clock()
        parts = []
        for record in self.tasks_of(subsystem):
            if not record.needs_attention(now):
                continue
            if record.name == START_TASK:
                parts.append(_start_attention(record, now))
                continue
            text = f"task {record.name} crashed {_times(record.crashes)} ({record.last_error})"
            if record.state == "restarting" and record.restart_at is not None:
                text += f", restarting in {max(0.0, record.restart_at - now):.0f} s"
            parts.append(text)
        one_shots = self._one_shots.get(subsystem)
        if one_shots is not None and one_shots.last_crash_at is not None and (
                now - one_shots.last_crash_at < RECENT_CRASH_S):
            parts.append(f"{_times(one_shots.count)} a job crashed ({one_shots.last_error})")
        return "; ".join(parts) or None

    # -- running -----------------------------------------------------------------------------

    async def _keep_running(self, record: TaskRecord,
                            factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                record.state = "running"
                record.restart_at = None
                record.runs += 1
                started = loop.time()
                try:
                    await factory()
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    if loop.time() - started >= self.backoff.healthy_after_s:
                        record.consecutive_crashes = 0
                    record.consecutive_crashes += 1
                    delay = self.backoff.delay(record.consecutive_crashes)
                    self._crashed(record, error, delay)
                    record.state = "restarting"
                    record.restart_at = self.clock() + delay
                    await asyncio.sleep(delay)
                    continue
                record.state = "finished"
                return
        finally:
            if record.state != "finished":
                record.state = "stopped"
            record.restart_at = None

    async def _keep_starting(self, record: TaskRecord,
                             start: Callable[[], Coroutine[Any, Any, Any]],
                             on_failure: Callable[[TaskRecord], None] | None) -> None:
        try:
            while True:
                wait = min(self.backoff.max_s, max(0.0, record.restart_at - self.clock()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(record.wake.wait(), wait)
                record.state, record.restart_at, record.wake = "starting", None, None
                record.runs += 1
                try:
                    await start()
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    self._start_failed(record, error, on_failure)
                    continue
                record.state, record.finished_at = "finished", self.clock()
                log.info("%s started at attempt %d", record.subsystem, record.runs)
                self._journal(record.subsystem, "start-recovered",
                              f"started at attempt {record.runs} (before: {record.last_error})",
                              {"attempts": record.runs, "failed": record.crashes})
                return
        finally:
            if record.state != "finished":
                record.state = "stopped"
            record.restart_at = record.wake = None

    def _start_failed(self, record: TaskRecord, error: Exception,
                      on_failure: Callable[[TaskRecord], None] | None, *,
                      kind: str = "start-failed") -> None:
        record.crashes += 1
        record.consecutive_crashes += 1
        record.last_error = _start_error(error)
        now = record.last_crash_at = self.clock()
        delay = self.backoff.delay(record.consecutive_crashes)
        record.state, record.restart_at = "restarting", now + delay
        record.wake = asyncio.Event()
        what = ("crashed while running" if kind == "crashed"
                else f"cannot start (attempt {record.runs})")
        log.error("%s %s: %s; trying again in %.1f s", record.subsystem, what,
                  record.last_error, delay, exc_info=None if _expected(error) else error)
        if on_failure is not None:
            try:
                on_failure(record)
            except Exception:
                log.exception("telling others that %s cannot start failed", record.subsystem)
        previous = record.journalled
        if previous is not None and previous[0] == record.last_error and (
                now - previous[1] < START_JOURNAL_REPEAT_S):
            return
        record.journalled = (record.last_error, now)
        self._journal(record.subsystem, kind,
                      f"{record.last_error}; trying again in {_seconds(delay)} (and with "
                      "backoff until it starts)",
                      {"attempt": record.runs, "retry_in_s": round(delay, 3)})

    async def _run_once(self, coroutine: Coroutine[Any, Any, Any], *, name: str,
                        subsystem: str) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.job_crashed(subsystem, name, error)

    def _crashed(self, record: TaskRecord, error: Exception, delay: float) -> None:
        record.crashes += 1
        record.last_error = _describe(error)
        record.last_crash_at = self.clock()
        log.error("task %s of %s crashed (%s); restarting it in %.1f s", record.name,
                  record.subsystem, record.last_error, delay, exc_info=error)
        self._journal(record.subsystem, "task-crashed",
                      f"{record.name}: {record.last_error}; restarting in {delay:.1f} s",
                      {"task": record.name, "crashes": record.crashes,
                       "restart_in_s": round(delay, 3)})

    def job_crashed(self, subsystem: str, name: str, error: BaseException) -> None:
        """Count, log and (rate-limited) journal a one-shot job's crash."""
        crashes = self._one_shots.setdefault(subsystem, _OneShotCrashes())
        now = self.clock()
        crashes.count += 1
        crashes.unjournalled += 1
        crashes.last_error = f"{name}: {_describe(error)}"
        crashes.last_crash_at = now
        log.error("%s of %s crashed (%s)", name, subsystem, _describe(error), exc_info=error)
        if now - crashes.journalled_at < ONE_SHOT_JOURNAL_INTERVAL_S:
            return
        more = crashes.unjournalled - 1
        crashes.journalled_at, crashes.unjournalled = now, 0
        self._journal(subsystem, "task-crashed", crashes.last_error + (
            f" (and {more} more since the last entry)" if more else ""),
            {"task": name, "crashes": crashes.count})

    def _journal(self, subsystem: str, kind: str, reason: str, details: dict[str, Any]) -> None:
        if self.journal is None:
            return
        try:
            self.journal(subsystem, kind, reason, details)
        except Exception as error:  # the journal may be what is broken; never let that spread
            log.error("could not journal %s %s (%s): %s", subsystem, kind, _describe(error),
                      reason)


def loop_exception_handler(supervisor: Supervisor):
    """An asyncio exception handler: an exception that escaped a loop callback, or a task
    nobody awaited, counts as a crash of the subsystem it came from (by the task's
    ``subsystem:name`` or the callback's module), logged and journalled like any other."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if error is None or isinstance(error, asyncio.CancelledError):
            loop.default_exception_handler(context)
            return
        subsystem, name = _origin(context)
        supervisor.job_crashed(subsystem, name, error)

    return handle


def _origin(context: dict[str, Any]) -> tuple[str, str]:
    task = context.get("task") or context.get("future")
    if isinstance(task, asyncio.Task) and ":" in task.get_name():
        subsystem, _, name = task.get_name().partition(":")
        return subsystem, name
    handle = context.get("handle")
    callback = getattr(handle, "_callback", None)
    module = getattr(callback, "__module__", "") or ""
    parts = module.split(".")
    subsystem = parts[1] if len(parts) > 2 and parts[0] == "appliance" else "daemon"
    return subsystem, f"callback {getattr(callback, '__qualname__', repr(callback))}"


def _start_attention(record: TaskRecord, now: float) -> str:
    if record.state == "finished":  # a crash restarted lately
        ago = max(0.0, now - (record.last_crash_at or now))
        return (f"crashed {_seconds(ago)} ago ({record.last_error}); running again since "
                f"attempt {record.runs}")
    crash = record.crashed_running and record.runs == 0
    text = f"{'not running' if crash else 'not started'}: {record.last_error}"
    if record.state == "starting":
        return f"{text} (trying again now, attempt {record.runs})"
    wait = max(0.0, (record.restart_at or now) - now)
    if crash:
        return f"{text} (starting it again in {_seconds(wait)})"
    return f"{text} (attempt {record.runs} failed; trying again in {_seconds(wait)})"


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _expected(error: BaseException) -> bool:
    """A start failure that explains itself (no traceback in the log)."""
    return isinstance(error, StartFailed | OSError)


def _start_error(error: BaseException) -> str:
    return str(error) if _expected(error) and str(error) else _describe(error)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"
