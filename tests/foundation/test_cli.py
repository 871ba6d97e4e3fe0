"""The jbc CLI: readable 80-column output, --json everywhere, documented exit codes."""

from __future__ import annotations

import grp
import json
import os
import pathlib
import shutil
import tempfile

import pytest

from appliance.cli.main import main as jbc_main
from appliance.cli.render import duration, parse_duration, table
from jbcbench.daemon import DaemonProcess

# -- pure rendering -------------------------------------------------------------------------


def test_tables_fit_80_columns_by_shortening_the_last_column():
    text = table(("TIME", "SUBSYSTEM", "REASON"),
                 [("2026-11-28 08:00:00", "wan", "x" * 200), ("t", "sip", "short")], width=80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[1].endswith("…") and lines[2].endswith("short")


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59, "59s"), (61, "1m01s"),
                                               (3600, "1h00m"), (90061, "1d01h"), (None, "-")])
def test_durations_are_compact(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600),
                                               ("1h30m", 5400), ("2d", 172800), ("1w", 604800)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10x", "5m3", "h"])
def test_bad_durations_say_how_to_write_one(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# -- against a real daemon ------------------------------------------------------------------



@pytest.mark.integration
def test_status_is_one_readable_screen(daemon):
    result = daemon.cli("status")
    lines = result.stdout.splitlines()
    # Built-in defaults have no WAN to watch: the WAN monitor owns the headline and says so.
    assert lines[0].startswith("UNCONFIGURED since ")
    assert any(line.startswith("jbcd 0.1.0, pid ") for line in lines)
    assert any(line.split()[:2] == ["control", "ok"] for line in lines)
    assert all(len(line) <= 80 for line in lines), result.stdout
    # Built-in defaults have no directory: that needs attention, and the exit status says so;
    # each row that needs it is spelled out in full below the table (what is wrong, what to do).
    assert result.returncode == 1 and "Needs attention" in result.stdout
    attention = result.stdout.split("Needs attention", 1)[1]
    assert "  directory: " in attention


@pytest.mark.integration
def test_json_is_available_before_or_after_the_command(daemon):
    for argv in (["--json", "status"], ["status", "--json"]):
        result = daemon.cli(*argv)
        data = json.loads(result.stdout)
        assert data["state"] == "unconfigured" and data["version"] == "0.1.0"


@pytest.mark.integration
def test_events_lists_the_journal_and_filters_by_age(daemon):
    result = daemon.cli("events")
    assert result.returncode == 0
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["TIME", "SUBSYSTEM", "KIND", "REASON"]
    assert any("daemon" in row and "started" in row for row in rows)
    events = json.loads(daemon.cli("events", "--since", "10m", "--json").stdout)
    assert [e["kind"] for e in events if e["subsystem"] == "daemon"] == ["started"]


@pytest.mark.integration
def test_events_follow_streams_new_entries(daemon):
    import subprocess
    import sys
    import time

    from jbcbench.daemon import REPO_ROOT, _pythonpath

    follower = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli.main", "--socket", str(daemon.socket_path),
         "events", "--follow", "--subsystem", "control", "--json"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": _pythonpath()},
        stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        daemon_config = daemon.config_path.read_text()
        assert "debug_commands" not in daemon_config
        with pytest.raises(Exception, match="debug commands are off"):
            daemon.call("debug.stall", {"seconds": 0.01})  # an admin action, refused but logged
        line = follower.stdout.readline()
        entry = json.loads(line)
        assert entry["kind"] == "technician-action" and "refused" in entry["reason"]
    finally:
        follower.terminate()
        follower.wait(5)


def test_unreachable_daemon_exits_3_and_says_what_to_check(tmp_path, capsys):
    code = jbc_main(["--socket", str(tmp_path / "none.sock"), "status"])
    err = capsys.readouterr().err
    assert code == 3
    assert "cannot reach jbcd" in err and "systemctl status jbcd" in err


def test_usage_errors_exit_2(capsys):
    assert jbc_main(["no-such-command"]) == 2
    assert jbc_main(["events", "--since", "soon"]) == 2
    assert jbc_main([]) == 2


def test_help_lists_commands_and_exit_codes(capsys):
    assert jbc_main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("status", "events", "exit status", "permission denied", "JBC_SOCKET"):
        assert word in out


@pytest.mark.integration
def test_permission_denied_exits_4(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("switches to another user; needs root")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="jbcd-cli-"))
    workdir.chmod(0o755)
    daemon = DaemonProcess(workdir, "")
    try:
        daemon.start()
        daemon.runtime_dir.chmod(0o755)
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                nogroup = grp.getgrnam("nogroup").gr_gid
                os.setgroups([nogroup])
                os.setgid(nogroup)
                os.setuid(65534)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                code = jbc_main(["--socket", str(daemon.socket_path), "status"])
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 4
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
