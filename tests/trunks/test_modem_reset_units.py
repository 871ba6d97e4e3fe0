"""The privileged USB-reset helper's units (issue 13 finding 5) verify cleanly, are locked
down, and say why where they are not; the udev rule names only modems."""

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


def units_for_checking(tmp_path: pathlib.Path) -> list[pathlib.Path]:
    """Both units, with /usr/bin/jbc-modem-reset pointed at this Python: verify checks that
    ExecStart exists."""
    paths = []
    for name in ("jbc-modem-reset.path", "jbc-modem-reset.service"):
        text = (UNITS / name).read_text().replace("/usr/bin/jbc-modem-reset", sys.executable)
        path = tmp_path / name
        path.write_text(text)
        paths.append(path)
    return paths


@pytest.mark.integration
@needs_systemd_analyze
def test_the_helper_units_pass_systemd_analyze_verify(tmp_path):
    result = subprocess.run(["systemd-analyze", "verify", *map(str, units_for_checking(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.integration
@needs_systemd_analyze
def test_the_helper_service_exposure_level_is_ok_or_better(tmp_path, capsys):
    service = units_for_checking(tmp_path)[1]
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(service)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for jbc-modem-reset.service: ([0-9.]+) (\w+)",
                      result.stdout)
    assert match, result.stdout + result.stderr
    with capsys.disabled():
        print(f"\n    systemd-analyze security: jbc-modem-reset.service exposure {match[1]} "
              f"{match[2]}")
    assert match[2] in ("SAFE", "OK"), result.stdout


def test_the_helper_keeps_no_capability_and_says_why_sys_is_writable():
    lines = (UNITS / "jbc-modem-reset.service").read_text().splitlines()
    for line in ("CapabilityBoundingSet=", "NoNewPrivileges=yes", "PrivateNetwork=yes",
                 "Group=jbc", "ReadWritePaths=-/run/jbc/modem-reset", "Type=oneshot"):
        assert line in lines, line
    index = lines.index("ProtectKernelTunables=no")
    assert lines[index - 1].startswith("#"), "ProtectKernelTunables=no has no comment"
    path = (UNITS / "jbc-modem-reset.path").read_text().splitlines()
    assert "DirectoryNotEmpty=/run/jbc/modem-reset" in path


def test_the_request_directory_is_where_jbcd_puts_it():
    from appliance.trunks.service import MODEM_RESET_DIR

    assert f"/run/jbc/{MODEM_RESET_DIR}" in (UNITS / "jbc-modem-reset.path").read_text()
    assert "RuntimeDirectory=jbc" in (UNITS / "jbcd.service").read_text().splitlines()


def test_the_udev_rule_touches_usb_modems_only():
    rules = [line for line in (UNITS / "60-jbc-modems.rules").read_text().splitlines()
             if line and not line.startswith("#")]
    matches = [line for line in rules if 'ATTR{idVendor}==' in line]
    assert matches
    for line in matches:
        vendor = re.search(r'ATTR\{idVendor\}=="([0-9a-f]{4})"', line)[1]
        assert vendor in ("2c7c", "1e0e") or 'ATTR{idProduct}==' in line, line
        assert 'ATTR{power/control}="on"' in line and 'TAG+="jbc_modem"' in line
    assert rules[0].startswith('ACTION!="add"') and rules[-1] == 'LABEL="jbc_modems_end"'
