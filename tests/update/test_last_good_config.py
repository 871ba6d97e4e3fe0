"""A rollback never leaves the older release with a config it cannot read, and loses nothing:
keys it does not know are commented out (every other setting kept), or else the slot's last
good config is put back; the config as it was is always set aside first. Real config loader,
real files in a temp dir."""

from __future__ import annotations

import os
import pathlib
import tomllib

import pytest

from appliance.update.boot_check import config_problem, put_back_last_good_config
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
    assert config_problem(config_dir / "appliance.toml") is None
    (config_dir / "appliance.toml").write_bytes(NEWER)
    problem = config_problem(config_dir / "appliance.toml")
    assert problem is not None and problem.key == "wan.key_from_a_newer_release"


def restore(config_dir, state_dir, slot="A"):
    return restore_last_good(config_dir / "appliance.toml", state_dir, slot,
                             problem=config_problem, now=lambda: 1_800_000_000)


def test_after_a_rollback_keys_the_release_does_not_know_are_commented_out_and_edits_kept(box):
    config_dir, state_dir = box
    keep_last_good(config_dir, state_dir, "A")                   # A passed its boot check
    (config_dir / "appliance.toml").write_bytes(NEWER)           # edited while B was tried
    (config_dir / "only-b-uses-this.pem").write_bytes(b"new file")

    restored = restore(config_dir, state_dir)

    assert restored is not None and restored.commented_out == ("wan.key_from_a_newer_release",)
    assert restored.restored_from is None
    text = (config_dir / "appliance.toml").read_text()
    assert config_problem(config_dir / "appliance.toml") is None
    assert tomllib.loads(text) == {"wan": {"retry_interval_s": 0.75}}   # the edit is kept
    assert "# key_from_a_newer_release = true" in text
    assert "unknown to this release" in text
    # nothing lost: the whole directory as the newer release left it
    assert restored.set_aside == state_dir / SNAPSHOTS / "set-aside" / "20270115T080000Z-A"
    assert (restored.set_aside / "appliance.toml").read_bytes() == NEWER
    assert (restored.set_aside / "only-b-uses-this.pem").read_bytes() == b"new file"
    assert (restored.set_aside / "site-ca.pem").exists()
    assert (config_dir / "only-b-uses-this.pem").exists()  # unknown to A, harmless, left
    assert "kept in" in restored.message() and str(restored.set_aside) in restored.message()


def test_unknown_tables_and_multi_line_values_are_commented_out_whole(box):
    config_dir, state_dir = box
    newer = ('site_name = "shop"\n\n[wan]\nretry_interval_s = 0.75\nnew_list = [\n  "a",\n'
             '  "b",\n]\n\n[feature_from_b]\nenabled = true\n\n[feature_from_b.detail]\n'
             'level = 3\n\n[sip]\nnew_sip_key = "x"\n')
    (config_dir / "appliance.toml").write_text(newer)
    restored = restore(config_dir, state_dir)
    assert restored is not None
    assert set(restored.commented_out) == {"wan.new_list", "feature_from_b", "sip.new_sip_key"}
    assert tomllib.loads((config_dir / "appliance.toml").read_text()) == {
        "site_name": "shop", "wan": {"retry_interval_s": 0.75}, "sip": {}}
    assert config_problem(config_dir / "appliance.toml") is None


def test_a_value_the_release_refuses_brings_back_the_slots_last_good_config(box):
    config_dir, state_dir = box
    keep_last_good(config_dir, state_dir, "A")
    refused = b"[wan]\nretry_interval_s = 0.75\nround_timeout_s = 0.1\n"   # not a key: a rule
    (config_dir / "appliance.toml").write_bytes(refused)
    restored = restore(config_dir, state_dir)
    assert restored is not None and restored.commented_out == ()
    assert restored.restored_from == state_dir / SNAPSHOTS / "A"
    assert (config_dir / "appliance.toml").read_bytes() == GOOD
    assert (restored.set_aside / "appliance.toml").read_bytes() == refused


def test_a_config_that_loads_is_never_replaced(box):
    config_dir, state_dir = box
    keep_last_good(config_dir, state_dir, "A")
    edited = b'[wan]\nretry_interval_s = 0.3\n'                      # an ordinary edit
    (config_dir / "appliance.toml").write_bytes(edited)
    assert restore(config_dir, state_dir) is None
    assert (config_dir / "appliance.toml").read_bytes() == edited
    assert not (state_dir / SNAPSHOTS / "set-aside").exists()


def test_without_a_last_good_config_or_with_a_bad_one_nothing_changes(box):
    config_dir, state_dir = box
    refused = b"[wan]\nretry_interval_s = 0.75\nround_timeout_s = 0.1\n"
    (config_dir / "appliance.toml").write_bytes(refused)
    assert restore(config_dir, state_dir, "B") is None                   # B never passed
    keep_last_good(config_dir, state_dir, "B")                           # (not a real case)
    assert restore(config_dir, state_dir, "B") is None
    assert (config_dir / "appliance.toml").read_bytes() == refused
    assert not (state_dir / SNAPSHOTS / "set-aside").exists()


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
    (config_dir / "appliance.toml").write_bytes(b"[wan]\nround_timeout_s = 0.1\n")
    restored = restore(config_dir, state_dir)
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
