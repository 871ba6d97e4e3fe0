"""The systemd units verify cleanly, and jbcd.service's exposure level is printed and OK."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed")


def unit_for_checking(tmp_path: pathlib.Path) -> pathlib.Path:
    """The unit with /usr/bin/jbcd pointed at this Python: verify checks ExecStart exists."""
    text = (UNITS / "jbcd.service").read_text().replace("/usr/bin/jbcd", sys.executable)
    path = tmp_path / "jbcd.service"
    path.write_text(text)
    return path


@pytest.mark.integration
@needs_systemd_analyze
def test_jbcd_service_passes_systemd_analyze_verify(tmp_path):
    result = subprocess.run(["systemd-analyze", "verify", str(unit_for_checking(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.integration
@needs_systemd_analyze
def test_jbcd_service_exposure_level_is_ok_or_better(tmp_path, capsys):
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit_for_checking(tmp_path))],
        capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for jbcd.service: ([0-9.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    with capsys.disabled():
        print(f"\n    systemd-analyze security: jbcd.service exposure {match[1]} {match[2]}")
    assert match[2] in ("SAFE", "OK"), result.stdout


def test_unit_uses_the_hardening_the_design_asks_for():
    text = (UNITS / "jbcd.service").read_text()
    for line in ("Type=notify", "Restart=on-failure", "ProtectSystem=strict",
                 "StateDirectory=jbc", "RuntimeDirectory=jbc", "ConfigurationDirectory=jbc",
                 "DevicePolicy=closed", "NoNewPrivileges=yes", "RestartPreventExitStatus=78",
                 "SupplementaryGroups=dialout"):
        assert line in text.splitlines(), line
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)


def test_every_relaxed_hardening_option_carries_a_comment():
    lines = (UNITS / "jbcd.service").read_text().splitlines()
    relaxed = {"PrivateDevices=no", "PrivateUsers=no", "ProcSubset=all", "RestrictRealtime=no"}
    for index, line in enumerate(lines):
        if line in relaxed:
            assert lines[index - 1].startswith("#"), f"{line} has no comment saying why"


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_file_creates_the_user_and_groups(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).write_text("")
    (root / "etc" / "group").write_text("dialout:x:20:\n")
    result = subprocess.run(["systemd-sysusers", f"--root={root}",
                             str(UNITS / "jbc.sysusers.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    passwd = (root / "etc" / "passwd").read_text()
    group = (root / "etc" / "group").read_text()
    assert passwd.startswith("jbc:") or "\njbc:" in passwd
    assert re.search(r"^dialout:x:20:jbc$", group, re.M)
    assert "jbc-admin:" in group and "jbc-tech:" in group
