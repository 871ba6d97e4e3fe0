"""Cheap static checks of the OS image's declarative inputs (the build and boot tests are in
image/test, outside CI): the Python lock, units and presets, users, fstab, GRUB's script."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = pathlib.Path(__file__).resolve().parents[2]
IMAGE = REPO / "image"
ROOTFS = IMAGE / "rootfs"
IMAGE_UNITS = ROOTFS / "usr/lib/systemd/system"


def lock_entries() -> dict[str, tuple[str, str, list[str]]]:
    """name → (version, markers, hashes) from image/python.lock."""
    text = (IMAGE / "python.lock").read_text()
    entries = {}
    for block in re.split(r"\n(?=\S)", text):
        block = block.strip()
        if not block or block.startswith("#"):
            continue
        head = block.splitlines()[0].rstrip(" \\")
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)(?:\s*;\s*(.*))?", head)
        assert match, f"python.lock: not an exact pin: {head!r}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        entries[canonicalize_name(match[1])] = (match[2], match[3] or "", hashes)
    return entries


def test_python_lock_pins_every_package_exactly_with_hashes():
    entries = lock_entries()
    assert entries
    for name, (version, _, hashes) in entries.items():
        assert hashes, f"python.lock: {name}=={version} has no hash (--require-hashes fails)"


def test_python_lock_satisfies_every_dependency_of_the_project():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    entries = lock_entries()
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in entries, (f"pyproject.toml needs {requirement}, python.lock lacks it: "
                                 "regenerate with image/lock")
        version = entries[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"python.lock pins {name}=={version}, pyproject.toml asks {requirement}: "
            "regenerate with image/lock")


def unit_files() -> list[pathlib.Path]:
    ours = [p for p in (REPO / "systemd").iterdir()
            if p.suffix in (".service", ".socket", ".timer", ".path")]
    return ours + sorted(p for p in IMAGE_UNITS.iterdir() if p.is_file())


def drop_ins() -> list[pathlib.Path]:
    return sorted(IMAGE_UNITS.glob("*.d/*.conf"))


def sections(path: pathlib.Path) -> dict[str, dict[str, list[str]]]:
    result: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = result.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside any section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return result


@pytest.mark.parametrize("unit", unit_files(), ids=lambda p: p.name)
def test_unit_is_well_formed_and_never_waits_for_network_online(unit):
    parsed = sections(unit)
    assert parsed.get("Unit", {}).get("Description"), f"{unit.name} has no Description"
    for key in ("After", "Wants", "Requires", "BindsTo"):
        for value in parsed["Unit"].get(key, []):
            assert "network-online.target" not in value.split(), (
                f"{unit.name}: the appliance must not wait for network-online.target")
    for key in ("ExecStart", "ExecStartPre"):
        for value in parsed.get("Service", {}).get(key, []):
            assert value.lstrip("-@+!").startswith("/"), f"{unit.name}: {key} not absolute"


@pytest.mark.parametrize("drop_in", drop_ins(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_drop_in_extends_a_unit_and_never_waits_for_network_online(drop_in):
    assert drop_in.parent.name.endswith((".service.d", ".socket.d", ".mount.d"))
    parsed = sections(drop_in)
    for key in ("After", "Wants", "Requires", "BindsTo"):
        for value in parsed.get("Unit", {}).get(key, []):
            assert "network-online.target" not in value.split(), drop_in.name


def test_jbcd_on_the_image_waits_only_for_its_mounts_not_for_basic_target():
    parsed = sections(IMAGE_UNITS / "jbcd.service.d" / "10-image-early-start.conf")["Unit"]
    assert parsed["DefaultDependencies"] == ["no"]
    assert "/var/lib/jbc" in parsed["RequiresMountsFor"][0].split()
    assert "/etc/jbc" in parsed["RequiresMountsFor"][0].split()
    assert parsed["Conflicts"] == ["shutdown.target"] and parsed["Before"] == ["shutdown.target"]


def presets() -> list[tuple[str, str]]:
    lines = []
    for path in sorted((ROOTFS / "usr/lib/systemd/system-preset").glob("*.preset")):
        for raw in path.read_text().splitlines():
            if raw.strip() and not raw.startswith("#"):
                verb, _, name = raw.partition(" ")
                lines.append((verb, name.strip()))
    return lines


def test_presets_enable_only_what_is_named_and_disable_everything_else():
    rules = presets()
    assert rules[-1] == ("disable", "*")
    enabled = {name for verb, name in rules if verb == "enable"}
    assert "jbcd.service" in enabled
    for never in ("systemd-networkd-wait-online.service", "chrony-wait.service"):
        assert never not in enabled


@pytest.mark.integration
def test_stage_puts_every_systemd_file_in_the_image_and_enables_installable_units(tmp_path):
    """image/lib/common's stage_project_files is generic: any unit or rule added to systemd/
    (by any part of the project) lands in the image, and is enabled if it can be."""
    script = f'repo="{REPO}"; . "{IMAGE}/lib/common"; stage_project_files "{tmp_path}"'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    staged = {p.name for p in (tmp_path / "rootfs").rglob("*") if p.is_file()}
    for source in (REPO / "systemd").iterdir():
        name = source.name
        for suffix in (".sysusers.conf", ".tmpfiles.conf"):
            if name.endswith(suffix):
                name = name[: -len(suffix)] + ".conf"
        assert name in staged, f"systemd/{source.name} is not in the image"
    generated = (tmp_path / "rootfs/usr/lib/systemd/system-preset/70-jbc-units.preset").read_text()
    for unit in unit_files():
        if "[Install]" in unit.read_text() and "@." not in unit.name:
            assert f"enable {unit.name}" in generated


def sysusers_names(path: pathlib.Path) -> list[tuple[str, str, str]]:
    rows = []
    for raw in path.read_text().splitlines():
        if raw.strip() and not raw.startswith("#"):
            fields = raw.split()
            rows.append((fields[0], fields[1], fields[2]))
    return rows


def test_image_pins_the_ids_of_every_user_and_group_the_project_declares():
    project = sysusers_names(REPO / "systemd/jbc.sysusers.conf")
    declared = [(kind, name) for kind, name, _ in project]
    pinned = sysusers_names(ROOTFS / "etc/sysusers.d/jbc.conf")
    assert [(kind, name) for kind, name, _ in pinned] == declared
    for kind, name, ident in pinned:
        if kind in ("u", "g"):
            assert re.fullmatch(r"\d+(:\d+)?", ident), f"{name} has no fixed id in the image"


def test_every_bind_mount_source_is_made_by_the_data_layout():
    layout = (ROOTFS / "usr/lib/jbc/data-layout").read_text()
    made = set(re.findall(r'"\$d/([^"]+)"', layout))
    for raw in (ROOTFS / "etc/fstab").read_text().splitlines():
        if raw.startswith("#") or not raw.strip():
            continue
        source, _target, _kind, options = raw.split()[:4]
        if "bind" in options.split(","):
            assert source.startswith("/data/")
            assert source.removeprefix("/data/") in made, f"{source} is not made by data-layout"
            assert "x-systemd.requires=jbc-data-layout.service" in options


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("grub-script-check") is None, reason="no grub-script-check")
def test_grub_script_parses():
    done = subprocess.run(["grub-script-check", str(IMAGE / "boot/grub.cfg")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_grub_script_boots_each_slot_from_its_own_partition():
    text = (IMAGE / "boot/grub.cfg").read_text()
    assert "load_env ORDER A_OK A_TRY B_OK B_TRY" in text
    assert "save_env A_TRY B_TRY" in text
    assert "rauc.slot=$slot" in text
    assert "root=PARTUUID=$partuuid ro" in text
