"""The check behind the `integration` mark (jbcbench/realio.py) fails exactly the unmarked tests
that do real I/O, and its report lists what every test did."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

SAMPLE = '''
import os, socket, subprocess, sys, threading
import pytest

def test_pure():
    assert sum(range(4)) == 6

def test_thread_bounding_a_call():
    done = []
    worker = threading.Thread(target=done.append, args=(1,))
    worker.start()
    worker.join(5)
    assert done == [1]

def test_unix_client_with_nothing_to_talk_to(tmp_path):
    with socket.socket(socket.AF_UNIX) as client, pytest.raises(OSError):
        client.connect(str(tmp_path / "none.sock"))

def test_unmarked_udp_socket():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))

def test_unmarked_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

def test_unmarked_pty():
    for fd in os.openpty():
        os.close(fd)

def test_unmarked_unix_server(tmp_path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s.sock"))

@pytest.fixture
def server():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock

def test_unmarked_through_a_fixture(server):
    assert server.getsockname()[1] > 0

@pytest.mark.integration
def test_marked_socket_and_process():
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
    subprocess.run([sys.executable, "-c", "pass"], check=True)
'''


def run_sample(tmp_path: pathlib.Path, **env: str) -> dict[str, str]:
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(SAMPLE))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "jbcbench.realio", "-p", "no:cacheprovider",
         "-o", "markers=integration: real I/O", "-rA", "-q", "test_sample.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, **env, "COLUMNS": "400",  # the summary lines whole
             "PYTHONPATH": f"{ROOT / 'hw-testbench'}{os.pathsep}{ROOT}"})
    outcomes = {}
    for line in done.stdout.splitlines():
        words = line.split(" ", 2)
        if words[0] in ("PASSED", "FAILED") and "::" in words[1]:
            outcomes[words[1].split("::")[1]] = line
    return outcomes


@pytest.mark.integration
def test_unmarked_tests_with_real_io_fail_and_say_why(tmp_path):
    outcomes = run_sample(tmp_path)
    passed = {name for name, line in outcomes.items() if line.startswith("PASSED")}
    assert passed == {"test_pure", "test_thread_bounding_a_call",
                      "test_unix_client_with_nothing_to_talk_to",
                      "test_marked_socket_and_process"}
    reasons = {"test_unmarked_udp_socket": "socket.bind AF_INET",
               "test_unmarked_process": "subprocess.Popen",
               "test_unmarked_pty": "os.openpty",
               "test_unmarked_unix_server": "socket.bind AF_UNIX",
               "test_unmarked_through_a_fixture": "socket.bind AF_INET"}
    for name, reason in reasons.items():
        assert outcomes[name].startswith("FAILED"), outcomes[name]
        assert f"does real I/O ({reason}" in outcomes[name]
        assert "not marked integration" in outcomes[name]


@pytest.mark.integration
def test_the_report_says_what_every_test_did(tmp_path):
    report_path = tmp_path / "real-io.json"
    run_sample(tmp_path, JBC_REAL_IO_REPORT=str(report_path))
    report = {name.split("::")[1]: entry
              for name, entry in json.loads(report_path.read_text()).items()}
    assert report["test_pure"] == {"integration": False, "real_io": None, "threads": 0}
    assert report["test_thread_bounding_a_call"]["threads"] == 1
    marked = report["test_marked_socket_and_process"]
    assert marked["integration"] is True
    assert marked["real_io"].startswith("socket.bind AF_INET6")
