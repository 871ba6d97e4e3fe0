"""RAUC's status JSON and install progress lines, parsed into what 'jbc update' shows."""

from __future__ import annotations

import json

import pytest

from appliance.update.rauc import RaucError, parse_progress, parse_status

# The shape 'rauc status --detailed --output-format=json' prints (RAUC 1.8, Debian 12).
STATUS = {
    "compatible": "jbc-appliance-amd64", "variant": "", "booted": "A",
    "boot_primary": "rootfs.0",
    "slots": [
        {"rootfs.0": {"class": "rootfs", "device": "/dev/disk/by-partlabel/rootfs-a",
                      "type": "ext4", "bootname": "A", "state": "booted", "parent": None,
                      "mountpoint": "/", "boot_status": "good",
                      "slot_status": {"bundle": {"compatible": "jbc-appliance-amd64",
                                                 "version": "0.1.0+abc"},
                                      "installed": {"timestamp": "2026-12-04T19:00:00Z",
                                                    "count": 1}}}},
        {"rootfs.1": {"class": "rootfs", "device": "/dev/disk/by-partlabel/rootfs-b",
                      "type": "ext4", "bootname": "B", "state": "inactive", "parent": None,
                      "mountpoint": None, "boot_status": "bad", "slot_status": {}}},
    ],
}


def test_status_gives_booted_and_other_slot():
    status = parse_status(json.dumps(STATUS))
    assert status.booted == "A"
    assert status.compatible == "jbc-appliance-amd64"
    assert status.booted_slot.name == "rootfs.0"
    assert status.booted_slot.bundle_version == "0.1.0+abc"
    assert status.booted_slot.installed_count == 1
    assert status.other_slot.bootname == "B"
    assert status.other_slot.boot_status == "bad"
    assert status.other_slot.bundle_version == ""


def test_status_accepts_slots_as_one_object():
    data = dict(STATUS, slots={k: v for entry in STATUS["slots"] for k, v in entry.items()})
    assert [s.bootname for s in parse_status(json.dumps(data)).slots] == ["A", "B"]


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", "null"])
def test_status_that_is_not_an_object_is_a_rauc_error(text):
    with pytest.raises(RaucError):
        parse_status(text)


def test_odd_slot_entries_are_skipped_not_fatal():
    data = dict(STATUS, slots=[{"rootfs.0": "nonsense"}, 7, *STATUS["slots"][1:]])
    assert [s.bootname for s in parse_status(json.dumps(data)).slots] == ["B"]


@pytest.mark.parametrize(("line", "parsed"), [
    ("  0% Installing", (0, "Installing")),
    (" 40% Copying image to rootfs.1", (40, "Copying image to rootfs.1")),
    ("100% Installing done.", (100, "Installing done.")),
    ("installing `/data/updates/x.raucb`: started", None),
    ("", None),
    ("150% nonsense", (100, "nonsense")),
])
def test_install_progress_lines(line, parsed):
    assert parse_progress(line) == parsed
