"""Real-time scheduling for the threads that carry call audio, where the process may have it.

Call audio in jbcd has three clocks, all ours: pjsua2's media clock thread (one 20 ms tick
pulls a frame from every trunk's playout buffer and sends RTP), the pjsua thread (it polls
the RTP sockets, filling the handset-side jitter buffers) and the event loop (the trunk
drivers read the modems' PCM and pace frames back to them every 20 ms). Each needs the CPU
within a few milliseconds of its deadline. At normal priority on a busy host, other
processes keep them off the CPU for 100-350 ms at a time (measured at load 6-10 on 2 cores:
see the ciflake note); a stall that long is a gap the caller hears, made worse by the
catch-up burst after it.

So, where the process is allowed to (root, or CAP_SYS_NICE as the systemd unit grants it),
each of these threads runs SCHED_RR at a low real-time priority while the gateway runs, with
SCHED_RESET_ON_FORK so nothing jbcd starts inherits it. Elsewhere (a developer's laptop, a
unit without the capability) everything stays as it was and a single debug line says so.
The event loop thread is put back to its previous policy when the gateway stops.

The threads do little work per tick (about 10 % of one core for a call), and the kernel's
real-time throttling (95 % per second by default) bounds what a runaway thread could take.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading

log = logging.getLogger(__name__)

_boosted: set[int] = set()
_lock = threading.Lock()
_refused = False


@dataclasses.dataclass(frozen=True, slots=True)
class Previous:
    """A thread's scheduling before :func:`raise_this_thread`, for :func:`restore`."""

    native_id: int
    policy: int
    priority: int


def raise_this_thread(priority: int, role: str) -> Previous | None:
    """Run the calling thread SCHED_RR at ``priority`` (1-99; 0 does nothing). Returns what
    to restore, or None when nothing changed (not permitted, not Linux, already raised)."""
    global _refused
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return None
    native_id = threading.get_native_id()
    with _lock:
        if native_id in _boosted:
            return None
        if _refused:
            return None
        try:
            previous = Previous(native_id, os.sched_getscheduler(0),
                                os.sched_getparam(0).sched_priority)
            os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK,
                                  os.sched_param(min(priority, os.sched_get_priority_max(
                                      os.SCHED_RR))))
        except OSError as error:
            _refused = True  # the same answer for every thread: ask once
            log.debug("call audio threads stay at normal priority (%s): no CAP_SYS_NICE?",
                      error.strerror or error)
            return None
        _boosted.add(native_id)
    log.debug("%s thread runs SCHED_RR priority %d", role, priority)
    return previous


def raise_named_threads(names: tuple[str, ...], priority: int) -> list[int]:
    """Raise this process's threads whose kernel name is one of ``names`` (pjlib names its
    threads: pjsua's RTP worker is "media", pjmedia's clock "clock"), for threads that never
    run Python code of ours. Returns the thread ids raised."""
    global _refused
    if priority <= 0 or not hasattr(os, "sched_setscheduler") or _refused:
        return []
    raised_ids = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                if comm.read().strip() not in names:
                    continue
            native_id = int(task)
            with _lock:
                if native_id in _boosted:
                    continue
                os.sched_setscheduler(native_id, os.SCHED_RR | os.SCHED_RESET_ON_FORK,
                                      os.sched_param(min(priority, os.sched_get_priority_max(
                                          os.SCHED_RR))))
                _boosted.add(native_id)
            raised_ids.append(native_id)
        except PermissionError as error:
            _refused = True
            log.debug("call audio threads stay at normal priority (%s): no CAP_SYS_NICE?",
                      error.strerror or error)
            break
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return raised_ids


def restore(previous: Previous | None) -> None:
    """Undo :func:`raise_this_thread`; call it on the thread that was raised."""
    if previous is None or previous.native_id != threading.get_native_id():
        return
    with _lock:
        _boosted.discard(previous.native_id)
        try:
            os.sched_setscheduler(0, previous.policy, os.sched_param(previous.priority))
        except OSError as error:
            log.warning("cannot put the event loop thread back to normal priority: %s", error)


def forget(native_id: int | None = None) -> None:
    """The calling thread (or ``native_id``) ended or is about to: its id may be reused."""
    with _lock:
        _boosted.discard(native_id if native_id is not None else threading.get_native_id())


def raised() -> bool:
    """Whether the calling thread runs at the raised priority."""
    with _lock:
        return threading.get_native_id() in _boosted
