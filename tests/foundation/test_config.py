"""appliance.toml: defaults, the example file, and one clear line for every broken config."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from appliance.config import ApplianceConfig, ConfigError, builtin_defaults, load_config
from appliance.config.render import render_example

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "appliance" / "appliance.example.toml"


def write(tmp_path: pathlib.Path, text: str, name: str = "appliance.toml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_empty_file_gives_every_builtin_default(tmp_path):
    loaded = load_config(write(tmp_path, ""))
    assert loaded.config == ApplianceConfig()
    assert loaded.config.daemon.state_dir == pathlib.Path("/var/lib/jbc")
    assert loaded.config.daemon.runtime_dir == pathlib.Path("/run/jbc")


def test_builtin_defaults_need_no_file():
    assert builtin_defaults().config == ApplianceConfig()


def test_committed_example_is_exactly_what_the_schema_renders():
    assert EXAMPLE.read_text() == render_example(ApplianceConfig), (
        "appliance.example.toml is stale: regenerate it with "
        "'python -m appliance.daemon --print-example-config > appliance/appliance.example.toml'")


def test_example_file_loads_and_equals_the_defaults():
    assert load_config(EXAMPLE).config == ApplianceConfig()


def test_values_are_read_into_typed_frozen_objects(tmp_path):
    path = write(tmp_path, """
site_name = "hq"
[daemon]
state_dir = "/srv/jbc"
stop_timeout_s = 3
log_level = "debug"
[control]
admin_group = "wheel"
""")
    config = load_config(path).config
    assert config.site_name == "hq"
    assert config.daemon.state_dir == pathlib.Path("/srv/jbc")
    assert config.daemon.stop_timeout_s == 3.0 and isinstance(config.daemon.stop_timeout_s, float)
    assert config.control.admin_group == "wheel"
    with pytest.raises(AttributeError):
        config.site_name = "other"  # type: ignore[misc]


def test_a_trunk_whose_device_is_absent_is_not_a_config_error(tmp_path):
    """An unplugged or resetting modem degrades its trunk, not the appliance (exit 78 kept
    the SIP registrar and the WAN monitor down until someone came, issue 13 finding 1)."""
    path = write(tmp_path, """
[[trunks]]
name = "lte1"
kind = "lte"
at_port = "/dev/serial/by-id/usb-Quectel_EG25-if02-port0-absent"
""")
    (trunk,) = load_config(path).config.trunks
    assert not trunk.at_port.exists()


def test_a_trunk_with_an_existing_device_is_accepted(tmp_path):
    device = tmp_path / "ttyFAKE"
    device.touch()
    path = write(tmp_path, f"""
[[trunks]]
name = "lte1"
kind = "lte"
at_port = "{device}"
""")
    (trunk,) = load_config(path).config.trunks
    assert trunk.at_port == device and trunk.audio_port is None


BROKEN_CONFIGS = [
    # (what is wrong, file text, expected key, words the message must contain)
    ("toml syntax error", "site_name = \n", "", "not valid TOML"),
    ("unterminated table header", "[daemon\n", "", "not valid TOML"),
    ("unknown top-level key", "site_nam = 'x'\n", "site_nam", "unknown key"),
    ("unknown key in a table", "[daemon]\nstate_directory = '/x'\n", "daemon.state_directory",
     "unknown key"),
    ("unknown table", "[deamon]\n", "deamon", "unknown key"),
    ("string where a number belongs", "[daemon]\nstop_timeout_s = 'ten'\n",
     "daemon.stop_timeout_s", "must be a number"),
    ("boolean where a number belongs", "[control]\nmax_clients = true\n",
     "control.max_clients", "whole number"),
    ("float where a whole number belongs", "[control]\nmax_clients = 2.5\n",
     "control.max_clients", "whole number"),
    ("number where a boolean belongs", "[daemon]\ndebug_commands = 1\n",
     "daemon.debug_commands", "true or false"),
    ("out of range (too small)", "[daemon]\nstop_timeout_s = 0\n", "daemon.stop_timeout_s",
     "out of range"),
    ("out of range (too large)", "[control]\nmax_request_bytes = 99999999\n",
     "control.max_request_bytes", "out of range"),
    ("value not in the allowed set", "[daemon]\nlog_level = 'verbose'\n", "daemon.log_level",
     "choose one of"),
    ("relative path", "[daemon]\nstate_dir = 'var/lib/jbc'\n", "daemon.state_dir",
     "not an absolute path"),
    ("table where a value belongs", "site_name = { a = 1 }\n", "site_name", "must be a string"),
    ("value where a table belongs", "daemon = 5\n", "daemon", "must be a table"),
    ("empty group name", "[control]\nadmin_group = ''\n", "control.admin_group",
     "must not be empty"),
    ("relative device path", "[[trunks]]\nname = 'lte1'\nkind = 'lte'\n"
     "at_port = 'ttyUSB2'\n", "trunks[0].at_port", "not an absolute path"),
    ("missing required key", "[[trunks]]\nname = 'lte1'\nkind = 'lte'\n", "trunks[0].at_port",
     "required"),
    ("wrong trunk kind", "[[trunks]]\nname = 'x'\nkind = 'isdn'\nat_port = '/dev/null'\n",
     "trunks[0].kind", "choose one of"),
    ("duplicate trunk names", "[[trunks]]\nname = 'a'\nkind = 'lte'\nat_port = '/dev/null'\n"
     "[[trunks]]\nname = 'a'\nkind = 'lte'\nat_port = '/dev/null'\n", "trunks[1].name",
     "unique"),
    ("not UTF-8", None, "", "not UTF-8"),
]


@pytest.mark.parametrize(("case", "text", "key", "words"), BROKEN_CONFIGS,
                         ids=[c[0] for c in BROKEN_CONFIGS])
def test_broken_config_fails_with_one_line_naming_file_and_key(tmp_path, case, text, key, words):
    path = tmp_path / "appliance.toml"
    if text is None:
        path.write_bytes(b"site_name = '\xff\xfe'\n")
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert caught.value.key == key
    if key:
        assert f": {key}: " in message
    assert words in message


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.integration
@pytest.mark.parametrize(("case", "text", "key", "words"), BROKEN_CONFIGS[:14:3],
                         ids=[c[0] for c in BROKEN_CONFIGS[:14:3]])
def test_jbcd_exits_78_with_the_one_line_on_a_broken_config(tmp_path, case, text, key, words):
    path = write(tmp_path, text)
    result = subprocess.run([sys.executable, "-m", "appliance.daemon", "--config", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"jbcd: {path}: ") and words in lines[0]


@pytest.mark.integration
def test_check_config_accepts_a_good_file(tmp_path):
    path = write(tmp_path, "site_name = 'hq'\n")
    result = subprocess.run(
        [sys.executable, "-m", "appliance.daemon", "--check-config", "--config", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "valid" in result.stdout


@pytest.mark.integration
def test_jbc_config_environment_variable_names_the_file(tmp_path):
    path = write(tmp_path, "bogus = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "appliance.daemon", "--check-config"], cwd=REPO,
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO), "JBC_CONFIG": str(path)})
    assert result.returncode == 78 and f"{path}: bogus: unknown key" in result.stderr
