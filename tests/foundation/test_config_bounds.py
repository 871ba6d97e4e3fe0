"""Hostile config files (issue 14, finding 2): every one is refused with one line naming the
file, by --check-config exactly as by start-up, and a SIGHUP with one neither kills the daemon
nor freezes its loop."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from appliance.config import ConfigError, load_config

REPO = pathlib.Path(__file__).resolve().parents[2]

HOSTILE = {
    "deep-array": ("a = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested deeper"),
    "deep-inline-table": ("a = " + "{b=" * 5_000 + "1" + "}" * 5_000 + "\n", "nested deeper"),
    "deep-tables": ("".join(f"[{'.'.join('t' * 1 for _ in range(n))}]\n" for n in (1, 12)),
                    "nested deeper"),
    "nul-in-state-dir": ('[daemon]\nstate_dir = "/var/lib/j\\u0000bc"\n', "NUL"),
    "nul-in-site-name": ('site_name = "h\\u0000q"\n', "NUL"),
    "nan": ("[daemon]\nstop_timeout_s = nan\n", "finite"),
    "inf": ("[daemon]\nstop_timeout_s = inf\n", "finite"),
    "minus-inf-unknown-key": ("[wan]\nbogus = -inf\n", "finite"),
    "socket-path-too-long": (f'[daemon]\nruntime_dir = "/{"r" * 100}"\n', "too long"),
}


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_file_is_refused_with_one_line(tmp_path, case):
    text, expected = HOSTILE[case]
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, text))
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'appliance.toml'}: ") and expected in message
    assert "\n" not in message and len(message) < 300


def test_a_huge_file_is_refused_without_being_read(tmp_path):
    path = tmp_path / "appliance.toml"
    with open(path, "wb") as file:
        file.truncate(200 * 1024 * 1024)  # sparse: 200 MB that cost nothing to make
    started = time.monotonic()
    with pytest.raises(ConfigError, match="at most 262144 bytes"):
        load_config(path)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_only_a_regular_file_is_read(tmp_path, kind):
    if kind == "fifo":
        path = tmp_path / "appliance.toml"
        os.mkfifo(path)
    elif kind == "device":
        path = pathlib.Path("/dev/zero")
    else:
        path = tmp_path
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: _capture(outcome, path), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), f"load_config hung on a {kind}"
    assert isinstance(outcome[0], ConfigError)
    assert ("not a regular file" if kind != "directory" else "is a directory") in str(
        outcome[0])


def _capture(outcome: list[BaseException], path: pathlib.Path) -> None:
    try:
        load_config(path)
    except BaseException as error:
        outcome.append(error)


def jbcd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.daemon", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_check_config_refuses_what_start_up_refuses(tmp_path, case):
    path = write(tmp_path, HOSTILE[case][0])
    checked = jbcd("--check-config", "--config", str(path))
    started = jbcd("--config", str(path), "--state-dir", str(tmp_path / "state"),
                   "--runtime-dir", str(tmp_path / "run"))
    for result in (checked, started):
        assert result.returncode == 78, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert checked.stderr == started.stderr


@pytest.mark.integration
def test_check_config_on_a_fifo_answers_at_once(tmp_path):
    path = tmp_path / "appliance.toml"
    os.mkfifo(path)
    result = jbcd("--check-config", "--config", str(path), timeout=10)
    assert result.returncode == 78 and "is a FIFO, not a regular file" in result.stderr


@pytest.mark.integration
def test_a_runtime_dir_flag_gets_the_same_checks_as_the_file(tmp_path):
    result = jbcd("--check-config", "--runtime-dir", "/" + "r" * 100)
    assert result.returncode == 78 and result.stderr.startswith("jbcd: --runtime-dir: ")


@pytest.mark.integration
@pytest.mark.parametrize("case", ["deep-array", "huge", "fifo", "nan"])
def test_sighup_with_a_hostile_file_neither_kills_nor_freezes_jbcd(daemon_factory, case):
    daemon = daemon_factory('site_name = "hq"\n').start()
    daemon.config_path.unlink()
    if case == "fifo":
        os.mkfifo(daemon.config_path)
    elif case == "huge":
        with open(daemon.config_path, "wb") as file:
            file.truncate(200 * 1024 * 1024)
    else:
        daemon.config_path.write_text(HOSTILE[case][0])
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        asked = time.monotonic()
        status = daemon.call("status")
        assert time.monotonic() - asked < 1.0, "the event loop froze"
        events = daemon.call("events", {"subsystem": "daemon"})["events"]
        refused = [e for e in events if e["kind"] == "config-reload-refused"]
        if refused or time.monotonic() > deadline:
            break
    assert refused and str(daemon.config_path) in refused[0]["reason"]
    assert status["site"] == "hq" and daemon.proc.poll() is None
