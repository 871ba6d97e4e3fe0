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
  destructors run there, and all of them before ``libDestroy``.

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

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_MS = 10
"""How long one ``libHandleEvents`` may wait for network I/O before jobs are looked at again."""


class PjsuaThreadError(RuntimeError):
    pass


class PjsuaThread:
    """A thread that owns pjsua2. ``setup(endpoint)`` runs there first and returns the object
    the rest of the program works with (the media agent); ``teardown(that)`` runs there last,
    before the library is destroyed."""

    def __init__(self, setup: Callable[[Any, PjsuaThread], T], *,
                 teardown: Callable[[T], None] | None = None, name: str = "pjsua") -> None:
        self._setup = setup
        self._teardown = teardown
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
        self.jobs_run = 0
        self.max_job_wait_s = 0.0

    # -- from the event loop -------------------------------------------------------------------

    async def start(self, timeout_s: float = 10.0) -> Any:
        """Start the thread, create and initialise the library there; returns setup's result."""
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
                    log.exception("pjsua job failed")
                # The traceback's frames hold pjsua2 objects; they must not outlive their
                # thread inside an exception the loop keeps, so their locals go now.
                traceback.clear_frames(error.__traceback__)
                if future is not None:
                    future.set_exception(error)
            else:
                if future is not None:
                    future.set_result(result)
            self.jobs_run += 1

    def _main(self) -> None:
        import pjsua2 as pj

        agent = None
        try:
            self.endpoint = pj.Endpoint()
            self.endpoint.libCreate()
            agent = self._setup(self.endpoint, self)
        except BaseException as error:
            log.exception("pjsua2 failed to start")
            traceback.clear_frames(error.__traceback__)
            self._destroy(None)
            self._started.set_exception(error)
            return
        self._started.set_result(agent)
        try:
            while not self._stopping.is_set():
                self.endpoint.libHandleEvents(POLL_MS)
                self._run_jobs()
        except BaseException as error:
            self.crashed = error
            log.exception("pjsua thread crashed")
        finally:
            self._run_jobs()
            self._destroy(agent)
            self._fail_pending()

    def _destroy(self, agent: Any) -> None:
        """Teardown (the agent ends calls and lets go of calls, ports and accounts), then the
        library, then what must outlive it (the log writer). Every destructor runs here."""
        if agent is not None and self._teardown is not None:
            try:
                self._teardown(agent)
            except Exception:
                log.exception("pjsua teardown failed")
        del agent
        gc.collect()  # C++ destructors of dropped pjsua2 objects run now, on this thread
        if self.endpoint is not None:
            import pjsua2 as pj

            try:
                # Calls were hung up and their BYEs sent by the teardown; without this flag
                # pjsua would sit a full second waiting for network goodbyes.
                self.endpoint.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
            except Exception:
                log.exception("pjsua2 libDestroy failed")
            self.endpoint = None
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
