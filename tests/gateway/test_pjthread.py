"""pjsua2 owned by one thread: jobs marshalled there, errors carried back, clean restarts."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import threading

import pytest

from appliance.gateway.pjthread import PjsuaThread, PjsuaThreadError

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[2]


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


# -- teardown order: nothing may run after what it depends on -----------------------------------
# Each case runs in a child process: before the fix, the failure was the process aborting.

CHILD_PRELUDE = """
import asyncio, socket, sys
from appliance.gateway.agent import AgentSettings, start_agent
from appliance.gateway.pjthread import PjsuaThread

def agent_thread():
    return PjsuaThread(start_agent(AgentSettings(sip_port=0, log_level=1), lambda event: None),
                       teardown=lambda agent: agent.shutdown())
"""


def run_child(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", CHILD_PRELUDE + body],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_message_still_awaiting_its_answer_at_stop_does_not_abort_the_process():
    """The on-site emergency MESSAGE may be in flight when jbcd stops: its transaction ends
    inside libDestroy and reports to the account, which must still exist then."""
    child = run_child("""
async def main():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the MESSAGE, never answers
    silent.bind(("127.0.0.1", 0))
    thread = agent_thread()
    agent = await thread.start()
    await thread.call(agent.send_message, f"sip:desk@127.0.0.1:{silent.getsockname()[1]}",
                      "site alert", "tag")
    silent.settimeout(5)
    silent.recv(65535)  # the MESSAGE left
    await thread.stop()
    print("stopped cleanly", thread.survivors)
asyncio.run(main())
""")
    assert child.returncode == 0, child.stderr[-3000:]
    assert "stopped cleanly []" in child.stdout


def test_an_agent_that_cannot_bind_its_port_can_be_started_again_once_it_is_free():
    """The gateway's start is retried while its SIP port is taken (issue 14): the pjsua2 error
    behind the failure must not keep the Endpoint alive (a wrapper's frame in the exception
    chain held it), or the next attempt aborted the whole process."""
    child = run_child("""
from appliance.gateway.agent import AgentSettings, start_agent
async def main():
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    settings = AgentSettings(sip_port=taken.getsockname()[1], log_level=1)
    for attempt in range(2):
        thread = PjsuaThread(start_agent(settings, lambda event: None),
                             teardown=lambda agent: agent.shutdown())
        try:
            await thread.start()
        except Exception as error:
            print("refused:", "Address already in use" in str(error))
    taken.close()
    thread = PjsuaThread(start_agent(settings, lambda event: None),
                         teardown=lambda agent: agent.shutdown())
    agent = await thread.start()
    print("started on", agent.sip_port == settings.sip_port)
    await thread.stop()
asyncio.run(main())
""")
    assert child.returncode == 0, child.stderr[-3000:]
    said = [line for line in child.stdout.splitlines() if line.startswith(("refused", "started"))]
    assert said == ["refused: True", "refused: True", "started on True"], child.stdout[-2000:]


@pytest.mark.parametrize("frozen", [False, True], ids=["", "frozen-at-start-up"])
def test_a_media_port_kept_past_the_library_is_disowned_not_destroyed_into_it(frozen):
    """A pjsua2 object that outlives libDestroy (here: a reference the test keeps) must never
    run its destructor later, against a library that is gone (or the next one). Also when it
    was frozen: jbcd freezes what it built at start-up (gc.freeze), frozen objects are
    invisible to gc.get_objects(), and a gateway stopped while that holds (a restart by
    supervision, a retried start) left it owned: thawed and collected later, it ran its
    destructor into a dead library (a segfault in the next gateway's teardown)."""
    freeze, thaw = ("gc.freeze()", "gc.unfreeze()") if frozen else ("pass", "pass")
    child = run_child(f"""
import gc
from appliance.gateway.media import TrunkMediaPort
async def main():
    thread = agent_thread()
    await thread.start()
    kept = await thread.call(TrunkMediaPort, "kept-by-someone")
    {freeze}
    await thread.stop()
    print("survivors", thread.survivors)
    del kept
    {thaw}
    gc.collect()
    print("released after the library")
    again = agent_thread()  # and the next library starts and stops cleanly
    await again.start()
    await again.stop()
    print("next library fine")
asyncio.run(main())
""")
    assert child.returncode == 0, child.stderr[-3000:]
    assert "survivors ['TrunkMediaPort']" in child.stdout
    assert "next library fine" in child.stdout


def test_two_hundred_stops_with_calls_up_in_every_state_are_survived_here_in_brief():
    """The teardown benchmark (hw-testbench/bench_gateway_teardown.py, 200 cycles) in brief:
    two stops in each call state, in a child process with freed memory poisoned."""
    bench = REPO / "hw-testbench" / "bench_gateway_teardown.py"
    run = subprocess.run([sys.executable, str(bench), "--cycles", "14",
                          "--child-timeout-s", "240"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    result = json.loads(run.stdout)
    assert result["survived"], result.get("crash")
    assert result["cycles_done"] == 14 and result["survivors"] == 0
    assert all(count == 2 for count in result["per_state"].values())

