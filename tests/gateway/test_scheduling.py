"""Real-time scheduling of the call audio threads: raised where permitted, put back, never
inherited by what jbcd starts, and nothing at all where not permitted or turned off."""

from __future__ import annotations

import os
import threading

import pytest

from appliance.gateway import scheduling


def in_a_thread(fn):
    """Run ``fn`` in a fresh thread (scheduling is per thread) and return what it returned."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as error:  # handed back to the test
            result["error"] = error
        finally:
            scheduling.forget()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    if "error" in result:
        raise result["error"]
    return result["value"]


def permitted() -> bool:
    def probe():
        try:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
        except OSError:
            return False
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        return True

    return in_a_thread(probe)


needs_rt = pytest.mark.skipif(not permitted(),
                              reason="SCHED_RR needs root or CAP_SYS_NICE")


def test_priority_zero_leaves_the_thread_alone():
    def run():
        before = os.sched_getscheduler(0)
        previous = scheduling.raise_this_thread(0, "test")
        return before, previous, os.sched_getscheduler(0), scheduling.raised()

    before, previous, after, raised = in_a_thread(run)
    assert previous is None and after == before and not raised


@needs_rt
def test_a_raised_thread_runs_round_robin_and_is_put_back():
    def run():
        previous = scheduling.raise_this_thread(7, "test")
        during = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority,
                  scheduling.raised())
        again = scheduling.raise_this_thread(7, "test")  # once is enough
        scheduling.restore(previous)
        return previous, during, again, os.sched_getscheduler(0), scheduling.raised()

    previous, during, again, after, raised_after = in_a_thread(run)
    assert previous is not None and previous.policy == os.SCHED_OTHER
    # SCHED_RESET_ON_FORK: processes jbcd starts (ip, nft, modem resets) do not inherit it
    assert during == (os.SCHED_RR | os.SCHED_RESET_ON_FORK, 7, True)
    assert again is None
    assert after == os.SCHED_OTHER and not raised_after


@needs_rt
def test_threads_are_raised_by_their_kernel_name():
    """pjlib's own threads (pjsua's RTP worker "media") never run our Python: found by name."""
    ready, done = threading.Event(), threading.Event()
    seen = {}

    def worker():
        seen["id"] = threading.get_native_id()
        with open(f"/proc/self/task/{seen['id']}/comm", "w") as comm:
            comm.write("jbc-test-rtp")
        ready.set()
        done.wait(10)
        seen["policy"] = os.sched_getscheduler(0)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        ready.wait(10)
        raised = scheduling.raise_named_threads(("jbc-test-rtp",), 5)
    finally:
        done.set()
        thread.join(10)
        scheduling.forget(seen.get("id"))
    assert raised == [seen["id"]]
    assert seen["policy"] == os.SCHED_RR | os.SCHED_RESET_ON_FORK
