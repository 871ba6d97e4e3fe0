"""pjsua2, owned by one thread and bridged to asyncio.

pjsua2 is not thread-safe in the ways asyncio code would need, and its Python objects wrap C++
objects whose destructors must run while the library is alive and on a thread it knows. So:

* one dedicated thread creates the :class:`pjsua2.Endpoint`, polls it (``libHandleEvents``)
  and runs every job that touches pjsua2; :meth:`PjsuaThread.call` marshals a function there
  from the event loop and awaits its result, :meth:`PjsuaThread.post` fires and forgets;
* callbacks arrive on that thread (``threadCnt=0``: pjsua2 runs no worker threads of its own);
  they hand results to the loop with :meth:`PjsuaThread.to_loop`, never touching asyncio;
* Python objects that pjsua2 calls back into (accounts, calls, media ports, buddies) are kept
  alive in :attr:`PjsuaThread.keep` and only ever dropped on the pjsua thread, so their C++
  destructors run there.

Teardown order (:meth:`PjsuaThread._destroy`), so that no destructor ever runs after what it
depends on:

1. the owner's teardown ends calls and drops calls and buddies while the library is alive
   (their destructors talk to pjsua);
2. what must outlive ``libDestroy`` stays in :attr:`keep`: the log writer (pjsua logs until the
   end), the account (a transaction that ends inside ``libDestroy``, such as a MESSAGE still
   awaiting its answer, reports to its account: a deleted account there is an assertion
   failure that aborts the process), and media ports and tone generators (their destructors
   free the port while the conference bridge's clock thread still has its asynchronous
   removal queued: it would read and write freed memory; ``libDestroy`` removes them
   synchronously and releases their pools);
3. ``libDestroy``;
4. everything still holding a C++ object is *disowned* (Python stops owning it, its destructor
   never runs; objects frozen by ``gc.freeze()`` are thawed first, or it could not see them):
   after ``libDestroy`` a pjsua2 destructor would call into a library that is gone
   (with this wheel's assertions on, that aborts), and a survivor collected later, by whichever
   thread happens to run the garbage collector, would reach into the *next* library instance.
   Survivors outside :attr:`keep` are a bug; they are logged and counted in
   :attr:`PjsuaThread.survivors`.

Errors from jobs and callbacks are logged as text, never with the traceback object: a kept log
record (a test's log capture, a memory handler) would keep the frames' pjsua2 objects alive
past their library.

The media clock (the null sound device's clock thread) calls media ports directly; those
callbacks touch only thread-safe frame queues, never pjsua2 objects or asyncio.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import gc
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from . import scheduling
from .errors import GatewayError

log = logging.getLogger(__name__)

T = TypeVar("T")

_endpoint_leaked = False
"""Set when an Endpoint outlived its thread's teardown: no new one may be created then."""

POLL_MS = 10
"""How long one ``libHandleEvents`` may wait for network I/O before jobs are looked at again."""


class PjsuaThreadError(GatewayError, RuntimeError):
    pass


class PjsuaThread:
    """A thread that owns pjsua2. ``setup(endpoint)`` runs there first and returns the object
    the rest of the program works with (the media agent); ``teardown(that)`` runs there last,
    before the library is destroyed."""

    def __init__(self, setup: Callable[[Any, PjsuaThread], T], *,
                 teardown: Callable[[T], None] | None = None, name: str = "pjsua",
                 on_crash: Callable[[BaseException], None] | None = None) -> None:
        self._setup = setup
        self._teardown = teardown
        self._on_crash = on_crash
        """Called on the event loop once the thread died of an error while running (the
        library torn down already): its owner is no longer running."""
        self._name = name
        self._jobs: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future | None]]
        self._jobs = collections.deque()
        self._thread: threading.Thread | None = None
        self._started = concurrent.futures.Future()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.endpoint: Any = None
        self.keep: dict[int, Any] = {}
        """Python objects pjsua2 calls back into, by ``id()``; touched on this thread only."""
        self.crashed: BaseException | None = None
        self.survivors: list[str] = []
        """Types of pjsua2 objects found alive, outside :attr:`keep`, after ``libDestroy``."""
        self.max_job_wait_s = 0.0

    # -- from the event loop -------------------------------------------------------------------

    async def start(self, timeout_s: float = 10.0) -> Any:
        """Start the thread, create and initialise the library there; returns setup's result.
        Refused while an earlier library instance's Endpoint is still alive: creating a
        second one aborts the whole process (pjsua2 throws from its constructor)."""
        global _endpoint_leaked
        if _endpoint_leaked:
            if await asyncio.to_thread(_endpoint_alive):
                raise PjsuaThreadError(
                    "a previous pjsua2 library instance is still alive in this process (a "
                    "bug: see the log for what outlived it); restart jbcd to start the gateway")
            _endpoint_leaked = False
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        return await asyncio.wait_for(asyncio.wrap_future(self._started), timeout_s)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the pjsua thread; return (or raise) its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._submit(lambda: fn(*args, **kwargs), future)
        return await asyncio.wrap_future(future)

    def post(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn`` on the pjsua thread soon; errors are logged, nobody waits."""
        self._submit(lambda: fn(*args, **kwargs), None)

    async def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        await asyncio.to_thread(self._thread.join, timeout_s)
        if self._thread.is_alive():
            log.error("pjsua thread did not stop within %.1f s", timeout_s)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    # -- from the pjsua thread -----------------------------------------------------------------

    def to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule ``fn(*args)`` on the event loop (callbacks use this to report)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closing: nobody is listening any more
            loop.call_soon_threadsafe(fn, *args)

    def hold(self, obj: Any) -> Any:
        """Keep ``obj`` alive until :meth:`drop` (pjsua thread only)."""
        self.assert_owner()
        self.keep[id(obj)] = obj
        return obj

    def drop(self, obj: Any) -> None:
        """Let ``obj`` go; its C++ destructor runs here, on the pjsua thread."""
        self.assert_owner()
        self.keep.pop(id(obj), None)

    def in_owner_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def assert_owner(self) -> None:
        if not self.in_owner_thread():
            raise PjsuaThreadError(
                f"pjsua2 touched from {threading.current_thread().name}, not its own thread")

    # -- internals -----------------------------------------------------------------------------

    def _submit(self, job: Callable[[], Any], future: concurrent.futures.Future | None) -> None:
        # From the pjsua thread itself (a callback scheduling follow-up work) the job is
        # always accepted: the thread drains its queue once more before destroying pjsua2.
        refused = self._thread is None or (self._stopping.is_set()
                                           and not self.in_owner_thread())
        if refused:
            error = PjsuaThreadError("the pjsua thread is not running")
            if future is None:
                raise error
            future.set_exception(error)
            return
        enqueued = time.monotonic()

        def timed() -> Any:
            self.max_job_wait_s = max(self.max_job_wait_s, time.monotonic() - enqueued)
            return job()

        self._jobs.append((timed, future))

    def _run_jobs(self) -> None:
        while self._jobs:
            job, future = self._jobs.popleft()
            if future is not None and not future.set_running_or_notify_cancel():
                continue
            try:
                result = job()
            except BaseException as error:  # handed to the awaiting side, or logged
                if future is None:
                    log.error("pjsua job failed:\n%s", traceback.format_exc().rstrip())
                # The traceback's frames hold pjsua2 objects; they must not outlive their
                # thread inside an exception the loop keeps: the frames' locals go now, and
                # the frame running this loop is left out of the traceback handed over.
                _clear_frames(error)
                if future is not None:
                    tb = error.__traceback__
                    future.set_exception(error.with_traceback(tb.tb_next if tb else None))
                del error
            else:
                if future is not None:
                    future.set_result(result)

    def _main(self) -> None:
        import pjsua2 as pj

        agent = None
        try:
            self.endpoint = pj.Endpoint()
            self.endpoint.libCreate()
            agent = self._setup(self.endpoint, self)
        except BaseException as error:
            log.error("pjsua2 failed to start:\n%s", traceback.format_exc().rstrip())
            _clear_frames(error)
            self._destroy(None)
            tb = error.__traceback__
            self._started.set_exception(error.with_traceback(tb.tb_next if tb else None))
            return
        self._started.set_result(agent)
        try:
            while not self._stopping.is_set():
                self.endpoint.libHandleEvents(POLL_MS)
                self._run_jobs()
        except BaseException as error:
            log.error("pjsua thread crashed:\n%s", traceback.format_exc().rstrip())
            _clear_frames(error)
            self.crashed = error.with_traceback(None)
        finally:
            self._run_jobs()
            self._destroy(agent)
            self._fail_pending()
            scheduling.forget()
            if self.crashed is not None and self._on_crash is not None:
                self.to_loop(self._on_crash, self.crashed)

    def _destroy(self, agent: Any) -> None:
        """Teardown, ``libDestroy``, then disown what is left (see the module docstring for
        why in this order). Every destructor that runs at all runs here, on this thread."""
        # Objects frozen by gc.freeze() (jbcd freezes what it built at start-up) are invisible
        # to the collector and to gc.get_objects(): thawed first, or a frozen pjsua2 object
        # would escape both the collection below and the disowning after libDestroy, and run
        # its destructor into a dead library whenever someone thaws and collects later.
        gc.unfreeze()
        if agent is not None and self._teardown is not None:
            try:
                self._teardown(agent)
            except Exception:
                log.error("pjsua teardown failed:\n%s", traceback.format_exc().rstrip())
        del agent
        gc.collect()  # C++ destructors of dropped pjsua2 objects run now, on this thread
        if self.endpoint is not None:
            import pjsua2 as pj

            try:
                # Calls were hung up and their BYEs sent by the teardown; without this flag
                # pjsua would sit a full second waiting for network goodbyes.
                self.endpoint.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
            except Exception:
                log.error("pjsua2 libDestroy failed:\n%s", traceback.format_exc().rstrip())
            for kept in self.keep.values():
                _disown(kept)
            self.keep.clear()
            self.survivors = _disown_survivors()
            if self.survivors:
                log.warning("pjsua2 objects outlived their library (now disowned, never "
                            "destroyed): %s", ", ".join(self.survivors))
            # The Endpoint itself goes last: its destructor is what lets the next
            # Endpoint of this process be created.
            self.endpoint = None
            self.keep.clear()
            gc.collect()
            if _endpoint_alive():
                global _endpoint_leaked
                _endpoint_leaked = True
                log.error("the pjsua2 Endpoint outlived libDestroy (something still refers to "
                          "it); the gateway cannot start again in this process")
        self.keep.clear()
        gc.collect()

    def _fail_pending(self) -> None:
        while self._jobs:
            _, future = self._jobs.popleft()
            if future is not None and not future.done():
                future.set_exception(PjsuaThreadError("the pjsua thread stopped"))

    def pump(self, seconds: float) -> None:
        """Handle pjsua2 events for ``seconds`` (teardown uses it to let BYEs go out)."""
        self.assert_owner()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.endpoint.libHandleEvents(POLL_MS)


def _clear_frames(error: BaseException) -> None:
    """Clear the locals of every frame in ``error``'s traceback *and* in those of the
    exceptions it was raised from or while handling (``__cause__``, ``__context__``): a
    pjsua2 wrapper's frame there holds its ``self``, the Endpoint among them, and an Endpoint
    kept alive that way makes the next one abort the process (pjsua2 allows one)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending += [current.__cause__, current.__context__]


def _endpoint_alive() -> bool:
    """Whether a pjsua2 Endpoint object still exists in this process (a leak)."""
    import pjsua2 as pj

    return any(isinstance(obj, pj.Endpoint) for obj in gc.get_objects())


def _disown(obj: Any) -> None:
    """Python stops owning ``obj``'s C++ object: its destructor will never run."""
    with contextlib.suppress(Exception):
        if getattr(obj, "thisown", False):
            obj.thisown = False


def _disown_survivors() -> list[str]:
    """Disown every pjsua2 object that still owns a C++ object; return their type names.

    Only classes whose destructors talk to pjsua matter (calls, accounts, buddies, media);
    plain parameter structs (``CallOpParam``, ``CallInfo``) own nothing of the library."""
    import pjsua2 as pj

    risky = (pj.Call, pj.Account, pj.Buddy, pj.AudioMedia)
    found = []
    for obj in gc.get_objects():
        if isinstance(obj, risky) and getattr(obj, "thisown", False):
            _disown(obj)
            found.append(type(obj).__name__)
    return sorted(found)
