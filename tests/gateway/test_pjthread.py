"""pjsua2 owned by one thread: jobs marshalled there, errors carried back, clean restarts."""

from __future__ import annotations

import asyncio
import threading

import pytest

from appliance.gateway.pjthread import PjsuaThread, PjsuaThreadError

pytestmark = pytest.mark.integration


def minimal_setup(endpoint, thread):
    import pjsua2 as pj

    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = False
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    endpoint.libInit(cfg)
    endpoint.audDevManager().setNullDev()
    endpoint.libStart()
    return {"thread": threading.current_thread()}


async def test_jobs_run_on_the_owning_thread_and_return_their_results():
    thread = PjsuaThread(minimal_setup)
    state = await thread.start()
    try:
        owner = await thread.call(threading.current_thread)
        assert owner is state["thread"] is not threading.current_thread()
        assert await thread.call(lambda a, b=0: a + b, 2, b=3) == 5
        version = await thread.call(lambda: thread.endpoint.libVersion().full)
        assert version.startswith("2.")
    finally:
        await thread.stop()


async def test_exceptions_in_jobs_reach_the_awaiting_coroutine():
    thread = PjsuaThread(minimal_setup)
    await thread.start()
    try:
        def boom():
            raise ValueError("no such leg")

        with pytest.raises(ValueError, match="no such leg"):
            await thread.call(boom)
        assert await thread.call(lambda: "still alive") == "still alive"
    finally:
        await thread.stop()


async def test_keeping_objects_alive_is_only_allowed_on_the_owning_thread():
    thread = PjsuaThread(minimal_setup)
    await thread.start()
    try:
        marker = object()
        with pytest.raises(PjsuaThreadError):
            thread.hold(marker)
        await thread.call(thread.hold, marker)
        assert id(marker) in thread.keep
        await thread.call(thread.drop, marker)
        assert id(marker) not in thread.keep
    finally:
        await thread.stop()


async def test_calls_after_stop_fail_cleanly_and_the_library_can_start_again():
    for _ in range(2):
        thread = PjsuaThread(minimal_setup)
        await thread.start()
        await thread.stop()
        with pytest.raises(PjsuaThreadError):
            await thread.call(lambda: None)


async def test_a_failing_setup_is_reported_and_leaves_no_thread_behind():
    def bad_setup(endpoint, thread):
        raise RuntimeError("transport bind failed")

    thread = PjsuaThread(bad_setup)
    with pytest.raises(RuntimeError, match="transport bind failed"):
        await thread.start()
    await asyncio.sleep(0.05)
    assert not thread.running
    # and the library is usable by the next owner
    good = PjsuaThread(minimal_setup)
    await good.start()
    await good.stop()
