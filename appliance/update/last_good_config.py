"""The last config each root slot passed its boot check with, so that a rollback never leaves
the older release with a config it cannot read.

Unknown keys are errors, so a key that a newer release knows (and an admin set while it ran)
stops an older release: after a rollback, jbcd would exit 78 and the site would have no
appliance. jbc-boot-check (root, every boot) prevents that:

* after a passed check it keeps a copy of the config directory (``/etc/jbc``) as
  ``<update.state_dir>/config/<slot>/``: the last config this slot's release ran with and
  passed (rewritten only when it changed: SD cards wear);
* before waiting for jbcd it loads the config with the booted release; if that fails and the
  slot's copy loads, the config directory is set aside whole in
  ``<update.state_dir>/config/set-aside/<time>-<slot>/`` and the copy's files are put back.
  Nothing is deleted; the boot check's record, the journal and the console say where the
  config that did not load went.

Only regular files are copied (at most :data:`MAX_FILES`, :data:`MAX_BYTES` in all), with
their modes and owners.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any

from .errors import UpdateError

SNAPSHOTS = "config"
SET_ASIDE = "set-aside"
MAX_FILES = 256
MAX_BYTES = 16 * 1024 * 1024


class ConfigCopyError(UpdateError):
    """The config directory could not be copied (too big, unreadable)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConfigRestored:
    """The config did not load with the booted release; the slot's last good one is back."""

    slot: str
    error: str
    restored_from: pathlib.Path
    set_aside: pathlib.Path

    def to_json(self) -> dict[str, Any]:
        return {"slot": self.slot, "error": self.error,
                "restored_from": str(self.restored_from), "set_aside": str(self.set_aside)}

    def message(self) -> str:
        return (f"the config did not load with the release in slot {self.slot} ({self.error}); "
                f"put back the config slot {self.slot} last booted with, from "
                f"{self.restored_from}; the config that did not load is kept in "
                f"{self.set_aside}")


def snapshot_dir(state_dir: pathlib.Path, slot: str) -> pathlib.Path:
    return state_dir / SNAPSHOTS / slot


def last_good(state_dir: pathlib.Path, slot: str) -> pathlib.Path | None:
    """The slot's last good config directory, or None. A replacement interrupted between its
    two renames left only ``.<slot>.old``: that one still counts."""
    for candidate in (snapshot_dir(state_dir, slot), state_dir / SNAPSHOTS / f".{slot}.old"):
        if candidate.is_dir():
            return candidate
    return None


def keep_last_good(config_dir: pathlib.Path, state_dir: pathlib.Path, slot: str) -> bool:
    """Keep ``config_dir`` as the slot's last good config. False when it was kept already."""
    _check_slot(slot)
    kept = last_good(state_dir, slot)
    if kept is not None and _digest(kept) == _digest(config_dir):
        return False
    root = state_dir / SNAPSHOTS
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)  # the config holds secrets (SIP passwords, keys)
    new, old, target = root / f".{slot}.new", root / f".{slot}.old", snapshot_dir(state_dir, slot)
    shutil.rmtree(new, ignore_errors=True)
    _copy_files(config_dir, new)
    _sync_dir(new)
    if target.is_dir():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    _sync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    return True


def restore_last_good(config_file: pathlib.Path, state_dir: pathlib.Path, slot: str, *,
                      load_error: Callable[[pathlib.Path], str | None],
                      now: Callable[[], float] = time.time) -> ConfigRestored | None:
    """Put the slot's last good config back when ``config_file`` does not load.

    ``load_error(path)`` loads a config file with the booted release and returns why it
    cannot be used, or None. Returns None (and changes nothing) when the config loads, when
    the slot has no last good config, or when that one does not load either."""
    _check_slot(slot)
    error = load_error(config_file)
    if error is None:
        return None
    good = last_good(state_dir, slot)
    if good is None or load_error(good / config_file.name) is not None:
        return None
    config_dir = config_file.parent
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now()))
    aside = state_dir / SNAPSHOTS / SET_ASIDE / f"{stamp}-{slot}"
    suffix = 1
    while aside.exists():
        suffix += 1
        aside = aside.with_name(f"{stamp}-{slot}-{suffix}")
    aside.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(aside.parent.parent, 0o700)
    _copy_files(config_dir, aside)
    _sync_dir(aside)
    for source in _regular_files(good):
        target = config_dir / source.relative_to(good)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.jbc-restore")
        _copy_one(source, tmp)
        os.replace(tmp, target)
        _sync_dir(target.parent)
    return ConfigRestored(slot=slot, error=error, restored_from=good, set_aside=aside)


def _check_slot(slot: str) -> None:
    if not (slot.isalnum() and len(slot) <= 16):
        raise ValueError(f"not a slot name: {slot!r}")


def _regular_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """Every regular file under ``directory`` (symlinks are not followed), bounded."""
    files: list[pathlib.Path] = []
    total = 0
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not os.path.islink(os.path.join(root, d)))
        for name in sorted(names):
            path = pathlib.Path(root, name)
            if name.endswith(".jbc-restore") or path.is_symlink() or not path.is_file():
                continue
            files.append(path)
            total += path.stat().st_size
            if len(files) > MAX_FILES or total > MAX_BYTES:
                raise ConfigCopyError(f"{directory}: more than {MAX_FILES} files or "
                                      f"{MAX_BYTES} bytes; not a config directory to copy")
    return files


def _copy_files(source_dir: pathlib.Path, target_dir: pathlib.Path) -> None:
    target_dir.mkdir(parents=True, mode=0o700)
    for source in _regular_files(source_dir):
        target = target_dir / source.relative_to(source_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_one(source, target)


def _copy_one(source: pathlib.Path, target: pathlib.Path) -> None:
    shutil.copy2(source, target)
    info = source.stat()
    if os.geteuid() == 0:
        os.chown(target, info.st_uid, info.st_gid)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())


def _digest(directory: pathlib.Path) -> str:
    digest = hashlib.sha256()
    try:
        for path in _regular_files(directory):
            info = path.stat()
            digest.update(f"{path.relative_to(directory)}\0{info.st_mode}\0{info.st_uid}\0"
                          f"{info.st_gid}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    except OSError:
        return ""
    return digest.hexdigest()


def _sync_dir(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
