"""A rollback never leaves the older release with a config it cannot read: each slot's last
good config is kept, and put back (the newer one set aside, never deleted) when the booted
release cannot load what it finds. Real config loader, real files in a temp dir."""

from __future__ import annotations

import os
import pathlib

import pytest

from appliance.update.boot_check import config_load_error, put_back_last_good_config
from appliance.update.config import UpdateConfig
from appliance.update.last_good_config import (
    MAX_FILES,
    SNAPSHOTS,
    ConfigCopyError,
    keep_last_good,
    last_good,
    restore_last_good,
)

GOOD = b'[wan]\nretry_interval_s = 0.5\n'
# What a newer release accepts and this one does not: a key it has never heard of.
NEWER = b'[wan]\nretry_interval_s = 0.75\nkey_from_a_newer_release = true\n'


@pytest.fixture
def box(tmp_path):
    config_dir = tmp_path / "etc-jbc"
    config_dir.mkdir()
    (config_dir / "appliance.toml").write_bytes(GOOD)
    (config_dir / "site-ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    return config_dir, tmp_path / "data-update"


def test_the_config_of_this_release_loads_and_the_newer_one_does_not(box):
    config_dir, _ = box
    assert config_load_error(config_dir / "appliance.toml") is None
    (config_dir / "appliance.toml").write_bytes(NEWER)
    error = config_load_error(config_dir / "appliance.toml")
    assert error is not None and "key_from_a_newer_release" in error


def test_rollback_puts_back_the_slots_last_good_config_and_keeps_the_newer_one(box):
    config_dir, state_dir = box
    assert keep_last_good(config_dir, state_dir, "A") is True       # A passed its boot check
    (config_dir / "appliance.toml").write_bytes(NEWER)               # set while B was tried
    (config_dir / "only-b-uses-this.pem").write_bytes(b"new file")

    restored = restore_last_good(config_dir / "appliance.toml", state_dir, "A",
                                 load_error=config_load_error, now=lambda: 1_800_000_000)

    assert restored is not None and "key_from_a_newer_release" in restored.error
    assert (config_dir / "appliance.toml").read_bytes() == GOOD
    assert config_load_error(config_dir / "appliance.toml") is None
    # nothing lost: the whole directory as the newer release left it
    assert restored.set_aside == state_dir / SNAPSHOTS / "set-aside" / "20270115T080000Z-A"
    assert (restored.set_aside / "appliance.toml").read_bytes() == NEWER
    assert (restored.set_aside / "only-b-uses-this.pem").read_bytes() == b"new file"
    assert (restored.set_aside / "site-ca.pem").exists()
    assert (config_dir / "only-b-uses-this.pem").exists()  # unknown to A, harmless, left
    assert "kept in" in restored.message() and str(restored.set_aside) in restored.message()


def test_a_config_that_loads_is_never_replaced(box):
    config_dir, state_dir = box
    keep_last_good(config_dir, state_dir, "A")
    edited = b'[wan]\nretry_interval_s = 0.3\n'                      # an ordinary edit
    (config_dir / "appliance.toml").write_bytes(edited)
    assert restore_last_good(config_dir / "appliance.toml", state_dir, "A",
                             load_error=config_load_error) is None
    assert (config_dir / "appliance.toml").read_bytes() == edited
    assert not (state_dir / SNAPSHOTS / "set-aside").exists()


def test_without_a_last_good_config_or_with_a_bad_one_nothing_changes(box):
    config_dir, state_dir = box
    (config_dir / "appliance.toml").write_bytes(NEWER)
    assert restore_last_good(config_dir / "appliance.toml", state_dir, "B",
                             load_error=config_load_error) is None      # B never passed
    keep_last_good(config_dir, state_dir, "B")                          # (not a real case)
    assert restore_last_good(config_dir / "appliance.toml", state_dir, "B",
                             load_error=config_load_error) is None
    assert (config_dir / "appliance.toml").read_bytes() == NEWER


def test_the_last_good_copy_is_rewritten_only_when_the_config_changed(box):
    config_dir, state_dir = box
    assert keep_last_good(config_dir, state_dir, "A") is True
    inode = (state_dir / SNAPSHOTS / "A" / "appliance.toml").stat().st_ino
    assert keep_last_good(config_dir, state_dir, "A") is False          # every boot: no write
    assert (state_dir / SNAPSHOTS / "A" / "appliance.toml").stat().st_ino == inode
    (config_dir / "appliance.toml").write_bytes(b'[wan]\nretry_interval_s = 0.4\n')
    assert keep_last_good(config_dir, state_dir, "A") is True
    assert (state_dir / SNAPSHOTS / "A" / "appliance.toml").read_bytes().endswith(b"0.4\n")
    assert oct((state_dir / SNAPSHOTS).stat().st_mode & 0o777) == "0o700"  # secrets inside


def test_a_replacement_cut_between_its_renames_still_finds_the_old_copy(box):
    config_dir, state_dir = box
    keep_last_good(config_dir, state_dir, "A")
    os.replace(state_dir / SNAPSHOTS / "A", state_dir / SNAPSHOTS / ".A.old")  # power cut
    assert last_good(state_dir, "A") == state_dir / SNAPSHOTS / ".A.old"
    (config_dir / "appliance.toml").write_bytes(NEWER)
    restored = restore_last_good(config_dir / "appliance.toml", state_dir, "A",
                                 load_error=config_load_error)
    assert restored is not None and (config_dir / "appliance.toml").read_bytes() == GOOD


def test_a_directory_that_is_not_a_config_directory_is_not_copied(box):
    config_dir, state_dir = box
    for n in range(MAX_FILES + 1):
        (config_dir / f"f{n}").write_bytes(b"x")
    with pytest.raises(ConfigCopyError, match="not a config directory"):
        keep_last_good(config_dir, state_dir, "A")


def test_slot_names_are_checked(box):
    config_dir, state_dir = box
    with pytest.raises(ValueError):
        keep_last_good(config_dir, state_dir, "../A")


class Systemctl:
    """Records what the boot check asks of systemd (the real one is not in a unit test)."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, argv, **_):
        self.calls.append(list(argv))


def test_the_boot_check_restarts_jbcd_after_putting_the_config_back(box):
    config_dir, state_dir = box
    config = UpdateConfig(state_dir=state_dir)
    keep_last_good(config_dir, state_dir, "A")
    (config_dir / "appliance.toml").write_bytes(NEWER)
    systemctl = Systemctl()
    record = put_back_last_good_config(config_dir / "appliance.toml", config, "A",
                                       run=systemctl)
    assert record is not None and record["slot"] == "A"
    assert pathlib.Path(record["set_aside"], "appliance.toml").read_bytes() == NEWER
    assert systemctl.calls == [["systemctl", "reset-failed", "jbcd.service"],
                               ["systemctl", "restart", "--no-block", "jbcd.service"]]
    # a config that loads: nothing to do, jbcd left alone
    systemctl.calls.clear()
    assert put_back_last_good_config(config_dir / "appliance.toml", config, "A",
                                     run=systemctl) is None
    assert systemctl.calls == []
